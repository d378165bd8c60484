"""The unchanged Swin pieces of STViT-R: window attention with relative position bias, the (shifted-)window
block, and patch merging.

Swin Transformer: Liu et al., ICCV 2021, arXiv 2103.14030; microsoft/Swin-Transformer and
SwinTransformer/Swin-Transformer-Object-Detection (MIT). Parameter names follow those official checkpoints
(``attn.qkv``, ``attn.relative_position_bias_table``, ``mlp.fc1``, ``downsample.reduction``), so STViT-R and Swin
ImageNet weights load without renaming. Written anew here; behaviour matches mmdet's ``SwinTransformer``
(tested: ``tests/test_ckpt_convert.py``, ``test_swin_parts_equal_mmdet_swin``).

Legend: B batch, H/W map size, Hp/Wp padded to a multiple of ws, C channels, ws window size, N = ws*ws,
nW windows, h heads, d = C / h.
"""
import time
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .attention import attention, check_attn_impl
from .chunking import chunked, eager
from .mlp import Mlp
from .window_ops import pad_to_multiple, shift_window_mask, window_partition, window_reverse


#: fused / written-out block time under which CPU inference takes the fused kernel: a clear win, not the noise of a
#: shared machine (on processors where the two are even, the written-out kernel, mmdet's, stays)
CPU_FUSED_BELOW = 0.9
_cpu_inference_fused: Optional[bool] = None  # measured once per process by use_fused_window_attention


def measure_cpu_window_kernels(repeats: int = 4) -> float:
    """Fused / written-out time (min) of a Swin block in CPU inference, on this processor and thread count.

    The block is a Swin-T stage-2 block (C 192, 6 heads, shifted) on a 56x84 map (96 windows), timed whole, as the
    backbone runs it (window attention in chunks, MLP): the attention kernel alone, outside the block, ranks the two
    otherwise on some processors. The two kernels run in turn (A B B A ...) after one untimed call of each, about
    0.3 s in all; the weights and input are drawn without touching the global random state.
    """
    global _cpu_inference_fused
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = SwinBlock(192, 6, 7, 3).eval()
        x = torch.randn(1, 56, 84, 192)  # (B, H, W, C)
    times = {False: [], True: []}
    try:
        with torch.inference_mode():
            for rep in range(repeats + 1):
                for fused in ((False, True) if rep % 2 == 0 else (True, False)):
                    _cpu_inference_fused = fused  # the block's attention reads it
                    start = time.perf_counter()
                    block(x)
                    if rep:
                        times[fused].append(time.perf_counter() - start)
    finally:
        _cpu_inference_fused = None
    return min(times[True]) / min(times[False])


def use_fused_window_attention(device: torch.device) -> bool:
    """Whether window attention (many 49-token windows, a bias per window) runs fused on ``device`` now.

    On the CPU the answer depends on the processor, so it is measured. ``tools/analysis/window_kernels.py --shape
    800 1216 --shape 1344 2016 --threads 2`` (fp32, torch 2.13, inference), fused / written-out by min / median per
    stage of a Swin-T: on one machine of the CI kind 0.96-1.40 / 0.99-1.16 (the written-out kernel no slower
    anywhere), on another (an Intel Xeon of family 6 model 207, AMX) 0.69-0.90 / 0.69-0.91 (fused faster
    everywhere; the STViT-R-T backbone at 800x1216 then 0.94x the time, min and median of 8 interleaved calls). In
    training (forward + backward) the fused kernel was the slower on the second machine too (1.02-1.16 by median,
    stages 1 and 3 at 800x1216). Hence, on the CPU: the written-out kernel (mmdet's ``WindowMSA``) with
    autograd and while tracing, exporting or compiling; in eager inference the fused one where
    :func:`measure_cpu_window_kernels`, run once per process at the first such call, finds it under
    :data:`CPU_FUSED_BELOW` of the written-out time. Not under a dispatch mode, which would see the timing's work
    (``FlopCounterMode`` of ``get_flops.py`` counted it): there the written-out kernel, until a call outside one
    has measured. Other devices fuse (not measured here: no GPU was lent).
    """
    if device.type != 'cpu':
        return True
    if torch.is_grad_enabled() or not eager():
        return False
    global _cpu_inference_fused
    if _cpu_inference_fused is None:
        if is_in_torch_dispatch_mode():  # FlopCounterMode, a memory tracker: they would see the timing's work
            return False  # not measured, nothing remembered
        _cpu_inference_fused = measure_cpu_window_kernels() < CPU_FUSED_BELOW
    return _cpu_inference_fused


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative position bias (W-MSA / SW-MSA).

    Official counterpart: ``WindowAttention`` in microsoft/Swin-Transformer ``models/swin_transformer.py``.

    Args:
        dim: channels C.
        window_size: ws.
        num_heads: h.
        qkv_bias: bias in ``qkv``.
        attn_impl: ``'reference'``: the written-out matmul-softmax with the queries scaled first, as Swin; any
            other value (a window has no region to gather, so they are alike here): the kernel that
            :func:`use_fused_window_attention` picks for the device and the moment (on the CPU written out as
            ``'reference'`` unless inference there measures fused ``scaled_dot_product_attention`` faster; fused
            elsewhere).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 attn_impl: str = 'auto') -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads)**-0.5
        self.attn_impl = check_attn_impl(attn_impl)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                            indexing='ij')).flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (N, N, 2)
        self.register_buffer('relative_position_index', rel[..., 0] * (2 * window_size - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> torch.Tensor:
        """(h, N, N) bias gathered from the table."""
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        return bias.view(N, N, -1).permute(2, 0, 1)  # (h, N, N)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: windows (B, nW, N, C).
            mask: additive shift mask (nW, N, N) or None.

        Returns:
            (B, nW, N, C).
        """
        B, nW, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q, k, v = self.qkv(x).view(B, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5).unbind(0)  # 3 x (B, nW, h, N, d)
        bias = self.relative_position_bias()  # (h, N, N)
        if self.attn_impl == 'reference' or not use_fused_window_attention(x.device):
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, nW, h, N, N): Swin scales the queries first
            attn = attn.add_(bias) if mask is None else attn.add_(bias).add_(mask[:, None])  # in place, as mmdet
            out = attn.softmax(dim=-1) @ v  # (B, nW, h, N, d)
        else:
            if mask is not None:
                bias = bias + mask[:, None]  # (nW, h, N, N)
            out = attention(q, k, v, bias, self.scale, fused=True)  # (B, nW, h, N, d)
        return self.proj(out.transpose(2, 3).reshape(B, nW, N, C))  # (B, nW, N, C)


class SwinBlock(nn.Module):
    """Pre-norm Swin block on an NHWC map: (shifted) window attention + MLP, no layer scale.

    Official counterpart: ``SwinTransformerBlock`` (also stage-3 block j=0 of every STViT-R dumbbell unit, where
    the shift is always 0). The map is padded to a multiple of the window AFTER ``norm1`` (padded tokens are
    exact zeros, unmasked), as in the detection code.

    Args:
        dim: channels C; num_heads: h; window_size: ws; shift: 0 (W-MSA) or ws // 2 (SW-MSA).
        mlp_ratio: hidden width of the MLP / C; qkv_bias: bias in ``qkv``; drop_path: stochastic depth rate.
        attn_impl: see :class:`WindowAttention`.
        unshift_fitting_maps: do not shift a map that fits in one window (``min(H, W) <= ws``), as Swin's
            classification code does (microsoft/Swin-Transformer ``SwinTransformerBlock``); the detection code
            always shifts.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, attn_impl: str = 'auto',
                 unshift_fitting_maps: bool = False) -> None:
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f'shift {shift} must be in [0, window_size={window_size})')
        self.window_size = window_size
        self.shift = shift
        self.unshift_fitting_maps = unshift_fitting_maps
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, s: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: image tokens (B, H, W, C).
            s: semantic tokens, passed through untouched (uniform block contract of :class:`STViTStage`).

        Returns:
            (x, s) with x of shape (B, H, W, C).
        """
        B, H, W, C = x.shape
        ws = self.window_size
        y = pad_to_multiple(self.norm1(x), ws)  # (B, Hp, Wp, C)
        Hp, Wp = y.shape[1:3]
        shift = 0 if self.unshift_fitting_maps and min(H, W) <= ws else self.shift
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = shift_window_mask(Hp, Wp, ws, shift, y.device)  # (nW, N, N)
        N, h = ws * ws, self.attn.num_heads
        y = chunked(lambda w, i: self.attn(w, None if mask is None else mask[i:i + w.shape[1]]),
                    window_partition(y, ws), 1, B * N * (3 * C + h * N) * 4)  # (B, nW, N, C): qkv + logits
        y = window_reverse(y, ws, Hp, Wp)  # (B, Hp, Wp, C)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :H, :W])  # (B, H, W, C)
        if self.training:
            return x + self.drop_path(self.mlp(self.norm2(x))), s
        hidden = self.mlp.fc1.out_features
        return chunked(lambda t, _: t + self.mlp(self.norm2(t)), x, 1, B * W * hidden * 4), s  # rows of the map


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C -> 2C, no bias); odd sizes padded by one.

    Channel order of the concat follows the official code: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets.

    Args:
        dim: input channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        x = pad_to_multiple(x, 2)  # (B, H', W', C), H' and W' even
        # (B, H'/2, W'/2, 4C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))  # (B, H'/2, W'/2, 2C)


__all__ = ['WindowAttention', 'SwinBlock', 'PatchMerging']
