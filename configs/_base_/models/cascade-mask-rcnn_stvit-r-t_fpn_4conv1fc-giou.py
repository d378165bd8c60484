# Cascade Mask R-CNN + FPN with an STViT-R-T backbone and the official STViT-R / Swin detection heads: three
# `ConvFCBBoxHead`s (4 shared convs + 1 fc, SyncBN), GIoU loss x10 on decoded boxes, class-aware regression
# (the `roi_head.bbox_head` list of mmdet's configs/convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_*).
# Defines `model` and `custom_imports` only.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'

custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)


def _bbox_head(target_stds):
    return dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone=dict(
        _delete_=True,
        type='STViTR',
        arch='tiny',  # C=96, depths (2, 2, 6, 2), one dumbbell unit in stage 3
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        _bbox_head([0.1, 0.1, 0.2, 0.2]),
        _bbox_head([0.05, 0.05, 0.1, 0.1]),
        _bbox_head([0.033, 0.033, 0.067, 0.067]),
    ]))
