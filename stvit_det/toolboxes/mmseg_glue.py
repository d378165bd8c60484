"""Make ``STViTR`` buildable from MMSegmentation 1.x configs (``default_scope='mmseg'``), e.g. as the backbone of an
``EncoderDecoder`` with a ``UPerHead`` (``configs/stvit-r-seg/``).

The class registered here IS ``stvit_det.models.STViTR`` (the object ``mmdet.registry.MODELS`` holds): no copy, no
subclass, so weight loading (``init_cfg``), ``frozen_stages``, ``with_cp``, ``pad_mask`` and ``attn_impl`` behave
exactly as in detection. Its four NCHW outputs (C, 2C, 4C, 8C channels at strides 4, 8, 16, 32) are what mmseg's
Swin gives UperNet (mmseg ``models/backbones/swin.py``), so a decode head only needs ``in_channels``.

Imported by :func:`stvit_det.toolboxes.register_toolboxes` only when mmseg is installed (which warns instead when
mmseg fails to import).
"""


def register() -> None:
    """Register ``STViTR`` into ``mmseg.registry.MODELS`` (idempotent)."""
    from mmseg.registry import MODELS

    from ..models import STViTR

    if MODELS.module_dict.get('STViTR') is not STViTR:
        MODELS.register_module(module=STViTR, force=True)


__all__ = ['register']
