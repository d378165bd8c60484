"""Read a checkpoint file, and check it against a config before a tool runs, each with one clear error.

Used by ``tools/convert_ckpt.py``, ``tools/test.py`` and ``tools/train.py`` (fine-tuning with ``load_from``).
The conversions themselves are the pure functions of :mod:`stvit_det.utils.ckpt_convert`.
"""
import os
import pickle
import re
import warnings
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..datasets.coco_check import config_classes, folder_classes
from .checkpoint_safety import allow_checkpoint_globals
from .ckpt_convert import (classifier_num_classes, compare_state_dicts, describe_mismatch, detect_layout,
                           unwrap_state_dict)
from .errors import error_summary
from .paths import is_download_url, is_remote
from .values import is_int, model_config, type_name


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def _unreadable_reason(path: str, exc: Exception) -> str:
    """What is wrong with a file ``torch.load`` failed on, in words: torch's own message is ``EOFError`` for an
    empty file and ``KeyError: 101`` (a byte of it) for a text file."""
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:  # gone or locked since torch.load looked
        return error_summary(exc)
    if not head:
        return 'the file is empty'
    if head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < 2**32:  # safetensors: header length, JSON
        return f'a safetensors file torch cannot read (truncated or damaged?): {error_summary(exc)}'
    if not head.startswith((b'PK', b'\x80')):  # neither a zip archive (torch.save) nor a pickle (legacy torch.save)
        try:
            head.decode('utf-8')
        except UnicodeDecodeError:
            return 'neither a zip archive nor a pickle, not a PyTorch checkpoint'
        return 'a text file, not a PyTorch checkpoint'
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return 'the file ends early' if isinstance(exc, EOFError) else type(exc).__name__
    first = lines[0]
    if 'Weights only load failed' in first:  # torch's advice blurb: the unpickler's own reason is further on
        first = next((line for line in lines if line.startswith('Unsupported')), 'not a pickle of tensors')
    return f'{type(exc).__name__}: {first}'


def _weights_only_refusal(exc: Exception) -> Optional[str]:
    """The weights-only unpickler's reason for refusing a readable file (``Unsupported global: GLOBAL x.y``, or
    ``... but got <class 'numpy.dtypes.Complex64DType'>``), or None when ``exc`` is not such a refusal."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    which = next((line for line in lines if 'Unsupported global' in line), None)
    if which is None and 'Weights only load failed' in str(exc):
        got = next((line for line in lines if 'but got' in line), None)
        which = f'it holds {got.split("but got", 1)[1].strip()}' if got else None
    return which


def read_checkpoint(path: str, mmap: bool = False) -> Mapping:
    """``torch.load(path, weights_only=True)`` with one clear error for a missing, truncated or non-checkpoint file
    (torch also reads a safetensors file, as its flat dict of tensors).

    Args:
        path: a local ``.pth`` file.
        mmap: map the tensors instead of reading them (fast look-ups in large files).

    Raises:
        CheckpointError: the file is missing or a directory, unreadable (empty, truncated, not a PyTorch file),
            refused by the weights-only unpickler, or holds no state dict.
    """
    path = os.path.expanduser(path)
    if is_download_url(path):  # a checkpoint argument, a config's load_from: as for init_cfg, nothing is fetched
        raise CheckpointError(f'{path}: a download URL, not a checkpoint file: weights are read from a local file, '
                              'never downloaded at run time; download it once and give its path')
    if os.path.isdir(path):
        raise CheckpointError(f'{path}: a directory, not a checkpoint file')
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    allow_checkpoint_globals()
    # torch warns of a pickle protocol it may not read, before it fails on a plain pickle: silenced, so that our
    # one-line error is all the user sees (a file it does read needs no such warning); other warnings as usual
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Detected pickle protocol', category=UserWarning)
        try:
            try:
                ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if not (mmap and 'mmap' in str(e)):
                    raise
                ckpt = torch.load(path, map_location='cpu', weights_only=True)  # a legacy (non-zip) file: read it all
        except Exception as e:  # noqa: BLE001 - torch raises many kinds (RuntimeError, UnpicklingError, IndexError...)
            if isinstance(e, PermissionError):  # not any OSError: a truncated zip is one too ("Invalid argument")
                raise CheckpointError(f'{path}: cannot read the file: {e.strerror or e}') from None
            refusal = _weights_only_refusal(e)
            if refusal:
                raise CheckpointError(f'{path}: refused by the weights-only unpickler (it stores objects other than '
                                      f'tensors and plain containers): {refusal}; if the file is trusted, re-save '
                                      'its weights alone (torch.load with weights_only=False, then torch.save of '
                                      'the state dict)') from None
            raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or another kind of file): '
                                  f'{_unreadable_reason(path, e)}') from None
    try:
        unwrap_state_dict(ckpt)
    except TypeError as e:
        raise CheckpointError(f'{path}: {e}') from None
    return ckpt


def runner_state_dict(checkpoint: Mapping, source: str) -> Dict[str, torch.Tensor]:
    """The tensors MMEngine's Runner will load from ``checkpoint`` (``load_from``, ``tools/test.py``): the mapping
    under ``state_dict``, else the whole object (``mmengine.runner.checkpoint._load_checkpoint_to_model``), with
    its default ``module.`` prefix stripped.

    Raises:
        CheckpointError: the weights sit where the Runner does not look (under ``model`` / ``module``, the
            official releases' layout): it would load nothing, log the misfit and go on with random weights.
    """
    sd = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    if not any(isinstance(v, torch.Tensor) for v in sd.values()):
        key = next((k for k in ('model', 'module') if isinstance(sd.get(k), Mapping)), None)
        where = f"under '{key}'" if key else 'not at the top level or under \'state_dict\''
        raise CheckpointError(f"{source} holds its weights {where}, where MMEngine's Runner (load_from, test.py) "
                              "does not look (it reads 'state_dict' or the top level): re-save them as "
                              f"{{'state_dict': ckpt['{key or 'KEY'}']}}, or convert an official release with "
                              'tools/convert_ckpt.py')
    return {k[7:] if k.startswith('module.') else k: v for k, v in sd.items()}


def head_classes_error(model_cfg: Mapping, checkpoint: Mapping, source: str) -> Optional[str]:
    """Why a classifier checkpoint's head does not fit ``model_cfg.head`` (None when it fits or nothing applies).

    Applies to configs whose model has a ``head`` with ``num_classes`` (an MMPretrain classifier) and checkpoints
    with a ``head.fc.weight``.
    """
    head = model_cfg.get('head') if isinstance(model_cfg, Mapping) else None
    if not isinstance(head, Mapping) or head.get('num_classes') is None:
        return None
    found = classifier_num_classes(unwrap_state_dict(checkpoint))
    if found is None or found == head['num_classes']:
        return None
    return (f'{source}: the checkpoint\'s classifier head has {found} classes (head.fc.weight), the config\'s '
            f'model.head.num_classes is {head["num_classes"]}. To fine-tune on the new classes, drop the head: '
            f'python tools/convert_ckpt.py --classifier CONFIG --drop-head {source} OUT.pth (the head then starts '
            f'from its initialisation), or load only the backbone with '
            f'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint=\'{source}\'); to evaluate the '
            f'checkpoint as it is, set model.head.num_classes={found}.')


def dataset_classes(cfg: Mapping) -> Optional[Tuple[str, ...]]:
    """Class names of the config's test dataset (:func:`~stvit_det.datasets.coco_check.config_classes`; for an
    MMPretrain folder dataset that names none, its sorted subfolders; None if unknown, or for several datasets)."""
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    while 'dataset' in dataset:  # wrappers
        dataset = dataset['dataset']
    if 'datasets' in dataset:  # several datasets: no single class list
        return None
    classes = config_classes(dataset, cfg.get('default_scope'))
    if classes is None and cfg.get('default_scope') == 'mmpretrain':
        classes = folder_classes(dataset)
    return classes


def class_order_error(cfg: Mapping, checkpoint: Mapping, source: str) -> Optional[str]:
    """Why a checkpoint's class names (mmengine's ``meta.dataset_meta.classes``, or MMDetection 2.x's
    ``meta.CLASSES``) are not the config's test classes in the same order (None when they are, or either is
    unknown): its outputs would be scored under other class names."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    dataset_meta = meta.get('dataset_meta')
    theirs = dataset_meta.get('classes') if isinstance(dataset_meta, Mapping) else None
    theirs = meta.get('CLASSES') if theirs is None else theirs
    ours = dataset_classes(cfg)
    if theirs is None or ours is None or tuple(theirs) == ours:
        return None
    diff = [f'{i}: {a!r} vs {b!r}' for i, (a, b) in enumerate(zip(theirs, ours)) if a != b][:5]
    return (f'{source}: its {len(theirs)} classes are not the config\'s {len(ours)} classes in the same order '
            f'(checkpoint vs config: {", ".join(diff) or "different lengths"})')


def _bare(cfg: Mapping, model_cfg: Optional[Mapping] = None):
    """``cfg.model`` (or ``model_cfg``) built on the meta device (no memory, no initialisation, nothing loaded; on
    the CPU for a model whose construction reads tensor values) through the registry of the config's toolbox."""
    from ..toolboxes.scope import build_bare_model

    try:
        return build_bare_model(cfg, model_cfg, meta=True)
    except (RuntimeError, NotImplementedError):  # a module that reads tensor values while it is built (.item())
        return build_bare_model(cfg, model_cfg)


def model_tensor_shapes(cfg: Mapping) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of ``cfg.model`` (built by :func:`_bare`) as the Runner loads
    a checkpoint into it: into the wrapped model of a test-time-augmentation wrapper (``test.py --tta``), as
    MMEngine does. As the bare build drops every ``init_cfg``, an STViTR backbone's is checked first
    (:func:`check_backbone_init_cfg`): the Runner builds the model with it."""
    from mmengine.model import BaseTTAModel

    check_backbone_init_cfg(cfg)
    model = _bare(cfg)
    if isinstance(model, BaseTTAModel):
        model = model.module
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


NO_CHECKPOINT = ("model.backbone.init_cfg is type='Pretrained' without a checkpoint path: give the weights with "
                 '--cfg-options model.backbone.init_cfg.checkpoint=PATH, or train from scratch with '
                 'model.backbone.init_cfg=None')


def pretrained_init(init_cfg) -> Optional[Mapping]:
    """The ``type='Pretrained'`` entry of an ``init_cfg`` (one dict or a list of them), or None."""
    entries = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return next((c for c in entries if isinstance(c, Mapping) and c.get('type') == 'Pretrained'), None)


def init_cfg_problem(init_cfg) -> Optional[str]:
    """Why STViTR refuses ``init_cfg`` (None when it takes it): None or one ``Pretrained`` dict only, as it
    initialises itself and would ignore any other initialiser. One rule for its constructor and the tools' early
    check."""
    if init_cfg is None:
        return None
    one = not isinstance(init_cfg, (list, tuple)) or len(init_cfg) == 1
    pretrained = pretrained_init(init_cfg) if one else None
    if not pretrained:
        return ("STViTR's init_cfg is None or one dict(type='Pretrained', checkpoint=PATH) (its own init is "
                f'trunc-normal; another initialiser would be ignored), got {init_cfg!r}')
    path = pretrained.get('checkpoint')
    if is_download_url(path):
        return (f"STViTR's init_cfg checkpoint '{path}' is a download URL: weights are read from a local file "
                '(or a storage backend such as s3://), never downloaded at run time; download it once and give '
                'its path')
    return None


def _stvit_backbone(cfg: Mapping) -> Optional[Mapping]:
    """The config's ``model.backbone`` when it is an STViTR, else None."""
    backbone_cfg = model_config(cfg).get('backbone')
    if not isinstance(backbone_cfg, Mapping) or type_name(backbone_cfg.get('type')) != 'STViTR':
        return None
    return backbone_cfg


def check_backbone_init_cfg(cfg: Mapping) -> None:
    """Refuse, as STViTR's constructor does and in its words, an STViTR backbone's ``init_cfg`` that is neither None
    nor one ``Pretrained`` dict. The early model builds drop every ``init_cfg`` (no file read), so without this the
    Runner would be the first to see it, with a traceback. The usual cause: ``--cfg-options
    "model.backbone.init_cfg={...}"``, which mmengine's DictAction splits at its commas into a list of strings.

    Raises:
        CheckpointError
    """
    backbone_cfg = _stvit_backbone(cfg)
    init_cfg = None if backbone_cfg is None else backbone_cfg.get('init_cfg')
    problem = init_cfg_problem(init_cfg)
    if not problem:
        return
    hint = ''
    if isinstance(init_cfg, (list, tuple)) and all(isinstance(c, str) for c in init_cfg):
        hint = ('; --cfg-options splits a {...} value at its commas: give the keys one by one, '
                'model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint=PATH')
    raise CheckpointError(f'model.backbone.init_cfg: {problem}{hint}')


def check_backbone_init_checkpoint(cfg: Mapping) -> Optional[Dict[str, list]]:
    """Fail early, with one message, on the file of an STViTR backbone's ``init_cfg=dict(type='Pretrained',
    checkpoint=PATH)`` (ImageNet or detector weights to fine-tune from) that cannot be read or does not fit the
    backbone: the same conversion and checks as loading it (:meth:`STViTR.check_pretrained`), on a bare backbone,
    before the Runner builds anything; an ``init_cfg`` of another form is refused (:func:`check_backbone_init_cfg`).
    Other backbones, remote paths and configs without such a file: None.

    Returns:
        the load report (``missing``, ``unexpected``, ...) or None.

    Raises:
        CheckpointError
    """
    check_backbone_init_cfg(cfg)
    backbone_cfg = _stvit_backbone(cfg)
    if backbone_cfg is None:
        return None
    init = pretrained_init(backbone_cfg.get('init_cfg'))
    if init is None:
        return None
    path = init.get('checkpoint')
    if not path:
        raise CheckpointError(NO_CHECKPOINT)
    if is_remote(path):
        return None
    ckpt = read_checkpoint(str(path), mmap=True)
    try:
        _, report = _bare(cfg, backbone_cfg).check_pretrained(ckpt, source=str(path), prefix=init.get('prefix'))
    except (ValueError, TypeError) as e:  # another arch; an unrecognised layout; a prefix no key has
        raise CheckpointError(f'model.backbone.init_cfg: {e}') from None
    return report


def layout_hint(sd: Mapping[str, torch.Tensor], own: Mapping[str, Tuple[int, ...]], source: str,
                config: str = 'CONFIG') -> str:
    """How to use a checkpoint that is only a backbone (official ImageNet, Swin, STViT-R) with a whole-model config
    ('' when it is not that case)."""
    if not any(k.startswith('backbone.') for k in own) or any(k.startswith('backbone.') for k in sd):
        return ''
    try:
        layout = detect_layout(sd)
    except ValueError:
        return ''
    if layout == 'stvit' and 'head.weight' in sd and any(k.startswith('head.') for k in own):
        return (f'{source} is an official STViT-R ImageNet checkpoint (backbone keys, norm, head), not in this '
                f'classifier\'s layout: convert it first, python tools/convert_ckpt.py --classifier {config} {source} '
                'OUT.pth')
    return (f'{source} holds a backbone only ({layout} layout), not a whole model: load it into the backbone with '
            f'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint=\'{source}\') (converted on the fly), or '
            'convert a whole released model with tools/convert_ckpt.py --detector / --classifier')


def check_checkpoint_for_config(cfg: Mapping, path: str, strict: bool = True,
                                shapes: Optional[Mapping[str, Tuple[int, ...]]] = None,
                                resume: bool = False) -> Dict[str, list]:
    """Fail early, with one message, on a checkpoint that cannot be read or does not fit the config's model, where
    mmengine would only log the misfits and go on with random tensors.

    Args:
        cfg: the loaded config.
        path: the checkpoint file.
        strict: ``tools/test.py``: every tensor of the model must be in the checkpoint with its shape, and nothing
            else, and the classes it was trained on (when it names them) must be the test dataset's, in order.
            Otherwise (``tools/train.py`` with ``load_from``: fine-tuning, where heads for other classes do
            not fit and are left at their initialisation): refused are a classifier head of another size (see
            :func:`head_classes_error`), a backbone-only or unconverted checkpoint, a backbone tensor of another
            shape, backbone tensors the model has no place for (a deeper arch), backbone blocks of which it holds no
            tensor (a shallower arch), a checkpoint that holds less than
            half of the backbone (another backbone type), and one of which nothing fits. (A classifier's checkpoint
            lacks the detection backbone's norms 0-2: accepted.)
        shapes: :func:`model_tensor_shapes` of the config, when the caller has them.
        resume: ``tools/train.py --resume``: the file must also be a checkpoint of a training run (mmengine's
            ``meta`` with ``epoch`` and ``iter``, and the ``message_hub`` that ``Runner.resume`` reads), not weights
            alone, a published model (``state_dict`` and ``meta`` only) or a converted file.

    Returns:
        the :func:`~stvit_det.utils.ckpt_convert.compare_state_dicts` report (``missing``, ``unexpected``,
        ``mismatched``); with ``resume``, also ``not_resumed``: the training states the Runner would start afresh
        because the file lacks them (``optimizer``; ``param_schedulers`` where the config has schedulers).

    Raises:
        CheckpointError
    """
    ckpt = read_checkpoint(path, mmap=True)
    meta = ckpt.get('meta') if isinstance(ckpt, Mapping) else None
    if resume:
        lacks = None
        if not (isinstance(meta, Mapping) and is_int(meta.get('epoch')) and is_int(meta.get('iter'))):
            lacks = 'no epoch and iteration in its meta'
        elif 'message_hub' not in ckpt:
            lacks = "no 'message_hub'"
        if lacks:
            raise CheckpointError(f'{path} is not the checkpoint of a training run ({lacks}: weights alone, a '
                                  'published model or a converted file): --resume continues a run where it stopped; '
                                  f'to start a run from these weights, give them as load_from (--cfg-options '
                                  f'load_from={path})')
    error = head_classes_error(model_config(cfg), ckpt, path)
    if error:
        raise CheckpointError(error)
    own = model_tensor_shapes(cfg) if shapes is None else shapes
    hint = layout_hint(unwrap_state_dict(ckpt), own, path, getattr(cfg, 'filename', None) or 'CONFIG')
    if hint:
        raise CheckpointError(hint)
    sd = runner_state_dict(ckpt, path)  # what the Runner will load
    report = compare_state_dicts(sd, own)
    fits = [k for k in own if k in sd and tuple(sd[k].shape) == own[k]]
    backbone = [k for k in own if k.startswith('backbone.')]
    backbone_fits = [k for k in fits if k.startswith('backbone.')]
    backbone_reshaped = [m[0] for m in report['mismatched'] if m[0].startswith('backbone.')]
    backbone_extra = [k for k in report['unexpected'] if k.startswith('backbone.')]  # e.g. a deeper arch's blocks
    backbone_wrong = backbone_reshaped or backbone_extra or len(backbone_fits) < len(backbone) / 2
    problem = describe_mismatch(report)
    if problem and (strict or not fits or backbone_wrong):
        raise CheckpointError(f'{path} does not fit the model of the config ({len(fits)} of {len(own)} tensors '
                              f'fit). {problem}')
    if strict:  # evaluation: outputs scored under the config's class names (after the tensors: another model's
        error = class_order_error(cfg, ckpt, path)  # file is first of all another model)
        if error:
            raise CheckpointError(error)
    absent = absent_blocks(sd, own)
    if absent and len(absent) < len(_blocks(own)):  # (none there at all: another backbone type, refused above)
        raise CheckpointError(f'{path} holds no tensor of {len(absent)} backbone blocks of the config\'s model '
                              f'(another, shallower arch: e.g. STViT-R-T weights for STViT-R-S?), e.g. '
                              f'{", ".join(absent[:3])}: they would train from their random initialisation')
    if resume:
        states = ('optimizer', 'param_schedulers') if cfg.get('param_scheduler') else ('optimizer', )
        report['not_resumed'] = [k for k in states if k not in ckpt]
    return report


_BLOCK = re.compile(r'^(backbone\.(?:layers|stages)\.\d+\.blocks\.\d+)\.')


def _blocks(keys) -> set:
    """``backbone.layers.i.blocks.k`` (or ``stages``) of every backbone block with a tensor among ``keys``."""
    return {m.group(1) for m in map(_BLOCK.match, keys) if m}


def absent_blocks(sd: Mapping[str, torch.Tensor], own: Mapping[str, Tuple[int, ...]]) -> list:
    """The backbone blocks of the model (``own``: its tensor shapes) of which ``sd`` has no tensor, in order."""
    have = _blocks(sd)
    return sorted((b for b in _blocks(own) if b not in have), key=lambda b: [int(p) for p in re.findall(r'\d+', b)])


__all__ = ['CheckpointError', 'read_checkpoint', 'runner_state_dict', 'head_classes_error', 'dataset_classes',
           'class_order_error', 'model_tensor_shapes', 'pretrained_init', 'init_cfg_problem', 'check_backbone_init_cfg',
           'check_backbone_init_checkpoint', 'check_checkpoint_for_config', 'absent_blocks']
