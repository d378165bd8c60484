# Mask R-CNN, STViT-R-T with TokenLearner as the sparsifier (per-window TokenLearner v1.1 + TokenFuser in place of
# the generate / recover blocks; refine, local and global unchanged), single-scale 1x. Not evaluated.
_base_ = './mask-rcnn_stvit-r-t_fpn_1x_coco.py'

model = dict(backbone=dict(sparsifier='tokenlearner'))
