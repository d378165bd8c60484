"""Semantic tokens of STViT-R: generation and refinement from image regions, then local and global
self-attention among the semantic tokens (blocks j=1..4 of a dumbbell unit).

STViT-R: Chang et al., CVPR 2023, arXiv 2303.08685, section 3.2. Official counterparts (Apache-2.0):
``SemanticAttentionBlock`` and ``Block`` in changsn/STViT-R-Object-Detection ``mmdet/models/backbones/layers.py``.
Written anew here; regions are read from a once-projected map (``layers/attention.py``: in place, or gathered by
the oracle) instead of unfolded copies.

Every block keeps the uniform stage contract ``(x, s) -> (x, s)``: x are image tokens (B, H, W, C), s the
semantic grid (B, Hs, Ws, C), where window (i, j) of the padded image owns the ss x ss grid cells
[ss*i, ss*i+ss) x [ss*j, ss*j+ss).

Legend: B batch, H/W image map, Hp/Wp padded to ws, C channels, ws window size, ss semantic samples per window
side, Hs = ss*Hp/ws, Ws = ss*Wp/ws, nW windows, S = ss*ss tokens per window, k key-region side, K = k*k.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .attention import QKVAttention, Region
from .mlp import Mlp
from .window_ops import check_pad_mask, pad_to_multiple, semantic_grid_size, window_partition, window_reverse


def layer_scaled(gamma: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``gamma * branch`` in the branch's dtype: under autocast the float32 layer scale would otherwise promote
    the bfloat16 / float16 branch, and through the residual every later token of the stage, to float32 (twice the
    activation memory; mmdet's Swin, without layer scales, stays in the autocast dtype). Unchanged in float32."""
    return gamma.to(branch.dtype) * branch


class SemanticBlockBase(nn.Module):
    """Shared parts of the j=1..5 blocks: LN1 (for queries AND keys/values), q/kv attention, LN2, MLP, and layer
    scales ``layer_scale_1/2`` (init 1e-5) applied before stochastic depth, as in the released code.

    Args:
        dim: channels C; num_heads: h.
        mlp_ratio: hidden width of the MLP / C; qkv_bias: bias in ``q`` and ``kv``.
        drop_path: stochastic depth rate; layer_scale_init: initial value of both layer scales.
        attn_impl: see :class:`QKVAttention`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, layer_scale_init: float = 1e-5, attn_impl: str = 'auto') -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = QKVAttention(dim, num_heads, qkv_bias, attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim, ), float(layer_scale_init)))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, ), float(layer_scale_init)))

    def window_residual(self, tw: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """tw + DropPath(g1 * branch) for per-window tokens (B, nW, N, C), with stochastic depth drawn per
        *window*: the released blocks run their region attention on (B*nW, N, C), so each window keeps or drops
        its update on its own (the MLP branch, on (B, L, C), drops per image)."""
        update = layer_scaled(self.layer_scale_1, branch).flatten(0, 1)  # (B*nW, N, C)
        return tw + self.drop_path(update).view_as(branch)  # (B, nW, N, C)

    def mlp_residual(self, t: torch.Tensor) -> torch.Tensor:
        """t + DropPath(g2 * MLP(LN2 t)) for tokens of any shape (B, ..., C)."""
        return t + self.drop_path(layer_scaled(self.layer_scale_2, self.mlp(self.norm2(t))))

    def region_attention(self, queries: torch.Tensor, src: torch.Tensor, unit: int, kernel: int,
                         valid_hw: Tuple[int, int], pad_mode: str, image_pads: Tuple[int, int]) -> torch.Tensor:
        """Attn(LN1 queries, LN1 src[R_k(w)]) for every window w: the key regions of the source grid, each path
        of ``attn_impl`` reaching them its own way (``attention.py``).

        Args:
            queries: raw query tokens of every window (B, nW, Nq, C).
            src: raw source grid (B, Gh, Gw, C): the padded image map or the semantic grid.
            unit: source cells per window side; kernel: region side.
            valid_hw: real (unpadded) extent of the source, for ``pad_mask='correct'``.
            pad_mode: ``'correct'``, ``'official'`` or ``'none'``.
            image_pads: (pad_b, pad_r) of the image map, for ``pad_mask='official'``.

        Returns:
            (B, nW, Nq, C).
        """
        region = Region(tuple(src.shape[1:3]), unit, kernel, pad_mode, tuple(valid_hw), tuple(image_pads))
        border = self.norm1(src.new_zeros(1, src.shape[-1]))[0]  # (C, ): LN1 of a zero (outer-border) token (2-D
        # input: FLOP counters such as mmengine's take LayerNorm inputs of 2 to 5 dimensions only)
        return self.attn(self.norm1(queries), self.norm1(src), border, region)


class SemanticTokenGenerator(SemanticBlockBase):
    """Generates (j=1, ``generate=True``) or refines (j=2) the semantic tokens of every window by attending to
    the image tokens in a k x k key region around the window (k=14 for generation, 21 for refinement).

    Generation starts from an adaptive max-pool (ws -> ss per side, zero padding included) of the raw image
    tokens of each padded window (the spatial-pooling initialisation of the paper) and adds the attention with a
    residual: s = s0 + DP(g1 * Attn(LN1 s0, LN1 x[R_k])) (DP per window); then s = s + DP(g2 * MLP(LN2 s)).

    Official counterpart: ``SemanticAttentionBlock`` (``window_size`` 14 / 21 in the detection configs).

    Args:
        dim, num_heads, mlp_ratio, qkv_bias, drop_path, layer_scale_init, attn_impl: see
            :class:`SemanticBlockBase`.
        window_size: ws; samples: ss; region: k; generate: pool a fresh grid from x (ignoring s) if True.
        pad_mask: ``'correct'`` | ``'official'`` | ``'none'`` (see :func:`region_key_bias`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, samples: int = 3, region: int = 14,
                 generate: bool = True, pad_mask: str = 'correct', **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        check_pad_mask(pad_mask)
        if not 1 <= samples <= window_size:
            raise ValueError(f'samples per window side must be in [1, {window_size}], got {samples}')
        if region < window_size:
            raise ValueError(f'key region {region} must be at least the window size {window_size}')
        self.window_size, self.samples, self.region = window_size, samples, region
        self.generate, self.pad_mask = generate, pad_mask

    def pool(self, xp: torch.Tensor) -> torch.Tensor:
        """Adaptive max-pool of every padded window: (B, Hp, Wp, C) -> (B, nW, S, C)."""
        B, Hp, Wp, C = xp.shape
        ws, ss = self.window_size, self.samples
        win = window_partition(xp, ws)  # (B, nW, ws*ws, C)
        nW = win.shape[1]
        win = win.view(B * nW, ws, ws, C).permute(0, 3, 1, 2)  # (B*nW, C, ws, ws)
        s0 = F.adaptive_max_pool2d(win, ss)  # (B*nW, C, ss, ss)
        return s0.flatten(2).transpose(1, 2).reshape(B, nW, ss * ss, C)  # (B, nW, S, C)

    def forward(self, x: torch.Tensor, s: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: image tokens (B, H, W, C).
            s: semantic grid (B, Hs, Ws, C) to refine; ignored when generating.

        Returns:
            (x unchanged, s of shape (B, Hs, Ws, C)).
        """
        B, H, W, C = x.shape
        ws, ss = self.window_size, self.samples
        xp = pad_to_multiple(x, ws)  # (B, Hp, Wp, C), zero padded
        Hp, Wp = xp.shape[1:3]
        Hs, Ws = semantic_grid_size(H, W, ws, ss)
        if self.generate:
            sw = self.pool(xp)  # (B, nW, S, C)
        else:
            if s is None or s.shape[1:3] != (Hs, Ws):
                raise ValueError(f'refinement needs a semantic grid of size {(Hs, Ws)}, got '
                                 f'{None if s is None else tuple(s.shape[1:3])}')
            sw = window_partition(s, ss)  # (B, nW, S, C)
        attn = self.region_attention(sw, xp, ws, self.region, (H, W), self.pad_mask, (Hp - H, Wp - W))
        sw = self.window_residual(sw, attn)  # (B, nW, S, C)
        s = window_reverse(sw, ss, Hs, Ws)  # (B, Hs, Ws, C)
        return x, self.mlp_residual(s)


class SemanticTokenBlock(SemanticBlockBase):
    """Self-attention among semantic tokens: within each window's ss x ss tokens (j=3, ``local``) or over all
    Ns = Hs*Ws tokens of the image (j=4, ``global``); then the MLP. No positional encoding.

    Official counterpart: ``Block`` (the local and global blocks of ``Deit`` in the detection code).

    Args:
        scope: ``'local'`` or ``'global'``; samples: ss (grid cells per window side, for ``'local'``).
        other args: see :class:`SemanticBlockBase`.
    """

    def __init__(self, dim: int, num_heads: int, scope: str = 'local', samples: int = 3, **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if scope not in ('local', 'global'):
            raise ValueError(f"scope must be 'local' or 'global', got '{scope}'")
        self.scope, self.samples = scope, samples

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x, s) -> (x unchanged, s), s of shape (B, Hs, Ws, C)."""
        B, Hs, Ws, C = s.shape
        if self.scope == 'local':
            t = window_partition(s, self.samples)  # (B, nW, S, C)
        else:
            t = s.reshape(B, 1, Hs * Ws, C)  # (B, 1, Ns, C)
        tn = self.norm1(t)
        t = t + self.drop_path(layer_scaled(self.layer_scale_1, self.attn(tn, tn)))
        if self.scope == 'local':
            s = window_reverse(t, self.samples, Hs, Ws)  # (B, Hs, Ws, C)
        else:
            s = t.view(B, Hs, Ws, C)  # (B, 1, Ns, C) -> (B, Hs, Ws, C)
        return x, self.mlp_residual(s)
