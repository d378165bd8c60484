# Mask R-CNN with a small STViT-R (C=48, depths 1-1-6-1: one dumbbell unit in stage 3) trained from scratch on the
# nuclei demo dataset (tools/make_demo_dataset.py). A CPU-sized recipe: inputs upscaled to 448 (nuclei ~40 px, covered
# by the default 32 / 64 px anchors of P2 / P3), a 128-channel FPN and narrow heads, fewer proposals, AdamW with
# warm-up and cosine decay over 240 iterations (batch 2), seeded.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/datasets/nuclei-demo.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)

embed_dims = 48
fpn_channels = 128
model = dict(
    backbone=dict(
        _delete_=True,
        type='STViTR',
        embed_dims=embed_dims,
        depths=(1, 1, 6, 1),
        num_heads=(2, 4, 8, 16),
        window_size=7,
        drop_path_rate=0.1,
        stem='conv',
        sparsify=True,
        pad_mask='correct',
        out_indices=(0, 1, 2, 3),
        init_cfg=None),
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=1),
        mask_roi_extractor=dict(out_channels=fpn_channels),
        mask_head=dict(in_channels=fpn_channels, conv_out_channels=fpn_channels, num_classes=1)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500), rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=500), rcnn=dict(max_per_img=100)))

# schedule: iteration-based, validated and checkpointed once at the end
max_iters = 240
train_dataloader = dict(sampler=dict(type='InfiniteSampler', shuffle=True))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, eta_min_ratio=0.05)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0))),
    clip_grad=dict(max_norm=10.0))

default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
