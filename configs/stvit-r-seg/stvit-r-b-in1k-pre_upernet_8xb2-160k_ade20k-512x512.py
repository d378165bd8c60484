# UperNet, STViT-R-B (C=128, three dumbbell units in stage 3), ADE20K 512x512, 160k iterations.
_base_ = './stvit-r-t-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='base'),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
