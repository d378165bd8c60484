# Mask R-CNN, STViT-R-S, multi-scale + crop 3x.
_base_ = './mask-rcnn_stvit-r-t_fpn_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='small'))
