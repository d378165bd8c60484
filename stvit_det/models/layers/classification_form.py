"""The classification form of STViT-R's stage 3: the network as released for ImageNet-1k, selectable with
``STViTR(stage3_form='classification')`` so that released ImageNet weights evaluate as released.

STViT-R: Chang et al., CVPR 2023, arXiv 2303.08685. Released ImageNet code (Apache-2.0): changsn/STViT-R
``models/swin_transformer.py`` (class ``Deit``, stage 3) and ``models/layers.py`` (``SemanticAttentionBlock``,
``Block``), run with ``SHORTCUT=False``, ``USE_GLOBAL=False``, ``RELATIVE_POS=False`` (``log/small.txt``,
``log/base.txt``). Written anew here from those rules; parameter names are the released ones, so the same
checkpoint loads into either form (design spec 7.2).

What differs from the detection form (``semantic_tokens.py``, ``recovery.py``), block by block of a dumbbell unit:

* j=1 ``cls-generate``: the keys of window w are its ss*ss max-pooled tokens CONCATENATED with patch w of a fixed
  10x10 unfold (stride 4) of the image map; the new tokens are ``g1 * Attn(LN1 s0, LN1 [s0 | patch])`` with NO
  residual from s0 and no drop path on that branch (released ``SHORTCUT=False``); then the MLP step.
* j=2 ``cls-refine``: every semantic token attends to ALL semantic and ALL image tokens (global), with a residual.
* j=5 ``cls-recover``: every image token attends to ALL semantic tokens (global), with a residual.
* j=0 (window), j=3 (local) and j=4 (global) are the blocks of the detection form.
* ``cls-shifted``: the Swin blocks of stages 1, 2 and 4 follow Swin's classification rule: a map that fits in one
  window is not shifted (microsoft/Swin-Transformer ``SwinTransformerBlock``: ``if min(input_resolution) <=
  window_size: shift_size = 0``). At 224x224 this is stage 4 (7x7); the released checkpoints accordingly hold
  ``attn_mask`` buffers for stages 1 and 2 only. (Swin also shrinks the window to the map; that case cannot occur
  with the sizes below, and the padded window is kept.)

The released unfold is tied to the input size: its patches line up with the 7x7 windows only when a stage-3 side
has 14 or 21 tokens (input sides 209-224 or 321-336); other sizes raise an error naming the size.

Legend: B batch, H/W stage-3 map, C channels, ws window size, nh/nw/nW window grid, ss samples per window side,
S = ss*ss, Hs/Ws semantic grid, k unfold kernel, P = k*k, N = H*W image tokens, Ns = Hs*Ws semantic tokens.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .semantic_tokens import SemanticBlockBase, layer_scaled
from .swin_block import SwinBlock
from .window_ops import window_partition, window_reverse

#: values of ``STViTR(stage3_form=...)``
STAGE3_FORMS = ('detection', 'classification')
#: one dumbbell unit of the classification form (j=0..5)
CLASSIFICATION_UNIT = ('window', 'cls-generate', 'cls-refine', 'local', 'global', 'cls-recover')
#: block kinds this file builds (see :func:`build_classification_block`)
CLASSIFICATION_KINDS = ('cls-generate', 'cls-refine', 'cls-recover', 'cls-shifted')


def classification_pattern(depth: int) -> Tuple[str, ...]:
    """Stage 3 of the classification form: ``depth / 6`` units of :data:`CLASSIFICATION_UNIT`."""
    unit = len(CLASSIFICATION_UNIT)
    if depth <= 0 or depth % unit:
        raise ValueError(f'the sparsified stage needs a depth that is a positive multiple of {unit} '
                         f'(one dumbbell unit = {CLASSIFICATION_UNIT}), got {depth}')
    return CLASSIFICATION_UNIT * (depth // unit)


def classification_swin_pattern(depth: int) -> Tuple[str, ...]:
    """Stages 1, 2, 4 of the classification form: W-MSA / SW-MSA alternating, the shifted blocks unshifted on a map
    that fits in one window."""
    return tuple('cls-shifted' if k % 2 else 'window' for k in range(depth))


def unfold_grid_error(H: int, W: int, window_size: int, kernel: int, stride: int) -> Optional[str]:
    """Why the released key unfold does not fit an H x W stage-3 map (None when it fits).

    The unfold has ``(side - kernel) // stride + 1`` patches per side; patch i must be window i's, so every side must
    be a multiple of ``window_size`` with as many patches as windows (ws 7, k 10, stride 4: sides 14 and 21).
    """
    for name, side in (('height', H), ('width', W)):
        patches = (side - kernel) // stride + 1 if side >= kernel else 0
        if side % window_size or patches != side // window_size:
            fitting = [n for n in range(window_size, 64 * window_size, window_size)
                       if n >= kernel and (n - kernel) // stride + 1 == n // window_size]
            sides = ' or '.join(str(n) for n in fitting)
            inputs = ' or '.join(f'{16 * n - 15}-{16 * n}' for n in fitting)  # stage 3 has stride 16
            return (f"stage3_form='classification': the released generation block unfolds {kernel}x{kernel} key "
                    f'patches with stride {stride}, one per {window_size}x{window_size} window, which fits only '
                    f'stage-3 sides of {sides} tokens (input sides {inputs}); got a stage-3 {name} of {side} '
                    f"(map {H}x{W}). Use stage3_form='detection' for other sizes.")
    return None


class UnfoldSemanticGenerator(SemanticBlockBase):
    """j=1 of the classification form: max-pooled tokens of every window attend to themselves plus the window's
    patch of a fixed k x k unfold (stride 4) of the image map; no residual from the pooled tokens.

    s = g1 * Attn(LN1 s0, LN1 [s0 | patch_w]); then s = s + DP(g2 * MLP(LN2 s)).

    Official counterpart: ``SemanticAttentionBlock`` in changsn/STViT-R ``models/layers.py`` (``y=None`` branch,
    ``shortcut=False``).

    Args:
        dim, num_heads, mlp_ratio, qkv_bias, drop_path, layer_scale_init, attn_impl: see
            :class:`SemanticBlockBase`.
        window_size: ws; samples: ss; kernel / stride: the key unfold (10 / 4 as released).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, samples: int = 3, kernel: int = 10,
                 stride: int = 4, **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if not 1 <= samples <= window_size:
            raise ValueError(f'samples per window side must be in [1, {window_size}], got {samples}')
        self.window_size, self.samples, self.kernel, self.stride = window_size, samples, kernel, stride

    def forward(self, x: torch.Tensor, s: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: image tokens (B, H, W, C), H and W fitting the unfold (see :func:`unfold_grid_error`).
            s: ignored (every unit starts its semantic tokens afresh).

        Returns:
            (x unchanged, s of shape (B, Hs, Ws, C)).
        """
        B, H, W, C = x.shape
        ws, ss, k = self.window_size, self.samples, self.kernel
        error = unfold_grid_error(H, W, ws, k, self.stride)
        if error:
            raise ValueError(error)
        nh, nw = H // ws, W // ws
        win = window_partition(x, ws).reshape(B * nh * nw, ws, ws, C).permute(0, 3, 1, 2)  # (B*nW, C, ws, ws)
        s0 = F.adaptive_max_pool2d(win, ss).flatten(2).transpose(1, 2)  # (B*nW, S, C)
        s0 = s0.reshape(B, nh * nw, ss * ss, C)  # (B, nW, S, C)
        patches = F.unfold(x.permute(0, 3, 1, 2), k, stride=self.stride)  # (B, C*P, nW), channel-major rows
        patches = patches.view(B, C, k * k, nh * nw).permute(0, 3, 2, 1)  # (B, nW, P, C)
        context = self.norm1(torch.cat([s0, patches], dim=2))  # (B, nW, S + P, C)
        # no residual and no drop path here, as released
        sw = layer_scaled(self.layer_scale_1, self.attn(self.norm1(s0), context))  # (B, nW, S, C)
        s = window_reverse(sw, ss, nh * ss, nw * ss)  # (B, Hs, Ws, C)
        return x, self.mlp_residual(s)


class GlobalSemanticRefiner(SemanticBlockBase):
    """j=2 of the classification form: every semantic token attends to all semantic and all image tokens.

    s = s + DP(g1 * Attn(LN1 s, LN1 [s | x])); then the MLP step.

    Official counterpart: the global ``Block`` called as ``blk(semantic_token, cat([semantic_token, x]))`` in
    ``Deit.forward`` (changsn/STViT-R ``models/swin_transformer.py``; ``USE_GLOBAL=False``: no added embedding).
    """

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x (B, H, W, C), s (B, Hs, Ws, C)) -> (x unchanged, s (B, Hs, Ws, C))."""
        B, H, W, C = x.shape
        if s is None:
            raise ValueError('refinement needs the semantic tokens of a generation block')
        Hs, Ws = s.shape[1:3]
        t = s.reshape(B, 1, Hs * Ws, C)  # (B, 1, Ns, C)
        context = self.norm1(torch.cat([t, x.reshape(B, 1, H * W, C)], dim=2))  # (B, 1, Ns + N, C)
        t = t + self.drop_path(layer_scaled(self.layer_scale_1, self.attn(self.norm1(t), context)))
        return x, self.mlp_residual(t.view(B, Hs, Ws, C))  # (B, 1, Ns, C) -> (B, Hs, Ws, C)


class GlobalRecovery(SemanticBlockBase):
    """j=5 of the classification form: every image token attends to all semantic tokens.

    x = x + DP(g1 * Attn(LN1 x, LN1 s)); then the MLP step.

    Official counterpart: the global ``Block`` called as ``blk(x, semantic_token)`` in ``Deit.forward``.
    """

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, None]:
        """(x (B, H, W, C), s (B, Hs, Ws, C)) -> (x (B, H, W, C), None): the semantic tokens end with the unit."""
        B, H, W, C = x.shape
        if s is None:
            raise ValueError('recovery needs the semantic tokens of its unit')
        t = x.reshape(B, 1, H * W, C)  # (B, 1, N, C)
        context = self.norm1(s.reshape(B, 1, -1, C))  # (B, 1, Ns, C)
        t = t + self.drop_path(layer_scaled(self.layer_scale_1, self.attn(self.norm1(t), context)))
        return self.mlp_residual(t.view(B, H, W, C)), None  # (B, 1, N, C) -> (B, H, W, C)


def build_classification_block(kind: str, dim: int, num_heads: int, window_size: int, samples: int,
                               drop_path: float, **semantic) -> nn.Module:
    """The block of one :data:`CLASSIFICATION_KINDS` kind (``STViTStage`` builds the shared kinds itself).

    Args:
        kind, dim, num_heads, window_size, samples, drop_path: as for every block of the stage.
        semantic: ``mlp_ratio``, ``qkv_bias``, ``attn_impl`` and ``layer_scale_init`` (the last one is not used by
            the Swin kind).
    """
    if kind == 'cls-generate':
        return UnfoldSemanticGenerator(dim, num_heads, window_size, samples, drop_path=drop_path, **semantic)
    if kind == 'cls-refine':
        return GlobalSemanticRefiner(dim, num_heads, drop_path=drop_path, **semantic)
    if kind == 'cls-recover':
        return GlobalRecovery(dim, num_heads, drop_path=drop_path, **semantic)
    if kind == 'cls-shifted':
        swin = {k: v for k, v in semantic.items() if k != 'layer_scale_init'}
        return SwinBlock(dim, num_heads, window_size, window_size // 2, drop_path=drop_path, unshift_fitting_maps=True,
                         **swin)
    raise ValueError(f"unknown classification-form block kind '{kind}', expected one of {CLASSIFICATION_KINDS}")


__all__ = [
    'STAGE3_FORMS', 'CLASSIFICATION_UNIT', 'CLASSIFICATION_KINDS', 'classification_pattern',
    'classification_swin_pattern', 'unfold_grid_error', 'UnfoldSemanticGenerator', 'GlobalSemanticRefiner',
    'GlobalRecovery', 'build_classification_block'
]
