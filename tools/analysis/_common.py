"""Shared by ``get_flops.py`` and ``benchmark.py``: load a config (also ``mmdet::`` paths), build its detector through
the mmdet registry with every ``init_cfg`` removed (nothing is loaded or downloaded), and make a fake predict batch.

No model logic lives here: the networks come from the configs, exactly as ``tools/train.py`` would build them.
"""
import copy
import importlib
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

import stvit_det  # noqa: F401  (registers STViTR)


def resolve_config_path(path: str) -> str:
    """``'mmdet::swin/x.py'`` -> the file inside the installed package's ``.mim/configs``; other paths unchanged."""
    if '::' not in path:
        return path
    package, rel = path.split('::', 1)
    root = osp.join(osp.dirname(importlib.import_module(package).__file__), '.mim', 'configs')
    return osp.join(root, rel)


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    full = resolve_config_path(path)
    if not osp.isfile(full):
        raise SystemExit(f'error: config file not found: {path}')
    cfg = Config.fromfile(full)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg:
        raise SystemExit(f'error: {path} defines no `model` (a _base_ fragment?)')
    return cfg


def _drop_init_cfgs(node) -> None:
    """Set every ``init_cfg`` in a model config to None, in place (no pretrained checkpoint, no URL)."""
    if isinstance(node, dict):
        for key in node:
            if key == 'init_cfg':
                node[key] = None
            else:
                _drop_init_cfgs(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            _drop_init_cfgs(item)


def _zero_score_thresholds(node) -> None:
    """Set every ``score_thr`` in a test_cfg to 0, in place, so that randomly initialised heads keep
    ``max_per_img`` detections: second stages (mask head, mask pasting) then always run at full load."""
    if isinstance(node, dict):
        for key in node:
            if key == 'score_thr':
                node[key] = 0.0
            else:
                _zero_score_thresholds(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            _zero_score_thresholds(item)


def build_detector(cfg: Config, device: str = 'cpu') -> torch.nn.Module:
    """Build ``cfg.model`` (random weights, eval mode, SyncBN reverted to BN as mmengine does without DDP)."""
    register_all_modules(init_default_scope=True)
    model_cfg = copy.deepcopy(cfg.model)
    _drop_init_cfgs(model_cfg)
    if 'test_cfg' in model_cfg:
        _zero_score_thresholds(model_cfg['test_cfg'])
    model = MODELS.build(model_cfg)
    model = revert_sync_batchnorm(model)
    return model.to(device).eval()


def fake_batch(batch_size: int, shape: Sequence[int], device: str = 'cpu') -> Tuple[torch.Tensor, List]:
    """A preprocessed batch: (B, 3, H, W) normal noise and one metainfo-only ``DetDataSample`` per image."""
    h, w = shape
    inputs = torch.randn(batch_size, 3, h, w, device=device)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    samples = [DetDataSample(metainfo=dict(meta, img_id=i)) for i in range(batch_size)]
    return inputs, samples


def short_name(path: str, width: int = 72) -> str:
    name = osp.splitext(osp.basename(path))[0]
    if path.startswith('mmdet::'):
        name = 'mmdet::' + name
    return name if len(name) <= width else name[:width - 3] + '...'


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'  # noqa: E731
    print(line(header))
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    for r in rows:
        print(line(r))
