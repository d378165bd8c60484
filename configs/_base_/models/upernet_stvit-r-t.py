# UperNet + auxiliary FCN head with an STViT-R-T backbone: mmseg's UperNet-Swin model with the backbone swapped.
# Defines `model` (and mmseg's `norm_cfg`, `data_preprocessor`) and `custom_imports` only; the backbone starts from
# random weights here (no init_cfg); the ADE20K / Cityscapes leaves ask for ImageNet weights (see
# configs/stvit-r-seg/README.md). STViTR's outputs have mmseg Swin's channels and strides (C..8C at 4..32), so the
# heads keep their inputs: UPerHead reads all four, the FCN head stage 3 (4C).
_base_ = 'mmseg::_base_/models/upernet_swin.py'

custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='STViTR',
        arch='tiny',  # C=96, depths (2, 2, 6, 2), one dumbbell unit in stage 3
        drop_path_rate=0.3,  # mmseg's Swin UperNet recipe (T, S and B)
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
