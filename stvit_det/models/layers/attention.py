"""Multi-head attention with separate query / key-value sources: the one attention layer of every STViT-R
semantic block (generation, refinement, local, global, recovery), and the switch between its implementations.

STViT-R: arXiv 2303.08685; official counterpart: ``Attention`` with ``q`` and ``kv`` projections in
changsn/STViT-R-Object-Detection ``mmdet/models/backbones/layers.py`` (Apache-2.0). Written anew here.

The key/value source is projected ONCE per token ("project-once", spec 10.4): a region block hands the whole
normalised source grid to :class:`QKVAttention` (``forward(..., region=...)``), which projects it and calls one
function of :data:`REGION_ATTENTION`. Every function there takes the same arguments and computes the same thing,
softmax(q k^T * scale + bias) v over each window's key region; they differ only in how they reach the keys:

* :func:`region_reference`: gather every region's keys/values by index, written-out softmax (the oracle);
* :func:`region_sdpa`: the same gather, fused ``scaled_dot_product_attention``;
* :func:`region_dense`: every query over ALL source tokens under a dense region mask (no gather; the work grows
  with the square of the map);
* :func:`region_tiled`: each region as R x R neighbouring tiles read in place through overlapping strided views
  (``Tensor.unfold``): no gather, no copy, and exactly the region arithmetic;
* :func:`region_flex`: PyTorch's FlexAttention over all source tokens with the dense region bias as a score
  modification and a block mask made from the same table, so that only the 128 x 128 blocks of (queries, keys)
  that touch a region are computed (the GPU path; the CPU runs its forward only: PyTorch has no CPU backward);
* ``'auto'`` (default): the cheapest of ``tiled`` and ``dense`` for the block at hand, by :func:`choose_region_impl`.

The released code instead unfolds the map into per-window copies and projects every copy (4x / 9x / 81x work).

Legend: B batch, G query groups (windows, or 1 for global attention), Nq queries per group, K keys per group,
L source tokens, Gh/Gw source grid, C channels, h heads, d = C / h, u tile (window) side on the source grid,
T = u*u tokens per tile, R tiles per region side, th/tw tile grid.
"""
from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import tiled_attention as tiled_attention_mod
from .chunking import eager
from .tiled_attention import TileGeometry, tiled_attention
from .window_ops import region_index, region_key_bias, region_tiles, tiles_fit

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

#: every value of ``attn_impl``: the automatic choice, then the implementations of :data:`REGION_ATTENTION`
ATTN_IMPLS = ('auto', 'reference', 'sdpa', 'dense', 'tiled', 'flex')


def check_attn_impl(attn_impl: str) -> str:
    """``attn_impl`` itself if it is one of :data:`ATTN_IMPLS`, else a ValueError that lists them."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got '{attn_impl}'")
    return attn_impl


class Region(NamedTuple):
    """Where the keys of every window's region lie (all the geometry an implementation needs).

    Attributes:
        grid: (Gh, Gw) source grid (a multiple of ``unit``): the padded image map, or the semantic grid.
        unit: source cells per query window side (7 on the image map, ss on the semantic grid).
        kernel: region side k on the source grid (14, 21 or 27).
        pad_mask: ``'correct'`` | ``'official'`` | ``'none'`` (see ``window_ops.key_position_bias``).
        valid: (H, W) real extent of the source, for ``'correct'``.
        image_pads: (pad_b, pad_r) of the image map, for ``'official'``.
    """
    grid: Tuple[int, int]
    unit: int
    kernel: int
    pad_mask: str
    valid: Tuple[int, int]
    image_pads: Tuple[int, int]

    def key_bias(self, device: torch.device) -> Optional[torch.Tensor]:
        """(G, K) bias of the gathered regions (``window_ops.region_key_bias``) or None."""
        return region_key_bias(*self.grid, self.unit, self.kernel, self.pad_mask, *self.valid, *self.image_pads,
                               device)

    def index(self, device: torch.device) -> torch.Tensor:
        """(G, K) indices into the flattened grid plus one border token (``window_ops.region_index``)."""
        return region_index(*self.grid, self.unit, self.kernel, device)[0]


# ---------------------------------------------------------------------------------------- plain attention
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], scale: float,
              fused: bool) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, written out or fused (``scaled_dot_product_attention``).

    Args:
        q: queries (..., Nq, d); k, v: keys and values (..., K, d).
        bias: additive logit bias broadcastable to (..., Nq, K), or None.
        scale: logit scale, applied after the product as in the released semantic blocks.
        fused: use ``torch.nn.functional.scaled_dot_product_attention``.

    Returns:
        (..., Nq, d).
    """
    if fused:
        if bias is not None:
            bias = bias.to(q.dtype)
        if q.dim() == 4:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        # the fused CPU kernels take 4-d inputs only (else SDPA falls back to its unfused math path)
        lead, Nq, K = q.shape[:-2], q.shape[-2], k.shape[-2]
        # (..., N, d) -> (1, prod(lead), N, d) each
        q4, k4, v4 = (t.expand(*lead, *t.shape[-2:]).reshape(1, -1, *t.shape[-2:]) for t in (q, k, v))
        if bias is not None:
            bias = bias.expand(*lead, Nq, K).reshape(1, -1, Nq, K)  # (1, prod(lead), Nq, K)
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias, scale=scale)  # (1, prod(lead), Nq, d)
        return out.view(*lead, Nq, -1)  # (..., Nq, d)
    return attention_weights(q, k, bias, scale).to(v.dtype) @ v  # (..., Nq, d); a float32 bias: float32 weights


def attention_weights(q: torch.Tensor, k: torch.Tensor, bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias), written out: the weights of :func:`attention` (..., Nq, K)."""
    attn = q @ k.transpose(-2, -1)  # (..., Nq, K)
    if scale != 1.0:
        attn = attn * scale
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1)


# ------------------------------------------------------------------------------- region attention paths
# Shared signature: q (B, h, G, Nq, d) unscaled queries of the G windows; kv (B, Gh, Gw, 2, h, d) the projected
# source grid; kv_border (2, h, d) the projected outer-border token kv(LN1(0)); region; scale.
# Each returns (B, h, G, Nq, d).


def _flat_with_border(kv: torch.Tensor, kv_border: torch.Tensor) -> torch.Tensor:
    """(B, Gh, Gw, 2, h, d) + (2, h, d) -> (B, Gh*Gw + 1, 2, h, d): the flattened grid and one border token."""
    B = kv.shape[0]
    return torch.cat([kv.flatten(1, 2), kv_border.expand(B, 1, *kv_border.shape)], dim=1)


def _gathered(q, kv, kv_border, region):
    """Gather the K/V of every region: (B, h, G, K, d) each, and the (G, 1, K) bias or None."""
    # heads first, then the gather: it writes the (G, K) keys of each head in place, no transpose of the copies
    flat = _flat_with_border(kv, kv_border).permute(2, 0, 3, 1, 4)  # (2, B, h, L, d)
    k, v = flat[:, :, :, region.index(q.device)].unbind(0)  # 2 x (B, h, G, K, d)
    bias = region.key_bias(q.device)
    return k, v, None if bias is None else bias[:, None, :]  # (G, 1, K)


def region_reference(q: torch.Tensor, kv: torch.Tensor, kv_border: torch.Tensor, region: Region,
                     scale: float) -> torch.Tensor:
    """The oracle: every region's keys/values gathered by index (duplicated), written-out softmax."""
    k, v, bias = _gathered(q, kv, kv_border, region)
    return attention(q, k, v, bias, scale, fused=False)


def region_sdpa(q: torch.Tensor, kv: torch.Tensor, kv_border: torch.Tensor, region: Region,
                scale: float) -> torch.Tensor:
    """Gathered regions (duplicated keys/values), fused attention."""
    k, v, bias = _gathered(q, kv, kv_border, region)
    return attention(q, k, v, bias, scale, fused=True)


def densify_region_bias(index: torch.Tensor, bias: Optional[torch.Tensor], num_keys: int) -> torch.Tensor:
    """Turn per-window key regions (gather indices + bias) into one dense additive bias over ALL source tokens.

    Keys outside a window's region get ``-inf``. The outer border is one shared zero token (the last source
    token) that a region may contain several times; ``n`` copies of a key with logit ``l + b`` weigh exactly like
    one key with logit ``l + logsumexp(b_1..b_n)``, so the border column gets the log-sum-exp of its entries'
    biases (``log n`` without a mask, ``-inf`` when they are masked).

    Args:
        index: (G, K) indices into ``num_keys`` source tokens; ``num_keys - 1`` is the border token.
        bias: (G, K) additive bias or None.
        num_keys: L, the number of source tokens including the border token.

    Returns:
        (G, L) float bias.
    """
    b = torch.zeros(index.shape, device=index.device) if bias is None else bias.float()
    border = index == num_keys - 1
    dense = torch.full((index.shape[0], num_keys + 1), float('-inf'), device=index.device)  # last: scratch
    dense.scatter_(1, torch.where(border, torch.full_like(index, num_keys), index), b)
    dense[:, num_keys - 1] = _logsumexp_rows(b.masked_fill(~border, float('-inf')))
    return dense[:, :num_keys]


def _logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, dim=1)`` with rows of only ``-inf`` giving ``-inf`` in every runtime: the shift by the
    row maximum is 0 there (ONNX's ``ReduceLogSumExp``, as the dynamo exporter writes it, shifts by ``-inf`` and
    gives NaN, which the exported graph then folded into its constant region bias)."""
    m = x.amax(dim=1, keepdim=True)  # (G, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (x - m).exp().sum(dim=1).log() + m[:, 0]  # (G,)


def _all_keys(kv: torch.Tensor, kv_border: torch.Tensor, region: Region):
    """Every source token (and the border token, last) as keys / values (B, h, L, d) each, and the (G, L) dense
    region bias of :func:`densify_region_bias` (``dense`` and ``flex``)."""
    flat = _flat_with_border(kv, kv_border)  # (B, L, 2, h, d)
    k, v = flat.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, L, d)
    bias = densify_region_bias(region.index(kv.device), region.key_bias(kv.device), flat.shape[1])  # (G, L)
    return k, v, bias


def region_dense(q: torch.Tensor, kv: torch.Tensor, kv_border: torch.Tensor, region: Region,
                 scale: float) -> torch.Tensor:
    """Every query over ALL source tokens (plus the border token), a dense mask keeping its window's region;
    one fused call, nothing duplicated, work proportional to (queries x source tokens)."""
    B, h, G, Nq, d = q.shape
    k, v, mask = _all_keys(kv, kv_border, region)  # 2 x (B, h, L, d), (G, L)
    mask = mask.repeat_interleave(Nq, dim=0)  # (G*Nq, L), window-major queries
    out = attention(q.reshape(B, h, G * Nq, d), k, v, mask, scale, fused=True)  # (B, h, G*Nq, d)
    return out.view(B, h, G, Nq, d)  # (B, h, G*Nq, d) -> (B, h, G, Nq, d)


def region_tiled(q: torch.Tensor, kv: torch.Tensor, kv_border: torch.Tensor, region: Region,
                 scale: float) -> torch.Tensor:
    """Neighbourhood attention over tiles (``window_ops.region_tiles``): keys and values are laid out tile by
    tile once (with the outer-border token filling the shifted grid's edge) and every region row is an
    overlapping strided view of them, so each product is one ``bmm`` over all windows and heads that reads the
    keys in place. Exactly the region arithmetic; no key or value is duplicated."""
    B, h, G, Nq, d = q.shape
    Gh, Gw = region.grid
    lay = region_tiles(Gh, Gw, region.unit, region.kernel, region.pad_mask, *region.valid, *region.image_pads,
                       q.device)
    u, R, (th, tw), (nh, nw) = lay.unit, lay.tiles, lay.grid, lay.windows
    T, S = u * u, lay.tiles * u * u  # tokens per tile, per slab (one region row)
    top, bottom, left, right = lay.pad
    if top or bottom or left or right:  # fill the tile grid's edge with the border token
        full = kv_border.expand(B, th * u, tw * u, *kv_border.shape).clone()  # (B, th*u, tw*u, 2, h, d)
        full[:, top:top + Gh, left:left + Gw] = kv
        kv = full
    # tiles, flattened over (B, h, th, tw, u, u) with zero margins so that every slab stays in bounds
    tiles = kv.view(B, th, u, tw, u, 2, h, d).permute(5, 0, 6, 1, 3, 2, 4, 7)  # (2, B, h, th, tw, u, u, d)
    n, lo, hi = B * h * th * tw * T, lay.margin[0] * T, lay.margin[1] * T
    flat = kv.new_empty(2, lo + n + hi, d)
    flat[:, :lo] = 0
    flat[:, lo + n:] = 0
    flat[:, lo:lo + n] = tiles.reshape(2, n, d)  # (2, B, h, th, tw, u, u, d) -> (2, n, d)
    k_flat, v_flat = flat.unbind(0)  # 2 x (lo + n + hi, d)

    Q = B * h * th * tw  # query windows, junk ones included
    qg = q * scale
    if (th, tw) != (nh, nw):
        qg = F.pad(qg.view(B, h, nh, nw, Nq, d), (0, 0, 0, 0, 0, tw - nw, 0, th - nh))  # (B, h, th, tw, Nq, d)
    qg = qg.reshape(Q, Nq, d)  # (B, h, th, tw, Nq, d) -> (Q, Nq, d)
    bias = lay.bias if lay.border_bias is None else torch.cat([lay.bias, lay.border_bias[:, None]], dim=1)
    # (Q, K [+ 1]): row n is query window n mod (th*tw); in the engine's accumulation dtype (float32 for half q)
    bias = bias.to(torch.promote_types(q.dtype, torch.float32)).repeat(B * h, 1)
    kb = vb = None
    if lay.border_bias is not None:  # one shared outer-border key per window, value alike: 2 x (Q, 1, d)
        kb, vb = kv_border.view(2, 1, h, 1, 1, d).expand(2, B, h, th * tw, 1, d).reshape(2, Q, 1, d).unbind(0)
    step = num_rows = B * h * th
    if eager():
        step = max(1, tiled_attention_mod.LOGIT_CHUNK_BYTES // (tw * Nq * (R * S + 1) * bias.element_size()))
    geo = TileGeometry(T, R, tuple(lo + off * T for off in lay.offsets), th, tw, lay.tiles_above, min(step, num_rows))
    no_autocast = torch.autocast(q.device.type, enabled=False) if q.device.type in ('cpu', 'cuda') else nullcontext()
    with no_autocast:  # one dtype inside (the backward runs without autocast)
        out = tiled_attention(qg, k_flat.to(q.dtype), v_flat.to(q.dtype), kb if kb is None else kb.to(q.dtype),
                              vb if vb is None else vb.to(q.dtype), bias, geo)  # (Q, Nq, d)
    out = out.view(B, h, th, tw, Nq, d)[:, :, :nh, :nw]  # (B, h, nh, nw, Nq, d): the junk windows dropped
    return out.reshape(B, h, G, Nq, d)  # (B, h, nh, nw, Nq, d) -> (B, h, G, Nq, d)


#: FlexAttention block side (queries and keys), and whether :func:`region_flex` runs the compiled kernel outside
#: ``torch.compile`` (else PyTorch's unfused reference implementation, which materialises every score)
FLEX_BLOCK = 128
FLEX_COMPILE = True
_compiled_flex: Dict[str, Callable] = {}


def _flex_kernel(device: torch.device) -> Callable:
    """``flex_attention`` itself inside a compiled graph, else one cached ``torch.compile`` of it per device type
    (eager FlexAttention is only a reference implementation). On the CPU the kernel is compiled for static shapes:
    torch 2.13's C++ template fails to build its dynamic-shape variant (``cur_kvSplitSize8`` undeclared)."""
    from torch.nn.attention.flex_attention import flex_attention
    if not FLEX_COMPILE or torch.compiler.is_compiling():
        return flex_attention
    if device.type not in _compiled_flex:
        _compiled_flex[device.type] = torch.compile(flex_attention, dynamic=False if device.type == 'cpu' else None)
    return _compiled_flex[device.type]


def region_block_mask(allowed: torch.Tensor, num_queries: int, block: int = FLEX_BLOCK) -> 'BlockMask':
    """The FlexAttention ``BlockMask`` of a region table: which (query block, key block) pairs hold any key of a
    query's region (partial blocks) and which hold only such keys (full blocks).

    Worked out per window, never per query: query block b holds the queries of the contiguous windows
    ``b*block // Nq .. ((b+1)*block - 1) // Nq``, so its key blocks are the union (full: the intersection) of
    those windows' key blocks; memory O(windows x key blocks).

    Args:
        allowed: (G, L) bool, key l lies in window g's region (the finite entries of :func:`densify_region_bias`).
        num_queries: Nq queries per window; query n belongs to window n // Nq (window-major, as in
            :func:`region_dense`).
        block: block side.

    Returns:
        ``BlockMask`` over (G*Nq, L), no ``mask_mod`` (the score modification carries the -inf of the table).
    """
    from torch.nn.attention.flex_attention import BlockMask
    G, L = allowed.shape
    N = G * num_queries
    nq, nk = -(-N // block), -(-L // block)
    keys = F.pad(allowed, (0, nk * block - L)).view(G, nk, block)  # (G, nk, block); padded keys False
    any_key, all_keys = keys.any(dim=2), keys.all(dim=2)  # (G, nk) each
    first = torch.arange(nq, device=allowed.device) * block // num_queries  # (nq, ) first window of each block
    last = ((torch.arange(nq, device=allowed.device) + 1) * block - 1).clamp(max=N - 1) // num_queries
    span = block // num_queries + 2  # most windows one query block can touch
    windows = torch.minimum(first[:, None] + torch.arange(span, device=allowed.device), last[:, None])  # (nq, span)
    partial = any_key[windows].any(dim=1)  # (nq, nk)
    full = all_keys[windows].all(dim=1)  # (nq, nk)
    if N % block:  # the last query block is cut by the end of the queries: never 'full'
        full[-1] = False
    partial &= ~full

    def table(hit: torch.Tensor):  # (nq, nk) -> ((1, 1, nq) counts, (1, 1, nq, nk) key blocks with hits first)
        order = torch.argsort(hit.to(torch.int8), dim=1, descending=True, stable=True)
        return hit.sum(dim=1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]

    return BlockMask.from_kv_blocks(*table(partial), *table(full), BLOCK_SIZE=block, seq_lengths=(N, L))


def region_flex(q: torch.Tensor, kv: torch.Tensor, kv_border: torch.Tensor, region: Region,
                scale: float) -> torch.Tensor:
    """FlexAttention (Dong et al., arXiv 2412.05496) of every query over ALL source tokens (plus the border token),
    with :func:`region_dense`'s table as the score modification and :func:`region_block_mask` skipping the blocks
    outside every region: fused like ``dense``, block-sparse like the region arithmetic (up to the 128-token
    blocks). Training needs CUDA: PyTorch's FlexAttention has no CPU backward."""
    if q.device.type == 'cpu' and torch.is_grad_enabled() and (q.requires_grad or kv.requires_grad):
        raise RuntimeError("attn_impl='flex' trains on CUDA only (PyTorch's FlexAttention has no CPU backward); "
                           "use attn_impl='auto' on the CPU")
    B, h, G, Nq, d = q.shape
    k, v, bias = _all_keys(kv, kv_border, region)  # 2 x (B, h, L, d), (G, L)
    L = k.shape[2]
    block_mask = region_block_mask(bias > float('-inf'), Nq)
    # rows/columns up to the padded block grid, so that the kernel may read them for padded queries and keys
    nq, nk = block_mask.kv_indices.shape[-2:]
    table = F.pad(bias, (0, nk * FLEX_BLOCK - L), value=float('-inf'))  # (G, nk*block): padded keys masked
    table = F.pad(table, (0, 0, 0, -(-nq * FLEX_BLOCK // Nq) - G))  # (>= G, nk*block): padded queries see keys

    def add_region_bias(score, b, head, q_idx, kv_idx):
        return score + table[q_idx // Nq, kv_idx]

    out = _flex_kernel(q.device)(q.reshape(B, h, G * Nq, d), k, v, score_mod=add_region_bias, block_mask=block_mask,
                         scale=scale)  # (B, h, G*Nq, d)
    return out.view(B, h, G, Nq, d)  # (B, h, G*Nq, d) -> (B, h, G, Nq, d)


#: ``attn_impl`` -> region attention function (all with the signature of :func:`region_reference`)
REGION_ATTENTION: Dict[str, Callable[..., torch.Tensor]] = {
    'reference': region_reference,
    'sdpa': region_sdpa,
    'dense': region_dense,
    'tiled': region_tiled,
    'flex': region_flex,
}


#: relative cost per key of the tiled path vs the dense one: (>= 16 queries per window, fewer)
TILED_COST = (2.0, 4.0)


def choose_region_impl(region: Region, num_queries: int) -> str:
    """The ``'auto'`` choice for one block: ``'tiled'`` (exactly the region's work) unless the region covers so
    much of the source that one fused ``'dense'`` call over every key is cheaper.

    Cost model: dense attends all ``L`` source keys per query with the fused kernel; tiled attends the ``K``
    region keys with ``bmm`` + softmax, which costs about ``TILED_COST`` times as much per key (measured on the
    CPU with ``tools/analysis/benchmark.py --profile``: about 2x with 49 queries per window (recovery), 4x with 9
    (generation, refinement), whose small products use the CPU poorly). Regions that do not split into tiles
    always go dense.
    """
    if not tiles_fit(region.unit, region.kernel):
        return 'dense'
    Gh, Gw = region.grid
    cost = TILED_COST[0] if num_queries >= 16 else TILED_COST[1]
    return 'dense' if Gh * Gw + 1 <= cost * region.kernel**2 else 'tiled'


class QKVAttention(nn.Module):
    """Attention of queries from one token set over keys/values from another (or the same) set.

    Parameter names follow the official checkpoints: ``q`` (C -> C), ``kv`` (C -> 2C, first C outputs are the
    keys) and ``proj``. No positional encoding (the detection configs use ``relative_pos=False``).

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        qkv_bias: bias in ``q`` and ``kv``.
        attn_impl: one of :data:`ATTN_IMPLS`: how windowed regions are attended (:meth:`forward` with ``region``,
            :meth:`region_impl`); plain attention (local / global blocks) is written out for ``'reference'`` and
            fused otherwise.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_impl: str = 'auto') -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = (dim // num_heads)**-0.5
        self.attn_impl = check_attn_impl(attn_impl)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # set True to keep the weights of the last REGION attention (generation, refinement, recovery; written out
        # as 'reference'), for visualisation (tools/vis_semantic_tokens.py); local / global blocks record nothing
        self.record_attn = False
        # attn_impl -> the attn_impl that runs instead; set per module only while exporting
        # (deployment/equivalents.py, exportable_attention), so 'auto' still chooses per block
        self.stand_ins: Dict[str, str] = {}
        self.last_attn: Optional[dict] = None

    def _heads(self, query: torch.Tensor) -> torch.Tensor:
        """(B, G, Nq, C) -> projected queries (B, h, G, Nq, d)."""
        B, G, Nq, C = query.shape
        return self.q(query).view(B, G, Nq, self.num_heads, -1).permute(0, 3, 1, 2, 4)  # (B, h, G, Nq, d)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        """(B, h, G, Nq, d) -> projected output (B, G, Nq, C)."""
        B, h, G, Nq, d = out.shape
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, G, Nq, h * d))  # (B, G, Nq, C)

    def forward(self, query: torch.Tensor, context: torch.Tensor, border: Optional[torch.Tensor] = None,
                region: Optional[Region] = None) -> torch.Tensor:
        """Plain attention of each group's queries over the same group's keys (local / global blocks), or, with
        ``region``, attention of every window's queries over the keys of its region on a source grid.

        Args:
            query: normalised query tokens (B, G, Nq, C); with ``region``, G = (Gh/u) * (Gw/u) windows row-major.
            context: normalised key/value tokens (B, G, K, C), or with ``region`` the normalised source grid
                (B, Gh, Gw, C), projected once here.
            border: with ``region``: (C, ) the normalised outer-border token (LN1 of a zero token).
            region: the geometry of the key regions, or None.

        Returns:
            (B, G, Nq, C).
        """
        if region is not None:
            return self._region(query, context, border, region)
        B, G, K, C = context.shape
        q = self._heads(query)  # (B, h, G, Nq, d)
        # (B, G, K, 2C) -> (B, G, K, 2, h, d) -> 2 x (B, h, G, K, d)
        k, v = self.kv(context).view(B, G, K, 2, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5).unbind(0)
        out = attention(q, k, v, None, self.scale, fused=self.attn_impl != 'reference')  # (B, h, G, Nq, d)
        return self._merge(out)

    def _region(self, query: torch.Tensor, source: torch.Tensor, border: torch.Tensor,
                region: Region) -> torch.Tensor:
        """See :meth:`forward` with ``region``."""
        B, Gh, Gw, C = source.shape
        h = self.num_heads
        q = self._heads(query)  # (B, h, G, Nq, d)
        kv = self.kv(source).view(B, Gh, Gw, 2, h, -1)  # (B, Gh, Gw, 2, h, d)
        kv_border = self.kv(border).view(2, h, -1)  # (2, h, d)
        if self.record_attn:  # region_reference, keeping its weights
            k, v, bias = _gathered(q, kv, kv_border, region)  # 2 x (B, h, G, K, d), (G, 1, K)
            probs = attention_weights(q, k, bias, self.scale)  # (B, h, G, Nq, K)
            # weights (B, G, h, Nq, K) over the keys given by index (G, K)
            self.last_attn = dict(weights=probs.detach().transpose(1, 2), index=region.index(q.device))
            return self._merge(probs.to(v.dtype) @ v)
        impl = self.region_impl(region, q.shape[3])
        return self._merge(REGION_ATTENTION[impl](q, kv, kv_border, region, self.scale))

    def region_impl(self, region: Region, num_queries: int) -> str:
        """The :data:`REGION_ATTENTION` key this module runs for ``region``: ``attn_impl``, with ``'auto'`` resolved
        by :func:`choose_region_impl`, then replaced by its export stand-in if one is set (``stand_ins``)."""
        impl = choose_region_impl(region, num_queries) if self.attn_impl == 'auto' else self.attn_impl
        return self.stand_ins.get(impl, impl)
