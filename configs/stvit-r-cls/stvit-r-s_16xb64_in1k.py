# STViT-R-S on ImageNet-1k, the official pretraining recipe (see stvit-r-t_16xb64_in1k.py); drop path 0.3.
_base_ = 'mmpretrain::swin_transformer/swin-small_16xb64_in1k.py'

custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True, type='STViTR', arch='small', drop_path_rate=0.3, out_indices=(3, ), init_cfg=None))

param_scheduler = [  # the official lr curve (see stvit-r-t_16xb64_in1k.py)
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=300, convert_to_iter_based=True),
]
