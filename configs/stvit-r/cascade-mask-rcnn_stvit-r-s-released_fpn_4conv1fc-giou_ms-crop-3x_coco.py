# Evaluation of the RELEASED STViT-R-S Cascade Mask R-CNN 3x (changsn/STViT-R-Object-Detection, trained with
# mmdet 2.11; 51.8 box / 44.7 mask AP on COCO val2017 in its log) as released. Test only: the weights come from the
# converted detector checkpoint, never from an ImageNet file:
#   python tools/convert_ckpt.py --detector THIS_CONFIG RELEASED_S.pth work_dirs/stvit-r-s_released_mmdet3.pth
#   python tools/test.py THIS_CONFIG work_dirs/stvit-r-s_released_mmdet3.pth
# Delta: the released padding mask (design spec 4.1). Everything else the released inference needs is inherited and
# equals the released config (tests/test_released_models.py checks it against values written from it): single
# scale 1333x800 keep-ratio bilinear resize, no flip; RGB mean 123.675/116.28/103.53, std 58.395/57.12/57.375; pad to
# 32 after normalising; COCO's 80 classes in mmdet's order; RPN 1000 proposals (NMS 0.7); score 0.05, NMS 0.5,
# 100 detections, mask threshold 0.5.
_base_ = './cascade-mask-rcnn_stvit-r-s_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

model = dict(backbone=dict(pad_mask='official', init_cfg=None))
