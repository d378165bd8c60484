# Mask R-CNN, STViT-R-T, multi-scale + crop 3x, automatic mixed precision.
_base_ = './mask-rcnn_stvit-r-t_fpn_ms-crop-3x_coco.py'

optim_wrapper = dict(type='AmpOptimWrapper')
