"""The whole inference of an MMPretrain 1.x image classifier as one exportable module (``--part classifier``).

``ImageClassifier.predict`` is backbone, neck, then the head's ``predict``; ``ClsHead.predict`` takes the head's
logits (``forward``) to softmax and argmax (``_get_predictions``). :class:`ClassifierExport` computes the same from
the preprocessed input: image (B, 3, H, W) -> scores (B, K) and labels (B,) int64, as ``pred_score`` /
``pred_label``. Heads that keep ``ClsHead``'s ``predict`` and ``_get_predictions`` only (``LinearClsHead``,
``VisionTransformerClsHead``, ``StackedLinearClsHead``, ...): a head that overrides them computes its prediction
otherwise (``ConformerHead`` adds its two branches' logits first; a multi-label head thresholds per image).
"""
from typing import Tuple

import torch
import torch.nn as nn

from .onnx_export import ExportError


def is_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is an MMPretrain ``ImageClassifier``."""
    try:
        from mmpretrain.models.classifiers import ImageClassifier
    except ImportError:  # mmpretrain not installed: no model can be one
        return False
    return isinstance(model, ImageClassifier)


class ClassifierExport(nn.Module):
    """image -> (scores, labels) of an mmpretrain ``ImageClassifier`` whose head predicts as ``ClsHead``.

    Args:
        classifier: an ``ImageClassifier`` in eval mode.
    """
    output_names = ('scores', 'labels')
    label_unit = 'images'
    threshold = None  # labels by argmax

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not is_classifier(classifier):
            raise ExportError(f'--part classifier exports MMPretrain ImageClassifier models; this config builds '
                              f'{type(classifier).__name__}')
        from mmpretrain.models.heads import ClsHead

        head = getattr(classifier, 'head', None)
        if not (isinstance(head, ClsHead) and type(head).predict is ClsHead.predict
                and type(head)._get_predictions is ClsHead._get_predictions):
            name = type(head).__name__ if head is not None else 'no head'
            raise ExportError(f"--part classifier exports heads that predict as ClsHead does (softmax of the head's "
                              f'logits, argmax); this classifier has {name}: export --part backbone')
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(image, mode='tensor')  # (B, K): backbone, neck, head
        scores = logits.softmax(dim=1)
        return scores, scores.argmax(dim=1)  # (B, K), (B, )
