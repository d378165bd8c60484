# Mask R-CNN, STViT-R-T, multi-scale + crop 3x (the mmdet Swin-T ms-crop-3x recipe with the backbone swapped).
# ImageNet weights: --cfg-options model.backbone.init_cfg.checkpoint=PATH (local file; see README.md);
# from scratch: --cfg-options model.backbone.init_cfg=None.
_base_ = [
    '../_base_/models/mask-rcnn_stvit-r-t_fpn.py',
    '../_base_/datasets/coco-instance_ms-crop.py',
    '../_base_/schedules/adamw-3x.py',
    'mmdet::_base_/default_runtime.py',
]

model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=None)))
