# STViT-R-T on ImageNet-1k, 300 epochs from scratch: the official STViT-R pretraining recipe (changsn/STViT-R
# log/small.txt: AdamW lr 1e-3 at batch 1024, wd 0.05 with none on norms / biases / layer scales, 20 warm-up epochs,
# cosine to 1e-5, gradient clip 5, RandAugment m9 + Mixup 0.8 / CutMix 1.0 + label smoothing 0.1 + random erasing
# 0.25), which is mmpretrain's Swin recipe but for the lr curve (below): the backbone and the scheduler are swapped.
# STViT-R-T is derived here (Swin-T sizes, one dumbbell unit; drop path 0.2). Stage 3 has the detection form (the
# default), so these weights are what the detection configs fine-tune:
# model.backbone.init_cfg=dict(type='Pretrained', checkpoint=work_dirs/.../epoch_300.pth).
_base_ = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'

custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True, type='STViTR', arch='tiny', drop_path_rate=0.2, out_indices=(3, ), init_cfg=None))

# the official lr curve (timm's per-iteration CosineLRScheduler without warm-up prefix): one cosine over all 300
# epochs, the linear warm-up applied on top of it for the first 20 (mmpretrain's Swin base starts its cosine at 20)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=300, convert_to_iter_based=True),
]
