"""``attn_impl='flex'``: PyTorch's FlexAttention over every source token, the region table as score modification
and a block mask made from it. The block mask lists exactly the (query block, key block) pairs that hold region
keys; the compiled kernel (inductor, CPU) and the eager reference equal the oracle; the CPU refuses to train it
with a message that says what to use. Its backward runs on CUDA only (PyTorch has no CPU backward for it)."""
import pytest
import torch

from stvit_det.models.layers import attention
from stvit_det.models.layers.attention import (FLEX_BLOCK, Region, densify_region_bias, region_block_mask,
                                               region_flex, region_reference)

from conftest import randomize_, requires_cuda, small_stvit

# real stage-3 geometries: generation / refinement on the 800x1216 map (50x76, padded to 56x77), recovery on the
# 1344x2016 semantic grid (36x54), one per pad-mask mode; and the queries per window
REGIONS = [
    (Region((56, 77), 7, 14, 'correct', (50, 76), (0, 0)), 9),
    (Region((56, 77), 7, 21, 'official', (50, 76), (6, 1)), 9),
    (Region((36, 54), 3, 27, 'none', (36, 54), (0, 0)), 49),
]


def _allowed(region: Region) -> torch.Tensor:
    """(G, L) bool: key l is in window g's region (border token last)."""
    L = region.grid[0] * region.grid[1] + 1
    return densify_region_bias(region.index('cpu'), region.key_bias('cpu'), L) > float('-inf')


def _listed(counts: torch.Tensor, indices: torch.Tensor, num_kv_blocks: int) -> torch.Tensor:
    """(nq, nk) bool from a BlockMask's (1, 1, nq) counts and (1, 1, nq, nk) indices."""
    out = torch.zeros(counts.shape[-1], num_kv_blocks, dtype=torch.bool)
    for row, (n, idx) in enumerate(zip(counts[0, 0].tolist(), indices[0, 0])):
        out[row, idx[:n].long()] = True
    return out


@pytest.mark.parametrize('region,num_queries', REGIONS, ids=['generate', 'refine', 'recover'])
def test_block_mask_lists_exactly_the_blocks_with_region_keys(region, num_queries):
    allowed = _allowed(region)
    mask = region_block_mask(allowed, num_queries)
    per_query = allowed.repeat_interleave(num_queries, dim=0)  # (G*Nq, L)
    N, L = per_query.shape
    nq, nk = -(-N // FLEX_BLOCK), -(-L // FLEX_BLOCK)
    hits = torch.zeros(nq, nk, dtype=torch.long)
    sizes = torch.zeros(nq, nk, dtype=torch.long)
    rows, cols = torch.meshgrid(torch.arange(N) // FLEX_BLOCK, torch.arange(L) // FLEX_BLOCK, indexing='ij')
    hits.index_put_((rows.flatten(), cols.flatten()), per_query.flatten().long(), accumulate=True)
    sizes.index_put_((rows.flatten(), cols.flatten()), torch.ones(N * L, dtype=torch.long), accumulate=True)
    partial = _listed(mask.kv_num_blocks, mask.kv_indices, nk)
    full = _listed(mask.full_kv_num_blocks, mask.full_kv_indices, nk)
    assert not (partial & full).any()
    assert torch.equal(partial | full, hits > 0)  # every block with a region key is computed, no other block
    assert torch.equal(full, (hits == sizes) & (sizes == FLEX_BLOCK**2))  # 'full' (no mask) only if all keys are in
    assert (hits > 0).float().mean() < 0.7  # block sparse: much less than every (query, key) block


@pytest.mark.parametrize('region,num_queries', REGIONS, ids=['generate', 'refine', 'recover'])
def test_compiled_flex_equals_reference(region, num_queries, monkeypatch):
    """The compiled kernel (inductor's CPU template) skips the unlisted blocks: equal to the gathered oracle."""
    monkeypatch.setattr(attention, 'FLEX_COMPILE', True)
    G = (region.grid[0] // region.unit) * (region.grid[1] // region.unit)
    q = torch.randn(1, 2, G, num_queries, 16)
    kv, kv_border = torch.randn(1, *region.grid, 2, 2, 16), torch.randn(2, 2, 16)
    with torch.no_grad():
        ref = region_reference(q, kv, kv_border, region, 0.25)
        out = region_flex(q, kv, kv_border, region, 0.25)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-4


@pytest.mark.parametrize('mode', ['correct', 'official', 'none'])
@pytest.mark.parametrize('hw', [(93, 117), (56, 56), (30, 45)])
def test_flex_backbone_forward_equals_reference(mode, hw):
    ref = randomize_(small_stvit(attn_impl='reference', pad_mask=mode)).eval()
    flex = small_stvit(attn_impl='flex', pad_mask=mode).eval()
    flex.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        for a, b in zip(flex(x), ref(x)):
            assert float((a - b).abs().max() / b.abs().max()) <= 1e-4
        with torch.autocast('cpu', dtype=torch.bfloat16):
            half = flex(x)
    for a, b in zip(half, ref(x)):
        assert float((a.float() - b).abs().max() / b.abs().max()) < 0.1


def test_flex_refuses_to_train_on_the_cpu():
    model = small_stvit(attn_impl='flex').train()
    with pytest.raises(RuntimeError, match=r"attn_impl='flex' trains on CUDA only.*use attn_impl='auto'"):
        model(torch.randn(1, 3, 64, 64))


@requires_cuda
@pytest.mark.parametrize('mode', ['correct', 'official', 'none'])
def test_flex_gradients_equal_reference_on_cuda(mode, monkeypatch):
    """On CUDA the compiled kernel and its backward: outputs, input and parameter gradients equal the oracle."""
    monkeypatch.setattr(attention, 'FLEX_COMPILE', True)
    ref = randomize_(small_stvit(attn_impl='reference', pad_mask=mode)).cuda()
    flex = small_stvit(attn_impl='flex', pad_mask=mode).cuda()
    flex.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 93, 117, device='cuda')
    results = []
    for model in (ref, flex):
        xi = x.clone().requires_grad_()
        outs = model(xi)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (o1, g1, p1), (o2, g2, p2) = results
    for a, b in zip(o2, o1):
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-4
    assert float((g2 - g1).abs().max() / g1.abs().max()) <= 1e-4
    for n in p1:
        assert float((p2[n] - p1[n]).norm() / p1[n].norm().clamp_min(1e-12)) <= 1e-4, n
