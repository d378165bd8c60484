# Cascade Mask R-CNN, STViT-R-S (official), 4conv1fc GIoU heads, multi-scale + crop 3x.
_base_ = './cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.2))
