"""Compare two runtimes' detections of one image (boxes, scores, labels, binary masks) at a score threshold.

Used by ``tools/deployment/export_onnx.py`` and the tests to check an exported detector against PyTorch
``predict``: the same detections above the threshold, boxes within a pixel, masks with a high IoU.

Legend: K detections, H/W image size.
"""
from typing import Dict, Sequence

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (Ka, Kb) of boxes (Ka, 4) and (Kb, 4) given as (x1, y1, x2, y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks (H, W); 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def match_detections(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], score_thr: float) -> Dict:
    """Pair the detections scoring >= ``score_thr`` of two runtimes, each reference detection with the unmatched
    actual detection of highest box IoU (order-independent, so near-equal scores may swap).

    Args:
        reference, actual: (boxes (K, 4), scores (K,), labels (K,), masks (K, H, W)) each.
        score_thr: detections below it are ignored.

    Returns:
        dict with ``n_reference``, ``n_actual``, ``same_labels`` (bool), ``max_box_diff`` (px, over coordinates),
        ``max_score_diff``, ``min_mask_iou`` (the last three over matched pairs; 0 / 1 when none).

    Raises:
        ValueError: masks of another size (H, W) in the two runtimes (e.g. one over the padded input, one over the
            image extent): not comparable.
    """
    if np.shape(reference[3])[1:] != np.shape(actual[3])[1:]:
        raise ValueError(f'masks of another size: {tuple(np.shape(reference[3])[1:])} (reference) vs '
                         f'{tuple(np.shape(actual[3])[1:])}; both must cover the same image extent')
    keep_r = np.asarray(reference[1]) >= score_thr
    keep_a = np.asarray(actual[1]) >= score_thr
    rb, rs, rl, rm = (np.asarray(x)[keep_r] for x in reference)
    ab, as_, al, am = (np.asarray(x)[keep_a] for x in actual)
    result = dict(n_reference=int(len(rb)), n_actual=int(len(ab)), same_labels=True, max_box_diff=0.0,
                  max_score_diff=0.0, min_mask_iou=1.0)
    if len(rb) == 0 or len(ab) == 0:
        result['same_labels'] = len(rb) == len(ab)
        return result
    iou = box_iou(rb.astype(np.float64), ab.astype(np.float64))  # (Kr, Ka)
    used = np.zeros(len(ab), dtype=bool)
    for i in range(len(rb)):
        cand = np.where(used, -1.0, iou[i])
        j = int(cand.argmax())
        if cand[j] < 0:
            result['same_labels'] = False
            break
        used[j] = True
        result['same_labels'] &= bool(rl[i] == al[j])
        result['max_box_diff'] = _larger(result['max_box_diff'], np.abs(rb[i] - ab[j]).max())
        result['max_score_diff'] = _larger(result['max_score_diff'], abs(rs[i] - as_[j]))
        result['min_mask_iou'] = min(result['min_mask_iou'], mask_iou(rm[i], am[j]))
    return result


def _larger(worst: float, diff) -> float:
    """``max(worst, diff)`` where a NaN difference (a NaN coordinate or score) counts as infinite: Python's
    ``max`` would keep ``worst``."""
    diff = float(diff)
    return float('inf') if np.isnan(diff) else max(worst, diff)
