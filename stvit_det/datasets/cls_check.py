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
"""
from typing import Any, Optional, Sequence

from ..utils.values import is_int
from .coco_check import config_classes, folder_classes, iter_leaf_datasets


def _head_classes(model: Any) -> Optional[int]:
    if isinstance(model, dict) and 'head' not in model and isinstance(model.get('module'), dict):
        model = model['module']  # test.py --tta wraps the classifier
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
    model = cfg.get('model')
    n = _head_classes(model)
    if n is None:
        return None
    if isinstance(model, dict) and 'head' not in model:
        model = model.get('module', model)
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
            if not isinstance(metric, dict) or not str(getattr(metric.get('type'), '__name__', metric.get('type'))
                                                       ).split('.')[-1] == 'Accuracy':
                continue
            topk = metric.get('topk', 1)
            ks = topk if isinstance(topk, (list, tuple)) else (topk, )
            if all(is_int(k) for k in ks) and ks and max(ks) > n:
                return (f'{phase}_evaluator.topk is {tuple(ks)}: top-{max(ks)} accuracy needs at least {max(ks)} '
                        f'classes and the head has {n}; set {phase}_evaluator.topk=(1, ) (MMPretrain raises this '
                        'only after the whole evaluation)')
    return None
