# Cascade Mask R-CNN, STViT-R-T, 4conv1fc GIoU heads, multi-scale + crop 3x: the official STViT-R detection recipe
# (changsn/STViT-R-Object-Detection configs/swin/cascade_mask_rcnn_swin_*_mstrain_480-800_giou_4conv1f_adamw_3x):
# AdamW 1e-4, wd 0.05 (none on norms / position tables), warm-up 500 iterations from 0.001, x0.1 at epochs 27, 33.
# Two differences from the official runs: the padding mask is the package default pad_mask='correct' (every padded
# key masked; the released code's partial mask is pad_mask='official', whose effect on AP was not measured) and the
# precision fp32 (the official runs used apex O1: the amp- configs). To train as released: the amp- config with
# --cfg-options model.backbone.pad_mask=official.
# ImageNet weights: --cfg-options model.backbone.init_cfg.checkpoint=PATH (local file; see README.md);
# from scratch: --cfg-options model.backbone.init_cfg=None.
_base_ = [
    '../_base_/models/cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou.py',
    '../_base_/datasets/coco-instance_ms-crop.py',
    '../_base_/schedules/adamw-3x.py',
    'mmdet::_base_/default_runtime.py',
]

model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=None)))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
