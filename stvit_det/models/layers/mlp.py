"""The transformer MLP (Linear C -> hC, GELU, Linear hC -> C) of every STViT-R and Swin block, lean in memory.

A plain ``fc2(gelu(fc1(x)))`` keeps two hidden tensors for the backward: fc1's output (for GELU's gradient) and
GELU's output (for fc2's weight gradient), 2 x 4C floats per token, the largest activations of a block. Here
GELU and fc2 form one autograd function that keeps only fc1's output and recomputes GELU (elementwise, cheap)
in the backward: half the MLP's activation memory, the same numbers. The "selective recomputation" of
Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", arXiv 2205.05198, applied
to the MLP.

On the CPU (eager, fp32) the function's forward and backward loop over chunks of tokens, so that GELU's output
and the gradient flowing into it never exist for all tokens at once: only fc1's output (kept) and its gradient
(returned) are full-size. Large fresh tensors are slow to touch on the CPU (``chunking.py``); this saves about
a fifth of a stage-1 MLP's training time at 800x1216. Without autograd on the CPU the whole MLP runs over chunks
of tokens.

Parameter names follow timm's ``Mlp`` (``fc1``, ``fc2``), as in the official checkpoints.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .chunking import chunk_items, chunked, eager_cpu


def _rows_per_chunk(h: torch.Tensor) -> Optional[int]:
    """Tokens per chunk for eager fp32 CPU work on more than one chunk, else None (one call)."""
    if h.dtype != torch.float32 or not eager_cpu(h):  # chunked sums in bf16 / fp16 would round per chunk
        return None
    step = chunk_items(h.shape[-1] * h.element_size())
    return step if step < h.numel() // h.shape[-1] else None


class _GeluLinear(torch.autograd.Function):
    """y = gelu(h) W^T + b, keeping h (not gelu(h)) for the backward."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        step = _rows_per_chunk(h)
        if step is None:
            return F.linear(F.gelu(h), weight, bias)
        h2 = h.reshape(-1, h.shape[-1])  # (N, C_hid)
        y = h2.new_empty(h2.shape[0], weight.shape[0])  # (N, C_out)
        for r in range(0, h2.shape[0], step):
            a = F.gelu(h2[r:r + step])  # (n, C_hid), a reused heap block
            if bias is None:
                torch.mm(a, weight.t(), out=y[r:r + step])
            else:
                torch.addmm(bias, a, weight.t(), out=y[r:r + step])
        return y.view(*h.shape[:-1], -1)  # (N, C) -> (..., C)

    @staticmethod
    def backward(ctx, grad_y):
        h, weight = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h2 = h.reshape(-1, h.shape[-1])  # (N, C_hid)
        grad_y2 = grad_y.reshape(-1, grad_y.shape[-1])  # (N, C_out)
        weight = weight.to(grad_y.dtype)
        grad_b = grad_y2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        step = _rows_per_chunk(h)
        if step is None:
            grad_w = grad_y2.t() @ F.gelu(h2) if need_w else None  # GELU recomputed; (C_out, C_hid)
            grad_h = torch.ops.aten.gelu_backward(grad_y2 @ weight, h2) if need_h else None
        else:
            grad_w = torch.zeros_like(weight) if need_w else None
            grad_h = torch.empty_like(h2) if need_h else None
            for r in range(0, h2.shape[0], step):
                h_c, g_c = h2[r:r + step], grad_y2[r:r + step]  # (n, C_hid), (n, C_out)
                if need_w:
                    grad_w.addmm_(g_c.t(), F.gelu(h_c))  # GELU recomputed
                if need_h:
                    torch.ops.aten.gelu_backward.grad_input(g_c @ weight, h_c, grad_input=grad_h[r:r + step])
        return (grad_h.view_as(h) if need_h else None), grad_w, grad_b  # grad_h (N, C_hid) -> h's shape


class Mlp(nn.Module):
    """fc1 (C -> hidden) -> GELU -> fc2 (hidden -> C), no dropout.

    Args:
        in_features: C; hidden_features: hidden width.
    """

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (..., hidden)
        if torch.is_grad_enabled() and (h.requires_grad or self.fc2.weight.requires_grad):
            if (h.device.type in ('cpu', 'cuda') and torch.is_autocast_enabled(h.device.type)
                    and h.dtype != torch.float64):  # one dtype inside (autocast casts no double tensor)
                dtype = torch.get_autocast_dtype(h.device.type)
                with torch.autocast(h.device.type, enabled=False):
                    bias = None if self.fc2.bias is None else self.fc2.bias.to(dtype)
                    return _GeluLinear.apply(h.to(dtype), self.fc2.weight.to(dtype), bias)
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(F.gelu(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C); without autograd on the CPU in chunks of tokens."""
        rows = x.reshape(-1, x.shape[-1])  # (N, C)
        per_token = 2 * self.fc1.out_features * x.element_size()  # fc1 output + GELU output
        return chunked(lambda t, _: self._forward(t), rows, 0, per_token).view(*x.shape[:-1], -1)  # (..., C)
