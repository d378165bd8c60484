from .stvit_r import STViTR

__all__ = ['STViTR']
