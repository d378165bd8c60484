"""Multi-head attention with separate query / key-value sources: the one attention layer of every STViT-R
semantic block (generation, refinement, local, global, recovery).

STViT-R: arXiv 2303.08685; official counterpart: ``Attention`` with ``q`` and ``kv`` projections in
changsn/STViT-R-Object-Detection ``mmdet/models/backbones/layers.py`` (Apache-2.0). Written anew here.

The key/value source is projected ONCE per token ("project-once", spec 10.4) and, for windowed regions, the
projected keys/values are gathered by index: no token is normalised or projected twice, unlike the released
code, which unfolds the map first and projects every copy.

Legend: B batch, G query groups (windows, or 1 for global attention), Nq queries per group, K keys per group,
L source tokens, C channels, h heads, d = C / h.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_IMPLS = ('reference', 'sdpa', 'dense')


def check_attn_impl(attn_impl: str) -> str:
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got '{attn_impl}'")
    return attn_impl


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
    G, K = index.shape
    b = torch.zeros(index.shape, device=index.device) if bias is None else bias.float()
    border = index == num_keys - 1
    dense = torch.full((G, num_keys + 1), float('-inf'), device=index.device)  # last column: scratch for border
    dense.scatter_(1, torch.where(border, torch.full_like(index, num_keys), index), b)
    dense[:, num_keys - 1] = torch.logsumexp(b.masked_fill(~border, float('-inf')), dim=1)
    return dense[:, :num_keys]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], scale: float,
              impl: str) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, either written out (``'reference'``) or fused (``'sdpa'``).

    Args:
        q: queries (..., Nq, d); k, v: keys and values (..., K, d).
        bias: additive logit bias broadcastable to (..., Nq, K), or None.
        scale: logit scale, applied after the product as in the released semantic blocks.
        impl: ``'reference'`` (plain matmul / softmax, the correctness oracle) or ``'sdpa'`` / ``'dense'``
            (``torch.nn.functional.scaled_dot_product_attention``).

    Returns:
        (..., Nq, d).
    """
    if impl != 'reference':
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale  # (..., Nq, K)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v  # (..., Nq, d)


class QKVAttention(nn.Module):
    """Attention of queries from one token set over keys/values from another (or the same) set.

    Parameter names follow the official checkpoints: ``q`` (C -> C), ``kv`` (C -> 2C, first C outputs are the
    keys) and ``proj``. No positional encoding (the detection configs use ``relative_pos=False``).

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        qkv_bias: bias in ``q`` and ``kv``.
        attn_impl: how windowed regions (``index`` given) are attended:

            * ``'reference'``: gather the projected K/V of every region, written-out softmax attention;
            * ``'sdpa'``: the same gather, fused ``scaled_dot_product_attention``;
            * ``'dense'``: no gather: every query attends over ALL source tokens under a dense additive mask that
              allows only its window's region (:func:`densify_region_bias`); K/V are never duplicated. Cheapest
              where a region covers most of the source (the 27x27 recovery region at COCO sizes).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_impl: str = 'dense') -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = (dim // num_heads)**-0.5
        self.attn_impl = check_attn_impl(attn_impl)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # set True to keep the last attention weights (for visualisation, tools/vis_semantic_tokens.py)
        self.record_attn = False
        self.last_attn: Optional[dict] = None

    def forward(self,
                query: torch.Tensor,
                context: torch.Tensor,
                index: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            query: normalised query tokens (B, G, Nq, C).
            context: normalised key/value tokens, (B, G, K, C) when ``index`` is None, else (B, L, C): the whole
                source, projected once and then gathered per group.
            index: (G, K) long indices into the L source tokens, or None.
            bias: additive logit bias (G, K) shared by the queries of a group, or None.

        Returns:
            (B, G, Nq, C).
        """
        B, G, Nq, C = query.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(query).view(B, G, Nq, h, d).transpose(2, 3)  # (B, G, h, Nq, d)
        kv = self.kv(context)  # (B, G, K, 2C) or (B, L, 2C)
        if index is not None and self.attn_impl == 'dense' and not self.record_attn:
            L = kv.shape[1]
            k, v = kv.view(B, L, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, L, d)
            mask = densify_region_bias(index, bias, L).repeat_interleave(Nq, dim=0)  # (G*Nq, L)
            q = q.permute(0, 2, 1, 3, 4).reshape(B, h, G * Nq, d)  # (B, h, G*Nq, d), window-major queries
            out = attention(q, k, v, mask, self.scale, 'dense')  # (B, h, G*Nq, d)
            out = out.view(B, h, G, Nq, d).permute(0, 2, 3, 1, 4).reshape(B, G, Nq, C)  # (B, G, Nq, C)
            return self.proj(out)
        if index is not None:
            kv = kv[:, index]  # (B, L, 2C) -> (B, G, K, 2C)
        K = kv.shape[2]
        k, v = kv.view(B, G, K, 2, h, d).permute(3, 0, 1, 4, 2, 5).unbind(0)  # 2 x (B, G, h, K, d)
        if bias is not None:
            bias = bias[:, None, None, :]  # (G, K) -> (G, 1, 1, K)
        if self.record_attn:
            logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, G, h, Nq, K)
            probs = (logits if bias is None else logits + bias).softmax(dim=-1)
            # weights (B, G, h, Nq, K) over the keys given by index (G, K) (None: the group's own K tokens)
            self.last_attn = dict(weights=probs.detach(), index=index)
            out = probs @ v  # (B, G, h, Nq, d)
        else:
            out = attention(q, k, v, bias, self.scale, self.attn_impl)  # (B, G, h, Nq, d)
        return self.proj(out.transpose(2, 3).reshape(B, G, Nq, C))  # (B, G, Nq, C)
