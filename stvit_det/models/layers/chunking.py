"""Inference-time chunking of work that is independent per token or per window, so that no temporary grows
large: on the CPU a tensor of more than about 32 MB is freshly mapped from the OS on every allocation (glibc
returns it with ``munmap`` when freed), and the page faults of touching it cost more than the arithmetic of a
LayerNorm, a GELU or a softmax over it. Processing 60800 stage-1 tokens of an 800x1216 image in chunks of a few
thousand keeps every temporary in the allocator's reused heap and in cache; the result is the same.

:func:`chunked` applies only without autograd (training needs every activation anyway), on the CPU, and never
while tracing, exporting or compiling (a graph wants one op, not a loop); autograd functions that keep their
saved tensors whole can still loop over chunks inside their forward and backward (``mlp.py``).
"""
from typing import Callable

import torch

#: target size of the largest temporary of one chunk, in bytes
CHUNK_BYTES = 8 * 2**20


def eager() -> bool:
    """True in eager execution: no tracing, ONNX export or compilation under way (a graph wants one op, not a loop,
    nor a choice made by timing)."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())


def eager_cpu(x: torch.Tensor) -> bool:
    """True for a CPU tensor in eager execution (no tracing / export / compilation)."""
    return x.device.type == 'cpu' and eager()


def should_chunk(x: torch.Tensor) -> bool:
    """True in eager CPU inference (no autograd, no tracing / export / compilation)."""
    return eager_cpu(x) and not torch.is_grad_enabled()


def chunk_items(bytes_per_item: int) -> int:
    """Items per chunk so that a chunk's largest temporary holds about :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // max(1, bytes_per_item))


def chunked(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, dim: int,
            bytes_per_item: int) -> torch.Tensor:
    """``fn(x, 0)`` computed on slices of ``x`` along ``dim`` (``fn`` must act independently on every slice).

    Args:
        fn: maps a slice (..., n, ...) and the index of its first item to an output with the same extent n along
            ``dim``.
        x: input.
        dim: the independent dimension (tokens, windows).
        bytes_per_item: bytes of the largest temporary per item along ``dim``; chunks hold about
            :data:`CHUNK_BYTES` of it.

    Returns:
        ``fn(x)``, assembled along ``dim``.
    """
    n = x.shape[dim]
    step = chunk_items(bytes_per_item)
    if not should_chunk(x) or step >= n:
        return fn(x, 0)
    return torch.cat([fn(part, i * step) for i, part in enumerate(x.split(step, dim))], dim)
