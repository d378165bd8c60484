"""Shared by ``get_flops.py`` and ``benchmark.py``: load a config (also ``mmdet::`` / ``mmseg::`` paths), build its
model through the registry of the config's toolbox (``default_scope``: mmdet detectors, mmseg segmentors) with every
``init_cfg`` removed (nothing is loaded or downloaded), and make a fake predict batch of that toolbox's samples.

    cfg = load_config(path); model = build_model(cfg); inputs, samples = fake_batch(2, (512, 512), scope=...)

A config argument may carry its own overrides after ``@`` (on top of ``--cfg-options``, which apply to every config),
so that variants of one config are measured side by side in one run::

    configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py@model.backbone.attn_impl=flex

``build_detector`` is ``build_model`` (its old name); ``fake_batch`` without ``scope`` uses the scope of the model
built last (mmengine's current default scope), so a build-then-batch caller works for every toolbox unchanged.
No model logic lives here: the networks come from the configs, exactly as ``tools/train.py`` would build them.
"""
import copy
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope

import stvit_det  # noqa: F401  (registers STViTR)
from stvit_det.toolboxes.scope import (DEFAULT_SCOPE, ConfigError, apply_cfg_options, build_bare_model,
                                       parse_cfg_option, resolve_config_path)
from stvit_det.toolboxes.scope import load_config as _load_toolbox_config


def split_overrides(spec: str) -> Tuple[str, dict]:
    """``'path.py@a.b=1@c=x'`` -> ``('path.py', {'a.b': 1, 'c': 'x'})`` (values parsed as ``--cfg-options``)."""
    path, *items = spec.split('@')
    overrides = {}
    for item in items:
        try:
            key, value = parse_cfg_option(item)
        except ValueError as e:
            raise SystemExit(f"error: '{spec}': an override after '@' {e}") from None
        overrides[key] = value
    return path, overrides


def load_config(spec: str, cfg_options: Optional[dict] = None) -> Config:
    """Load ``spec`` (a path, ``mmdet::`` / ``mmseg::`` path, optionally with ``@key=value`` overrides), then
    ``cfg_options``, then the spec's own overrides. One ``error:`` line for a config that is missing, does not
    execute or defines no model, for options that cannot be merged, and for options whose first key the config does
    not have (``modle.backbone.embed_dims=64`` would be merged in as a new setting that nothing reads, and the
    table would show the unchanged model under the override's name)."""
    path, overrides = split_overrides(spec)
    try:
        if not osp.isfile(resolve_config_path(path)):
            raise SystemExit(f'error: config file not found: {path}')
        cfg = _load_toolbox_config(path, None, need_model=True)
        for source, options in (('--cfg-options', cfg_options), (f"the overrides after '@' in {spec}:", overrides)):
            new = sorted({key.split('.', 1)[0] for key in options or {}} - set(cfg.keys()))
            if new:  # merging would add it, and nothing these tools build would read it: a typo
                raise SystemExit(f"error: {source} set {', '.join(repr(k) for k in new)}, which {path} does not "
                                 'have: a typo? (these tools read the model settings, under model.)')
            apply_cfg_options(cfg, options, source=source)
        return cfg
    except ConfigError as e:
        raise SystemExit(f'error: {e}') from None


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


def build_model(cfg: Config, device: str = 'cpu', whole: bool = True) -> torch.nn.Module:
    """Build ``cfg.model`` through the registry of the config's toolbox (random weights, eval mode, SyncBN reverted
    to BN as mmengine does without DDP). Leaves the config's scope as mmengine's default scope. With ``whole``
    (the caller runs more than the backbone), a neck or head that cannot read the backbone's maps is refused
    (``ValueError``, see ``stvit_det.toolboxes.feature_fit``)."""
    model_cfg = copy.deepcopy(cfg.model)
    if 'test_cfg' in model_cfg:
        _zero_score_thresholds(model_cfg['test_cfg'])
    model = revert_sync_batchnorm(build_bare_model(cfg, model_cfg, meta=device == 'meta', check_fit=whole))
    return model.to(device).eval()


build_detector = build_model  # the name benchmark.py imports


def fake_batch(batch_size: int, shape: Sequence[int], device: str = 'cpu',
               scope: Optional[str] = None) -> Tuple[torch.Tensor, List]:
    """A preprocessed batch: (B, 3, H, W) normal noise and one metainfo-only data sample per image, of the toolbox of
    ``scope`` (``DetDataSample`` for mmdet, ``SegDataSample`` for mmseg; default: the current default scope, i.e.
    that of the model built last by :func:`build_model`)."""
    if scope is None:
        current = DefaultScope.get_current_instance()
        scope = current.scope_name if current is not None else DEFAULT_SCOPE
    h, w = shape
    inputs = torch.randn(batch_size, 3, h, w, device=device)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample

        meta['padding_size'] = [0, 0, 0, 0]  # left, right, top, bottom: nothing padded
        return inputs, [SegDataSample(metainfo=dict(meta)) for _ in range(batch_size)]
    if scope == 'mmpretrain':
        from mmpretrain.structures import DataSample

        return inputs, [DataSample(metainfo=dict(meta)) for _ in range(batch_size)]
    if scope != 'mmdet':
        raise ValueError(f"fake_batch: no sample type for scope '{scope}' (mmdet, mmseg or mmpretrain)")
    from mmdet.structures import DetDataSample

    samples = [DetDataSample(metainfo=dict(meta, img_id=i)) for i in range(batch_size)]
    return inputs, samples


def short_name(spec: str, width: int = 72) -> str:
    path, _ = split_overrides(spec)
    name = osp.splitext(osp.basename(path))[0]
    if '::' in path:  # a toolbox's own config: mmdet::..., mmseg::...
        name = path.split('::', 1)[0] + '::' + name
    name = name if len(name) <= width else name[:width - 3] + '...'
    for item in spec.split('@')[1:]:  # the overrides as written, without their dotted prefixes: name@attn_impl=flex
        key, _, value = item.partition('=')
        name += f"@{key.rsplit('.', 1)[-1]}={value}"
    return name


def uses_flex_attention(model: torch.nn.Module) -> bool:
    """True if any sub-module runs ``attn_impl='flex'`` (PyTorch's FlexAttention cannot run under the counting and
    memory-tracking dispatch modes of these tools)."""
    return any(getattr(m, 'attn_impl', None) == 'flex' for m in model.modules())


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'  # noqa: E731
    print(line(header))
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    for r in rows:
        print(line(r))
