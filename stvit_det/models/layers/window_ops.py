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
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

PAD_MASK_MODES = ('correct', 'official', 'none')

#: additive logit the released code uses for its (partial) padding mask
OFFICIAL_MASK_VALUE = -1000.0


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


@functools.lru_cache(maxsize=64)
def shift_window_mask(Hp: int, Wp: int, ws: int, shift: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Additive attention mask of Swin's shifted windows (0 inside a region, -100 across regions).

    Args:
        Hp, Wp: padded map size; ws: window size; shift: cyclic shift (> 0).

    Returns:
        Float mask of shape (nW, ws*ws, ws*ws) on ``device`` (cached: do not modify it in place).
    """
    img = torch.zeros(1, Hp, Wp, 1, device=device)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(0).squeeze(-1)  # (nW, ws*ws)
    mask = win.unsqueeze(1) - win.unsqueeze(2)  # (nW, ws*ws, ws*ws)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@functools.lru_cache(maxsize=64)
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


@functools.lru_cache(maxsize=64)
def region_key_bias(grid_h: int, grid_w: int, unit: int, kernel: int, mode: str, valid_h: int, valid_w: int,
                    pad_b: int, pad_r: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Additive logit bias of every window's region keys, one row per window (shared by all its queries).

    Modes (see the spec, section 4):

    * ``'correct'``: ``-inf`` for keys on the outer border or in a padded row (>= ``valid_h``) or column
      (>= ``valid_w``) of the source grid. Each region contains its own window, which always holds a real key, so
      no row is fully masked.
    * ``'official'``: the released code's rule: ``-1000`` for the outer border and for interior cells in
      rows[-pad_b:] AND cols[-pad_r:] of the source grid, where a zero pad selects the whole axis (so with no
      padding every key gets -1000, which cancels in the softmax). ``pad_b`` / ``pad_r`` are the IMAGE map's pads
      even when the source is the semantic grid, as in the released ``RestoreBlock``.
    * ``'none'``: no mask (``None``); border and padded keys attend as zero tokens.

    Returns:
        None or a float32 tensor of shape (nW, K) on ``device`` (cached: do not modify it in place).
    """
    if mode not in PAD_MASK_MODES:
        raise ValueError(f"pad_mask must be one of {PAD_MASK_MODES}, got '{mode}'")
    if mode == 'none':
        return None
    _, rows, cols = region_index(grid_h, grid_w, unit, kernel, device)
    border = (rows < 0) | (rows >= grid_h) | (cols < 0) | (cols >= grid_w)
    if mode == 'correct':
        masked = border | (rows >= valid_h) | (cols >= valid_w)
        return torch.zeros(rows.shape, device=device).masked_fill(masked, float('-inf'))
    in_rows = rows >= grid_h - pad_b if pad_b > 0 else torch.ones_like(border)  # rows[-0:] is every row
    in_cols = cols >= grid_w - pad_r if pad_r > 0 else torch.ones_like(border)
    masked = border | (in_rows & in_cols)
    return torch.zeros(rows.shape, device=device).masked_fill(masked, OFFICIAL_MASK_VALUE)
