"""``pad_mask='official'`` against the RELEASED detection backbone itself: ``data/official_backbone.pt`` holds
random official-layout weights, inputs and the outputs (and one input gradient) that changsn/STViT-R-Object-Detection's
``SwinTransformer`` computed from them (captured by ``data/make_official_fixture.py``, which imports the released
code from a checkout; nothing of it is in this repository). The weights load into STViTR with no key changed,
and every attention path reproduces the released outputs, both where the released mask is the corner rule and
where a zero bottom pad makes it mark whole columns (``rows[-0:]``)."""
import importlib.util
import os.path as osp

import pytest
import torch

from stvit_det import STViTR
from stvit_det.models.layers import ATTN_IMPLS
from stvit_det.utils.ckpt_convert import IGNORABLE_SUFFIXES

FIXTURE = osp.join(osp.dirname(osp.abspath(__file__)), 'data', 'official_backbone.pt')


@pytest.fixture(scope='module')
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _model(fixture, impl):
    arch = fixture['arch']
    model = STViTR(embed_dims=arch['embed_dim'], depths=arch['depths'], num_heads=arch['num_heads'],
                   drop_path_rate=0.0, pad_mask='official', attn_impl=impl)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in fixture['state_dict'].items()},
                                                strict=False)
    assert unexpected == [] and all(k.endswith(IGNORABLE_SUFFIXES) or k.endswith('num_batches_tracked')
                                    for k in missing), (missing, unexpected)
    return model.eval()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _capture_script():
    """``data/make_official_fixture.py`` as a module (its loss weights are the ones the gradient was taken with)."""
    spec = importlib.util.spec_from_file_location('make_official_fixture', osp.join(osp.dirname(FIXTURE),
                                                                                    'make_official_fixture.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_loss_weights = _capture_script().loss_weights


def test_fixture_is_what_the_tests_assume(fixture):
    """Two cases: bottom + right padding of the stage-3 map, and right padding only (the ``rows[-0:]`` quirk)."""
    assert fixture['official_commit'].startswith('8b8eb1e')
    stage3 = [tuple(case['outputs'][2].shape[2:]) for case in fixture['cases']]
    assert stage3 == [(8, 11), (7, 10)]
    assert [len(case['input']) for case in fixture['cases']] == [2, 2]  # see make_official_fixture: no batch of 1
    assert [o.shape[1] for o in fixture['cases'][0]['outputs']] == [8, 16, 32, 64]


@pytest.mark.parametrize('impl', ATTN_IMPLS)
def test_every_path_reproduces_the_released_outputs(fixture, impl):
    model = _model(fixture, impl)
    for case in fixture['cases']:
        with torch.no_grad():
            outs = model(case['input'].float())
        for i, (out, expected) in enumerate(zip(outs, case['outputs'])):
            assert out.shape == expected.shape
            assert _rel(out, expected) < (1e-5 if impl == 'reference' else 1e-4), (i, _rel(out, expected))


@pytest.mark.parametrize('impl', [i for i in ATTN_IMPLS if i != 'flex'])  # flex: no CPU backward
def test_input_gradient_matches_the_released_code(fixture, impl):
    model = _model(fixture, impl)
    case = next(c for c in fixture['cases'] if 'input_grad' in c)
    x = case['input'].float().requires_grad_()
    outs = model(x)
    sum((o * w).sum() for o, w in zip(outs, _loss_weights(outs))).backward()
    assert _rel(x.grad[:1], case['input_grad']) < (1e-5 if impl == 'reference' else 1e-4)


def test_the_correct_mask_differs_from_the_released_one(fixture):
    """The fixture can tell the modes apart: ``'correct'`` gives another stage-3 output on these inputs."""
    model = _model(fixture, 'reference')
    for layer in model.modules():
        if hasattr(layer, 'pad_mask') and isinstance(layer.pad_mask, str):
            layer.pad_mask = 'correct'
    case = fixture['cases'][1]
    with torch.no_grad():
        outs = model(case['input'].float())
    assert _rel(outs[2], case['outputs'][2]) > 1e-3
