"""Class counts of an MMPretrain classification config, checked before a run (``tools/train.py`` /
``tools/test.py``): mismatches the Runner meets only inside the first step or after the whole evaluation.

* The head's ``num_classes`` against the data preprocessor's, where Mixup / CutMix (``model.train_cfg.augments``,
  ``batch_augments``) or ``to_onehot`` make one-hot targets of the preprocessor's width (mmpretrain's Swin recipe
  sets 1000): the loss stops with "requires output and target to be same shape".
* The head's ``num_classes`` against the dataset's classes (named in the config or by its dataset class, else one
  subfolder per class of a folder dataset): with fewer, the loss stops with "Class values must be smaller than
  num_classes".
* An ``Accuracy`` evaluator's ``topk`` against the head's classes: "Top-5 accuracy is unavailable since the number
  of categories is 2", raised after the whole evaluation, before ``--out`` is written.

And the image lists of ``CustomDataset`` / ``ImageNet`` (``ann_file``, or ImageNet's ``meta/{split}.txt``), read as
``CustomDataset.load_data_list`` reads them (:func:`check_image_list`): a line without an integer label, a label
outside the head's classes, a listed image that is not there (mmpretrain meets each inside the Runner: a
``ValueError`` at start, a loss assertion or a ``FileNotFoundError`` mid-epoch). Lists that passed are remembered by
file stamp (``seg_check.memory_path``), so a later launch does not stat ImageNet's 1.28 million files again.
"""
import os
import os.path as osp
from typing import Any, List, Optional, Sequence, Tuple

from ..utils.paths import is_remote
from ..utils.values import is_int, model_config, type_name
from .coco_check import (DatasetCheckError, _join, config_classes, folder_classes, iter_leaf_datasets,
                         pretrain_split_files)


def _head_classes(model: Any) -> Optional[int]:
    head = model.get('head') if isinstance(model, dict) else None
    n = head.get('num_classes') if isinstance(head, dict) else None
    return n if is_int(n) else None


def _dataset_classes(dataset: dict) -> Optional[int]:
    """The number of classes a dataset config will have, or None if not known without reading annotations."""
    classes = config_classes(dataset, 'mmpretrain')
    if classes is not None:
        return len(classes)
    folders = folder_classes(dataset)  # CustomDataset: one subfolder per class (a missing folder: checked later)
    return None if folders is None else len(folders)


def classifier_config_problem(cfg: Any, phases: Sequence[str]) -> Optional[str]:
    """The first class-count mismatch of an MMPretrain config (see the module docstring) in ``phases``, as one
    sentence naming the settings; None when they agree, or for other toolboxes' configs."""
    if cfg.get('default_scope') != 'mmpretrain':
        return None
    model = model_config(cfg)
    n = _head_classes(model)
    if n is None:
        return None
    preprocessor = model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}  # the Runner's setdefault
    onehot = bool(preprocessor.get('batch_augments') or preprocessor.get('to_onehot')
                  or (model.get('train_cfg') or {}).get('augments'))
    width = preprocessor.get('num_classes')
    if 'train' in phases and onehot and is_int(width) and width != n:
        return (f'model.head.num_classes is {n} but data_preprocessor.num_classes is {width}: with Mixup / CutMix '
                f'(or to_onehot) the targets are one-hot vectors of the preprocessor\'s width; set '
                f'data_preprocessor.num_classes={n} as well')
    for phase in phases:
        loader = cfg.get(f'{phase}_dataloader')
        for leaf in iter_leaf_datasets(loader.get('dataset')) if loader else []:
            k = _dataset_classes(leaf)
            if k is not None and k > n:
                return (f'{phase}_dataloader.dataset has {k} classes but model.head.num_classes is {n}: set the '
                        f'head (and data_preprocessor.num_classes) to {k}')
        evaluators = cfg.get(f'{phase}_evaluator') if phase != 'train' else None
        for metric in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            if not isinstance(metric, dict) or type_name(metric.get('type')) != 'Accuracy':
                continue
            topk = metric.get('topk', 1)
            ks = topk if isinstance(topk, (list, tuple)) else (topk, )
            if all(is_int(k) for k in ks) and ks and max(ks) > n:
                return (f'{phase}_evaluator.topk is {tuple(ks)}: top-{max(ks)} accuracy needs at least {max(ks)} '
                        f'classes and the head has {n}; set {phase}_evaluator.topk=(1, ) (MMPretrain raises this '
                        'only after the whole evaluation)')
    return None


#: MMPretrain datasets that read ``ann_file`` as a list of ``path label`` lines (``CustomDataset.load_data_list``)
LIST_DATASETS = ('CustomDataset', 'ImageNet', 'ImageNet21k')


def _image_list(dataset: dict) -> Optional[Tuple[str, str, bool]]:
    """(list file, image folder, with_label) of a list-reading MMPretrain dataset config; None for others."""
    if type_name(dataset.get('type')) not in LIST_DATASETS:
        return None
    ann_file, prefix = pretrain_split_files(dataset)
    prefix = prefix.get('img_path', '') if isinstance(prefix, dict) else prefix
    if not (isinstance(ann_file, str) and ann_file and isinstance(prefix, str)):
        return None
    with_label = dataset.get('with_label', True) and dataset.get('split') != 'test'  # ImageNet's test: no labels
    root = dataset.get('data_root') or ''
    return _join(root, ann_file), _join(root, prefix), bool(with_label)


def check_image_list(list_file: str, image_dir: str, with_label: bool = True, num_classes: Optional[int] = None,
                     where: str = 'dataset') -> int:
    """Read an MMPretrain image list as ``CustomDataset`` does (each line ``path label``, split at its last space;
    ``path`` alone without labels) and raise :class:`DatasetCheckError` on the first line whose label is not an
    integer in ``[0, num_classes)`` or whose image is not a file under ``image_dir``. Returns the number of lines.
    A list that passed is remembered by its stamp, for the same image folder and label range (not read again)."""
    from .seg_check import check_cache_dir, load_memory, memory_path, save_memory

    if is_remote(list_file) or is_remote(image_dir) or not osp.isfile(list_file):
        return 0  # a missing list is named by the dataset check
    stat = os.stat(list_file)
    setting = dict(listing=osp.abspath(list_file), images=osp.abspath(image_dir), with_label=with_label,
                   num_classes=num_classes, rules=2)  # rules: how lines are read (2: label-less lines unstripped)
    memory_file = memory_path(check_cache_dir(), 'list', setting)
    stamp = [stat.st_size, stat.st_mtime_ns]
    memory = load_memory(memory_file)
    if memory.get('stamp') == stamp:
        return int(memory.get('lines', 0))
    with open(list_file, encoding='utf-8', errors='replace') as f:
        lines = [line.rstrip('\n\r') for line in f]  # as mmengine's list_from_file
    for number, line in enumerate(lines, 1):
        if not line.strip():  # list_from_file keeps it, and MMPretrain reads it as an image
            raise DatasetCheckError(f'{list_file} line {number} is empty ({where}): MMPretrain reads every line as '
                                    'an image; remove it')
        name = line  # without labels, the line as it stands (spaces included) is the file name
        if with_label:
            line = line.strip()  # CustomDataset: x.strip().rsplit(' ', 1)
            parts = line.rsplit(' ', 1)
            label = parts[1] if len(parts) == 2 else None
            if label is None or not label.lstrip('-').isdigit():
                raise DatasetCheckError(f'{list_file} line {number}: "{line}" has no integer class label after the '
                                        f'image path ({where}; MMPretrain reads "path label" lines)')
            if num_classes is not None and not 0 <= int(label) < num_classes:
                raise DatasetCheckError(f'{list_file} line {number}: class label {label} is outside 0..'
                                        f'{num_classes - 1}, the head\'s {num_classes} classes ({where})')
            name = parts[0]
        if not osp.isfile(osp.join(image_dir, name)):
            raise DatasetCheckError(f'{list_file} line {number}: image not found: {osp.join(image_dir, name)} '
                                    f'({where})')
    save_memory(memory_file, dict(stamp=stamp, lines=len(lines)))
    return len(lines)


def check_cls_dataset_cfgs(cfg: Any, phases: Sequence[str] = ('train', 'val', 'test')) -> List[Tuple[str, int]]:
    """:func:`check_image_list` for every list-reading MMPretrain dataset of the given phases (other toolboxes'
    configs are skipped). Returns (where, lines) per list checked."""
    if cfg.get('default_scope') != 'mmpretrain':
        return []
    n = _head_classes(model_config(cfg))
    checked = []
    for phase in phases:
        loader = cfg.get(f'{phase}_dataloader')
        for index, leaf in enumerate(iter_leaf_datasets(loader.get('dataset')) if loader else []):
            found = _image_list(leaf)
            if found:
                what = f'{phase}_dataloader.dataset' + (f' #{index}' if index else '')
                checked.append((what, check_image_list(*found, num_classes=n, where=what)))
    return checked
