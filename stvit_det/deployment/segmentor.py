"""The whole inference of an MMSegmentation 1.x segmentor as one exportable module (``--part segmentor``).

``EncoderDecoder.predict`` is ``inference`` (backbone, neck, decode head, the logits resized to the input; or, with
``test_cfg.mode='slide'``, the same over overlapping ``crop_size`` windows averaged where they overlap) followed by
``postprocess_result`` (padding cropped, logits resized to the original image, then argmax, or ``sigmoid >
threshold`` for a one-channel head). :class:`SegmentorExport` is ``inference`` on the preprocessed input plus the
label step, so the graph maps image (B, 3, H, W) -> logits (B, C, H, W), labels (B, H, W) int64 at the input's
size; cropping a padding and resizing to the original image stay with the caller, as the image's own metadata does.
At a static input size the slide windows are fixed: tracing unrolls them into the graph (the batch is then static).
"""
from typing import Tuple

import torch
import torch.nn as nn

from .onnx_export import ExportError


def is_segmentor(model: nn.Module) -> bool:
    """Whether ``model`` is an MMSegmentation ``EncoderDecoder`` (``CascadeEncoderDecoder`` included)."""
    try:
        from mmseg.models.segmentors import EncoderDecoder
    except ImportError:  # mmseg not installed: no model can be one
        return False
    return isinstance(model, EncoderDecoder)


class SegmentorExport(nn.Module):
    """image -> (logits, labels) of an mmseg ``EncoderDecoder``, as its ``predict`` computes them for an image
    that fills the input (no padding, original size = input size).

    Args:
        segmentor: an ``EncoderDecoder`` in eval mode.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        if not is_segmentor(segmentor):
            raise ExportError(f'--part segmentor exports MMSegmentation EncoderDecoder / CascadeEncoderDecoder '
                              f'models; this config builds {type(segmentor).__name__}')
        mode = segmentor.test_cfg.get('mode', 'whole') if segmentor.test_cfg else 'whole'
        if mode not in ('whole', 'slide'):
            raise ExportError(f"test_cfg.mode='{mode}': the segmentor's inference knows 'whole' and 'slide' only")
        self.segmentor = segmentor

    def describe(self, shape: Tuple[int, int]) -> str:
        """One line on what the graph runs at input ``shape`` (H, W)."""
        cfg = self.segmentor.test_cfg or {}
        if cfg.get('mode', 'whole') == 'whole':
            return f'whole inference: the network once on the {shape[0]}x{shape[1]} input'
        windows = [max(size - crop + step - 1, 0) // step + 1  # as EncoderDecoder.slide_inference counts them
                   for size, crop, step in zip(shape, cfg['crop_size'], cfg['stride'])]
        return (f"slide inference (test_cfg crop_size {tuple(cfg['crop_size'])}, stride {tuple(cfg['stride'])}): "
                f'its {windows[0] * windows[1]} windows over the {shape[0]}x{shape[1]} input are unrolled into '
                'the graph')

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        H, W = image.shape[-2:]
        # one meta for the batch, as mmseg reads only the first: the logits are resized to the input (pad_shape)
        metas = [dict(img_shape=(H, W), pad_shape=(H, W), ori_shape=(H, W))]
        logits = self.segmentor.inference(image, metas)  # (B, C, H, W)
        if logits.shape[1] > 1:
            labels = logits.argmax(dim=1)  # (B, H, W)
        else:  # one channel: foreground where the probability passes the head's threshold
            labels = (logits.sigmoid() > self.segmentor.decode_head.threshold)[:, 0].long()
        return logits, labels
