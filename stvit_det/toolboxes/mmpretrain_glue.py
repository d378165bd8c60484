"""Make ``STViTR`` buildable from MMPretrain 1.x configs (``default_scope='mmpretrain'``), e.g. as the backbone of
an ``ImageClassifier`` with ``GlobalAveragePooling`` and ``LinearClsHead`` (``configs/stvit-r-cls/``).

The class registered here IS ``stvit_det.models.STViTR`` (the object ``mmdet.registry.MODELS`` holds): no copy, no
subclass, so its defaults are the detection ones. A classifier's config sets ``out_indices=(3, )`` (or ``(-1, )``,
mmpretrain's Swin default; the shipped configs do): the last stage through ``norm3``, which is where the final
LayerNorm ``norm`` of an official STViT-R ImageNet checkpoint goes (``stvit_det.utils.ckpt_convert.
imagenet_to_classifier``). With the default four outputs the head reads the last only, and ``norm0..2`` get no
gradient, which DDP refuses. ``frozen_stages=k`` freezes the stem and stages 0..k-1 (mmdet's and mmseg's meaning;
mmpretrain's Swin freezes 0..k). Imported by ``stvit_det.toolboxes.register_toolboxes``
only when mmpretrain is installed (which warns instead when mmpretrain fails to import).
"""


def register() -> None:
    """Register ``STViTR`` into ``mmpretrain.registry.MODELS`` (idempotent)."""
    from mmpretrain.registry import MODELS

    from ..models import STViTR

    if MODELS.module_dict.get('STViTR') is not STViTR:
        MODELS.register_module(module=STViTR, force=True)


__all__ = ['register']
