"""The classification form against the RELEASED ImageNet network itself: ``data/official_classifier.pt`` holds random
official-layout weights, a batch of two 224x224 inputs, and the pooled features, logits and one input gradient that
changsn/STViT-R's ``SwinTransformer`` computed from them (captured by ``data/make_official_cls_fixture.py``, which
imports the released code from a checkout; nothing of it is in this repository). The weights go through
``imagenet_to_classifier`` (what ``tools/convert_ckpt.py --classifier`` runs) into an MMPretrain ``ImageClassifier``
with ``STViTR(stage3_form='classification')`` built from our released-network config, and every attention path
reproduces the released outputs. ``test_classification_form.py`` checks the same form against an oracle written
from the released rules at other sizes; this file checks those rules against the released code."""
import copy
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import stvit_det  # noqa: F401  (registers STViTR in mmpretrain's registry)
from stvit_det.models.layers import ATTN_IMPLS
from stvit_det.utils.ckpt_convert import IGNORABLE_SUFFIXES, imagenet_to_classifier

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIXTURE = osp.join(ROOT, 'tests', 'data', 'official_classifier.pt')
RELEASED_S = osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-s-released_16xb64_in1k.py')


@pytest.fixture(scope='module')
def fixture():
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # the scope of the other test files is left as it was
        yield torch.load(FIXTURE, weights_only=True)


def _loss_weights():
    """``data/make_official_cls_fixture.py``'s loss weights (the ones the stored gradient was taken with)."""
    spec = importlib.util.spec_from_file_location('make_official_cls_fixture',
                                                  osp.join(osp.dirname(FIXTURE), 'make_official_cls_fixture.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.loss_weights


def _classifier(fixture, impl, stage3_form='classification'):
    """Our released-network config, narrowed to the fixture's arch, with the fixture's weights converted."""
    arch = fixture['arch']
    cfg = copy.deepcopy(Config.fromfile(RELEASED_S).model)
    cfg.backbone.pop('arch')
    cfg.backbone.update(embed_dims=arch['embed_dim'], depths=arch['depths'], num_heads=arch['num_heads'],
                        drop_path_rate=0.0, attn_impl=impl, stage3_form=stage3_form)
    cfg.head.update(num_classes=arch['num_classes'], in_channels=arch['embed_dim'] * 8)
    model = MODELS.build(cfg)
    sd, report = imagenet_to_classifier({'model': {k: v.float() for k, v in fixture['state_dict'].items()}})
    assert report['layout'] == 'official'
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == [] and all(k.endswith(IGNORABLE_SUFFIXES) for k in missing), (missing, unexpected)
    return model.eval()


def _run(model, x):
    """(pooled features the head reads, logits): the classifier's own ``extract_feat`` and head."""
    feats = model.extract_feat(x)
    return feats[-1], model.head(feats)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_fixture_is_what_the_tests_assume(fixture):
    assert fixture['official_commit'].startswith('b4a27a0')
    assert fixture['arch']['shortcut'] is False and fixture['arch']['use_global'] is False  # as released (logs)
    assert tuple(fixture['input'].shape) == (2, 3, 224, 224) and tuple(fixture['logits'].shape) == (2, 10)
    assert 'layers.2.blocks.1.attn.kv.weight' in fixture['state_dict'] and 'head.weight' in fixture['state_dict']


@pytest.mark.parametrize('impl', ATTN_IMPLS)
def test_every_path_reproduces_the_released_network(fixture, impl):
    model = _classifier(fixture, impl)
    with torch.no_grad():
        features, logits = _run(model, fixture['input'].float())
    assert _rel(features, fixture['features']) < 5e-6  # measured: 3e-7 / 6e-7
    assert _rel(logits, fixture['logits']) < 5e-6


@pytest.mark.parametrize('impl', ATTN_IMPLS)
def test_input_gradient_matches_the_released_network(fixture, impl):
    model = _classifier(fixture, impl)
    x = fixture['input'].float().requires_grad_()
    logits = _run(model, x)[1]
    (logits * _loss_weights()(logits)).sum().backward()
    assert _rel(x.grad[:1], fixture['input_grad']) < 3e-5  # measured: 2e-6 to 4e-6


def test_the_detection_form_differs_from_the_released_network(fixture):
    """The fixture tells the forms apart: the same weights in the detection form give other features."""
    model = _classifier(fixture, 'reference', stage3_form='detection')
    with torch.no_grad():
        features = _run(model, fixture['input'].float())[0]
    assert _rel(features, fixture['features']) > 1e-2
