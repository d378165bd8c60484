"""The whole inference of an MMSegmentation 1.x segmentor as one exportable module (``--part segmentor``).

``EncoderDecoder.predict`` is ``inference`` (backbone, neck, decode head, the logits resized to the input; or, with
``test_cfg.mode='slide'``, the same over overlapping ``crop_size`` windows averaged where they overlap) followed by
``postprocess_result`` (padding cropped, logits resized to the original image, then argmax, or ``sigmoid >
threshold`` for a one-channel head, whose ``seg_logits`` it then stores as the sigmoid). :class:`SegmentorExport`
is ``inference`` on the preprocessed input plus the label step, so the graph maps image (B, 3, H, W) -> logits
(B, C, H, W) (raw, also for one channel), labels (B, H, W) int64 at the input's size; cropping a padding and
resizing to the original image stay with the caller, as the image's own metadata does. At a static input size the
slide windows are fixed: tracing unrolls them into the graph.
"""
from typing import Tuple

import torch
import torch.nn as nn

from .onnx_export import ExportError


def is_segmentor(model: nn.Module) -> bool:
    """Whether ``model`` is an MMSegmentation ``EncoderDecoder`` (``CascadeEncoderDecoder`` included; not
    ``DepthEstimator``, whose output is a depth, not classes)."""
    try:
        from mmseg.models.segmentors import DepthEstimator, EncoderDecoder
    except ImportError:  # mmseg not installed: no model can be one
        return False
    return isinstance(model, EncoderDecoder) and not isinstance(model, DepthEstimator)


def _pair_of_positive_ints(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


class SegmentorExport(nn.Module):
    """image -> (logits, labels) of an mmseg ``EncoderDecoder``, as its ``predict`` computes them for an image
    that fills the input (no padding, original size = input size). ``threshold``: that of a one-channel head (its
    labels are ``sigmoid(logits) > threshold``), else None (argmax).

    Args:
        segmentor: an ``EncoderDecoder`` in eval mode.

    Raises:
        ExportError: another kind of model, or an inference mode other than whole / slide.
        ValueError: slide mode without a ``crop_size`` and ``stride`` of two positive integers each.
    """
    output_names = ('logits', 'labels')
    label_unit = 'pixels'

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        if not is_segmentor(segmentor):
            raise ExportError(f'--part segmentor exports MMSegmentation EncoderDecoder / CascadeEncoderDecoder '
                              f'models; this config builds {type(segmentor).__name__}')
        cfg = segmentor.test_cfg or {}
        mode = cfg.get('mode', 'whole')
        if mode not in ('whole', 'slide'):
            raise ExportError(f"test_cfg.mode='{mode}': the segmentor's inference knows 'whole' and 'slide' only")
        if mode == 'slide':
            for key in ('crop_size', 'stride'):
                if not _pair_of_positive_ints(cfg.get(key)):
                    raise ValueError(f"test_cfg.mode='slide' needs test_cfg.{key} = (h, w), two positive integers; "
                                     f'got {cfg.get(key)!r}')
        self.segmentor = segmentor
        head = segmentor.decode_head  # a CascadeEncoderDecoder's last head makes the prediction
        head = head[-1] if isinstance(head, nn.ModuleList) else head
        self.threshold = head.threshold if head.out_channels == 1 else None  # mmseg's default for one channel: 0.3

    @property
    def slide(self) -> bool:
        """Whether the inference slides windows over the input (``test_cfg.mode='slide'``)."""
        return (self.segmentor.test_cfg or {}).get('mode', 'whole') == 'slide'

    def describe(self, shape: Tuple[int, int]) -> str:
        """One line on what the graph runs at input ``shape`` (H, W)."""
        cfg = self.segmentor.test_cfg or {}
        if not self.slide:
            return f'whole inference: the network once on the {shape[0]}x{shape[1]} input'
        windows = [max(size - crop + step - 1, 0) // step + 1  # as EncoderDecoder.slide_inference counts them
                   for size, crop, step in zip(shape, cfg['crop_size'], cfg['stride'])]
        n = windows[0] * windows[1]
        return (f"slide inference (test_cfg crop_size {tuple(cfg['crop_size'])}, stride {tuple(cfg['stride'])}): "
                f"{'its window' if n == 1 else f'its {n} windows'} over the {shape[0]}x{shape[1]} input "
                f"{'is' if n == 1 else 'are'} unrolled into the graph")

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        H, W = image.shape[-2:]
        # one meta for the batch, as mmseg reads only the first: the logits are resized to the input (pad_shape)
        metas = [dict(img_shape=(H, W), pad_shape=(H, W), ori_shape=(H, W))]
        logits = self.segmentor.inference(image, metas)  # (B, C, H, W)
        if self.threshold is None:
            labels = logits.argmax(dim=1)  # (B, H, W)
        else:  # one channel: foreground where the probability passes the head's threshold
            labels = (logits.sigmoid() > self.threshold)[:, 0].long()
        return logits, labels
