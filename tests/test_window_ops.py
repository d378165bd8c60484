"""Window helpers and padding masks (spec sections 3 and 4)."""
import pytest
import torch

from stvit_det.models.layers.window_ops import (OFFICIAL_MASK_VALUE, key_position_bias, pad_to_multiple, region_index,
                                                region_key_bias,
                                                semantic_grid_size, shift_window_mask, window_partition,
                                                window_reverse)


@pytest.mark.parametrize('hw', [(7, 7), (14, 21), (56, 77)])
def test_partition_reverse_identity(hw):
    x = torch.randn(2, *hw, 5)
    win = window_partition(x, 7)
    assert win.shape == (2, (hw[0] // 7) * (hw[1] // 7), 49, 5)
    assert torch.equal(window_reverse(win, 7, *hw), x)
    # window (i, j) is row-major over the window grid
    nw = hw[1] // 7
    i, j = divmod(win.shape[1] - 1, nw)
    assert torch.equal(win[:, -1].view(2, 7, 7, 5), x[:, 7 * i:7 * i + 7, 7 * j:7 * j + 7])


def test_pad_to_multiple_zero_pads_bottom_right():
    x = torch.randn(1, 50, 76, 3)
    xp = pad_to_multiple(x, 7)
    assert xp.shape == (1, 56, 77, 3)
    assert torch.equal(xp[:, :50, :76], x)
    assert xp[:, 50:].abs().sum() == 0 and xp[:, :, 76:].abs().sum() == 0
    assert pad_to_multiple(xp, 7) is xp


def test_semantic_grid_size():
    assert semantic_grid_size(50, 76, 7, 3) == (24, 33)  # 800x1216: 792 semantic tokens
    assert semantic_grid_size(50, 80, 7, 3) == (24, 36)
    assert semantic_grid_size(2, 2, 7, 3) == (3, 3)


def test_shift_mask_blocks_across_regions():
    mask = shift_window_mask(14, 14, 7, 3)
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the top-left window never mixes regions
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_shift_mask_equals_swin_slices_also_on_one_window():
    """The regions as Swin writes them (three slices per axis, filled in turn) at several sizes, down to a map of
    one window, where the first slice is empty: the mask is built without it (an empty slice stopped the static
    ONNX export of a 224x224 backbone in PyTorch's shape inference)."""
    for Hp, Wp, ws, shift in ((14, 14, 7, 3), (7, 7, 7, 3), (7, 21, 7, 3), (28, 14, 7, 2), (10, 15, 5, 2)):
        img = torch.zeros(1, Hp, Wp, 1)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        win = window_partition(img, ws).squeeze(0).squeeze(-1)
        diff = win.unsqueeze(1) - win.unsqueeze(2)
        expected = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
        assert torch.equal(shift_window_mask(Hp, Wp, ws, shift), expected), (Hp, Wp, ws, shift)


def test_shift_masks_held_by_the_cache_stay_small_over_multiscale_training():
    """The masks live in a process-wide cache: over the sizes of mmdet's multi-scale training (short side 480-800,
    long side <= 1333, padded to 32) the cache must not keep hundreds of MB alive (64 entries held ~320 MB)."""
    import weakref

    shift_window_mask.cache.cache_clear()
    masks, ceil = [], lambda a, b: -(-a // b)
    for short in range(480, 801, 64):
        for long in (round(short * 4 / 3), min(1333, round(short * 16 / 9))):
            h, w = ceil(short, 32) * 8, ceil(long, 32) * 8  # stage-1 map of the padded image
            for _ in range(3):  # stages 1-3 (stage 4 is one window here at most sizes)
                masks.append(weakref.ref(shift_window_mask(ceil(h, 7) * 7, ceil(w, 7) * 7, 7, 3)))
                h, w = ceil(h, 2), ceil(w, 2)
    held = [m() for m in masks if m() is not None]
    assert len(held) >= 3  # the last size's masks are still cached (inference at one size never rebuilds them)
    assert sum(m.numel() * m.element_size() for m in held) < 64 * 2**20
    shift_window_mask.cache.cache_clear()


@pytest.mark.parametrize('unit,kernel,margin', [(7, 14, 3), (7, 21, 7), (3, 27, 12)])
def test_region_index_matches_unfold_geometry(unit, kernel, margin):
    gh, gw = 4 * unit, 5 * unit
    index, rows, cols = region_index(gh, gw, unit, kernel)
    assert index.shape == (20, kernel * kernel)
    for w in (0, 7, 19):
        i, j = divmod(w, 5)
        r = rows[w].view(kernel, kernel)
        c = cols[w].view(kernel, kernel)
        assert r[0, 0] == unit * i - margin and r[-1, 0] == unit * i - margin + kernel - 1
        assert c[0, 0] == unit * j - margin and c[0, -1] == unit * j - margin + kernel - 1
        inside = (r >= 0) & (r < gh) & (c >= 0) & (c < gw)
        assert torch.equal(index[w].view(kernel, kernel)[inside], (r * gw + c)[inside])
        assert (index[w].view(kernel, kernel)[~inside] == gh * gw).all()  # border slot
    # every region contains its own window
    for w in range(20):
        i, j = divmod(w, 5)
        own = {(unit * i + a) * gw + unit * j + b for a in range(unit) for b in range(unit)}
        assert own <= set(index[w].tolist())


def _masked_cells(bias, rows, cols, gh, gw):
    """Set of interior (row, col) cells masked in at least one region, and whether the border is masked."""
    inside = (rows >= 0) & (rows < gh) & (cols >= 0) & (cols < gw)
    m = bias != 0
    cells = {(int(r), int(c)) for r, c in zip(rows[m & inside], cols[m & inside])}
    return cells, bool(m[~inside].all()) if (~inside).any() else None


def test_correct_mask_is_exactly_the_padded_cells_both_dims_padded():
    H, W = 50, 76  # 800x1216 stage 3: padded to 56x77 (pad_b 6, pad_r 1)
    for kernel in (14, 21):
        bias = region_key_bias(56, 77, 7, kernel, 'correct', H, W, 6, 1)
        _, rows, cols = region_index(56, 77, 7, kernel)
        cells, border = _masked_cells(bias, rows, cols, 56, 77)
        seen = {(int(r), int(c)) for r, c in zip(rows.flatten(), cols.flatten()) if 0 <= r < 56 and 0 <= c < 77}
        assert cells == {rc for rc in seen if rc[0] >= H or rc[1] >= W}
        assert border is True
        assert torch.isinf(bias[bias != 0]).all()


def test_official_mask_corner_rule_both_dims_padded():
    """Released code at 50x76: only the 6x1 bottom-right corner of the padding (6 cells) plus the border."""
    bias = region_key_bias(56, 77, 7, 14, 'official', 50, 76, 6, 1)
    _, rows, cols = region_index(56, 77, 7, 14)
    cells, border = _masked_cells(bias, rows, cols, 56, 77)
    assert cells == {(r, 76) for r in range(50, 56)}
    assert border is True
    assert set(bias.unique().tolist()) <= {0.0, OFFICIAL_MASK_VALUE}


def test_official_mask_one_dim_padded_masks_whole_strip():
    # pad_b = 0, pad_r = 1: rows[-0:] selects every row, so the whole padded column is masked (as 'correct')
    off = region_key_bias(56, 77, 7, 21, 'official', 56, 76, 0, 1)
    cor = region_key_bias(56, 77, 7, 21, 'correct', 56, 76, 0, 1)
    assert torch.equal(off != 0, cor != 0)


def test_official_mask_nothing_padded_masks_everything():
    """No padding: the rule gives every logit -1000, which cancels in the softmax, so the region bias (shifted
    per window to a largest entry of 0) is 0 everywhere; 'correct' masks only the border."""
    _, rows, cols = region_index(56, 77, 7, 14)
    assert (key_position_bias(rows, cols, 56, 77, 'official', 56, 77, 0, 0) == OFFICIAL_MASK_VALUE).all()
    off = region_key_bias(56, 77, 7, 14, 'official', 56, 77, 0, 0)
    assert (off == 0).all()
    cor = region_key_bias(56, 77, 7, 14, 'correct', 56, 77, 0, 0)
    cells, border = _masked_cells(cor, rows, cols, 56, 77)
    assert cells == set() and border is True
    assert region_key_bias(56, 77, 7, 14, 'none', 56, 77, 0, 0) is None


def test_recovery_masks_on_the_semantic_grid():
    # 800x1216: semantic grid 24x33; image pads (6, 1) applied to the grid by the released code
    off = region_key_bias(24, 33, 3, 27, 'official', 24, 33, 6, 1)
    _, rows, cols = region_index(24, 33, 3, 27)
    cells, _ = _masked_cells(off, rows, cols, 24, 33)
    assert cells == {(r, 32) for r in range(18, 24)}  # 6 real semantic tokens masked
    cor = region_key_bias(24, 33, 3, 27, 'correct', 24, 33, 6, 1)
    cells, border = _masked_cells(cor, rows, cols, 24, 33)
    assert cells == set() and border is True  # only out-of-grid positions
    # 800x1344: pad_b 6, pad_r 0 -> the bottom 6 rows of the 24x36 grid (216 tokens)
    off = region_key_bias(24, 36, 3, 27, 'official', 24, 36, 6, 0)
    _, rows, cols = region_index(24, 36, 3, 27)
    cells, _ = _masked_cells(off, rows, cols, 24, 36)
    assert len(cells) == 216 and all(r >= 18 for r, _ in cells)


def test_bad_arguments():
    from stvit_det.models.backbones.stvit_r import STViTR
    from stvit_det.models.layers import SemanticTokenGenerator, SpatialRecovery, TokenLearner

    message = r"pad_mask must be one of \('correct', 'official', 'none'\), got 'bogus'"
    with pytest.raises(ValueError, match=message):
        region_key_bias(14, 14, 7, 14, 'bogus', 14, 14, 0, 0)
    for build in (lambda: STViTR(pad_mask='bogus'), lambda: SemanticTokenGenerator(8, 2, pad_mask='bogus'),
                  lambda: SpatialRecovery(8, 2, pad_mask='bogus'), lambda: TokenLearner(8, pad_mask='bogus')):
        with pytest.raises(ValueError, match=message):  # one check, one message, wherever the mode is given
            build()
    with pytest.raises(ValueError, match='cover its own window'):
        region_index(14, 14, 7, 5)
