# Mask R-CNN + FPN with an STViT-R-T backbone: mmdet's R-50 model with the backbone swapped and the FPN widened.
# Defines `model` and `custom_imports` only. The backbone starts from random weights here (no init_cfg); the COCO
# leaves ask for ImageNet weights (see configs/stvit-r/README.md).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='STViTR',
        arch='tiny',  # C=96, depths (2, 2, 6, 2), one dumbbell unit in stage 3
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    neck=dict(in_channels=[96, 192, 384, 768]))
