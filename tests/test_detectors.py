"""Detector smoke tests with STViT-R-T (mmdet ``test_two_stage.py`` style): our Mask R-CNN and Cascade Mask R-CNN
configs, and STViTR swapped into stock mmdet configs of other families, run ``loss`` + backward and ``predict`` on
``demo_mm_inputs`` (2 images of 96x128, with masks) on the CPU."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules

import stvit_det  # noqa: F401  (registers STViTR)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHAPES = [(3, 96, 128), (3, 96, 128)]

# the README recipe "Swap STViT-R into any mmdet config", written as a config file: all four stages for an FPN
# from stride 4 (two-stage detectors); strides 8-32 with `start_level=0` for an FPN from stride 8 (RetinaNet, FCOS:
# `start_level=1` in their configs), as mmdet's configs/swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py does, so that
# no backbone output goes unused (DDP would fail on its parameters).
SWAP_TEMPLATE = """_base_ = '{base}'
custom_imports = dict(imports=['stvit_det'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='STViTR', arch='tiny', out_indices={out_indices}, init_cfg=None),
    neck=dict({neck}))
"""
FPN_FROM_STRIDE_4 = dict(out_indices=(0, 1, 2, 3), neck='in_channels=[96, 192, 384, 768]')
FPN_FROM_STRIDE_8 = dict(out_indices=(1, 2, 3), neck='in_channels=[192, 384, 768], start_level=0, num_outs=5')
STOCK = {
    'retinanet': ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', FPN_FROM_STRIDE_8),
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', FPN_FROM_STRIDE_8),
    'mask_rcnn': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', FPN_FROM_STRIDE_4),
}


@pytest.fixture(scope='module', autouse=True)
def _registry():
    register_all_modules(init_default_scope=True)


def _lighten(node) -> None:
    """Fewer proposals and sampled RoIs (CPU time); the wiring under test is unchanged."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ('rpn', 'rpn_proposal') and 'max_per_img' in value:
                value['max_per_img'] = 100
            elif key == 'sampler' and 'num' in value:
                value['num'] = 64
            else:
                _lighten(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _lighten(item)


def build(cfg: Config) -> torch.nn.Module:
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # random weights (the COCO configs ask for a local ImageNet checkpoint)
    _lighten(model_cfg.get('train_cfg'))
    _lighten(model_cfg.get('test_cfg'))
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def loss_and_predict(model: torch.nn.Module, with_mask: bool) -> None:
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, SHAPES, num_items=[3, 2], num_classes=10, with_mask=with_mask)

    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    assert any('loss_mask' in k for k in losses) == with_mask
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    loss.backward()
    no_grad = [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f'backbone parameters without gradient: {no_grad[:5]}'
    assert all(torch.isfinite(p.grad).all() for p in model.backbone.parameters() if p.grad is not None)

    model.eval()
    data = model.data_preprocessor(packed, False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 2
    for result, shape in zip(results, SHAPES):
        pred = result.pred_instances
        n = len(pred)
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, ) and pred.labels.shape == (n, )
        if with_mask:
            assert pred.masks.shape == (n, *shape[1:])


@pytest.mark.parametrize('config', [
    'mask-rcnn_stvit-r-t_fpn_1x_coco.py',
    'cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py',
])
def test_our_detectors(config):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'stvit-r', config))
    model = build(cfg)
    assert type(model.backbone).__name__ == 'STViTR'
    loss_and_predict(model, with_mask=True)


@pytest.mark.parametrize('family', list(STOCK))
def test_swap_into_stock_config(family, tmp_path):
    path = tmp_path / f'{family}_stvit-r-t.py'
    base, recipe = STOCK[family]
    path.write_text(SWAP_TEMPLATE.format(base=base, **recipe))
    cfg = Config.fromfile(str(path))
    model = build(cfg)
    assert type(model.backbone).__name__ == 'STViTR'
    assert model.neck.in_channels == [model.backbone.num_features[i] for i in model.backbone.out_indices]
    loss_and_predict(model, with_mask=family == 'mask_rcnn')
