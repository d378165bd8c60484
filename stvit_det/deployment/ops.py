"""The two detection operators of a two-stage detector that ONNX has natively, with their ONNX translations.

In PyTorch both run mmcv's compiled kernels (what mmdet's ``predict`` runs); the TorchScript exporter replaces each
call by one standard ONNX node through the ``symbolic`` of an ``autograd.Function``:

* :func:`roi_align`: mmcv ``RoIAlign`` (``aligned=True``: pixel centres at +0.5, no minimum RoI size, adaptive
  sampling with ``sampling_ratio=0``) -> ONNX ``RoiAlign`` (opset 16+) with
  ``coordinate_transformation_mode='half_pixel'``, the same arithmetic. mmcv 2.1.0's own symbolic targets opset <= 15
  (``Squeeze`` with an ``axes`` attribute and a manual -0.5 shift on top of the opset-16 default ``half_pixel``)
  and is not used.
* :func:`nms_per_class`: mmcv ``nms`` once per class -> ONNX ``NonMaxSuppression``. Both keep a box unless its IoU
  with a kept, higher-scoring box is strictly greater than the threshold, with areas computed without +1 (mmcv
  ``offset=0``), and return the kept boxes in descending score order.

References: ONNX operator specification (``RoiAlign``, ``NonMaxSuppression``); mmcv ``mmcv/ops/roi_align.py``,
``mmcv/ops/nms.py`` and ``csrc/pytorch/cpu/nms.cpp``; mmdeploy ``mmdeploy/mmcv/ops/`` (which also maps these two to
ONNX). Written anew.

Legend: N RoIs or boxes, C channels, G score groups (classes), K kept boxes.
"""
from typing import Tuple

import torch
from mmcv.ops import nms as mmcv_nms
from mmcv.ops import roi_align as mmcv_roi_align
from torch.autograd import Function

#: ``max_output_boxes_per_class`` given to ONNX NonMaxSuppression: larger than any number of candidates
MAX_NMS_OUTPUT = 1 << 30


class _RoIAlign(Function):

    @staticmethod
    def forward(ctx, feat: torch.Tensor, rois: torch.Tensor, out_h: int, out_w: int, spatial_scale: float,
                sampling_ratio: int) -> torch.Tensor:
        return mmcv_roi_align(feat, rois, (out_h, out_w), spatial_scale, sampling_ratio, 'avg', True)

    @staticmethod
    def symbolic(g, feat, rois, out_h, out_w, spatial_scale, sampling_ratio):
        batch_idx = g.op('Gather', rois, g.op('Constant', value_t=torch.tensor(0)), axis_i=1)  # (N,)
        batch_idx = g.op('Cast', batch_idx, to_i=7)  # INT64
        boxes = g.op('Gather', rois, g.op('Constant', value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)  # (N, 4)
        return g.op('RoiAlign', feat, boxes, batch_idx, coordinate_transformation_mode_s='half_pixel', mode_s='avg',
                    output_height_i=out_h, output_width_i=out_w, sampling_ratio_i=max(0, sampling_ratio),
                    spatial_scale_f=spatial_scale)


def roi_align(feat: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int], spatial_scale: float,
              sampling_ratio: int = 0) -> torch.Tensor:
    """Average RoIAlign with aligned (half-pixel) coordinates.

    Args:
        feat: feature map (B, C, H, W).
        rois: (N, 5) rows (batch index, x1, y1, x2, y2) in image pixels.
        output_size: (out_h, out_w).
        spatial_scale: 1 / stride of ``feat``.
        sampling_ratio: samples per bin side, 0 = adaptive.

    Returns:
        (N, C, out_h, out_w).
    """
    return _RoIAlign.apply(feat, rois, int(output_size[0]), int(output_size[1]), float(spatial_scale),
                           int(sampling_ratio))


class _NMSPerClass(Function):

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        selected = []
        for c in range(scores.shape[0]):
            cand = (scores[c] > score_threshold).nonzero().view(-1)  # (M,)
            keep = mmcv_nms(boxes[cand], scores[c, cand], iou_threshold)[1]  # (k,) positions in cand, by score
            idx = cand[keep]
            selected.append(torch.stack([torch.zeros_like(idx), torch.full_like(idx, c), idx], 1))  # (k, 3)
        return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold):
        boxes = g.op('Unsqueeze', boxes, g.op('Constant', value_t=torch.tensor([0])))  # (1, N, 4)
        scores = g.op('Unsqueeze', scores, g.op('Constant', value_t=torch.tensor([0])))  # (1, G, N)
        return g.op('NonMaxSuppression', boxes, scores,
                    g.op('Constant', value_t=torch.tensor([MAX_NMS_OUTPUT], dtype=torch.long)),
                    g.op('Constant', value_t=torch.tensor([iou_threshold], dtype=torch.float)),
                    g.op('Constant', value_t=torch.tensor([score_threshold], dtype=torch.float)),
                    center_point_box_i=0)


def nms_per_class(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                  score_threshold: float) -> torch.Tensor:
    """Greedy NMS, independently for every score row, over the candidates scoring above ``score_threshold``.

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2), shared by all rows.
        scores: (G, N) scores; a row's boxes scoring <= ``score_threshold`` are not candidates.
        iou_threshold: a box is suppressed by a kept one when their IoU is strictly greater.
        score_threshold: candidate threshold.

    Returns:
        (K, 3) int64 rows (0, row, box index), row by row, each row's boxes in descending score order (ONNX
        ``NonMaxSuppression``'s output).
    """
    return _NMSPerClass.apply(boxes, scores, float(iou_threshold), float(score_threshold))
