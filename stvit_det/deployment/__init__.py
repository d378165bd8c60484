"""Deployment: export STViT-R detectors (backbone, backbone + neck, or the whole Mask R-CNN / Cascade Mask R-CNN
inference), segmentors and classifiers (the whole MMSegmentation / MMPretrain inference) to ONNX and check them with
ONNX Runtime against PyTorch. CLI: ``tools/deployment/export_onnx.py``.

Needs ``onnx``, ``onnxruntime`` and ``onnxscript`` (``requirements/deploy.txt``); ``import stvit_det`` does not
import this package.
"""
from .detections import box_iou, mask_iou, match_detections
from .equivalents import ExportableOps, adaptive_max_pool2d_as_slices, sdpa_as_matmul
from .onnx_export import (EXPORTERS, ExportError, OnnxInputError, OnnxLoadError, batch_mismatch, compare,
                          export_onnx, load_session, median_latency_ms, run_session)
from .parts import PARTS, CheckpointMismatchError, build_detector, build_part, load_exact, preprocess_image

__all__ = [
    'EXPORTERS', 'PARTS', 'CheckpointMismatchError', 'ExportError', 'ExportableOps', 'OnnxInputError', 'OnnxLoadError',
    'adaptive_max_pool2d_as_slices', 'batch_mismatch', 'box_iou', 'build_detector', 'build_part', 'compare',
    'export_onnx', 'load_exact', 'load_session', 'mask_iou', 'match_detections', 'median_latency_ms',
    'preprocess_image', 'run_session', 'sdpa_as_matmul'
]
