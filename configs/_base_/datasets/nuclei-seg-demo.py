# Nuclei demo dataset, semantic form (background 0 / nucleus 1): the images of nuclei-demo.py plus label maps under
# seg_maps/, built offline by `python tools/make_demo_dataset.py --semantic` (stvit_det/datasets/demo_nuclei_seg.py).
# train: 27 views (256x256, with flips / rotations) of three quadrants; val = test: the held-out fourth quadrant.
# Training crops are 224x224 (= 4 * 2**3 * 7: every Swin / STViT-R stage an exact number of 7x7 windows) from
# images rescaled by 0.75-1.5; the test image is used as it is (256x256, padded inside the backbone).
dataset_type = 'BaseSegDataset'
data_root = 'data/nuclei_demo/'
metainfo = dict(classes=('background', 'nucleus'), palette=[[0, 0, 0], [220, 20, 60]])
crop_size = (224, 224)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PhotoMetricDistortion'),  # brightness and contrast (hue, saturation: no-ops on grey images)
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        data_prefix=dict(img_path='train', seg_map_path='seg_maps/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        data_prefix=dict(img_path='val', seg_map_path='seg_maps/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
