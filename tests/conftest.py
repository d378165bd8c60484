"""Shared fixtures: deterministic seeds, eager FlexAttention, a temporary data-check cache, a small STViTR factory,
and a CUDA marker."""
import os
import shutil
import tempfile

import pytest
import torch

import stvit_det  # noqa: F401  (registers STViTR)
from stvit_det import STViTR

# a small STViT-R: one dumbbell unit, narrow channels; fast on 2 CPU cores
SMALL = dict(embed_dims=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    """The tools' memory of checked segmentation samples lives in a temporary folder, not in ~/.cache. Set before
    the test modules are imported: some copy ``os.environ`` for the tools they start as subprocesses."""
    config._data_check_cache = tempfile.mkdtemp(prefix='stvit_data_check_')
    config._data_check_before = os.environ.get('STVIT_DATA_CHECK_CACHE')
    os.environ['STVIT_DATA_CHECK_CACHE'] = config._data_check_cache


def pytest_unconfigure(config):
    shutil.rmtree(config._data_check_cache, ignore_errors=True)
    if config._data_check_before is None:
        os.environ.pop('STVIT_DATA_CHECK_CACHE', None)
    else:
        os.environ['STVIT_DATA_CHECK_CACHE'] = config._data_check_before


@pytest.fixture(autouse=True)
def _flex_eager(monkeypatch):
    """attn_impl='flex' runs PyTorch's unfused FlexAttention reference in tests: compiling the kernel takes 10-20 s
    per shape on the CPU. ``tests/test_flex_attention.py`` compiles it on purpose."""
    from stvit_det.models.layers import attention
    monkeypatch.setattr(attention, 'FLEX_COMPILE', False)
    yield


def small_stvit(**kwargs) -> STViTR:
    """A randomly initialised small STViTR (``SMALL`` sizes unless overridden)."""
    cfg = dict(SMALL, drop_path_rate=0.0)
    cfg.update(kwargs)
    model = STViTR(**cfg)
    model.init_weights()
    return model


def randomize_(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (also norms, biases and the 1e-5 layer scales) so no term hides behind its init."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if 'layer_scale' in name:
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            else:
                p.add_(torch.randn_like(p) * std)
    return module


def assert_with_cp_parity(hw, **kwargs):
    """Outputs, input gradients and parameter gradients of ``small_stvit(**kwargs)`` equal those of the same model
    with ``with_cp=True`` (drop path on, the same random draws)."""
    base = randomize_(small_stvit(drop_path_rate=0.2, **kwargs))
    cp = small_stvit(drop_path_rate=0.2, with_cp=True, **kwargs)
    cp.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, *hw)
    results = []
    for model in (base.train(), cp.train()):
        torch.manual_seed(7)  # same drop-path draws
        xi = x.clone().requires_grad_()
        outs = model(xi)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, xi.grad, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1, p1), (o2, g2, p2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    for n in p1:
        torch.testing.assert_close(p1[n], p2[n], rtol=1e-4, atol=1e-7, msg=n)
