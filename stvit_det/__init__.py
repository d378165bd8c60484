"""stvit_det: STViT-R (Chang et al., CVPR 2023, arXiv 2303.08685) as an MMDetection 3.x plugin.

``import stvit_det`` registers the ``STViTR`` backbone into ``mmdet.registry.MODELS``, and the same class into the
registries of the other installed OpenMMLab toolboxes (``toolboxes/``: MMSegmentation, MMPretrain).
"""
from .models import STViTR  # noqa: F401  (registers the backbone)
from .toolboxes import register_toolboxes
from .version import __version__

register_toolboxes()

__all__ = ['STViTR', '__version__']
