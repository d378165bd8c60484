"""Whether the parts after an STViTR backbone read the feature maps it returns, checked on the built model.

The toolboxes build a neck or head for the channels their config states and find a mismatch only in the first
forward: mmdet's ``FPN`` with a bare ``assert len(inputs) == len(self.in_channels)``, a convolution's channel error,
after the Runner, the data and the first batch are up. Swapping STViTR into a stock config (ResNet's
``in_channels=[256, 512, 1024, 2048]``), or returning fewer stages (``out_indices=(1, 2, 3)`` for RetinaNet), makes
that mismatch; :func:`feature_fit_problem` names it, with the setting that fits, before anything runs.

What is read, per toolbox, where the model has these parts:

* a neck with a list ``in_channels`` (mmdet's ``FPN``, ``ChannelMapper``, ``PAFPN``; mmseg's necks): the
  backbone's maps, all of them, in order;
* without a neck, heads with ``in_channels`` and ``in_index`` (mmseg's decode and auxiliary heads): the maps at
  ``in_index`` (their sum for ``input_transform='resize_concat'``, which concatenates them);
* a classifier's head with an integer ``in_channels`` (mmpretrain's ``LinearClsHead`` after
  ``GlobalAveragePooling``, or without a neck): the last map.
"""
from typing import List, Optional, Sequence

import torch.nn as nn


def backbone_widths(backbone: nn.Module) -> Optional[List[int]]:
    """Channels of the maps an STViTR backbone returns, in order (stage order, as its ``forward``); None for any
    other backbone (its outputs are its toolbox's business)."""
    from ..models.backbones.stvit_r import STViTR

    if not isinstance(backbone, STViTR):
        return None
    return [backbone.num_features[i] for i in sorted(backbone.out_indices)]


def _as_list(value) -> Optional[List[int]]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else None


def _ints(value) -> List[int]:
    """An int, or a list / tuple of them, as a list."""
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _head_problem(name: str, head: nn.Module, widths: Sequence[int], backbone: str) -> Optional[str]:
    """An mmseg decode / auxiliary head's ``in_channels`` at its ``in_index`` (int or list)."""
    channels, index = getattr(head, 'in_channels', None), getattr(head, 'in_index', None)
    if channels is None or index is None:
        return None
    indices, wanted = _ints(index), _ints(channels)
    if any(not -len(widths) <= i < len(widths) for i in indices):
        return (f'{name}.in_index={index!r}, but {backbone} returns {len(widths)} maps: set {name}.in_index to '
                f'indices below {len(widths)}')
    got = [widths[i] for i in indices]
    if getattr(head, 'input_transform', None) == 'resize_concat':  # mmseg keeps sum(in_channels): maps concatenated
        if sum(got) != channels:
            return (f"{name}'s in_channels sum to {channels} (input_transform='resize_concat'), but the maps it reads "
                    f'(in_index={index!r}) have {got} channels: {backbone} returns {widths}; so {name}.in_channels='
                    f'{got}')
        return None
    if got != wanted:
        fit = got if isinstance(index, (list, tuple)) else got[0]
        return (f'{name}.in_channels={channels!r} does not fit the maps it reads (in_index={index!r}): {backbone} '
                f'returns {widths} channels there, so {name}.in_channels={fit}')
    return None


def feature_fit_problem(model: nn.Module) -> Optional[str]:
    """Why the neck or heads of ``model`` (built) cannot read the maps of its STViTR backbone, naming the setting
    and the value that fits; None when they can, or when the backbone is not STViTR."""
    backbone = getattr(model, 'backbone', None)
    widths = backbone_widths(backbone) if isinstance(backbone, nn.Module) else None
    if widths is None:
        return None
    source = f'STViTR (out_indices {tuple(sorted(backbone.out_indices))})'
    neck = getattr(model, 'neck', None)
    neck_channels = _as_list(getattr(neck, 'in_channels', None))
    if neck_channels is not None:
        if neck_channels != widths:
            return (f'model.neck.in_channels={neck_channels} does not fit the backbone: {source} returns '
                    f'{len(widths)} maps of {widths} channels; set model.neck.in_channels={widths} (or the '
                    "backbone's out_indices to the stages the neck reads)")
        return None
    if neck is None:  # mmseg: the heads read the backbone's maps themselves
        for name in ('decode_head', 'auxiliary_head'):
            heads = getattr(model, name, None)
            heads = list(heads) if isinstance(heads, nn.ModuleList) else [heads]
            for i, head in enumerate(h for h in heads if isinstance(h, nn.Module)):
                label = f'model.{name}' if len(heads) == 1 else f'model.{name}[{i}]'
                problem = _head_problem(label, head, widths, source)
                if problem:
                    return problem
    head = getattr(model, 'head', None)
    pooled = neck is None or type(neck).__name__ == 'GlobalAveragePooling'
    channels = getattr(head, 'in_channels', None)
    if pooled and isinstance(channels, int) and channels != widths[-1]:  # mmpretrain: the head reads the last map
        return (f'model.head.in_channels={channels} does not fit the backbone: {source} returns {widths[-1]} '
                f'channels in its last map, which the head reads; set model.head.in_channels={widths[-1]}')
    return None
