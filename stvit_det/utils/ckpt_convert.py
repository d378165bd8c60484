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

Whole models (``tools/convert_ckpt.py --detector`` / ``--classifier``):

* :func:`detector_2x_to_3x`: an MMDetection 2.x detector checkpoint (the released STViT-R Cascade Mask R-CNNs,
  mmdet 2.11) -> an MMDetection 3.x state dict and ``meta`` (class names as ``dataset_meta``).
* :func:`imagenet_to_classifier`: an official STViT-R ImageNet checkpoint (backbone keys, ``norm``, ``head``) -> the
  keys of an MMPretrain ``ImageClassifier`` with ``STViTR(out_indices=(3,))``, ``GlobalAveragePooling`` and
  ``LinearClsHead``; :func:`drop_classifier_head` keeps the backbone only.
* :func:`compare_state_dicts` / :func:`describe_mismatch`: missing, unexpected and reshaped tensors against a
  model, and one message that names them.

Nothing here touches a model or a file: ``STViTR.init_weights`` and ``tools/convert_ckpt.py`` call it.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

LAYOUTS = ('stvit', 'swin_official', 'swin_mmdet', 'swin_timm')

# buffers every model recomputes; never worth a warning when missing or unexpected
IGNORABLE_SUFFIXES = ('relative_position_index', 'attn_mask')


def unwrap_state_dict(checkpoint: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """The whole state dict inside a checkpoint object: a bare state dict, or the one under ``state_dict``
    (mmengine / mmcv), ``model`` (official Swin / STViT-R releases) or ``module``; a DDP ``module.`` prefix is
    stripped.

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
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items())


def select_prefix(checkpoint: Mapping, prefix: str, source: str = 'checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """The tensors of ``checkpoint`` under ``prefix`` (e.g. ``'teacher.backbone.'``; a missing final dot is added),
    stripped of it, as mmengine's ``_load_checkpoint_with_prefix`` selects them.

    Raises:
        ValueError: no key starts with ``prefix`` (names the checkpoint's top-level groups).
    """
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    sd = unwrap_state_dict(checkpoint)
    selected = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
    if not selected:
        raise ValueError(f"{source}: no tensor under the init_cfg prefix '{prefix}'; its keys start with "
                         f'{sorted({k.split(".")[0] + "." for k in sd})[:8]}')
    return selected


def outside_backbone(checkpoint: Mapping) -> List[str]:
    """Keys of a whole-model checkpoint (detector, classifier) that are not under ``backbone.``; [] for a
    backbone-only checkpoint."""
    sd = unwrap_state_dict(checkpoint)
    if not any(k.startswith('backbone.') for k in sd):
        return []
    return [k for k in sd if not k.startswith('backbone.')]


def summarise_keys(keys: Sequence[str], depth: int = 1, names_up_to: int = 4) -> str:
    """``'neck (16 tensors), head (head.fc.weight, head.fc.bias)'``: keys grouped by their first ``depth``
    components, named when a group is small."""
    groups: Dict[str, List[str]] = OrderedDict()
    for k in keys:
        groups.setdefault('.'.join(k.split('.')[:depth]), []).append(k)
    return ', '.join(f'{g} ({", ".join(ks)})' if len(ks) <= names_up_to else f'{g} ({len(ks)} tensors)'
                     for g, ks in groups.items())


def extract_state_dict(checkpoint: Mapping) -> 'OrderedDict[str, torch.Tensor]':
    """Return the backbone state dict inside a checkpoint object.

    Accepts a bare state dict, ``{'state_dict': ...}`` (mmengine), ``{'model': ...}`` (official Swin / STViT-R
    ImageNet releases) or ``{'module': ...}``; a detector checkpoint's ``backbone.`` keys are kept and stripped.

    Raises:
        TypeError: when no mapping of tensors can be found.
    """
    sd = unwrap_state_dict(checkpoint)
    if any(k.startswith('backbone.') for k in sd):
        sd = OrderedDict((k[len('backbone.'):], v) for k, v in sd.items() if k.startswith('backbone.'))
    return sd


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """One of :data:`LAYOUTS`.

    Raises:
        ValueError: when the keys match none of them.
    """
    keys = list(sd)
    if 'patch_embed.proj.0.c.weight' in sd:  # STViT-R's conv stem (also on an unsparsified STViTR: qkv only)
        return 'stvit'
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
        if nk.startswith('head.') or nk.endswith('attn_mask'):
            dropped.append(k)
            continue  # (timm's final ``norm`` is the official one: a classifier backbone takes it as norm3)
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


def _unsparsified(sd: Mapping[str, torch.Tensor], unit: int = 6) -> bool:
    """Whether an STViT-R state dict has a plain ``qkv`` where a sparsified stage 3 has a semantic block (weights
    of ``STViTR(sparsify=False)``)."""
    return any(int(m.group(1)) % unit for m in (re.match(r'layers\.2\.blocks\.(\d+)\.attn\.qkv\.weight$', k)
                                                 for k in sd) if m)


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
        counterpart), ``split_qkv`` (number of qkv tensors split into q / kv) and ``outside_backbone`` (keys of a
        whole-model checkpoint that are not the backbone's: neck and heads of a detector, ``head.fc`` of a
        classifier).
    """
    sd = extract_state_dict(checkpoint)
    layout = detect_layout(sd)
    report: Dict[str, object] = dict(layout=layout, dropped=[], split_qkv=0,
                                     outside_backbone=outside_backbone(checkpoint))
    if layout == 'stvit' and not (sparsify and _unsparsified(sd)):
        return sd, report
    if layout not in ('stvit', 'swin_official'):
        sd, dropped = swin_to_official(sd, layout)
        report['dropped'] += dropped
    n_before = sum(k.endswith('attn.qkv.weight') for k in sd)
    # (an unsparsified STViT-R keeps its conv stem: only its stage-3 qkv is split for the semantic blocks)
    sd, dropped = swin_to_stvit(sd, sparse_stage=2 if sparsify else -1,
                                keep_patch_stem=patch_stem or layout == 'stvit')
    report['dropped'] += dropped
    report['split_qkv'] = n_before - sum(k.endswith('attn.qkv.weight') for k in sd)
    return sd, report


def filter_ignorable(keys: Sequence[str]) -> List[str]:
    """Keys that are not recomputed buffers (see :data:`IGNORABLE_SUFFIXES`)."""
    return [k for k in keys if not k.endswith(IGNORABLE_SUFFIXES)]


# ------------------------------------------------------------------------------------------------ whole models
#: MMDetection 2.11 -> 3.3 key renames for the released STViT-R Cascade Mask R-CNN: none. Checked module by
#: module against mmdet 2.11's classes (changsn/STViT-R-Object-Detection ``mmdet/models``): FPN
#: ``lateral_convs/fpn_convs.{i}.conv``, RPNHead ``rpn_conv/rpn_cls/rpn_reg``, ConvFCBBoxHead
#: ``shared_convs.{i}.{conv,bn}``, ``shared_fcs.0``, ``fc_cls`` (81 outputs), ``fc_reg`` (320, class-aware),
#: FCNMaskHead ``convs.{i}.conv``, ``upsample``, ``conv_logits`` (80), three of each under ``roi_head.*.{0,1,2}``;
#: mmdet 3.3 names them identically (``tests/test_released_models.py`` loads the full layout 0/0). A rename, if
#: ever needed, is one (regex, replacement) pair here.
DETECTOR_2X_TO_3X_RENAMES: Tuple[Tuple[str, str], ...] = ()


def detector_2x_to_3x(checkpoint: Mapping) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, object]]:
    """An MMDetection 2.x detector checkpoint -> (MMDetection 3.x state dict, meta).

    Args:
        checkpoint: the loaded 2.x checkpoint: ``{'state_dict': ..., 'meta': {'CLASSES': ..., 'mmdet_version':
            ...}, 'optimizer': ...}`` (the optimizer state is dropped).

    Returns:
        (state dict with :data:`DETECTOR_2X_TO_3X_RENAMES` applied, meta): meta holds ``dataset_meta.classes``
        (from the 2.x ``CLASSES``, or a 3.x checkpoint's ``dataset_meta`` as it is, when present) and
        ``converted_from`` (the 2.x versions).

    Raises:
        TypeError: no state dict; ValueError: no ``backbone.`` keys (not a detector checkpoint).
    """
    sd = unwrap_state_dict(checkpoint)
    if not any(k.startswith('backbone.') for k in sd):
        raise ValueError('not a detector checkpoint: no backbone.* tensors (first keys: '
                         f'{", ".join(list(sd)[:4])})')
    out = OrderedDict()
    for k, v in sd.items():
        for pattern, repl in DETECTOR_2X_TO_3X_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    old_meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    old_meta = old_meta if isinstance(old_meta, Mapping) else {}
    meta: Dict[str, object] = dict(converted_from={k: old_meta[k] for k in ('mmdet_version', 'mmcv_version',
                                                                            'epoch') if k in old_meta})
    if old_meta.get('CLASSES') is not None:
        meta['dataset_meta'] = dict(classes=tuple(old_meta['CLASSES']))
    elif isinstance(old_meta.get('dataset_meta'), Mapping):  # already mmdet 3.x: its dataset meta is kept whole
        meta['dataset_meta'] = dict(old_meta['dataset_meta'])
    return out, meta


def imagenet_to_classifier(checkpoint: Mapping,
                           need_head: bool = True) -> Tuple['OrderedDict[str, torch.Tensor]', Dict[str, object]]:
    """An official STViT-R ImageNet checkpoint -> the state dict of an MMPretrain ``ImageClassifier`` (STViTR
    backbone with ``out_indices=(3,)``, ``GlobalAveragePooling``, ``LinearClsHead``).

    ``patch_embed.* / layers.*`` -> ``backbone.*``; the final LayerNorm ``norm.*`` -> ``backbone.norm3.*`` (the
    norm of the last stage output, which the classifier pools); ``head.*`` -> ``head.fc.*``; the recomputed
    ``attn_mask`` buffers are dropped. A checkpoint that is already in classifier layout (``backbone.*``,
    ``head.fc.*``, e.g. trained with ``configs/stvit-r-cls``) is returned unchanged; without ``need_head`` (the
    head is dropped anyway) also one without ``head.fc.*`` (what ``--drop-head`` wrote).

    Returns:
        (state dict, report) with ``layout`` (``'official'`` or ``'classifier'``) and ``dropped`` keys.

    Raises:
        TypeError: no state dict; ValueError: not an STViT-R classification checkpoint.
    """
    sd = unwrap_state_dict(checkpoint)
    if any(k.startswith('backbone.') for k in sd):
        if need_head and not any(k.startswith('head.fc.') for k in sd):
            raise ValueError('a checkpoint with backbone.* keys but no head.fc.*: a detector or a backbone, not an '
                             'ImageNet classifier (a detector: tools/convert_ckpt.py --detector)')
        return sd, dict(layout='classifier', dropped=[])
    if detect_layout(sd) != 'stvit':
        raise ValueError(f'not an STViT-R ImageNet checkpoint: {detect_layout(sd)} layout (Swin weights can '
                         'initialise the backbone through init_cfg, not a whole classifier)')
    out, dropped = OrderedDict(), []
    for k, v in sd.items():
        if k.endswith('attn_mask'):  # Swin's shift masks, recomputed (relative_position_index buffers are kept)
            dropped.append(k)
        elif k.startswith('norm.'):
            out['backbone.norm3.' + k[len('norm.'):]] = v
        elif k.startswith('head.'):
            out['head.fc.' + k[len('head.'):]] = v
        else:
            out['backbone.' + k] = v
    return out, dict(layout='official', dropped=dropped)


def classifier_num_classes(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Classes of a classifier state dict (rows of ``head.fc.weight``), None without a head."""
    w = sd.get('head.fc.weight')
    return None if w is None else int(w.shape[0])


def drop_classifier_head(sd: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict without its ``head.*`` tensors (fine-tuning on another label set)."""
    return OrderedDict((k, v) for k, v in sd.items() if not k.startswith('head.'))


def compare_state_dicts(sd: Mapping[str, torch.Tensor],
                        own: Mapping[str, Sequence[int]]) -> Dict[str, list]:
    """What loading ``sd`` into a model with tensors ``own`` (name -> shape) would leave out.

    Returns:
        ``missing`` (model keys absent from sd), ``unexpected`` (sd keys the model lacks) and ``mismatched``
        ((key, sd shape, model shape) for shared keys of other shapes); recomputed buffers
        (:data:`IGNORABLE_SUFFIXES`) are left out.
    """
    missing = filter_ignorable([k for k in own if k not in sd])
    unexpected = filter_ignorable([k for k in sd if k not in own])
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k])) for k in sd
                  if k in own and tuple(sd[k].shape) != tuple(own[k])]
    return dict(missing=missing, unexpected=unexpected, mismatched=mismatched)


def describe_mismatch(report: Mapping[str, list], names_up_to: int = 6) -> str:
    """One message naming the tensors of a :func:`compare_state_dicts` report ('' when everything fits)."""
    parts = []
    if report['mismatched']:
        shown = '; '.join(f'{k} {s} vs {o}' for k, s, o in report['mismatched'][:names_up_to])
        parts.append(f'{len(report["mismatched"])} tensors have other shapes than the config\'s model (checkpoint '
                     f'vs model; another arch or another number of classes?): {shown}')
    for name, what in (('missing', 'model tensors are not in the checkpoint (another model type?)'),
                       ('unexpected', 'checkpoint tensors have no place in the model')):
        keys = report[name]
        if keys:
            parts.append(f'{len(keys)} {what}: {summarise_keys(keys, depth=3)}; e.g. {", ".join(keys[:names_up_to])}')
    return '. '.join(parts)
