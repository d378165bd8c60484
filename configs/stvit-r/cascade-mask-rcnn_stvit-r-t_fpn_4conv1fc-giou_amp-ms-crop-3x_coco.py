# Cascade Mask R-CNN, STViT-R-T, 4conv1fc GIoU heads, multi-scale + crop 3x, automatic mixed precision (the
# official runs used apex O1).
_base_ = './cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

optim_wrapper = dict(type='AmpOptimWrapper')
