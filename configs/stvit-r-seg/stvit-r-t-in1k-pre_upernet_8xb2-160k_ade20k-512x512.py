# UperNet, STViT-R-T, ADE20K 512x512, 160k iterations: mmseg's Swin-T UperNet recipe with the backbone swapped
# (mmseg configs/swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py).
# ImageNet weights: --cfg-options model.backbone.init_cfg.checkpoint=PATH (local file; see README.md);
# from scratch: --cfg-options model.backbone.init_cfg=None.
_base_ = [
    '../_base_/models/upernet_stvit-r-t.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/adamw-poly-160k.py',
]

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=None)),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))

# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
