# UperNet with a small STViT-R (C=48, depths 1-1-6-1: one dumbbell unit in stage 3) trained from scratch on the
# nuclei demo dataset, semantic form (`tools/make_demo_dataset.py --semantic`): nucleus vs background, evaluated
# with mIoU on the held-out quadrant. A CPU-sized recipe: narrow heads, 224x224 crops, batch 4, AdamW with warm-up
# and poly decay over 400 iterations, seeded.
_base_ = [
    '../_base_/models/upernet_stvit-r-t.py',
    '../_base_/datasets/nuclei-seg-demo.py',
    'mmseg::_base_/default_runtime.py',
]

embed_dims = 48
norm_cfg = dict(type='BN', requires_grad=True)  # one process: plain BatchNorm in the heads
model = dict(
    data_preprocessor=dict(size=(224, 224)),
    backbone=dict(
        embed_dims=embed_dims,
        depths=(1, 1, 6, 1),
        num_heads=(2, 4, 8, 16),
        drop_path_rate=0.1,
        init_cfg=None),
    decode_head=dict(
        in_channels=[embed_dims * 2**i for i in range(4)],
        channels=64,
        num_classes=2,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=embed_dims * 4, channels=32, num_classes=2, norm_cfg=norm_cfg))

# schedule: iteration-based, validated and checkpointed once at the end
max_iters = 400
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=40, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))),
    clip_grad=dict(max_norm=10.0))

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook', interval=1))  # tools/test.py --show-dir: every image
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
# tools/test.py --show-dir DIR paints ground truth (left) and prediction (right) over the image, half transparent
visualizer = dict(alpha=0.5)
