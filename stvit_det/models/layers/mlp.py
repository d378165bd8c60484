"""The transformer MLP (Linear C -> hC, GELU, Linear hC -> C) of every STViT-R and Swin block, lean in memory.

A plain ``fc2(gelu(fc1(x)))`` keeps two hidden tensors for the backward: fc1's output (for GELU's gradient) and
GELU's output (for fc2's weight gradient), 2 x 4C floats per token, the largest activations of a block. Here
GELU and fc2 form one autograd function that keeps only fc1's output and recomputes GELU (elementwise, cheap)
in the backward: half the MLP's activation memory, the same numbers. The "selective recomputation" of
Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", arXiv 2205.05198, applied
to the MLP.

Without autograd on the CPU the MLP runs over chunks of tokens (``chunking.py``).

Parameter names follow timm's ``Mlp`` (``fc1``, ``fc2``), as in the official checkpoints.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .chunking import chunked


class _GeluLinear(torch.autograd.Function):
    """y = gelu(h) W^T + b, keeping h (not gelu(h)) for the backward."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        h, weight = ctx.saved_tensors
        a = F.gelu(h)  # recomputed
        grad_y2 = grad_y.reshape(-1, grad_y.shape[-1])  # (N, C_out)
        grad_w = grad_y2.t() @ a.reshape(-1, a.shape[-1]) if ctx.needs_input_grad[1] else None  # (C_out, C_hid)
        grad_b = grad_y2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad_y @ weight.to(grad_y.dtype), h)
        return grad_h, grad_w, grad_b


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
            if h.device.type in ('cpu', 'cuda') and torch.is_autocast_enabled(h.device.type):  # one dtype inside
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
        return chunked(lambda t, _: self._forward(t), rows, 0, per_token).view(*x.shape[:-1], -1)
