"""Semantic-token generation / refinement / local / global blocks and spatial recovery against an independent,
deliberately naive oracle written like the released code: zero-pad, unfold the key regions (materialising every
copy), normalise and project the copies, mask with a padding map unfolded the same way (spec 3.1, 4.1, 4.2)."""
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from stvit_det.models.layers import ATTN_IMPLS, SemanticTokenBlock, SemanticTokenGenerator, SpatialRecovery
from stvit_det.models.layers.window_ops import window_partition, window_reverse

from conftest import randomize_

C, HEADS, WS, SS = 16, 2, 7, 3
# (H, W): both padded, only width padded, nothing padded, smaller than one window
SIZES = [(13, 20), (14, 20), (14, 21), (5, 9)]


def _pad(x):
    H, W = x.shape[1:3]
    return F.pad(x, (0, 0, 0, (-W) % WS, 0, (-H) % WS))


def _unfold_regions(grid, kernel, unit, border_value=0.0):
    """(B, Gh, Gw, C) grid -> (B, nW, kernel*kernel, C) materialised regions, zero tokens outside."""
    m = (kernel - unit) // 2
    t = F.pad(grid.permute(0, 3, 1, 2), (m, kernel - unit - m, m, kernel - unit - m), value=border_value)
    cols = F.unfold(t, kernel, stride=unit)  # (B, C*K, nW)
    B, Cc = grid.shape[0], grid.shape[3]
    return cols.view(B, Cc, kernel * kernel, -1).permute(0, 3, 2, 1)  # (B, nW, K, C)


def _pad_map_bias(Gh, Gw, kernel, unit, mode, valid, pads):
    """Padding map (1 = masked) of the released code / the correct rule, unfolded like the keys."""
    if mode == 'none':
        return None
    pm = torch.zeros(1, Gh, Gw, 1)
    if mode == 'correct':
        pm[:, valid[0]:] = 1
        pm[:, :, valid[1]:] = 1
    else:
        pad_b, pad_r = pads
        pm[:, -pad_b:, -pad_r:] = 1  # the released slicing, '-0:' included
    pmu = _unfold_regions(pm, kernel, unit, border_value=1.0)[0, :, :, 0]  # (nW, K)
    fill = float('-inf') if mode == 'correct' else -1000.0
    return torch.zeros_like(pmu).masked_fill(pmu > 0, fill)


def _naive_attn(blk, q_src, kv_src, bias):
    """Attn(LN1 q_src, LN1 kv_src) with the scale after q k^T, per head; kv_src already materialised."""
    a = blk.attn
    B, G, Nq, _ = q_src.shape
    K = kv_src.shape[2]
    q = a.q(blk.norm1(q_src)).view(B, G, Nq, HEADS, -1).transpose(2, 3)
    kv = a.kv(blk.norm1(kv_src)).view(B, G, K, 2, HEADS, -1)
    k, v = kv[..., 0, :, :].transpose(2, 3), kv[..., 1, :, :].transpose(2, 3)
    logits = (q @ k.transpose(-2, -1)) * a.scale
    if bias is not None:
        logits = logits + bias[None, :, None, None, :]
    out = (logits.softmax(-1) @ v).transpose(2, 3).reshape(B, G, Nq, -1)
    return a.proj(out)


def naive_generator(blk, x, s):
    B, H, W, _ = x.shape
    xp = _pad(x)
    Hp, Wp = xp.shape[1:3]
    if blk.generate:
        win = window_partition(xp, WS).reshape(-1, WS, WS, C).permute(0, 3, 1, 2)
        sw = F.adaptive_max_pool2d(win, SS).flatten(2).transpose(1, 2).reshape(B, -1, SS * SS, C)
    else:
        sw = window_partition(s, SS)
    keys = _unfold_regions(xp, blk.region, WS)
    bias = _pad_map_bias(Hp, Wp, blk.region, WS, blk.pad_mask, (H, W), (Hp - H, Wp - W))
    sw = sw + blk.layer_scale_1 * _naive_attn(blk, sw, keys, bias)
    s = window_reverse(sw, SS, SS * Hp // WS, SS * Wp // WS)
    return s + blk.layer_scale_2 * blk.mlp(blk.norm2(s))


def naive_recovery(blk, x, s):
    B, H, W, _ = x.shape
    xp = _pad(x)
    Hp, Wp = xp.shape[1:3]
    Hs, Ws = s.shape[1:3]
    keys = _unfold_regions(s, blk.region, SS)
    bias = _pad_map_bias(Hs, Ws, blk.region, SS, blk.pad_mask, (Hs, Ws), (Hp - H, Wp - W))
    xw = window_partition(xp, WS)
    xw = xw + blk.layer_scale_1 * _naive_attn(blk, xw, keys, bias)
    x = window_reverse(xw, WS, Hp, Wp)[:, :H, :W]
    return x + blk.layer_scale_2 * blk.mlp(blk.norm2(x))


def _grid(H, W):
    return torch.randn(2, SS * -(-H // WS), SS * -(-W // WS), C)


def _forward_only(impl):
    """'flex' has no CPU backward (PyTorch's FlexAttention): its forward is compared without autograd."""
    return torch.no_grad() if impl == 'flex' else nullcontext()


def _close(a, b):
    scale = b.abs().max().clamp_min(1e-6)
    return float((a - b).abs().max() / scale)


@pytest.mark.parametrize('hw', SIZES)
@pytest.mark.parametrize('mode', ['correct', 'official', 'none'])
@pytest.mark.parametrize('kind,region', [('generate', 14), ('refine', 21)])
@pytest.mark.parametrize('impl', ATTN_IMPLS)
def test_generator_matches_naive_oracle(hw, mode, kind, region, impl):
    blk = randomize_(SemanticTokenGenerator(C, HEADS, WS, SS, region, generate=kind == 'generate', pad_mask=mode,
                                            attn_impl=impl))
    x, s = torch.randn(2, *hw, C), _grid(*hw)
    with _forward_only(impl):
        x_out, s_out = blk(x, s)
    assert x_out is x
    assert s_out.shape == s.shape
    assert _close(s_out, naive_generator(blk, x, s)) < 1e-5


@pytest.mark.parametrize('hw', SIZES)
@pytest.mark.parametrize('mode', ['correct', 'official', 'none'])
@pytest.mark.parametrize('impl', ATTN_IMPLS)
def test_recovery_matches_naive_oracle(hw, mode, impl):
    blk = randomize_(SpatialRecovery(C, HEADS, WS, SS, 27, pad_mask=mode, attn_impl=impl))
    x, s = torch.randn(2, *hw, C), _grid(*hw)
    with _forward_only(impl):
        x_out, s_out = blk(x, s)
    assert s_out is None and x_out.shape == x.shape
    assert _close(x_out, naive_recovery(blk, x, s)) < 1e-5


def test_official_and_correct_differ_exactly_where_the_spec_says():
    """Both dims padded: outputs differ (the official mask leaves most padding keys in); nothing padded: 'official'
    puts -1000 on every logit, which equals no mask at all; one dim padded: j=1/j=2 agree."""
    def run(mode, hw, kind='generate'):
        torch.manual_seed(1)
        blk = randomize_(SemanticTokenGenerator(C, HEADS, WS, SS, 14 if kind == 'generate' else 21,
                                                generate=kind == 'generate', pad_mask=mode))
        torch.manual_seed(2)
        x, s = torch.randn(1, *hw, C), _grid(*hw)[:1]
        return blk(x, s)[1]

    assert _close(run('official', (13, 20)), run('correct', (13, 20))) > 1e-3
    assert _close(run('official', (14, 21)), run('none', (14, 21))) < 1e-5
    assert _close(run('official', (14, 21)), run('correct', (14, 21))) > 1e-3  # border unmasked vs masked
    for kind in ('generate', 'refine'):
        assert _close(run('official', (14, 20), kind), run('correct', (14, 20), kind)) < 1e-5


def test_generation_pools_each_window():
    """With zero layer scales the generated tokens are the 7->3 adaptive max-pool bins [0,3), [2,5), [4,7)."""
    blk = SemanticTokenGenerator(C, HEADS, WS, SS, 14, generate=True, layer_scale_init=0.0)
    x = torch.randn(1, 7, 14, C)
    _, s = blk(x, None)
    assert s.shape == (1, 3, 6, C)
    bins = [(0, 3), (2, 5), (4, 7)]
    for i, (r0, r1) in enumerate(bins):
        for j, (c0, c1) in enumerate(bins):
            assert torch.allclose(s[0, i, 3 + j], x[0, r0:r1, 7 + c0:7 + c1].amax(dim=(0, 1)))


def test_padded_bins_pool_zeros():
    blk = SemanticTokenGenerator(C, HEADS, WS, SS, 14, generate=True, layer_scale_init=0.0)
    x = -torch.rand(1, 3, 3, C) - 1  # all negative: bins entirely in padding pool to exactly 0
    _, s = blk(x, None)
    assert (s[0, 2, 2] == 0).all() and (s[0, 0, 0] < 0).all()


@pytest.mark.parametrize('scope', ['local', 'global'])
def test_local_global_blocks(scope):
    blk = randomize_(SemanticTokenBlock(C, HEADS, scope, SS))
    s = torch.randn(2, 6, 9, C)
    _, out = blk(None, s)
    # naive: attention over the window's 9 tokens (local) or over all 54 (global)
    groups = window_partition(s, SS) if scope == 'local' else s.reshape(2, 1, 54, C)
    t = groups + blk.layer_scale_1 * _naive_attn(blk, groups, groups, None)
    t = window_reverse(t, SS, 6, 9) if scope == 'local' else t.view(2, 6, 9, C)
    ref = t + blk.layer_scale_2 * blk.mlp(blk.norm2(t))
    assert _close(out, ref) < 1e-5
    # local attention never mixes windows: change one window, the others stay put
    s2 = s.clone()
    s2[:, :3, :3] += torch.randn(2, 3, 3, C)  # not a constant shift: LayerNorm would remove it
    _, out2 = blk(None, s2)
    changed = (out2 - out).abs().amax(dim=(0, 3)) > 0
    if scope == 'local':
        assert changed[:3, :3].all() and not changed[3:].any() and not changed[:, 3:].any()
    else:
        assert changed.all()


def test_recovery_gradients_reach_semantic_tokens_and_x():
    blk = randomize_(SpatialRecovery(C, HEADS, WS, SS, 27))
    x = torch.randn(1, 13, 20, C, requires_grad=True)
    s = _grid(13, 20)[:1].requires_grad_()
    out, _ = blk(x, s)
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0 and s.grad.abs().sum() > 0
    # every semantic token lies in some window's 27x27 region at this size
    assert (s.grad.abs().sum(-1) > 0).all()


def test_refine_needs_a_matching_grid():
    blk = SemanticTokenGenerator(C, HEADS, WS, SS, 21, generate=False)
    with pytest.raises(ValueError, match='semantic grid'):
        blk(torch.randn(1, 14, 14, C), torch.randn(1, 3, 3, C))
    with pytest.raises(ValueError, match='pad_mask'):
        SemanticTokenGenerator(C, HEADS, pad_mask='wrong')


def test_recorded_attention_is_a_distribution_and_changes_nothing():
    blk = randomize_(SpatialRecovery(C, HEADS, WS, SS, 27, attn_impl='dense'))
    x, s = torch.randn(1, 13, 20, C), _grid(13, 20)[:1]
    plain, _ = blk(x, s)
    blk.attn.record_attn = True
    recorded, _ = blk(x, s)
    w = blk.attn.last_attn['weights']
    assert w.shape == (1, 6, HEADS, 49, 27 * 27)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    border = blk.attn.last_attn['index'] == 6 * 9  # (G, K): out-of-grid keys
    assert border.any() and (w.permute(0, 2, 3, 1, 4)[..., border] == 0).all()  # masked ('correct')
    torch.testing.assert_close(plain, recorded)


@pytest.mark.parametrize('kind', ['generate', 'refine', 'recover'])
def test_stochastic_depth_of_the_region_attention_is_drawn_per_window(kind):
    """As in the released blocks (attention on (B*nW, N, C)): in training each window keeps its whole attention
    update, scaled by 1 / (1 - p), or drops it, independently of the other windows of the same image."""
    p = 0.5
    if kind == 'recover':
        blk = randomize_(SpatialRecovery(C, HEADS, WS, SS, 27, drop_path=p))
    else:
        blk = randomize_(SemanticTokenGenerator(C, HEADS, WS, SS, 14 if kind == 'generate' else 21,
                                                generate=kind == 'generate', drop_path=p))
    with torch.no_grad():
        blk.layer_scale_2.zero_()  # the MLP branch adds exactly 0: only the attention update remains
    x, s = torch.randn(2, 28, 35, C), _grid(28, 35)  # 4 x 5 windows, nothing padded
    if kind == 'recover':
        base, unit, pick = x, WS, 0
    else:
        base = window_reverse(blk.pool(x), SS, *s.shape[1:3]) if kind == 'generate' else s
        unit, pick = SS, 1
    with torch.no_grad():
        full = blk.eval()(x, s)[pick] - base  # update of every window, kept
        drawn = blk.train()(x, s)[pick] - base
    full_w, drawn_w = window_partition(full, unit), window_partition(drawn, unit)  # (B, nW, N, C)
    kept = drawn_w.flatten(2).abs().amax(-1) > 0  # (B, nW)
    assert (full_w.flatten(2).abs().amax(-1) > 0).all()
    torch.testing.assert_close(drawn_w[kept], full_w[kept] / (1 - p))
    assert (kept.any(1) & ~kept.all(1)).all(), f'windows of one image kept or dropped together: {kept.tolist()}'
