# Cascade Mask R-CNN, STViT-R-B (official), 4conv1fc GIoU heads, multi-scale + crop 3x.
_base_ = './cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.3), neck=dict(in_channels=[128, 256, 512, 1024]))
