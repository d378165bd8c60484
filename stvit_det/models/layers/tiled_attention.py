"""Neighbourhood attention over tiles, forward and backward: the engine of ``attn_impl='tiled'``.

Neighbourhood attention: Hassani et al., "Neighborhood Attention Transformer", CVPR 2023, arXiv 2204.07143 (there
per query, here per window of queries over whole tiles, which is what STViT-R's regions are). Written anew.

Every query window attends the keys of R x R neighbouring tiles (``window_ops.region_tiles``). Keys and values
are stored once, tile by tile, in one flat (tokens, d) tensor; region row ``a`` of window n is the slab of R*T
consecutive tokens that starts at ``slabs[a] + n*T``, so for all windows at once it is an overlapping strided
view (``Tensor.unfold``) and every product is a single ``bmm`` that reads the keys in place.

Autograd through such overlapping views is slow (``unfold_backward``) and the softmax weights of 49 queries x
729 keys per window are large, so this is an ``autograd.Function`` written like FlashAttention (Dao et al.,
NeurIPS 2022, arXiv 2205.14135): the forward keeps only the output and the log-sum-exp of every query's logits,
the backward recomputes the weights chunk by chunk and adds the key / value gradients of every slab back into
the flat tensors (R contiguous adds per slab: the transpose of the overlapping view).

Work goes in chunks of tile rows: a chunk skips the region rows that lie outside the tile grid for all its
windows, and keeps every temporary small (see :data:`LOGIT_CHUNK_BYTES`).

Half precision (bfloat16 / float16 inputs): the products run in the input dtype, while logits, softmax weights,
log-sum-exp and every accumulated sum (outputs, gradients) are float32, as autocast does for the written-out
softmax and FlashAttention does in its accumulators. In float32 and float64 nothing is converted.

Legend: Q query windows (flat over batch, heads and the tile grid th x tw), Nq queries per window, d head size,
T tokens per tile, R tiles per region side, S = R*T keys per slab, K = R*S (+1 border key).
"""
from typing import List, NamedTuple, Optional, Tuple

import torch

#: target size of one chunk of logits, in bytes
LOGIT_CHUNK_BYTES = 4 * 2**20


class TileGeometry(NamedTuple):
    """Static description of the slabs (plain ints, so that ``torch.compile`` sees constants).

    Attributes:
        T: tokens per tile; R: tiles per region side; slabs: R start tokens of region row a of window 0 in the
        flat key / value tensors; rows: tile rows per (batch, head) block (th); row_windows: windows per tile row
        (tw); tiles_above: p, so that region row a of tile row i lies in the grid iff p - i <= a < th + p - i;
        step: tile rows per chunk.
    """
    T: int
    R: int
    slabs: Tuple[int, ...]
    rows: int
    row_windows: int
    tiles_above: int
    step: int


def _chunks(geo: TileGeometry, num_rows: int) -> List[Tuple[int, int, int, int]]:
    """(n0, n1, a0, a1) per chunk: query windows [n0, n1) and the region rows [a0, a1) they need."""
    out = []
    for r0 in range(0, num_rows, geo.step):
        r1 = min(num_rows, r0 + geo.step)
        i = [r % geo.rows for r in range(r0, r1)]
        a0 = max(0, geo.tiles_above - max(i))
        a1 = min(geo.R, geo.rows + geo.tiles_above - min(i))
        out.append((r0 * geo.row_windows, r1 * geo.row_windows, a0, a1))
    return out


def _slab(flat: torch.Tensor, geo: TileGeometry, a: int, n0: int, n1: int) -> torch.Tensor:
    """Keys (or values) of region row ``a`` of windows [n0, n1): an (n, S, d) overlapping view of ``flat``."""
    S, T = geo.R * geo.T, geo.T
    start = geo.slabs[a] + n0 * T
    return flat[start:start + (n1 - n0 - 1) * T + S].unfold(0, S, T).transpose(1, 2)  # (n, d, S) -> (n, S, d)


def _acc(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for inputs like ``t``: float32 for half types, else ``t``'s own."""
    return torch.promote_types(t.dtype, torch.float32)


def _add_bmm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out += a @ b`` (batched), with ``out`` in the accumulation dtype and ``a``, ``b`` in the input dtype."""
    return out.baddbmm_(a, b) if out.dtype == a.dtype else out.add_(torch.bmm(a, b))


def _logits(q: torch.Tensor, k: torch.Tensor, kb: Optional[torch.Tensor], bias: torch.Tensor, geo: TileGeometry,
            n0: int, n1: int, a0: int, a1: int) -> torch.Tensor:
    """Biased logits of windows [n0, n1) over region rows [a0, a1) (+ the border key): (n, Nq, (a1-a0)*S [+1]),
    in the accumulation dtype (float32 for half inputs)."""
    S = geo.R * geo.T
    qc = q[n0:n1]  # (n, Nq, d)
    parts = [torch.bmm(qc, _slab(k, geo, a, n0, n1).transpose(1, 2)) for a in range(a0, a1)]  # (n, Nq, S) each
    cols = bias[n0:n1, a0 * S:a1 * S]
    if kb is not None:
        parts.append(torch.bmm(qc, kb[n0:n1].transpose(1, 2)))  # (n, Nq, 1)
        cols = torch.cat([cols, bias[n0:n1, -1:]], dim=1)
    return torch.cat(parts, dim=-1).to(_acc(q)).add_(cols[:, None])


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kb: Optional[torch.Tensor],
             vb: Optional[torch.Tensor], bias: torch.Tensor, geo: TileGeometry,
             keep_lse: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The forward of :class:`TiledAttention` in plain tensor operations: (out, log-sum-exp or None)."""
    S = geo.R * geo.T
    outs, lses = [], []
    for n0, n1, a0, a1 in _chunks(geo, q.shape[0] // geo.row_windows):
        logits = _logits(q, k, kb, bias, geo, n0, n1, a0, a1)  # (n, Nq, Kc)
        if keep_lse:
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, Nq, 1)
            p = logits.sub_(lse).exp_()  # softmax weights, in place
        else:  # inference: one fused softmax, no log-sum-exp kept
            p, lse = logits.softmax(dim=-1), None
        p = p.to(v.dtype)  # (no copy unless half precision)
        out = torch.bmm(p[:, :, :S], _slab(v, geo, a0, n0, n1)).to(_acc(q))  # (n, Nq, d)
        for j, a in enumerate(range(a0 + 1, a1), start=1):
            _add_bmm(out, p[:, :, j * S:(j + 1) * S], _slab(v, geo, a, n0, n1))
        if vb is not None:
            _add_bmm(out, p[:, :, -1:], vb[n0:n1])
        outs.append(out.to(q.dtype))
        lses.append(lse)
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out, (None if lses[0] is None else torch.cat(lses) if len(lses) > 1 else lses[0])


class TiledAttention(torch.autograd.Function):
    """softmax(q k^T + bias) v over tiled regions; see the module docstring.

    Inputs: q (Q, Nq, d) scaled queries; k, v (L, d) flat tiled keys / values (zero margins included); kb, vb
    (Q, 1, d) or None: the border key / value of each window, all of one dtype; bias (Q, K) constant logit bias
    (slot order: region row, then the S keys of the slab; the border key last) in the accumulation dtype; geo.
    Output: (Q, Nq, d) in the input dtype.
    """

    @staticmethod
    def forward(ctx, q, k, v, kb, vb, bias, geo: TileGeometry):
        out, lse = _forward(q, k, v, kb, vb, bias, geo, keep_lse=any(ctx.needs_input_grad[:5]))
        if lse is not None:
            ctx.save_for_backward(q, k, v, kb, vb, bias, out, lse)
        ctx.geo = geo
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, kb, vb, bias, out, lse = ctx.saved_tensors
        geo: TileGeometry = ctx.geo
        S, T, R = geo.R * geo.T, geo.T, geo.R
        acc = _acc(q)  # gradients accumulate in it (float32 for half inputs), converted back at the end
        grad_out = grad_out.contiguous()
        dq = torch.empty_like(q, dtype=acc)
        dk, dv = torch.zeros_like(k, dtype=acc), torch.zeros_like(v, dtype=acc)
        dkb = None if kb is None else torch.empty_like(kb, dtype=acc)
        dvb = None if vb is None else torch.empty_like(vb, dtype=acc)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # (Q, Nq, 1): rowsum(dO * O)
        for n0, n1, a0, a1 in _chunks(geo, q.shape[0] // geo.row_windows):
            n = n1 - n0
            go, qc = grad_out[n0:n1], q[n0:n1]  # (n, Nq, d)
            p = _logits(q, k, kb, bias, geo, n0, n1, a0, a1).sub_(lse[n0:n1]).exp_()  # (n, Nq, Kc) recomputed
            vs = [_slab(v, geo, a, n0, n1) for a in range(a0, a1)]  # (n, S, d) views
            dp = torch.cat([torch.bmm(go, va.transpose(1, 2)) for va in vs] +
                           ([torch.bmm(go, vb[n0:n1].transpose(1, 2))] if vb is not None else []), dim=-1)
            ds = dp.to(acc).sub_(delta[n0:n1]).mul_(p).to(q.dtype)  # (n, Nq, Kc): dlogits
            p = p.to(q.dtype)
            dqc = torch.bmm(ds[:, :, :S], _slab(k, geo, a0, n0, n1)).to(acc)  # (n, Nq, d)
            for j, a in enumerate(range(a0, a1)):
                cols = slice(j * S, (j + 1) * S)
                if j:
                    _add_bmm(dqc, ds[:, :, cols], _slab(k, geo, a, n0, n1))
                dks = torch.bmm(ds[:, :, cols].transpose(1, 2), qc).view(n, R, T, -1)  # (n, R, T, d)
                dvs = torch.bmm(p[:, :, cols].transpose(1, 2), go).view(n, R, T, -1)  # (n, S, d) -> (n, R, T, d)
                start = geo.slabs[a] + n0 * T
                for b in range(R):  # transpose of the overlapping view: tile b of window m is tile m + b
                    lo = start + b * T
                    dk[lo:lo + n * T].view(n, T, -1).add_(dks[:, b])  # (n*T, d) viewed as (n, T, d)
                    dv[lo:lo + n * T].view(n, T, -1).add_(dvs[:, b])
            if kb is not None:
                _add_bmm(dqc, ds[:, :, -1:], kb[n0:n1])
                dkb[n0:n1] = torch.bmm(ds[:, :, -1:].transpose(1, 2), qc)  # (n, 1, d)
                dvb[n0:n1] = torch.bmm(p[:, :, -1:].transpose(1, 2), go)
            dq[n0:n1] = dqc
        low = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return low(dq, q), low(dk, k), low(dv, v), low(dkb, kb), low(dvb, vb), None, None


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kb: Optional[torch.Tensor],
                    vb: Optional[torch.Tensor], bias: torch.Tensor, geo: TileGeometry) -> torch.Tensor:
    """:class:`TiledAttention` (see there for the arguments). Under ``torch.jit.trace`` (mmengine's FLOP counter)
    the forward runs as plain operations, which the tracer records; a custom ``autograd.Function`` stops it
    ("unordered_map::at")."""
    if torch.jit.is_tracing():
        return _forward(q, k, v, kb, vb, bias, geo, keep_lse=False)[0]
    return TiledAttention.apply(q, k, v, kb, vb, bias, geo)
