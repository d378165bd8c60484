"""Pure tensor helpers shared by the Swin and semantic-token blocks of STViT-R.

STViT-R: Chang et al., "Making Vision Transformers Efficient from A Token Sparsification View", CVPR 2023,
arXiv 2303.08685. Window helpers follow the Swin Transformer (Liu et al., ICCV 2021, arXiv 2103.14030).
Nothing here has parameters; every function is deterministic in its arguments.

Legend: B batch, H/W real map size, Hp/Wp padded to a multiple of the window, C channels, ws window size,
nh/nw/nW window grid (rows, cols, total), ss semantic samples per window side, Hs/Ws semantic grid,
k key-region side, K = k*k keys per window.
"""
import functools
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

PAD_MASK_MODES = ('correct', 'official', 'none')


def check_pad_mask(pad_mask: str) -> str:
    """``pad_mask`` itself if it is one of :data:`PAD_MASK_MODES`, else a ValueError that lists them."""
    if pad_mask not in PAD_MASK_MODES:
        raise ValueError(f"pad_mask must be one of {PAD_MASK_MODES}, got '{pad_mask}'")
    return pad_mask


#: additive logit the released code uses for its (partial) padding mask
OFFICIAL_MASK_VALUE = -1000.0


def geometry_cache(fn=None, *, maxsize: int = 64):
    """``functools.lru_cache(maxsize)`` for the pure geometry helpers below (masks, indices, biases of a map
    size), bypassed while ``torch.compile`` traces: Dynamo would trace the wrapped function anyway, with a warning
    that it ignores the cache. The cache itself is ``.cache`` (a ``functools`` cache wrapper). ``@geometry_cache``
    or ``@geometry_cache(maxsize=N)`` for helpers whose entries are large.

    Entries are built outside ``torch.inference_mode``: a cached inference tensor (an index, a mask) would make a
    later training step at the same size fail ("Inference tensors cannot be saved for backward")."""
    if fn is None:
        return functools.partial(geometry_cache, maxsize=maxsize)

    @functools.lru_cache(maxsize=maxsize)
    def cached(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **kwargs) if torch.compiler.is_compiling() else cached(*args, **kwargs)

    call.cache = cached
    return call


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NHWC map on the bottom/right so that H and W are multiples of ``multiple``.

    Args:
        x: tokens of shape (B, H, W, C).
        multiple: the window size.

    Returns:
        Tensor of shape (B, Hp, Wp, C); ``x`` itself when no padding is needed.
    """
    _, H, W, _ = x.shape
    pad_b = (multiple - H % multiple) % multiple
    pad_r = (multiple - W % multiple) % multiple
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # (B, Hp, Wp, C)
    return x


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Split an NHWC map into non-overlapping windows, row-major over the window grid.

    Args:
        x: tokens of shape (B, Hp, Wp, C), Hp and Wp multiples of ``ws``.
        ws: window size.

    Returns:
        Windows of shape (B, nW, ws*ws, C), nW = (Hp/ws) * (Wp/ws).
    """
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C)  # (B, nh, ws, nw, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, -1, ws * ws, C)  # (B, nW, ws*ws, C)


def window_reverse(windows: torch.Tensor, ws: int, Hp: int, Wp: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: windows of shape (B, nW, ws*ws, C).
        ws: window size.
        Hp, Wp: padded map size.

    Returns:
        Tokens of shape (B, Hp, Wp, C).
    """
    B, _, _, C = windows.shape
    x = windows.view(B, Hp // ws, Wp // ws, ws, ws, C)  # (B, nh, nw, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)  # (B, Hp, Wp, C)


def semantic_grid_size(H: int, W: int, window_size: int, samples: int) -> Tuple[int, int]:
    """Size (Hs, Ws) of the semantic-token grid: ``samples`` x ``samples`` tokens per (padded) window."""
    return samples * math.ceil(H / window_size), samples * math.ceil(W / window_size)


@geometry_cache(maxsize=8)  # stage 1 alone is ~13 MB at 800x1333: 64 multi-scale sizes held ~320 MB for good
def shift_window_mask(Hp: int, Wp: int, ws: int, shift: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Additive attention mask of Swin's shifted windows (0 inside a region, -100 across regions).

    Args:
        Hp, Wp: padded map size; ws: window size; shift: cyclic shift (> 0).

    Returns:
        Float mask of shape (nW, ws*ws, ws*ws) on ``device`` (cached: do not modify it in place).
    """
    # region of each row / column: [0, Hp - ws) -> 0, [Hp - ws, Hp - shift) -> 1, [Hp - shift, Hp) -> 2 (Swin's three
    # slices, as arithmetic: no empty slice where the map is one window, which ONNX shape inference cannot take)
    rows, cols = torch.arange(Hp, device=device), torch.arange(Wp, device=device)
    region_h = (rows >= Hp - ws).long() + (rows >= Hp - shift).long()  # (Hp, )
    region_w = (cols >= Wp - ws).long() + (cols >= Wp - shift).long()  # (Wp, )
    img = (3 * region_h[:, None] + region_w[None, :]).float()[None, :, :, None]  # (1, Hp, Wp, 1): region ids
    win = window_partition(img, ws).squeeze(0).squeeze(-1)  # (nW, ws*ws)
    mask = win.unsqueeze(1) - win.unsqueeze(2)  # (nW, ws*ws, ws*ws)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@geometry_cache
def region_index(grid_h: int, grid_w: int, unit: int, kernel: int,
                 device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Key positions of every window's square key region on a source grid, as gather indices.

    Window (i, j) of the query window grid (grid_h/unit x grid_w/unit windows) reads the ``kernel`` x ``kernel``
    source positions with rows [unit*i - m, unit*i - m + kernel) and cols likewise, m = (kernel - unit) // 2: the
    regions of the released code's unfold (kernel 14 / 21 on the image map with unit 7: margins 3 and 7; kernel 27
    on the semantic grid with unit 3: margin 12). Positions outside the grid (the "outer border") get index
    ``grid_h * grid_w``: the caller appends one zero token there.

    Args:
        grid_h, grid_w: source grid size (a multiple of ``unit``).
        unit: source cells per window side (7 for the image map, ss for the semantic grid).
        kernel: region side, >= unit.
        device: where to build the (cached) tensors.

    Returns:
        index: (nW, K) long indices into the flattened grid plus one border slot.
        rows, cols: (nW, K) long source coordinates (may lie outside the grid).
    """
    if kernel < unit:
        raise ValueError(f'a key region ({kernel}) must cover its own window ({unit})')
    m = (kernel - unit) // 2
    nh, nw = grid_h // unit, grid_w // unit
    off = torch.arange(kernel, device=device)
    r = (torch.arange(nh, device=device) * unit - m)[:, None] + off  # (nh, k)
    c = (torch.arange(nw, device=device) * unit - m)[:, None] + off  # (nw, k)
    rows = r[:, None, :, None].expand(nh, nw, kernel, kernel).reshape(nh * nw, kernel * kernel)  # (nW, K)
    cols = c[None, :, None, :].expand(nh, nw, kernel, kernel).reshape(nh * nw, kernel * kernel)  # (nW, K)
    inside = (rows >= 0) & (rows < grid_h) & (cols >= 0) & (cols < grid_w)
    index = torch.where(inside, rows * grid_w + cols, torch.full_like(rows, grid_h * grid_w))
    return index, rows, cols


def key_position_bias(rows: torch.Tensor, cols: torch.Tensor, grid_h: int, grid_w: int, mode: str, valid_h: int,
                      valid_w: int, pad_b: int, pad_r: int) -> Optional[torch.Tensor]:
    """Additive logit bias of keys at source positions ``(rows, cols)`` (any shape; may lie outside the grid).

    The padding rule depends only on where a key sits, never on the query, so every attention path (gathered
    regions, dense mask, tiles) derives its bias from this one function. Modes (see the spec, section 4):

    * ``'correct'``: ``-inf`` for keys on the outer border (outside ``[0, grid_h) x [0, grid_w)``) or in a padded
      row (>= ``valid_h``) or column (>= ``valid_w``) of the source grid.
    * ``'official'``: the released code's rule: ``-1000`` for the outer border and for interior cells in
      rows[-pad_b:] AND cols[-pad_r:] of the source grid, where a zero pad selects the whole axis (so with no
      padding every key gets -1000, which cancels in the softmax). ``pad_b`` / ``pad_r`` are the IMAGE map's pads
      even when the source is the semantic grid, as in the released ``RestoreBlock``.
    * ``'none'``: no mask (``None``); border and padded keys attend as zero tokens.

    Returns:
        None or a float32 tensor shaped like ``rows``.
    """
    check_pad_mask(mode)
    if mode == 'none':
        return None
    border = (rows < 0) | (rows >= grid_h) | (cols < 0) | (cols >= grid_w)
    if mode == 'correct':
        masked = border | (rows >= valid_h) | (cols >= valid_w)
        return torch.zeros(rows.shape, device=rows.device).masked_fill(masked, float('-inf'))
    in_rows = rows >= grid_h - pad_b if pad_b > 0 else torch.ones_like(border)  # rows[-0:] is every row
    in_cols = cols >= grid_w - pad_r if pad_r > 0 else torch.ones_like(border)
    masked = border | (in_rows & in_cols)
    return torch.zeros(rows.shape, device=rows.device).masked_fill(masked, OFFICIAL_MASK_VALUE)


@geometry_cache
def region_key_bias(grid_h: int, grid_w: int, unit: int, kernel: int, mode: str, valid_h: int, valid_w: int,
                    pad_b: int, pad_r: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Additive logit bias of every window's region keys (:func:`key_position_bias` at the positions of
    :func:`region_index`), one row per window, shared by all its queries. Each region contains its own window,
    which always holds a real key, so no row is fully masked.

    Each row is shifted so that its largest entry is 0 (softmax is invariant to a shift of a row), as in
    :func:`region_tiles`: where the official rule gives every key of a region -1000 (no padding, or a region
    inside the padded corner), a float32 logit near -1000 would keep only about 6e-5 of absolute precision, and
    a bfloat16 bias could not hold ``log(n) - 1000`` for the border column of the dense path.

    Returns:
        None or a float32 tensor of shape (nW, K) on ``device`` (cached: do not modify it in place).
    """
    _, rows, cols = region_index(grid_h, grid_w, unit, kernel, device)
    bias = key_position_bias(rows, cols, grid_h, grid_w, mode, valid_h, valid_w, pad_b, pad_r)
    if bias is None:
        return None
    top = bias.amax(dim=1, keepdim=True)  # (nW, 1), finite: every region holds a real key
    return bias - torch.where(torch.isfinite(top), top, torch.zeros_like(top))


class TileLayout(NamedTuple):
    """Key regions of a window grid re-expressed as R x R neighbouring *tiles* (see :func:`region_tiles`).

    Attributes:
        unit: u, source cells per tile side (= per window side); T = u*u cells per tile.
        tiles: R, tiles per region side (region side k = R * u).
        tiles_above: p, region tile rows (and columns) before the window's own: region row a of window row i is
            tile row i - p + a, inside the grid for a in [p - i, th + p - i).
        shift: s, the tile grid starts s cells above / left of the source grid (tile t covers [u*t - s, u*t - s + u)).
        grid: (th, tw) tile grid = query grid; the real windows are its top-left (nh, nw) block, the rest is junk.
        windows: (nh, nw) real query windows.
        pad: (top, bottom, left, right) source padding (outer-border tokens) that fills the tile grid.
        offsets: R slab offsets, in tiles: row ``a`` of window f's region is the R consecutive tiles starting at flat
            tile ``f + offsets[a]`` (flat over the tile grid, row stride tw).
        margin: (lo, hi) zero tiles to put before / after the flattened tiles so that every slab stays in bounds.
        bias: (th*tw, R*R*T) float32 logit bias per query window and slot (slot order a, b, row, col in tile);
            ``-inf`` where a slot lies outside the tile grid (that slot reads a neighbouring row, another image or
            the zero margin: it stands for outer-border positions, re-added by ``border_bias``).
        border_bias: (th*tw, ) float32 or None: log(number of outer-border positions outside the tile grid in the
            window's region) + the border's rule bias; one shared border key carries them all. None when no region
            has such a position or when the mode masks the border (``'correct'``).
    """
    unit: int
    tiles: int
    tiles_above: int
    shift: int
    grid: Tuple[int, int]
    windows: Tuple[int, int]
    pad: Tuple[int, int, int, int]
    offsets: Tuple[int, ...]
    margin: Tuple[int, int]
    bias: torch.Tensor
    border_bias: Optional[torch.Tensor]


def tiles_fit(unit: int, kernel: int) -> bool:
    """Whether a ``kernel`` x ``kernel`` region splits into whole tiles of ``unit`` x ``unit`` cells."""
    return kernel % unit == 0


@geometry_cache
def region_tiles(grid_h: int, grid_w: int, unit: int, kernel: int, mode: str, valid_h: int, valid_w: int,
                 pad_b: int, pad_r: int, device: Optional[torch.device] = None) -> TileLayout:
    """The regions of :func:`region_index` as R x R neighbouring tiles, for attention that reads keys in place.

    With k = R*u and margin m = (k - u) // 2, the region of window i, rows [u*i - m, u*i - m + k), is exactly the R
    tiles i - p .. i - p + R - 1 of a tile grid shifted by s = m mod u (p = m // u), and likewise in columns: the
    14 x 14 generation region is 2 x 2 tiles of the map shifted by 3, the 21 x 21 refinement region the 3 x 3
    windows around its own, the 27 x 27 recovery region 9 x 9 windows of 3 x 3 semantic tokens. Flattening the
    tiles row-major (row stride tw) puts the R tiles of one region row next to each other, so row ``a`` of every
    window's region is one contiguous slab of R*T tokens that starts ``offsets[a]`` tiles after the window's own
    flat index: an overlapping strided view of the keys (``Tensor.unfold``), not a copy. Tiles outside the tile
    grid wrap into the neighbouring row; those slots are masked and their (outer-border) positions are carried by
    one border key (``border_bias``). Nothing is duplicated and the work is exactly the region arithmetic (plus
    the junk windows of a shifted grid: one extra row and column of windows for generation).

    Args:
        grid_h, grid_w: source grid (multiples of ``unit``); unit: u; kernel: k (a multiple of u, see
            :func:`tiles_fit`); mode, valid_h, valid_w, pad_b, pad_r: see :func:`key_position_bias`.

    Returns:
        A :class:`TileLayout` (cached: do not modify its tensors in place).
    """
    if not tiles_fit(unit, kernel) or kernel < unit:
        raise ValueError(f'a {kernel} x {kernel} region does not split into tiles of {unit} x {unit}')
    if device is not None and torch.device(device).type != 'cpu':  # built on the CPU (also for the meta device)
        lay = region_tiles(grid_h, grid_w, unit, kernel, mode, valid_h, valid_w, pad_b, pad_r, None)
        return lay._replace(bias=lay.bias.to(device),
                            border_bias=None if lay.border_bias is None else lay.border_bias.to(device))
    R, m = kernel // unit, (kernel - unit) // 2
    s, p = m % unit, m // unit
    nh, nw = grid_h // unit, grid_w // unit
    th, tw = -(-(grid_h + s) // unit), -(-(grid_w + s) // unit)  # tiles covering [-s, grid) = ceil((grid + s) / u)
    offsets = tuple((a - p) * tw - p for a in range(R))
    margin = (max(0, -min(offsets)), max(0, max(offsets) + R - 1))

    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    qi, qj, a, b, r, c = torch.meshgrid(ar(th), ar(tw), ar(R), ar(R), ar(unit), ar(unit), indexing='ij')
    ti, tj = qi - p + a, qj - p + b  # tile of every (query window, slot)
    rows, cols = unit * ti - s + r, unit * tj - s + c  # its source position
    outside = (ti < 0) | (ti >= th) | (tj < 0) | (tj >= tw)  # slot reads a wrapped tile
    rule = key_position_bias(rows, cols, grid_h, grid_w, mode, valid_h, valid_w, pad_b, pad_r)
    # float64 until the shift below, so that log(n) - 1000 of the official border key keeps its precision
    bias = torch.zeros(rows.shape, device=device, dtype=torch.float64) if rule is None else rule.double()
    bias = bias.masked_fill(outside, float('-inf'))
    junk = (qi >= nh) | (qj >= nw)
    bias = bias.masked_fill(junk, 0.0)  # junk windows: any finite logits (their outputs are dropped)
    bias = bias.reshape(th * tw, -1)  # (th*tw, R*R*T)

    border_bias = None
    counts = (outside & ~junk).reshape(th * tw, -1).sum(1)  # (th*tw, ) outer-border positions per region
    if mode != 'correct' and bool((counts > 0).any()):
        border_rule = 0.0 if mode == 'none' else OFFICIAL_MASK_VALUE
        border_bias = counts.double().log() + border_rule  # log 0 = -inf: no border key for that window
    # Softmax is invariant to a shift of a row: subtract each window's largest bias so that the official rule's
    # -1000 on every key (no padding) becomes 0 instead of a large offset that costs float32 precision.
    top_bias = bias.amax(dim=1) if border_bias is None else torch.maximum(bias.amax(dim=1), border_bias)
    top_bias = torch.where(torch.isfinite(top_bias), top_bias, torch.zeros_like(top_bias))
    bias = (bias - top_bias[:, None]).float()
    border_bias = None if border_bias is None else (border_bias - top_bias).float()
    return TileLayout(unit, R, p, s, (th, tw), (nh, nw), (s, th * unit - s - grid_h, s, tw * unit - s - grid_w),
                      offsets, margin, bias, border_bias)
