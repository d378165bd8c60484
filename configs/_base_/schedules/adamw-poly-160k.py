# 160k iterations, AdamW lr 6e-5 (batch 16), weight decay 0.01 except on norms and position tables; linear warm-up
# over 1500 iterations from 1e-6, then poly (power 1) to 0: mmseg's Swin UperNet recipe
# (mmseg configs/swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py). Its keys match by
# name; STViT-R's conv stem has two BatchNorms whose names hold no 'norm' (official keys patch_embed.proj.{0,2}.bn),
# named here so that every backbone norm is free of decay (the heads' BatchNorms keep it, as in mmseg's recipe).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),  # matches no STViTR parameter; kept as in Swin's recipe
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'patch_embed.proj.0.bn': dict(decay_mult=0.),
            'patch_embed.proj.2.bn': dict(decay_mult=0.)
        }))

max_iters = 160000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False)
]
