# Nuclei demo dataset: built offline by `python tools/make_demo_dataset.py` from the real image + 125-instance
# label mask shipped in the PyPI package stardist==0.9.2 (see stvit_det/datasets/demo_nuclei.py).
# train: 27 crops (256x256, with flips / rotations) of three quadrants; val = test: the held-out fourth quadrant.
# Nuclei are ~24 px wide at 256x256, so images are upscaled to 448 (1.75x; 448 = 4 * 2**4 * 7 keeps every Swin /
# STViT-R stage an exact number of 7x7 windows) and jittered by +-25 % in scale.
dataset_type = 'CocoDataset'
data_root = 'data/nuclei_demo/'
metainfo = dict(classes=('nucleus', ), palette=[(220, 20, 60)])
backend_args = None
img_scale = (448, 448)

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=img_scale, crop_type='absolute', recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
