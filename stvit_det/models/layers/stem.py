"""The stems, (B, 3, H, W) -> the stride-4 NHWC map the stages take.

STViT-R's convolutional stem: two Conv3x3 stride-2 + BatchNorm + Hardswish, in the style of LeViT's
``Conv2d_BN`` stem (Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
ICCV 2021, which uses four of them). Swin's patch stem: Conv4x4 stride 4 + LayerNorm (Liu et al., ICCV 2021).
Official counterparts: changsn/STViT-R-Object-Detection ``layers.py`` ``Conv2d_BN`` / ``PatchEmbed`` (whose key
names are kept); microsoft/Swin-Transformer ``PatchEmbed``. Written anew here.
"""
from collections import OrderedDict
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .window_ops import pad_to_multiple


class ConvBN(nn.Sequential):
    """Conv3x3 (stride 2, no bias) + BatchNorm; official ``Conv2d_BN`` (submodules ``c``, ``bn``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(OrderedDict(c=nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), bn=nn.BatchNorm2d(out_ch)))


class ConvStem(nn.Module):
    """STViT-R stem: pad to x4, then [Conv3x3 s2 + BN + Hardswish] x 2 (3 -> C/2 -> C); no LayerNorm.

    Official: ``PatchEmbed`` in ``layers.py`` (keys ``patch_embed.proj.{0,2}.{c,bn}``).

    With both BatchNorms in eval mode (inference, or a frozen stem) each BN is folded into its convolution
    (exact: BN is affine then), the convolutions run channels-last (NHWC, the layout the stages want anyway, so
    the final permute is free) and, without autograd, Hardswish runs in place: on the CPU the stem then takes
    about a third of the time of the plain NCHW Conv-BN-Hardswish sequence (measured at 800x1216). Training
    (batch statistics) runs the plain sequence in NCHW, whose backward is the faster one on the CPU.
    """

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(ConvBN(3, embed_dims // 2), nn.Hardswish(), ConvBN(embed_dims // 2, embed_dims),
                                  nn.Hardswish())

    @staticmethod
    def _folded(conv_bn: ConvBN) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of conv -> BN (eval) as one convolution."""
        bn = conv_bn.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out, )
        return conv_bn.c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    @property
    def batch_norms(self) -> Tuple[nn.Module, nn.Module]:
        """The two BatchNorms, whatever their class: mmengine's ``sync_bn='mmcv'`` makes them
        ``mmcv.ops.SyncBatchNorm``, which is not a torch ``_BatchNorm``."""
        return self.proj[0].bn, self.proj[2].bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C)."""
        x = pad_to_multiple(x.permute(0, 2, 3, 1), 4).permute(0, 3, 1, 2)  # (B, 3, H', W'), H', W' multiples of 4
        if any(bn.training for bn in self.batch_norms):
            # batch statistics (NCHW: its backward is faster on the CPU); (B, C, H'/4, W'/4) -> (B, H'/4, W'/4, C)
            return self.proj(x).permute(0, 2, 3, 1)
        x = x.contiguous(memory_format=torch.channels_last)
        inplace = not torch.is_grad_enabled()
        for conv_bn in (self.proj[0], self.proj[2]):
            weight, bias = self._folded(conv_bn)
            x = F.hardswish(F.conv2d(x, weight, bias, stride=2, padding=1), inplace=inplace)
        return x.permute(0, 2, 3, 1)  # (B, H'/4, W'/4, C), contiguous: the conv output is channels-last


class PatchStem(nn.Module):
    """Swin's stem: pad to x4, Conv4x4 stride 4, LayerNorm (keys ``patch_embed.proj``, ``patch_embed.norm``)."""

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dims, 4, 4)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C)."""
        x = pad_to_multiple(x.permute(0, 2, 3, 1), 4).permute(0, 3, 1, 2)  # (B, 3, H', W')
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H'/4, W'/4, C)
