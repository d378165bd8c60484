"""Every fast attention path equals the reference path (outputs and gradients, both pad_mask modes, odd sizes),
and half precision stays finite."""
import pytest
import torch

from stvit_det.models.layers.attention import ATTN_IMPLS, densify_region_bias
from stvit_det.models.layers.window_ops import region_index, region_key_bias

from conftest import randomize_, small_stvit

FAST = [impl for impl in ATTN_IMPLS if impl != 'reference']


def _run(model, x):
    x = x.clone().requires_grad_()
    outs = model(x)
    sum((o * torch.cos(torch.arange(o.numel(), dtype=o.dtype)).view_as(o)).sum() for o in outs).backward()
    return outs, x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('impl', FAST)
@pytest.mark.parametrize('mode', ['correct', 'official'])
@pytest.mark.parametrize('hw', [(93, 117), (56, 56), (30, 45)])
def test_fast_path_equals_reference(impl, mode, hw):
    ref = randomize_(small_stvit(attn_impl='reference', pad_mask=mode))
    fast = small_stvit(attn_impl=impl, pad_mask=mode)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *hw)
    (o1, g1, p1), (o2, g2, p2) = _run(ref, x), _run(fast, x)
    for a, b in zip(o1, o2):
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-4
    assert float((g1 - g2).abs().max() / g1.abs().max()) <= 1e-4
    for n in p1:
        assert float((p1[n] - p2[n]).abs().max() / p1[n].abs().max().clamp_min(1e-12)) <= 1e-3, n


@pytest.mark.parametrize('mode', ['correct', 'official', 'none'])
def test_dense_bias_counts_border_copies(mode):
    """The dense mask keeps exactly each window's region; the border column carries log(#border positions)."""
    index, rows, cols = region_index(14, 21, 7, 14)
    bias = region_key_bias(14, 21, 7, 14, mode, 13, 20, 1, 1)
    dense = densify_region_bias(index, bias, 14 * 21 + 1)
    assert dense.shape == (6, 14 * 21 + 1)
    for w in range(6):
        inside = index[w] < 14 * 21
        allowed = set(index[w][inside].tolist())
        finite_or_masked = {j for j in range(14 * 21) if dense[w, j] != float('-inf')}
        if mode == 'none':
            assert finite_or_masked == allowed
        else:
            assert finite_or_masked <= allowed
        n_border = int((~inside).sum())
        expected = {'none': torch.tensor(float(n_border)).log(), 'correct': torch.tensor(float('-inf')),
                    'official': torch.tensor(float(n_border)).log() - 1000}[mode]
        assert torch.isclose(dense[w, -1], expected) or (dense[w, -1] == expected)


@pytest.mark.parametrize('impl', ATTN_IMPLS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('with_cp', [False, True])
def test_half_precision_autocast_is_finite(impl, dtype, with_cp):
    model = small_stvit(attn_impl=impl, with_cp=with_cp, pad_mask='correct')
    model.train()
    x = torch.randn(1, 3, 75, 90)
    with torch.autocast('cpu', dtype=dtype):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()  # compare in eval mode (the stem BN uses running statistics in both runs)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=dtype):
            half = model(x)
    for a, b in zip(half, ref):
        assert float((a.float() - b).abs().max() / b.abs().max()) < 0.1  # half precision stays close to fp32


@pytest.mark.parametrize('impl', FAST)
def test_compiles_as_one_graph(impl):
    """torch.compile sees the whole backbone as one graph (fullgraph=True raises on any graph break)."""
    model = small_stvit(attn_impl=impl).eval()
    x = torch.randn(1, 3, 93, 117)
    compiled = torch.compile(model, backend='eager', fullgraph=True, dynamic=False)
    with torch.no_grad():
        for a, b in zip(model(x), compiled(x)):
            torch.testing.assert_close(a, b)
    torch._dynamo.reset()
