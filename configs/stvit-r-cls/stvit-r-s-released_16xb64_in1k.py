# The released STViT-R-Swin-S ImageNet network (changsn/STViT-R, 82.7 top-1 in its README) as released: stage 3 in
# the classification form (fixed-unfold generation, global refinement and recovery; 224x224 inputs). Evaluate the
# official weights after `python tools/convert_ckpt.py --classifier THIS_CONFIG STViT-R-Swin-S.pth OUT.pth` with
# `python tools/test.py THIS_CONFIG OUT.pth`. Training with it trains the released network, not the detection form.
_base_ = './stvit-r-s_16xb64_in1k.py'

model = dict(backbone=dict(stage3_form='classification'))
