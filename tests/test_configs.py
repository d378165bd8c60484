"""Every config under configs/ loads with mmengine, builds its model through the mmdet registry, wires the FPN to
the backbone's channels, and names no URL."""
import copy
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import stvit_det  # noqa: F401  (registers STViTR)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
ALL_FILES = sorted(glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True))
LEAVES = sorted(glob.glob(osp.join(CONFIG_DIR, 'stvit-r', '*.py')))
URL = re.compile(r'\b(?:https?|s3|ftp)://|download\.openmmlab|github\.com', re.IGNORECASE)
# every experiment needs these; `_base_` fragments define only some of them (bases by concern)
FULL_KEYS = ('model', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'train_cfg',
             'optim_wrapper', 'param_scheduler', 'default_scope', 'default_hooks')


def _rel(path):
    return osp.relpath(path, ROOT)


@pytest.fixture(scope='module', autouse=True)
def _registry():
    register_all_modules(init_default_scope=True)


def test_config_tree_is_not_empty():
    names = {osp.basename(p) for p in LEAVES}
    for required in ('mask-rcnn_stvit-r-t_fpn_1x_coco.py', 'mask-rcnn_stvit-r-s_fpn_ms-crop-3x_coco.py',
                     'cascade-mask-rcnn_stvit-r-b_fpn_4conv1fc-giou_ms-crop-3x_coco.py',
                     'cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'):
        assert required in names
    assert len(ALL_FILES) > len(LEAVES)  # the _base_ fragments are collected too


@pytest.mark.parametrize('path', ALL_FILES, ids=_rel)
def test_no_url(path):
    with open(path, encoding='utf-8') as f:
        text = f.read()
    assert not URL.search(text), f'{_rel(path)} names a URL: weights must come from a local file'


@pytest.mark.parametrize('path', ALL_FILES, ids=_rel)
def test_config_loads_and_builds(path):
    cfg = Config.fromfile(path)
    if 'model' not in cfg:  # a dataset / schedule fragment: loading it is the test
        assert _rel(path).startswith(osp.join('configs', '_base_'))
        return
    assert cfg.custom_imports == dict(imports=['stvit_det'], allow_failed_imports=False)
    init_cfg = cfg.model.backbone.get('init_cfg')
    assert init_cfg is None or (init_cfg['type'] == 'Pretrained' and not init_cfg.get('checkpoint'))
    model = MODELS.build(copy.deepcopy(cfg.model))
    assert type(model.backbone).__name__ == 'STViTR'
    if 'in_channels' in (cfg.model.get('neck') or {}):  # an FPN reads every output (segmentors: test_segmentation.py)
        assert list(cfg.model.neck.in_channels) == list(model.backbone.num_features)
        assert model.neck.in_channels == list(model.backbone.num_features)


@pytest.mark.parametrize('path', LEAVES, ids=_rel)
def test_leaf_is_a_full_experiment(path):
    cfg = Config.fromfile(path)
    missing = [k for k in FULL_KEYS if k not in cfg]
    assert not missing, f'{_rel(path)} lacks {missing}'
    name = osp.basename(path)
    assert ('_amp-' in name) == (cfg.optim_wrapper.type == 'AmpOptimWrapper')
    if name.endswith('_coco.py'):
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
        assert set(cfg.optim_wrapper.paramwise_cfg.custom_keys) == {
            'absolute_pos_embed', 'relative_position_bias_table', 'norm'}
        assert cfg.auto_scale_lr.base_batch_size == 16
        epochs = 12 if '_1x_' in name else 36
        assert cfg.train_cfg.max_epochs == epochs
        multistep = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
        assert multistep[0].milestones == ([8, 11] if epochs == 12 else [27, 33])
        ms_crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice']
        assert bool(ms_crop) == ('ms-crop' in name)
    arch = re.search(r'stvit-r-([tsb])_', name)
    if arch:
        assert cfg.model.backbone.arch == dict(t='tiny', s='small', b='base')[arch.group(1)]


@pytest.mark.parametrize('arch', ['t', 's', 'b'])
def test_cascade_recipe(arch):
    """Official STViT-R detection recipe (design spec 8.1): 4conv1fc GIoU heads, warm-up 500 iterations."""
    cfg = Config.fromfile(
        osp.join(CONFIG_DIR, 'stvit-r', f'cascade-mask-rcnn_stvit-r-{arch}_fpn_4conv1fc-giou_ms-crop-3x_coco.py'))
    heads = cfg.model.roi_head.bbox_head
    assert len(heads) == 3
    for head in heads:
        assert head.type == 'ConvFCBBoxHead' and head.num_shared_convs == 4 and head.num_shared_fcs == 1
        assert head.reg_decoded_bbox and not head.reg_class_agnostic
        assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
    warmup = cfg.param_scheduler[0]
    assert warmup.type == 'LinearLR' and warmup.end == 500 and warmup.start_factor == 0.001
    assert cfg.model.backbone.drop_path_rate == (0.3 if arch == 'b' else 0.2)


def test_pretrained_backbone_via_cfg_options(tmp_path):
    """The documented way to start a COCO config from ImageNet weights: a local file through --cfg-options."""
    import torch

    from stvit_det import STViTR

    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'stvit-r', 'mask-rcnn_stvit-r-t_fpn_1x_coco.py'))
    with pytest.raises(ValueError, match='checkpoint'):  # no silent training from random weights
        MODELS.build(copy.deepcopy(cfg.model.backbone)).init_weights()

    source = STViTR(arch='tiny')
    source.init_weights()
    path = tmp_path / 'stvit-r-t_in1k.pth'
    try:
        torch.save(source.state_dict(), path)
        cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': str(path)})  # = --cfg-options k=v
        backbone = MODELS.build(copy.deepcopy(cfg.model.backbone))
        backbone.init_weights()
    finally:
        path.unlink()
    for name, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name
