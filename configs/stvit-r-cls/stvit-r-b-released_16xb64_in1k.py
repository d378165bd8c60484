# The released STViT-R-Swin-B ImageNet network (changsn/STViT-R, 83.2 top-1 in its README) as released; see
# stvit-r-s-released_16xb64_in1k.py.
_base_ = './stvit-r-b_16xb64_in1k.py'

model = dict(backbone=dict(stage3_form='classification'))
