"""Read a checkpoint file, and check it against a config before a tool runs, each with one clear error.

Used by ``tools/convert_ckpt.py``, ``tools/test.py`` and ``tools/train.py`` (fine-tuning with ``load_from``).
The conversions themselves are the pure functions of :mod:`stvit_det.utils.ckpt_convert`.
"""
import os
import pickle
from typing import Mapping, Optional

import torch

from .checkpoint_safety import allow_mmengine_checkpoints
from .ckpt_convert import classifier_num_classes, unwrap_state_dict


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def read_checkpoint(path: str, mmap: bool = False) -> Mapping:
    """``torch.load(path, weights_only=True)`` with one clear error for a missing, truncated or non-checkpoint file.

    Args:
        path: a local ``.pth`` file.
        mmap: map the tensors instead of reading them (fast look-ups in large files).

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, not a PyTorch file), refused by the weights-only
            unpickler, or holds no state dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    allow_mmengine_checkpoints()
    try:
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not (mmap and 'mmap' in str(e)):
                raise
            ckpt = torch.load(path, map_location='cpu', weights_only=True)  # a legacy (non-zip) file: read it all
    except Exception as e:  # noqa: BLE001 - torch raises many kinds (RuntimeError, UnpicklingError, IndexError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and 'Unsupported global' in str(e):
            which = next(line for line in str(e).splitlines() if 'Unsupported global' in line).strip()
            raise CheckpointError(f'{path}: refused by the weights-only unpickler (it stores objects other than '
                                  f'tensors and plain containers): {which}') from None
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or another kind of file): '
                              f'{type(e).__name__}: {first}') from None
    try:
        unwrap_state_dict(ckpt)
    except TypeError as e:
        raise CheckpointError(f'{path}: {e}') from None
    return ckpt


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
            f'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint={source}); to evaluate the checkpoint as '
            f'it is, set model.head.num_classes={found}.')


def check_checkpoint_for_config(cfg: Mapping, path: str) -> None:
    """Fail early, with one message, on a checkpoint file that cannot be read or whose classifier head does not fit
    the config (``tools/test.py``; ``tools/train.py`` with ``load_from``).

    Raises:
        CheckpointError
    """
    ckpt = read_checkpoint(path, mmap=True)
    error = head_classes_error(cfg.get('model', {}), ckpt, path)
    if error:
        raise CheckpointError(error)


__all__ = ['CheckpointError', 'read_checkpoint', 'head_classes_error', 'check_checkpoint_for_config']
