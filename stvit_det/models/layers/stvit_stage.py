"""A stage of STViT-R: a flat list of blocks driven by a declared pattern, then optional patch merging.

Plain Swin stages alternate ``('window', 'shifted')``; the sparsified stage 3 repeats the dumbbell unit
``('window', 'generate', 'refine', 'local', 'global', 'recover')`` (arXiv 2303.08685, Fig. 2); the TokenLearner
sparsifier swaps 'generate' / 'recover' for 'learn' / 'fuse' (``token_learner.py``). Block k of the
pattern is ``blocks.{k}``, so checkpoint keys stay ``layers.{i}.blocks.{k}`` as in the official code (whose
stage-3 class ``Deit`` chooses blocks with index lists).

Every block maps ``(x, s) -> (x, s)``: x image tokens (B, H, W, C), s the semantic grid (B, Hs, Ws, C) or None.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from .classification_form import CLASSIFICATION_KINDS, build_classification_block
from .recovery import SpatialRecovery
from .semantic_tokens import SemanticTokenBlock, SemanticTokenGenerator
from .swin_block import PatchMerging, SwinBlock
from .token_learner import TokenFuser, TokenLearner

DUMBBELL_UNIT = ('window', 'generate', 'refine', 'local', 'global', 'recover')
TOKENLEARNER_UNIT = ('window', 'learn', 'refine', 'local', 'global', 'fuse')
#: stage-3 unit of every sparsifier (``STViTR(sparsifier=...)``)
SPARSIFIER_UNITS = {'stvit': DUMBBELL_UNIT, 'tokenlearner': TOKENLEARNER_UNIT}
BLOCK_KINDS = ('window', 'shifted') + DUMBBELL_UNIT[1:] + ('learn', 'fuse') + CLASSIFICATION_KINDS


def swin_pattern(depth: int) -> Tuple[str, ...]:
    """W-MSA / SW-MSA alternating, starting unshifted."""
    return tuple('shifted' if k % 2 else 'window' for k in range(depth))


def dumbbell_pattern(depth: int, sparsifier: str = 'stvit') -> Tuple[str, ...]:
    """``depth / 6`` units of ``SPARSIFIER_UNITS[sparsifier]``; raises if ``depth`` is not a positive multiple of 6
    or the sparsifier is unknown."""
    if sparsifier not in SPARSIFIER_UNITS:
        raise ValueError(f"sparsifier must be one of {tuple(SPARSIFIER_UNITS)}, got '{sparsifier}'")
    unit = SPARSIFIER_UNITS[sparsifier]
    if depth <= 0 or depth % len(unit):
        raise ValueError(f'the sparsified stage needs a depth that is a positive multiple of '
                         f'{len(unit)} (one dumbbell unit = {unit}), got {depth}')
    return unit * (depth // len(unit))


class STViTStage(nn.Module):
    """Blocks of one resolution (NHWC in, NHWC out), built from a pattern of block kinds.

    Args:
        dim: channels C.
        pattern: block kinds, each in :data:`BLOCK_KINDS`.
        num_heads: heads of every block.
        drop_path: one stochastic-depth rate per block.
        downsample: append a :class:`PatchMerging` (C -> 2C) applied by :meth:`downsample_forward`.
        window_size: ws; mlp_ratio; qkv_bias.
        samples: semantic tokens per window side (ss).
        regions: key-region sides (generate, refine, recover); the first two on the image map, the last on the
            semantic grid.
        layer_scale_init: initial layer scale of the semantic blocks.
        pad_mask: padding mask mode of the semantic blocks.
        attn_impl: attention implementation of every block.
        with_cp: activation checkpointing of every block (when gradients are needed).
    """

    def __init__(self,
                 dim: int,
                 pattern: Sequence[str],
                 num_heads: int,
                 drop_path: Sequence[float],
                 downsample: bool = False,
                 window_size: int = 7,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 samples: int = 3,
                 regions: Tuple[int, int, int] = (14, 21, 27),
                 layer_scale_init: float = 1e-5,
                 pad_mask: str = 'correct',
                 attn_impl: str = 'auto',
                 with_cp: bool = False) -> None:
        super().__init__()
        if len(drop_path) != len(pattern):
            raise ValueError(f'{len(pattern)} blocks but {len(drop_path)} drop-path rates')
        self.pattern = tuple(pattern)
        self.with_cp = with_cp
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_impl=attn_impl)
        semantic = dict(common, layer_scale_init=layer_scale_init)
        learned = dict(mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init, pad_mask=pad_mask)
        blocks = []
        for kind, dp in zip(self.pattern, drop_path):
            if kind in ('window', 'shifted'):
                shift = window_size // 2 if kind == 'shifted' else 0
                blk = SwinBlock(dim, num_heads, window_size, shift, drop_path=dp, **common)
            elif kind in ('generate', 'refine'):
                blk = SemanticTokenGenerator(dim, num_heads, window_size, samples,
                                             regions[0] if kind == 'generate' else regions[1],
                                             generate=kind == 'generate', pad_mask=pad_mask, drop_path=dp,
                                             **semantic)
            elif kind in ('local', 'global'):
                blk = SemanticTokenBlock(dim, num_heads, kind, samples, drop_path=dp, **semantic)
            elif kind == 'recover':
                blk = SpatialRecovery(dim, num_heads, window_size, samples, regions[2], pad_mask, drop_path=dp,
                                      **semantic)
            elif kind == 'learn':
                blk = TokenLearner(dim, window_size, samples, drop_path=dp, **learned)
            elif kind == 'fuse':
                blk = TokenFuser(dim, window_size, samples, drop_path=dp, **learned)
            elif kind in CLASSIFICATION_KINDS:  # the released ImageNet network (classification_form.py)
                blk = build_classification_block(kind, dim, num_heads, window_size, samples, dp, **semantic)
            else:
                raise ValueError(f"unknown block kind '{kind}', expected one of {BLOCK_KINDS}")
            blocks.append(blk)
        self.blocks = nn.ModuleList(blocks)
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C), before patch merging."""
        s: Optional[torch.Tensor] = None
        for blk in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x, s = cp.checkpoint(blk, x, s, use_reentrant=False)
            else:
                x, s = blk(x, s)
        return x

    def downsample_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch merging (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); identity without a downsample."""
        return x if self.downsample is None else self.downsample(x)
