"""Reading data pipelines in configs: the transform steps (also inside wrappers) and their type names.

One place for what the inference tools (``tools/image_demo.py``, ``deployment/parts.py``) and the segmentation
dataset check (``seg_check.py``) need to know about a config's pipeline, whatever spelling the config uses for
a transform's type: ``'LoadAnnotations'``, a scoped ``'mmdet.LoadAnnotations'`` or the class itself (pure-Python
configs).
"""
from typing import Any, Iterator, List, Optional, Tuple

from ..utils.values import type_name

#: the annotation loaders of the toolboxes, removed for inference on an image without labels (as mmdet's
#: ``DetInferencer`` removes ``LoadAnnotations``)
ANNOTATION_LOADERS = ('LoadAnnotations', 'LoadPanopticAnnotations')


def step_type(step: dict) -> str:
    """The bare type name of a transform step: ``'mmdet.LoadAnnotations'`` and the class both give
    ``'LoadAnnotations'``."""
    return type_name(step.get('type'))


def pipeline_steps(pipeline: Any) -> Iterator[dict]:
    """Every transform dict of a pipeline, also those nested in wrappers' ``transforms`` (``TestTimeAug`` holds a
    list of lists; ``RandomApply`` / ``RandomChoice`` a list, or a list of lists)."""
    for step in pipeline or []:
        if isinstance(step, (list, tuple)):
            yield from pipeline_steps(step)
        elif isinstance(step, dict):
            yield step
            yield from pipeline_steps(step.get('transforms'))


def find_step(pipeline: Any, name: str) -> Optional[dict]:
    """The first step of type ``name`` (searched through wrappers), None without one."""
    return next((step for step in pipeline_steps(pipeline) if step_type(step) == name), None)


def image_decoding(pipeline: Any) -> Tuple[str, str]:
    """``(imdecode_backend, color_type)`` of the pipeline's ``LoadImageFromFile``, which decide an image's decoded
    size (mmcv's defaults, ``('cv2', 'color')``, without one)."""
    step = find_step(pipeline, 'LoadImageFromFile') or {}
    return step.get('imdecode_backend') or 'cv2', step.get('color_type', 'color')


def without_annotation_loading(pipeline: Any) -> List[dict]:
    """The top-level steps of an inference pipeline other than the annotation loaders."""
    return [step for step in pipeline if step_type(step) not in ANNOTATION_LOADERS]
