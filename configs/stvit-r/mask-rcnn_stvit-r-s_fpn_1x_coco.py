# Mask R-CNN, STViT-R-S (three dumbbell units in stage 3), single-scale 1x.
_base_ = './mask-rcnn_stvit-r-t_fpn_1x_coco.py'

model = dict(backbone=dict(arch='small'))
