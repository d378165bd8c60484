"""stvit_det: STViT-R (Chang et al., CVPR 2023, arXiv 2303.08685) as an MMDetection 3.x plugin.

``import stvit_det`` registers the ``STViTR`` backbone into ``mmdet.registry.MODELS``, and the same class into the
registries of the other installed OpenMMLab toolboxes (``toolboxes/``: MMSegmentation, MMPretrain), and
allow-lists the globals of mmengine Runner checkpoints for ``torch.load(weights_only=True)`` (PyTorch's default;
``utils/checkpoint_safety.py``), so that plain OpenMMLab APIs (mmdet's ``init_detector``, a Runner's ``load_from``),
which import the package through a config's ``custom_imports``, read the checkpoints its training writes.
"""
from .models import STViTR  # noqa: F401  (registers the backbone)
from .toolboxes import register_toolboxes
from .utils import allow_checkpoint_globals
from .version import __version__

register_toolboxes()
allow_checkpoint_globals()

__all__ = ['STViTR', '__version__']
