"""Spatial recovery of STViT-R (block j=5 of a dumbbell unit): every image token queries the semantic tokens
of a k x k region of the semantic grid around its window (k=27: the semantic tokens of the 9 x 9 windows
centred on it), restoring a full-resolution map for the FPN.

STViT-R: Chang et al., CVPR 2023, arXiv 2303.08685, section 3.3 (image tokens are queries, semantic tokens
keys/values). Official counterpart (Apache-2.0): ``RestoreBlock`` in changsn/STViT-R-Object-Detection
``mmdet/models/backbones/layers.py``. Written anew; the semantic keys/values are projected once, and each region
is read from the projected grid (``layers/attention.py``: in place, or gathered by the oracle).

Legend: B batch, H/W image map, Hp/Wp padded to ws, C channels, ws window size, N = ws*ws, ss semantic samples
per window side, Hs/Ws semantic grid, nW windows, k region side on the semantic grid, K = k*k.
"""
from typing import Optional, Tuple

import torch

from .semantic_tokens import SemanticBlockBase
from .window_ops import check_pad_mask, pad_to_multiple, semantic_grid_size, window_partition, window_reverse


class SpatialRecovery(SemanticBlockBase):
    """x_w = pad(x)_w; x_w += DP(g1 * Attn(LN1 x_w, LN1 s[R_k(w)])); crop; x += DP(g2 * MLP(LN2 x)).

    With ``pad_mask='correct'`` only out-of-grid (outer border) keys are masked: every semantic token is real,
    also those pooled from padding. ``'official'`` applies the IMAGE map's bottom/right pads to the semantic grid
    with the released corner rule (masking real semantic tokens), ``'none'`` masks nothing.

    Args:
        window_size: ws; samples: ss; region: k (semantic-grid cells, >= ss).
        pad_mask: ``'correct'`` | ``'official'`` | ``'none'``.
        other args: see :class:`SemanticBlockBase`.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, samples: int = 3, region: int = 27,
                 pad_mask: str = 'correct', **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        check_pad_mask(pad_mask)
        if region < samples:
            raise ValueError(f'recovery region {region} must be at least the samples per window {samples}')
        self.window_size, self.samples, self.region, self.pad_mask = window_size, samples, region, pad_mask

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: image tokens (B, H, W, C); s: semantic grid (B, Hs, Ws, C).

        Returns:
            (x of shape (B, H, W, C), None): the semantic tokens end with their unit.
        """
        B, H, W, C = x.shape
        ws = self.window_size
        xp = pad_to_multiple(x, ws)  # (B, Hp, Wp, C)
        Hp, Wp = xp.shape[1:3]
        Hs, Ws = s.shape[1:3]
        if (Hs, Ws) != semantic_grid_size(H, W, ws, self.samples):
            raise ValueError(f'semantic grid {(Hs, Ws)} does not match the image map {(H, W)}')
        xw = window_partition(xp, ws)  # (B, nW, N, C)
        attn = self.region_attention(xw, s, self.samples, self.region, (Hs, Ws), self.pad_mask, (Hp - H, Wp - W))
        xw = self.window_residual(xw, attn)  # (B, nW, N, C), stochastic depth per window
        x = window_reverse(xw, ws, Hp, Wp)[:, :H, :W]  # (B, H, W, C)
        return self.mlp_residual(x), None


__all__ = ['SpatialRecovery']
