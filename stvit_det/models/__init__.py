from .backbones import STViTR

__all__ = ['STViTR']
