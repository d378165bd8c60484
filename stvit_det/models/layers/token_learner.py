"""TokenLearner as an alternative sparsifier for the dumbbell unit of STViT-R: learned per-window pooling of the
image tokens into ss*ss tokens ('learn', replaces 'generate') and a TokenFuser-style recovery ('fuse', replaces
'recover'). The refine / local / global blocks run unchanged in between, because the learned tokens live on the
same semantic grid: window (i, j) owns the grid cells [ss*i, ss*i+ss) x [ss*j, ss*j+ss).

TokenLearner: Ryoo et al., "TokenLearner: What Can 8 Learned Tokens Do for Images and Videos?", NeurIPS 2021,
arXiv 2106.11297. Counterparts (Apache-2.0): ``TokenLearnerModuleV11`` and ``TokenFuser`` in google-research/scenic
``scenic/projects/token_learner/model.py``; keras-team/keras-io ``examples/vision/token_learner.py``. Written
anew here and applied per 7x7 window instead of over the whole map (design spec, section 11). STViT-R: arXiv
2303.08685.

Legend: B batch, H/W image map, Hp/Wp padded to ws, C channels, ws window size, N = ws*ws tokens per window,
ss samples per window side, S = ss*ss learned tokens per window, Hs = ss*Hp/ws, Ws = ss*Wp/ws, nW windows,
D bottleneck width of the selection / gate MLPs (64).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp

from .semantic_tokens import layer_scaled
from .window_ops import (check_pad_mask, pad_to_multiple, region_index, semantic_grid_size, window_partition,
                         window_reverse)


def padded_window_mask(H: int, W: int, ws: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Which tokens of each padded window are real.

    Args:
        H, W: real map size; ws: window size.

    Returns:
        Bool tensor (nW, N): True for tokens inside the H x W map. Every window holds at least one real token.
    """
    # not -(-H // ws): traced sizes export as ONNX Div, which truncates
    Hp, Wp = (H + ws - 1) // ws * ws, (W + ws - 1) // ws * ws
    valid = torch.zeros(1, Hp, Wp, 1, dtype=torch.bool, device=device)
    valid[:, :H, :W] = True
    return window_partition(valid, ws)[0, ..., 0]  # (nW, N)


class TokenLearnerBlockBase(nn.Module):
    """Shared parts of the 'learn' and 'fuse' blocks: window / sample sizes, the padding mode, the final MLP
    residual ``t + DP(g2 * MLP(LN2 t))`` (as in the STViT-R semantic blocks, g2 initialised to
    ``layer_scale_init``) and the ``record_attn`` / ``last_attn`` hook read by ``stvit_det.utils.attention_maps``.
    """

    def __init__(self, dim: int, window_size: int = 7, samples: int = 3, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, layer_scale_init: float = 1e-5, pad_mask: str = 'correct') -> None:
        super().__init__()
        check_pad_mask(pad_mask)
        if not 1 <= samples <= window_size:
            raise ValueError(f'samples per window side must be in [1, {window_size}], got {samples}')
        self.window_size, self.samples, self.pad_mask = window_size, samples, pad_mask
        self.num_tokens = samples * samples
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.layer_scale_2 = nn.Parameter(torch.full((dim, ), float(layer_scale_init)))
        # set True to keep the last weights in the QKVAttention format (for tools/vis_semantic_tokens.py)
        self.record_attn = False
        self.last_attn: Optional[dict] = None

    def mlp_residual(self, t: torch.Tensor) -> torch.Tensor:
        """t + DropPath(g2 * MLP(LN2 t)) for tokens of any shape (B, ..., C)."""
        return t + self.drop_path(layer_scaled(self.layer_scale_2, self.mlp(self.norm2(t))))


class TokenLearner(TokenLearnerBlockBase):
    """Block kind 'learn': TokenLearner v1.1 in every padded ws x ws window, S = ss*ss tokens per window.

    Per window w with image tokens X_w (N, C): logits = MLP(LN1 X_w) (C -> D -> S, GELU), A = softmax over the N
    positions (one map per token), s_w = A^T X_w on the raw, un-normalised tokens (``TokenLearnerModuleV11``); then
    s = s + DP(g2 * MLP(LN2 s)). Like 'generate' it ignores the incoming s and returns a fresh grid.

    Padding: the map is zero-padded to a multiple of ws. With ``pad_mask='correct'`` padded positions get no weight
    (every window holds a real token); ``'official'`` / ``'none'`` let them take weight as zero tokens, as the
    max-pool of 'generate' counts padded cells as 0.

    Args:
        dim: channels C; window_size: ws; samples: ss; bottleneck: D of the selection MLP (scenic: 64).
        mlp_ratio, drop_path, layer_scale_init: the final MLP residual.
        pad_mask: ``'correct'`` | ``'official'`` | ``'none'``.
    """

    def __init__(self, dim: int, window_size: int = 7, samples: int = 3, bottleneck: int = 64, **kwargs) -> None:
        super().__init__(dim, window_size, samples, **kwargs)
        self.norm1 = nn.LayerNorm(dim)
        # fc2 without a bias: one constant per token over all positions would cancel in the softmax over positions
        # (scenic's Dense has one, which can never change the output)
        self.selector = Mlp(dim, bottleneck, self.num_tokens, act_layer=nn.GELU, bias=(True, False))

    def forward(self, x: torch.Tensor, s: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: image tokens (B, H, W, C); s: ignored (a fresh grid is learned).

        Returns:
            (x unchanged, s of shape (B, Hs, Ws, C)).
        """
        B, H, W, C = x.shape
        ws, ss = self.window_size, self.samples
        xp = pad_to_multiple(x, ws)  # (B, Hp, Wp, C)
        Hp, Wp = xp.shape[1:3]
        xw = window_partition(xp, ws)  # (B, nW, N, C)
        logits = self.selector(self.norm1(xw))  # (B, nW, N, S)
        if self.pad_mask == 'correct' and (Hp, Wp) != (H, W):
            valid = padded_window_mask(H, W, ws, x.device)  # (nW, N)
            logits = logits.masked_fill(~valid[None, :, :, None], float('-inf'))
        weights = logits.transpose(-2, -1).softmax(dim=-1)  # (B, nW, S, N): softmax over positions
        sw = weights @ xw  # (B, nW, S, C)
        if self.record_attn:
            index, _, _ = region_index(Hp, Wp, ws, ws, x.device)  # (nW, N): each window's own tokens
            self.last_attn = dict(weights=weights.detach().unsqueeze(2), index=index)  # (B, nW, 1, S, N)
        s = window_reverse(sw, ss, *semantic_grid_size(H, W, ws, ss))  # (B, Hs, Ws, C)
        return x, self.mlp_residual(s)


class TokenMixing(nn.Module):
    """TokenFuser's Dense layer along the token axis, as a residual: t + W t with W (S, S) ZERO initialised (per
    channel, tokens mixed). No bias: it would add one constant per token to all its channels, which the LayerNorm
    over channels that follows removes (scenic's Dense has one, which can never change the output).

    scenic's ``TokenFuser`` zero-initialises the Dense kernel and follows it with a LayerNorm; LN of an all-zero
    input is 0, which leaves LN1 of the tokens, the gate MLP and LN2's weight without any gradient at the first
    step. The residual form starts as the identity mixing instead, so every parameter learns from step one while
    the mixing itself still starts at zero. Plain parameters (not ``nn.Linear``) keep the zero init through
    ``STViTR.init_weights``.
    """

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_tokens, num_tokens))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(..., S, C) -> (..., S, C)."""
        return t + torch.einsum('ij,...jc->...ic', self.weight, t)


class TokenFuser(TokenLearnerBlockBase):
    """Block kind 'fuse': every image token reads back the S tokens of its own window through learned gates.

    Per window w with image tokens X_w (N, C) and tokens s_w (S, C) (``TokenFuser``):
    T = LN_b(mix(LN_a s_w)); gates G = sigmoid(MLP(LN1 X_w)) (N, S), MLP C -> D -> S; X_w += DP(g1 * G T); merge
    windows, crop to H x W; x = x + DP(g2 * MLP(LN2 x)). g1 (``layer_scale_1``) starts at ``layer_scale_init`` like
    the other semantic blocks, so the block starts close to the identity (scenic's zero-initialised mixing does
    this there).

    Args:
        dim: channels C; window_size: ws; samples: ss; bottleneck: D of the gate MLP (scenic: 64).
        mlp_ratio, drop_path, layer_scale_init, pad_mask: see :class:`TokenLearner` (padded image tokens are
            computed and cropped; no key is padded here).
    """

    def __init__(self, dim: int, window_size: int = 7, samples: int = 3, bottleneck: int = 64, **kwargs) -> None:
        layer_scale_init = kwargs.get('layer_scale_init', 1e-5)
        super().__init__(dim, window_size, samples, **kwargs)
        self.token_norm1 = nn.LayerNorm(dim)
        self.token_mix = TokenMixing(self.num_tokens)
        self.token_norm2 = nn.LayerNorm(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.gate = Mlp(dim, bottleneck, self.num_tokens, act_layer=nn.GELU)
        self.layer_scale_1 = nn.Parameter(torch.full((dim, ), float(layer_scale_init)))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: image tokens (B, H, W, C); s: token grid (B, Hs, Ws, C).

        Returns:
            (x of shape (B, H, W, C), None): the tokens end with their unit.
        """
        B, H, W, C = x.shape
        ws, ss = self.window_size, self.samples
        xp = pad_to_multiple(x, ws)  # (B, Hp, Wp, C)
        Hp, Wp = xp.shape[1:3]
        Hs, Ws = s.shape[1:3]
        if (Hs, Ws) != semantic_grid_size(H, W, ws, ss):
            raise ValueError(f'token grid {(Hs, Ws)} does not match the image map {(H, W)}')
        xw = window_partition(xp, ws)  # (B, nW, N, C)
        t = self.token_norm2(self.token_mix(self.token_norm1(window_partition(s, ss))))  # (B, nW, S, C)
        gates = self.gate(self.norm1(xw)).sigmoid()  # (B, nW, N, S)
        if self.record_attn:
            index, _, _ = region_index(Hs, Ws, ss, ss, x.device)  # (nW, S): each window's own grid cells
            self.last_attn = dict(weights=gates.detach().unsqueeze(2), index=index)  # (B, nW, 1, N, S), not normalised
        xw = xw + self.drop_path(layer_scaled(self.layer_scale_1, gates @ t))  # (B, nW, N, C)
        x = window_reverse(xw, ws, Hp, Wp)[:, :H, :W]  # (B, H, W, C)
        return self.mlp_residual(x), None


__all__ = ['TokenLearner', 'TokenFuser', 'TokenMixing', 'padded_window_mask']
