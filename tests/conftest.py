"""Shared fixtures: deterministic seeds, a small STViTR factory, and a CUDA marker."""
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
