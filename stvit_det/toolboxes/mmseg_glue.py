"""Make ``STViTR`` buildable from MMSegmentation 1.x configs (``default_scope='mmseg'``), e.g. as the backbone of an
``EncoderDecoder`` with a ``UPerHead`` (``configs/stvit-r-seg/``).

The class registered here IS ``stvit_det.models.STViTR`` (the object ``mmdet.registry.MODELS`` holds): no copy, no
subclass, so weight loading (``init_cfg``), ``frozen_stages``, ``with_cp``, ``pad_mask`` and ``attn_impl`` behave
exactly as in detection. Its four NCHW outputs (C, 2C, 4C, 8C channels at strides 4, 8, 16, 32) are what mmseg's
Swin gives UperNet (mmseg ``models/backbones/swin.py``), so a decode head only needs ``in_channels``.

Imported by :func:`stvit_det.toolboxes.register_toolboxes` only when mmseg is installed.
"""
import warnings


def register() -> None:
    """Register ``STViTR`` into ``mmseg.registry.MODELS`` (idempotent).

    An installed but unusable mmseg (e.g. one that rejects the installed mmcv at import) only warns: detection must
    keep working, and a segmentation config then fails with "STViTR is not in the mmseg::model registry".
    """
    try:
        from mmseg.registry import MODELS
    except (ImportError, AssertionError) as e:  # mmseg/__init__.py asserts the mmcv / mmengine versions
        warnings.warn(f'MMSegmentation is installed but cannot be imported ({type(e).__name__}: {e}); STViTR is not '
                      'registered for segmentation configs')
        return

    from ..models import STViTR

    if MODELS.module_dict.get('STViTR') is not STViTR:
        MODELS.register_module(module=STViTR, force=True)


__all__ = ['register']
