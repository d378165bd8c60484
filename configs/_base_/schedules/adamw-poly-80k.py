# The AdamW + warm-up + poly recipe of adamw-poly-160k.py over 80k iterations (mmseg's Cityscapes length),
# validated and checkpointed every 8k.
_base_ = './adamw-poly-160k.py'

max_iters = 80000
train_cfg = dict(max_iters=max_iters, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False)
]
