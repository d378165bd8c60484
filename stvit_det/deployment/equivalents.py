"""Exportable equivalents of the PyTorch functions that the ONNX exporters cannot translate at the sizes STViT-R
uses, swapped in only while a model is traced for export (:class:`ExportableOps`), so the model code is never
touched and eager PyTorch keeps the original kernels. Each is tested equal to the function it replaces
(``tests/test_onnx_export.py``).

* ``F.adaptive_max_pool2d``: the 'generate' block pools every 7x7 window to 3x3 with overlapping bins
  ([0, 3), [2, 5), [4, 7)). ONNX has no adaptive max pool. The TorchScript exporter maps it to ``MaxPool`` only
  when it can read the input size and the output size divides it (here: "Unsupported: ONNX export of operator
  adaptive_max_pool2d, input size not accessible"); the dynamo exporter has no translation ("No decompositions
  registered for the real-valued input"). Replacement: every output bin as a static slice and a max.
* ``F.adaptive_avg_pool2d``: UperNet's pyramid pooling (mmseg's ``PPM``, bins 1, 2, 3, 6) pools the last
  backbone map, whose size the TorchScript exporter cannot read after STViT-R's last stage ("adaptive_avg_pool2d,
  input size not accessible"). Replacement: every output bin as a static slice and a mean.
* ``F.scaled_dot_product_attention``: the blocks attend over windows as 5-D (B, G, h, N, d) tensors; the dynamo
  exporter translates only 4-D query / key / value ("only 4D query, key, and value are supported"). Replacement:
  softmax(q k^T * scale + mask) v written out, which ONNX expresses for any number of leading dimensions (the
  TorchScript exporter emits the same MatMul / Softmax graph for SDPA).

* ``attn_impl='tiled'`` (and ``'auto'``, which picks it per block): the tiled region attention is an
  ``autograd.Function`` (``TiledAttention``, ``models/layers/tiled_attention.py``) with no ONNX ``symbolic``; the
  TorchScript exporter stops at such a function with "RuntimeError: unordered_map::at" (under tracing the tiled
  path now runs its forward as plain operations, for mmengine's FLOP counter: a chain of products over strided
  views, unrolled per chunk of tile rows, which the export does not use). ``'flex'`` compiles a kernel.
  :func:`exportable_attention` gives such blocks of the exported model an exportable function of the same
  attention for the duration of the export (:data:`EXPORTABLE_REGION_ATTENTION`): a ``'tiled'`` block exports as
  the gathered regions (``'reference'``: every region's keys by one ``Gather``, written-out softmax: the region
  arithmetic, keys duplicated once per region), a ``'flex'`` block as ``'dense'``; ``'auto'`` keeps choosing per
  block, so the blocks it runs tiled export gathered and those it runs dense (a region that covers most of the map)
  export dense. Exporting every block as ``'dense'`` instead puts the square of the map in the graph: at 1344x2016
  that graph of STViT-R-T ran 0.97 / 0.88x (min / median) of Swin-T's speed in ONNX Runtime, the per-block export
  1.17 / 1.18x (README). The exported graph is compared with the unswitched model.

Cached tensors: ``functools.lru_cache`` helpers of the model (window masks, region indices) would cache tracer
values during an export and hand them to later eager calls; :class:`ExportableOps` clears every such cache of
``stvit_det.models`` on entry and exit.

Legend: N batch, C channels, H/W input size, oh/ow output size, Nq queries, K keys, d head width.
"""
import contextlib
import functools
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def adaptive_bins(size: int, out: int) -> Tuple[Tuple[int, int], ...]:
    """PyTorch's adaptive pooling bins: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    return tuple(((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out))


def adaptive_max_pool2d_as_slices(x: torch.Tensor, output_size: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``F.adaptive_max_pool2d(x, output_size, return_indices=True)`` from static slices, max and argmax.

    Args:
        x: (N, C, H, W) or (C, H, W) with static H and W.
        output_size: (oh, ow).

    Returns:
        values (N, C, oh, ow) and indices (N, C, oh, ow) into the flattened H*W plane (int64), as the kernel.
    """
    H, W = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (int(output_size[0]) if output_size[0] is not None else H,
              int(output_size[1]) if output_size[1] is not None else W)
    values, indices = [], []
    for r0, r1 in adaptive_bins(H, oh):
        row_v, row_i = [], []
        for c0, c1 in adaptive_bins(W, ow):
            patch = x[..., r0:r1, c0:c1].flatten(-2)  # (..., bh*bw)
            v, arg = patch.max(dim=-1)  # (...,), (...,)
            row_v.append(v)
            row_i.append((r0 + arg // (c1 - c0)) * W + c0 + arg % (c1 - c0))  # index into the H*W plane
        values.append(torch.stack(row_v, -1))  # (..., ow)
        indices.append(torch.stack(row_i, -1))
    return torch.stack(values, -2), torch.stack(indices, -2)  # (..., oh, ow)


def adaptive_avg_pool2d_as_slices(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` from static slices and means.

    Args:
        x: (N, C, H, W) or (C, H, W) with static H and W.
        output_size: oh, or (oh, ow); None keeps that dimension.

    Returns:
        (..., oh, ow).
    """
    H, W = int(x.shape[-2]), int(x.shape[-1])
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    oh, ow = (int(size[0]) if size[0] is not None else H, int(size[1]) if size[1] is not None else W)
    rows = [torch.stack([x[..., r0:r1, c0:c1].mean(dim=(-2, -1)) for c0, c1 in adaptive_bins(W, ow)], -1)
            for r0, r1 in adaptive_bins(H, oh)]  # oh x (..., ow)
    return torch.stack(rows, -2)  # (..., oh, ow)


def sdpa_as_matmul(query: torch.Tensor,
                   key: torch.Tensor,
                   value: torch.Tensor,
                   attn_mask: Optional[torch.Tensor] = None,
                   dropout_p: float = 0.0,
                   is_causal: bool = False,
                   scale: Optional[float] = None,
                   enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (inference: no dropout, not causal, no GQA) written out.

    Args:
        query: (..., Nq, d); key, value: (..., K, d).
        attn_mask: boolean (True = attend) or additive float mask broadcastable to (..., Nq, K), or None.
        scale: logit scale (default d^-0.5).

    Returns:
        (..., Nq, d).
    """
    if dropout_p or is_causal or enable_gqa:
        raise NotImplementedError('export supports inference attention only (no dropout, causal mask or GQA)')
    scale = query.shape[-1]**-0.5 if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * scale  # (..., Nq, K)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float('-inf'))
        else:
            logits = logits + attn_mask
    return logits.softmax(dim=-1) @ value  # (..., Nq, d)


def clear_model_caches() -> int:
    """Clear every ``functools.lru_cache`` function of the loaded ``stvit_det.models`` modules; returns how many."""
    n = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith('stvit_det.models') or module is None:
            continue
        for obj in vars(module).values():
            cache = getattr(obj, 'cache', obj)  # window_ops.geometry_cache keeps its lru_cache in .cache
            if isinstance(cache, functools._lru_cache_wrapper):
                cache.cache_clear()
                n += 1
    return n


class ExportableOps(TorchFunctionMode):
    """While active, ``F.adaptive_max_pool2d``, ``F.adaptive_avg_pool2d`` and ``F.scaled_dot_product_attention`` run
    their exportable equivalents (see the module docstring); every other function runs unchanged."""

    def __enter__(self):
        clear_model_caches()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        clear_model_caches()
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.adaptive_max_pool2d:
            return _adaptive_max_pool2d(*args, **kwargs)
        if func is F.adaptive_avg_pool2d:
            return adaptive_avg_pool2d_as_slices(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return sdpa_as_matmul(*args, **kwargs)
        return func(*args, **kwargs)


def _adaptive_max_pool2d(input: torch.Tensor, output_size, return_indices: bool = False):
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    values, indices = adaptive_max_pool2d_as_slices(input, size)
    return (values, indices) if return_indices else values


#: region attention functions with no ONNX translation -> the ``attn_impl`` whose function is exported instead
EXPORTABLE_REGION_ATTENTION = {'tiled': 'reference', 'flex': 'dense'}


def stand_in_modules(model: nn.Module) -> List[Tuple[str, str]]:
    """The (module name, attn_impl) pairs of ``model`` whose blocks may run a stand-in of
    :data:`EXPORTABLE_REGION_ATTENTION` while exporting (``'auto'`` runs one wherever it picks ``'tiled'``)."""
    return [(name, module.attn_impl) for name, module in model.named_modules()
            if getattr(module, 'attn_impl', None) in ('auto', *EXPORTABLE_REGION_ATTENTION)]


@contextlib.contextmanager
def exportable_attention(model: nn.Module) -> Iterator[List[Tuple[str, str]]]:
    """Temporarily make every region attention of ``model`` exportable: each of its attention modules runs the
    function of :data:`EXPORTABLE_REGION_ATTENTION` in place of ``'tiled'`` and ``'flex'`` (the module's
    ``stand_ins``, restored on exit), after ``'auto'`` has chosen for the block. Only ``model`` changes, so other
    models, in this thread or another, keep their kernels. Yields :func:`stand_in_modules`."""
    modules = [m for m in model.modules() if hasattr(m, 'stand_ins')]
    saved = [m.stand_ins for m in modules]
    for m in modules:
        m.stand_ins = {**m.stand_ins, **EXPORTABLE_REGION_ATTENTION}
    try:
        yield stand_in_modules(model)
    finally:
        for m, s in zip(modules, saved):
            m.stand_ins = s
