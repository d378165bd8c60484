# UperNet, STViT-R-S, Cityscapes (19 classes), 512x1024 crops, 80k iterations: mmseg's Cityscapes data pipeline and
# length (configs/upernet/upernet_r50_4xb2-80k_cityscapes-512x1024.py) with the Swin UperNet optimizer.
# Inference on the whole 1024x2048 image (mmseg's default); sliding 512x1024 windows instead:
#   --cfg-options model.test_cfg.mode=slide model.test_cfg.crop_size="(512,1024)" model.test_cfg.stride="(341,683)"
# ImageNet weights: --cfg-options model.backbone.init_cfg.checkpoint=PATH (local file; see README.md).
_base_ = [
    '../_base_/models/upernet_stvit-r-t.py',
    'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py',
    '../_base_/schedules/adamw-poly-80k.py',
]

crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=None)),
    decode_head=dict(num_classes=19),
    auxiliary_head=dict(num_classes=19),
    test_cfg=dict(mode='whole'))

# 4 GPUs x 2 images (the dataset base's batch_size=2). The learning rate stays the Swin UperNet's 6e-5, set there for
# 8 x 2 images, not scaled to this batch of 8: mmseg's own Cityscapes transformer recipes train at 6e-5 with 8 images
# (segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py)
