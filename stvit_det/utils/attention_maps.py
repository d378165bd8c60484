"""Attention maps of the sparsified stage (stage 3) of an STViTR, as numpy arrays for plotting
(``tools/vis_semantic_tokens.py``).

Two questions per dumbbell unit (STViT-R, arXiv 2303.08685, Fig. 2):

* Where do the semantic tokens of a window look? The generation and refinement blocks (and TokenLearner's
  'learn') give every semantic token a distribution over the image tokens of its key region:
  :func:`window_source_map` averages it over heads and the window's ss*ss tokens and scatters it back onto the
  padded stage-3 token grid.
* Which semantic tokens does each image token read? The recovery block (or TokenFuser's 'fuse') gives every image
  token a distribution over semantic-grid cells: :func:`recovery_argmax_window`, :func:`recovery_own_window_mass`
  and :func:`recovery_token_map`.

:func:`collect_attention` runs the backbone once with ``record_attn`` switched on and keeps, per recording block,
the head-averaged weights and their gather indices (``QKVAttention.last_attn``). :func:`semantic_to_tokens` and
:func:`tokens_to_pixels` move maps between the semantic grid, the token grid and image pixels, preserving mass.

Legend: H/W real stage-3 token map, Hp/Wp padded to ws, nh/nw window grid, ws window size, N = ws*ws, ss samples
per window side, S = ss*ss, Hs/Ws semantic grid, G windows (groups), K keys per window, s stride of stage 3 (16).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

#: block kinds whose queries are semantic tokens and keys image tokens
SOURCE_KINDS = ('generate', 'learn', 'refine')
#: block kinds whose queries are image tokens and keys semantic tokens
RECOVERY_KINDS = ('recover', 'fuse')
#: semantic blocks of STViTR(stage3_form='classification') (``layers/classification_form.py``): global or fixed-unfold
#: attention, no key regions: not drawn here
CLASSIFICATION_SEMANTIC_KINDS = ('cls-generate', 'cls-refine', 'cls-recover')
Cell = Tuple[int, int]


@dataclass(frozen=True)
class StageGeometry:
    """Sizes of the sparsified stage for one input.

    Attributes:
        H, W: real stage-3 token map; window: ws; samples: ss; stride: image pixels per stage-3 token.
    """
    H: int
    W: int
    window: int = 7
    samples: int = 3
    stride: int = 16

    @property
    def nh(self) -> int:
        return -(-self.H // self.window)

    @property
    def nw(self) -> int:
        return -(-self.W // self.window)

    @property
    def Hp(self) -> int:
        return self.nh * self.window

    @property
    def Wp(self) -> int:
        return self.nw * self.window

    @property
    def Hs(self) -> int:
        return self.nh * self.samples

    @property
    def Ws(self) -> int:
        return self.nw * self.samples


@dataclass
class AttentionRecord:
    """Head-averaged weights of one block.

    Attributes:
        kind: the block kind ('generate', 'refine', 'learn', 'recover', 'fuse').
        weights: (G, Nq, K) float: queries of window g over the keys ``index[g]``; rows sum to 1 except for 'fuse'
            (sigmoid gates, see :func:`recovery_distributions`).
        index: (G, K) int indices into the flattened source grid (padded token grid for source kinds, semantic
            grid for recovery kinds); the value Gh*Gw is the outer border.
    """
    kind: str
    weights: np.ndarray
    index: np.ndarray


def _recorder(block: nn.Module) -> Optional[nn.Module]:
    """The module of ``block`` that has ``record_attn`` / ``last_attn`` (its ``attn``, or the block itself)."""
    for m in (getattr(block, 'attn', None), block):
        if m is not None and hasattr(m, 'record_attn') and hasattr(m, 'last_attn'):
            return m
    return None


def sparse_stage(backbone: nn.Module) -> Tuple[int, nn.Module]:
    """(index, stage) of the stage of ``backbone`` whose pattern holds semantic blocks of the detection form; raises
    if there is none, naming the classification form (``stage3_form='classification'``) when stage 3 has it."""
    layers = list(getattr(backbone, 'layers', []))
    for i, layer in enumerate(layers):
        if any(k in SOURCE_KINDS + RECOVERY_KINDS for k in getattr(layer, 'pattern', ())):
            return i, layer
    if any(k in CLASSIFICATION_SEMANTIC_KINDS for layer in layers for k in getattr(layer, 'pattern', ())):
        raise ValueError("stage 3 of the backbone has the classification form (stage3_form='classification'): its "
                         'unfold generation and global refinement and recovery have no windowed semantic-token maps '
                         "to draw; build STViTR with stage3_form='detection' (the same parameters)")
    if type(backbone).__name__ != 'STViTR':
        raise ValueError(f'the backbone is a {type(backbone).__name__}, not STViTR: it has no semantic tokens to draw')
    raise ValueError('the backbone has no sparsified stage (build STViTR with sparsify=True)')


@torch.no_grad()
def collect_attention(backbone: nn.Module,
                      img: torch.Tensor) -> Tuple[StageGeometry, List[Dict[str, AttentionRecord]]]:
    """Run ``backbone`` on one image with attention recording on; return the geometry and one
    ``{kind: AttentionRecord}`` per dumbbell unit (kinds of :data:`SOURCE_KINDS` and :data:`RECOVERY_KINDS`).

    Args:
        backbone: an STViTR (eval mode is set and restored).
        img: normalised image (1, 3, H_img, W_img).
    """
    if img.shape[0] != 1:
        raise ValueError(f'collect_attention takes one image, got a batch of {img.shape[0]}')
    stage_index, stage = sparse_stage(backbone)
    semantic = [(k, b) for k, b in zip(stage.pattern, stage.blocks) if k in SOURCE_KINDS + RECOVERY_KINDS]
    ss, ws = semantic[0][1].samples, semantic[0][1].window_size
    recorders = [(k, _recorder(b)) for k, b in semantic]
    shapes = []
    hook = stage.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    was_training = backbone.training
    backbone.eval()
    try:
        for _, r in recorders:
            r.record_attn, r.last_attn = True, None
        backbone(img)
        units: List[Dict[str, AttentionRecord]] = []
        for kind, r in recorders:
            if kind in ('generate', 'learn'):
                units.append({})
            w = r.last_attn['weights'][0].float().mean(dim=1)  # (G, h, Nq, K) -> (G, Nq, K)
            units[-1][kind] = AttentionRecord(kind, w.cpu().numpy(), r.last_attn['index'].cpu().numpy())
    finally:
        hook.remove()
        for _, r in recorders:
            r.record_attn, r.last_attn = False, None
        backbone.train(was_training)
    _, H, W, _ = shapes[0]  # stage output (B, H, W, C), NHWC
    return StageGeometry(H, W, ws, ss, stride=4 * 2**stage_index), units  # stem stride 4, x2 per patch merging


# ------------------------------------------------------------------------------------------------ grid helpers
def scatter_to_grid(weights: np.ndarray, index: np.ndarray, grid_hw: Tuple[int, int]) -> np.ndarray:
    """Sum weights over keys into their source cells; the outer-border slot (index Gh*Gw) is dropped.

    Args:
        weights: (..., K); index: (K,) into the flattened (Gh, Gw) grid plus one border slot.

    Returns:
        (..., Gh, Gw).
    """
    Gh, Gw = grid_hw
    out = np.zeros(weights.shape[:-1] + (Gh * Gw + 1, ), dtype=np.float64)
    np.add.at(out, (..., index), weights)  # repeated border indices accumulate
    return out[..., :Gh * Gw].reshape(weights.shape[:-1] + (Gh, Gw))


def window_id(cell: Cell, geom: StageGeometry) -> int:
    """Row-major id of window (i, j)."""
    i, j = cell
    if not (0 <= i < geom.nh and 0 <= j < geom.nw):
        raise ValueError(f'window {cell} is outside the {geom.nh} x {geom.nw} window grid')
    return i * geom.nw + j


def tokens_from_windows(values: np.ndarray, geom: StageGeometry) -> np.ndarray:
    """(G, N, ...) per-window values -> (Hp, Wp, ...) token grid (numpy window_reverse)."""
    ws = geom.window
    v = values.reshape((geom.nh, geom.nw, ws, ws) + values.shape[2:])  # (nh, nw, ws, ws, ...)
    v = np.swapaxes(v, 1, 2)  # (nh, ws, nw, ws, ...)
    return v.reshape((geom.Hp, geom.Wp) + values.shape[2:])


def semantic_to_tokens(grid: np.ndarray, geom: StageGeometry, preserve_mass: bool = True) -> np.ndarray:
    """Spread every semantic cell's mass evenly over the image tokens of its part of its window (or, without
    ``preserve_mass``, give each of those tokens the cell's value).

    Cell (ss*i + a, ss*j + b) covers the tokens of window (i, j) with floor(r * ss / ws) == a (rows) and likewise
    for columns: a partition of the window into ss x ss parts (not the overlapping max-pool bins).

    Args:
        grid: (Hs, Ws).

    Returns:
        (Hp, Wp), same total mass if ``preserve_mass``.
    """
    ws, ss = geom.window, geom.samples
    part = np.arange(ws) * ss // ws  # (ws,) part of each row / col inside a window
    counts = np.bincount(part, minlength=ss).astype(np.float64)  # tokens per part
    rows = (np.arange(geom.Hp) // ws) * ss + part[np.arange(geom.Hp) % ws]  # semantic row of each token row
    cols = (np.arange(geom.Wp) // ws) * ss + part[np.arange(geom.Wp) % ws]
    if preserve_mass:
        grid = grid / np.outer(np.tile(counts, geom.nh), np.tile(counts, geom.nw))  # mass per token of each cell
    return grid[rows][:, cols]


def tokens_to_pixels(tokens: np.ndarray, geom: StageGeometry, image_hw: Tuple[int, int],
                     preserve_mass: bool = True) -> np.ndarray:
    """Stage-3 token map (Hp, Wp[, ...]) -> image pixels (H_img, W_img[, ...]): every token covers stride x stride
    pixels (its value divided by stride**2 if ``preserve_mass``); the padded part beyond the image is cropped."""
    s = geom.stride
    px = np.repeat(np.repeat(tokens, s, axis=0), s, axis=1)[:image_hw[0], :image_hw[1]]
    return px / (s * s) if preserve_mass else px


# --------------------------------------------------------------------------- semantic tokens -> image tokens
def window_source_map(rec: AttentionRecord, cell: Cell, geom: StageGeometry,
                      token: Optional[int] = None) -> np.ndarray:
    """Where the semantic tokens of window ``cell`` attend (source kinds): weights averaged over heads (done by
    :func:`collect_attention`) and over the window's S tokens (or only token ``token`` in 0..S-1), scattered onto
    the padded token grid.

    Returns:
        (Hp, Wp) float; sums to 1 minus the mass on outer-border keys (none with ``pad_mask='correct'``).
    """
    if rec.kind not in SOURCE_KINDS:
        raise ValueError(f"'{rec.kind}' is not a semantic-token block; expected one of {SOURCE_KINDS}")
    g = window_id(cell, geom)
    w = rec.weights[g]  # (S, K)
    w = w.mean(axis=0) if token is None else w[token]  # (K,)
    return scatter_to_grid(w, rec.index[g], (geom.Hp, geom.Wp))


def peak_over_uniform(dist: np.ndarray) -> float:
    """max(dist) x (number of cells with weight > 0) for a distribution: 1 for uniform attention over its support,
    larger the more peaked it is."""
    support = int((dist > 0).sum())
    return float(dist.max() * support / dist.sum()) if support else 0.0


# --------------------------------------------------------------------------- image tokens -> semantic tokens
def recovery_distributions(rec: AttentionRecord) -> np.ndarray:
    """(G, N, K) distributions of every image token over its keys; TokenFuser's sigmoid gates are normalised to
    sum to 1 (the share of each token in the gated sum), softmax weights are returned as they are."""
    if rec.kind not in RECOVERY_KINDS:
        raise ValueError(f"'{rec.kind}' is not a recovery block; expected one of {RECOVERY_KINDS}")
    if rec.kind == 'fuse':
        return rec.weights / rec.weights.sum(axis=-1, keepdims=True)
    return rec.weights


def _key_windows(rec: AttentionRecord, geom: StageGeometry) -> np.ndarray:
    """(G, K) window id owning each key's semantic cell; -1 for the outer border."""
    rows, cols = np.divmod(rec.index, geom.Ws)
    wid = (rows // geom.samples) * geom.nw + cols // geom.samples
    return np.where(rec.index == geom.Hs * geom.Ws, -1, wid)


def recovery_argmax_window(rec: AttentionRecord, geom: StageGeometry) -> np.ndarray:
    """(Hp, Wp) int: the window owning the semantic token that each image token attends to most (-1: border)."""
    dist = recovery_distributions(rec)  # (G, N, K)
    best = dist.argmax(axis=-1)  # (G, N)
    owner = np.take_along_axis(_key_windows(rec, geom), best, axis=1)  # (G, N)
    return tokens_from_windows(owner, geom)


def recovery_own_window_mass(rec: AttentionRecord, geom: StageGeometry) -> np.ndarray:
    """(Hp, Wp) float in [0, 1]: the attention mass each image token puts on its own window's semantic tokens."""
    dist = recovery_distributions(rec)  # (G, N, K)
    own = _key_windows(rec, geom) == np.arange(dist.shape[0])[:, None]  # (G, K)
    return tokens_from_windows((dist * own[:, None, :]).sum(axis=-1), geom)


def recovery_token_map(rec: AttentionRecord, token: Cell, geom: StageGeometry) -> np.ndarray:
    """(Hs, Ws): the distribution of image token ``token`` = (row, col) of the padded token grid over the semantic
    grid; sums to 1 minus the mass on outer-border keys."""
    r, c = token
    if not (0 <= r < geom.Hp and 0 <= c < geom.Wp):
        raise ValueError(f'token {token} is outside the {geom.Hp} x {geom.Wp} token grid')
    ws = geom.window
    g = (r // ws) * geom.nw + c // ws
    n = (r % ws) * ws + c % ws
    return scatter_to_grid(recovery_distributions(rec)[g, n], rec.index[g], (geom.Hs, geom.Ws))


# ------------------------------------------------------------------------------------------------- per unit
def default_windows(geom: StageGeometry, count: int = 3) -> List[Cell]:
    """Up to ``count`` windows spread along the diagonal of the window grid (centre first)."""
    ci, cj = (geom.nh - 1) // 2, (geom.nw - 1) // 2
    cells = [(ci, cj), (max(ci - 2, 0), max(cj - 2, 0)), (min(ci + 2, geom.nh - 1), min(cj + 2, geom.nw - 1))]
    out: List[Cell] = []
    for c in cells:
        if c not in out:
            out.append(c)
    return out[:count]


def window_centre_token(cell: Cell, geom: StageGeometry) -> Cell:
    """The token at the centre of window ``cell``, moved inside the real H x W map."""
    i, j = cell
    ws = geom.window
    return min(ws * i + ws // 2, geom.H - 1), min(ws * j + ws // 2, geom.W - 1)


def unit_maps(geom: StageGeometry, unit: Dict[str, AttentionRecord], windows: Sequence[Cell]) -> Dict:
    """Every map the visualisation draws for one dumbbell unit.

    Returns:
        dict with ``source``: {kind: {window: (Hp, Wp)}} for each source kind of the unit; and, if the unit has a
        recovery block, ``recovery``: dict(kind, argmax_window (Hp, Wp) int, own_mass (Hp, Wp),
        tokens {window: (token, (Hs, Ws) distribution, (Hp, Wp) the same spread over image tokens)}).
    """
    out: Dict = {'source': {}}
    for kind, rec in unit.items():
        if kind in SOURCE_KINDS:
            out['source'][kind] = {cell: window_source_map(rec, cell, geom) for cell in windows}
        else:
            tokens = {}
            for cell in windows:
                tok = window_centre_token(cell, geom)
                grid = recovery_token_map(rec, tok, geom)
                tokens[cell] = (tok, grid, semantic_to_tokens(grid, geom))
            out['recovery'] = dict(kind=kind, argmax_window=recovery_argmax_window(rec, geom),
                                   own_mass=recovery_own_window_mass(rec, geom), tokens=tokens)
    return out


__all__ = [
    'SOURCE_KINDS', 'RECOVERY_KINDS', 'CLASSIFICATION_SEMANTIC_KINDS', 'StageGeometry', 'AttentionRecord',
    'collect_attention', 'sparse_stage', 'scatter_to_grid', 'window_id', 'tokens_from_windows', 'semantic_to_tokens',
    'tokens_to_pixels', 'window_source_map', 'peak_over_uniform', 'recovery_distributions', 'recovery_argmax_window',
    'recovery_own_window_mass', 'recovery_token_map', 'default_windows', 'window_centre_token', 'unit_maps'
]
