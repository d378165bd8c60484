"""The whole inference of an MMPretrain 1.x image classifier as one exportable module (``--part classifier``).

``ImageClassifier.predict`` is backbone, neck, the head's logits (``ClsHead.forward``), then softmax and argmax
(``ClsHead._get_predictions``). :class:`ClassifierExport` computes the same from the preprocessed input: image
(B, 3, H, W) -> scores (B, K) and labels (B,) int64, as ``pred_score`` / ``pred_label``. Single-label heads
(``ClsHead`` and its subclasses: ``LinearClsHead``, ``VisionTransformerClsHead``, ...) only: a multi-label head's
labels are a score threshold or a top-k, per image.
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
    """image -> (scores, labels) of an mmpretrain ``ImageClassifier`` with a single-label head, as its ``predict``.

    Args:
        classifier: an ``ImageClassifier`` in eval mode.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not is_classifier(classifier):
            raise ExportError(f'--part classifier exports MMPretrain ImageClassifier models; this config builds '
                              f'{type(classifier).__name__}')
        from mmpretrain.models.heads import ClsHead

        if not isinstance(getattr(classifier, 'head', None), ClsHead):
            head = type(classifier.head).__name__ if getattr(classifier, 'head', None) is not None else 'no head'
            raise ExportError(f'--part classifier exports single-label heads (ClsHead and its subclasses); this '
                              f'classifier has {head}: export --part backbone')
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(image, mode='tensor')  # (B, K): backbone, neck, head
        scores = logits.softmax(dim=1)
        return scores, scores.argmax(dim=1)  # (B, K), (B, )
