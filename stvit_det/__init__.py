"""stvit_det: STViT-R (Chang et al., CVPR 2023, arXiv 2303.08685) as an MMDetection 3.x plugin.

``import stvit_det`` registers the ``STViTR`` backbone into ``mmdet.registry.MODELS``.
"""
from .models import STViTR  # noqa: F401  (registers the backbone)
from .version import __version__

__all__ = ['STViTR', '__version__']
