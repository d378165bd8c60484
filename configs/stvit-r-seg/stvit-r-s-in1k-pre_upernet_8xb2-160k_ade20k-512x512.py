# UperNet, STViT-R-S (three dumbbell units in stage 3), ADE20K 512x512, 160k iterations.
_base_ = './stvit-r-t-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='small'))
