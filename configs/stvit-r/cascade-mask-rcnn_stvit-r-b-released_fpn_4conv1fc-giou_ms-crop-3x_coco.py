# Evaluation of the RELEASED STViT-R-B Cascade Mask R-CNN 3x (52.2 box / 45.2 mask AP at its best epoch 35, 52.1 /
# 45.2 at epoch 36, in the official log) as released; see cascade-mask-rcnn_stvit-r-s-released_fpn_4conv1fc-giou_
# ms-crop-3x_coco.py for the commands and what is inherited.
_base_ = './cascade-mask-rcnn_stvit-r-b_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

model = dict(backbone=dict(pad_mask='official', init_cfg=None))
