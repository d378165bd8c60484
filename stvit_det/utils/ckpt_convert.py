"""Pure state-dict conversions to the STViT-R parameter layout (the official one, spec section 7).

* :func:`extract_state_dict`: unwrap ``state_dict`` / ``model`` / ``module`` containers and a ``backbone.``
  prefix (detector checkpoints).
* :func:`detect_layout`: which family a state dict belongs to.
* :func:`swin_to_official`: mmdet ``SwinTransformer`` or timm ``swin_*`` keys -> official Swin keys
  (the inverse of mmdet's ``swin_converter``, including its PatchMerging channel permutation; timm keeps each
  PatchMerging at the start of the next stage).
* :func:`swin_to_stvit`: official Swin keys -> STViT-R keys: stage-3 blocks j=1..5 of every dumbbell unit get
  ``attn.q`` = rows [0, C) and ``attn.kv`` = rows [C, 3C) of ``attn.qkv``; their relative-position tables are
  dropped; Swin's patchify stem is dropped when the target has the conv stem (spec 7.3).
* :func:`convert_to_stvit`: all of the above, plus a report of everything that had no counterpart.

Nothing here touches a model or a file: ``STViTR.init_weights`` and ``tools/convert_ckpt.py`` call it.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

LAYOUTS = ('stvit', 'swin_official', 'swin_mmdet', 'swin_timm')

# buffers every model recomputes; never worth a warning when missing or unexpected
IGNORABLE_SUFFIXES = ('relative_position_index', 'attn_mask')


def extract_state_dict(checkpoint: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """Return the backbone state dict inside a checkpoint object.

    Accepts a bare state dict, ``{'state_dict': ...}`` (mmengine), ``{'model': ...}`` (official Swin / STViT-R
    ImageNet releases) or ``{'module': ...}``; a detector checkpoint's ``backbone.`` keys are kept and stripped.

    Raises:
        TypeError: when no mapping of tensors can be found.
    """
    sd = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError('no state dict found in the checkpoint (expected a dict of tensors, or one under '
                        "'state_dict', 'model' or 'module')")
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items())
    if any(k.startswith('backbone.') for k in sd):
        sd = OrderedDict((k[len('backbone.'):], v) for k, v in sd.items() if k.startswith('backbone.'))
    return sd


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """One of :data:`LAYOUTS`.

    Raises:
        ValueError: when the keys match none of them.
    """
    keys = list(sd)
    if any(k.startswith('stages.') for k in keys) or any(k.startswith('patch_embed.projection') for k in keys):
        return 'swin_mmdet'
    if any(re.match(r'layers\.\d+\.blocks\.\d+\.attn\.kv\.weight$', k) for k in keys):
        return 'stvit'
    if any(re.match(r'layers\.\d+\.blocks\.\d+\.attn\.qkv\.weight$', k) for k in keys):
        if any(k.startswith('layers.0.downsample.') for k in keys):
            return 'swin_official'
        if any(re.match(r'layers\.[1-9]\.downsample\.', k) for k in keys) or any(k.startswith('head.fc') for k in keys):
            return 'swin_timm'
        return 'swin_official'  # a single-stage or downsample-free Swin: same names either way
    raise ValueError('unrecognised checkpoint layout: expected STViT-R keys (layers.i.blocks.k.attn.kv), official '
                     'or timm Swin keys (layers.i.blocks.k.attn.qkv) or mmdet Swin keys (stages.i...); first keys: '
                     f'{keys[:5]}')


def _unfold_to_concat_order(x: torch.Tensor) -> torch.Tensor:
    """PatchMerging weights from mmdet's nn.Unfold channel order (c*4 + k) to the official concat order
    (g*C + c, groups (0,0), (1,0), (0,1), (1,1)). 2-D reduction weights act on their input axis."""
    if x.dim() == 1:
        return x.reshape(-1, 4).t()[[0, 2, 1, 3]].reshape(-1)
    out_ch, in_ch = x.shape
    return x.reshape(out_ch, in_ch // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3]].reshape(out_ch, in_ch)


def swin_to_official(sd: Mapping[str, torch.Tensor], layout: str) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """mmdet or timm Swin keys -> official Swin keys. Returns (state dict, dropped keys)."""
    out, dropped = OrderedDict(), []
    for k, v in sd.items():
        nk = k
        if layout == 'swin_mmdet':
            nk = nk.replace('patch_embed.projection.', 'patch_embed.proj.')
            nk = re.sub(r'^stages\.', 'layers.', nk)
            nk = nk.replace('.attn.w_msa.', '.attn.').replace('.ffn.layers.0.0.', '.mlp.fc1.')
            nk = nk.replace('.ffn.layers.1.', '.mlp.fc2.')
            if re.match(r'layers\.\d+\.downsample\.(reduction|norm)\.', nk):
                v = _unfold_to_concat_order(v)
        elif layout == 'swin_timm':
            m = re.match(r'layers\.(\d+)\.downsample\.(.*)$', nk)
            if m:
                nk = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        if nk.startswith('head.') or nk.startswith('norm.') or nk.endswith('attn_mask'):
            dropped.append(k)
            continue
        out[nk] = v
    return out, dropped


def swin_to_stvit(sd: Mapping[str, torch.Tensor],
                  sparse_stage: int = 2,
                  unit: int = 6,
                  keep_patch_stem: bool = False) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """Official Swin keys -> STViT-R keys (spec 7.3). Returns (state dict, dropped keys).

    Args:
        sd: official-layout Swin state dict.
        sparse_stage: index of the sparsified stage (2), or -1 for none (``sparsify=False``).
        unit: dumbbell unit length; block k of the sparse stage with k % unit != 0 becomes a semantic block.
        keep_patch_stem: keep Swin's ``patch_embed.proj`` / ``patch_embed.norm`` (target ``stem='patch'``);
            otherwise they have no counterpart in the conv stem and are dropped.
    """
    out, dropped = OrderedDict(), []
    for k, v in sd.items():
        if k.startswith('patch_embed.') and not keep_patch_stem:
            dropped.append(k)
            continue
        m = re.match(rf'layers\.{sparse_stage}\.blocks\.(\d+)\.attn\.(.*)$', k)
        if m and int(m.group(1)) % unit != 0:
            prefix, name = k[:-len(m.group(2))], m.group(2)
            if name.startswith('qkv.'):
                C = v.shape[0] // 3
                out[prefix + name.replace('qkv.', 'q.')] = v[:C].clone()
                out[prefix + name.replace('qkv.', 'kv.')] = v[C:].clone()
                continue
            if name.startswith('relative_position'):
                dropped.append(k)
                continue
        out[k] = v
    return out, dropped


def convert_to_stvit(checkpoint: Mapping,
                     sparsify: bool = True,
                     patch_stem: bool = False) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, object]]:
    """Any supported checkpoint -> an STViT-R state dict, plus a report.

    Args:
        checkpoint: a loaded checkpoint object (see :func:`extract_state_dict`).
        sparsify: the target model sparsifies stage 3 (qkv -> q/kv split for its semantic blocks).
        patch_stem: the target model uses Swin's patchify stem (``stem='patch'``).

    Returns:
        (state dict, report) with report keys ``layout`` (source layout), ``dropped`` (source keys with no
        counterpart) and ``split_qkv`` (number of qkv tensors split into q / kv).
    """
    sd = extract_state_dict(checkpoint)
    layout = detect_layout(sd)
    report: Dict[str, object] = dict(layout=layout, dropped=[], split_qkv=0)
    if layout == 'stvit':
        return sd, report
    if layout != 'swin_official':
        sd, dropped = swin_to_official(sd, layout)
        report['dropped'] += dropped
    n_before = sum(k.endswith('attn.qkv.weight') for k in sd)
    sd, dropped = swin_to_stvit(sd, sparse_stage=2 if sparsify else -1, keep_patch_stem=patch_stem)
    report['dropped'] += dropped
    report['split_qkv'] = n_before - sum(k.endswith('attn.qkv.weight') for k in sd)
    return sd, report


def filter_ignorable(keys: Sequence[str]) -> List[str]:
    """Keys that are not recomputed buffers (see :data:`IGNORABLE_SUFFIXES`)."""
    return [k for k in keys if not k.endswith(IGNORABLE_SUFFIXES)]
