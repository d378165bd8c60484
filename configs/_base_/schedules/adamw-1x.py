# 12 epochs, AdamW lr 1e-4 (batch 16), weight decay 0.05 except on parameters whose names hold 'norm' or a position
# table; linear warm-up over 1000 iterations from 0.001, x0.1 at epochs 8 and 11 (mmdet
# configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py). The keys match by name: the conv stem's two BatchNorms
# (patch_embed.proj.{0,2}.bn) and the stage-3 layer scales keep their decay, as in the released STViT-R detection
# recipe (mmdet 2 Swin configs with these three keys); the segmentation schedule (adamw-poly-160k.py) frees the BNs.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1)
]

optim_wrapper = dict(
    type='OptimWrapper',
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),  # matches no STViTR parameter; kept as in Swin's recipe
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }),
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))

# lr 1e-4 is for 8 GPUs x 2 images; `tools/train.py --auto-scale-lr` rescales it to the actual batch
auto_scale_lr = dict(enable=False, base_batch_size=16)
