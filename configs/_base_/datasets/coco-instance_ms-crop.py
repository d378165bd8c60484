# COCO instance segmentation with the DETR / Swin multi-scale + crop training augmentation: flip 0.5, then either
# resize the short side to 480..800 (step 32, long side <= 1333) or resize to 400/500/600 -> absolute-range crop
# 384..600 -> resize as before. Test: mmdet's single-scale 1333x800. Padding to 32 is the data preprocessor's.
# Train pipeline as in mmdet configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                            (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)],
                    keep_ratio=True)
            ],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(
                    type='RandomChoiceResize',
                    scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                            (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)],
                    keep_ratio=True)
            ],
        ]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
