"""TokenLearner as the sparsifier of STViTR (``sparsifier='tokenlearner'``): the per-window TokenLearner and the
TokenFuser as layers (pooling weights, padding, locality, identity start), the backbone checks STViT-R passes
(shapes at odd sizes, gradients, checkpointing parity, layout) and its Mask R-CNN config (loss + predict)."""
import copy
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules

from stvit_det import STViTR
from stvit_det.models.layers import TokenFuser, TokenLearner
from stvit_det.models.layers.stvit_stage import TOKENLEARNER_UNIT
from stvit_det.models.layers.token_learner import padded_window_mask
from stvit_det.models.layers.window_ops import window_partition

from conftest import assert_with_cp_parity, randomize_, small_stvit

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_tokenlearner-t_fpn_1x_coco.py')
CHANNELS = (96, 192, 384, 768)


def expected_sizes(H, W):
    sizes = [(math.ceil(H / 4), math.ceil(W / 4))]
    for _ in range(3):
        sizes.append(tuple(math.ceil(v / 2) for v in sizes[-1]))
    return sizes


# ------------------------------------------------------------------------------------------------------ layers
@pytest.mark.parametrize('pad_mask', ['correct', 'none'])
def test_learner_pools_each_window_with_softmax_weights(pad_mask):
    """With constant selection logits every learned token is the mean of its window: of the real tokens only
    ('correct') or of all 49 with the zero padding ('none'). Raw x is pooled, not LN(x)."""
    H, W, C = 9, 16, 8  # padded to 14 x 21: 2 x 3 windows, bottom row and right column of windows padded
    learner = TokenLearner(C, pad_mask=pad_mask, layer_scale_init=0.0)
    torch.nn.init.zeros_(learner.selector.fc2.weight)
    learner.record_attn = True
    x = torch.randn(2, H, W, C) * 3 + 1
    x_out, s = learner(x, None)
    assert x_out is x and s.shape == (2, 6, 9, C)
    xw = window_partition(torch.nn.functional.pad(x, (0, 0, 0, 21 - W, 0, 14 - H)), 7)  # (2, 6, 49, C)
    valid = padded_window_mask(H, W, 7)  # (6, 49)
    if pad_mask == 'correct':
        mean = (xw * valid[..., None]).sum(2) / valid.sum(1)[:, None]  # (2, 6, C)
    else:
        mean = xw.mean(2)
    sw = window_partition(s, 3)  # (2, 6, 9, C)
    torch.testing.assert_close(sw, mean[:, :, None].expand_as(sw))
    weights = learner.last_attn['weights']  # (B, nW, 1, S, N)
    assert weights.shape == (2, 6, 1, 9, 49)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 6, 1, 9))
    if pad_mask == 'correct':
        padded = (~valid)[None, :, None, None, :].expand_as(weights)
        assert padded.any() and (weights[padded] == 0).all()


def test_learner_tokens_depend_only_on_their_window():
    learner = randomize_(TokenLearner(8))
    x = torch.randn(1, 14, 21, 8, requires_grad=True)
    _, s = learner(x, None)
    s[:, :3, 3:6].sum().backward()  # the tokens of window (0, 1)
    touched = x.grad.abs().sum(-1)[0] > 0
    expected = torch.zeros(14, 21, dtype=torch.bool)
    expected[:7, 7:14] = True
    assert torch.equal(touched, expected)


def test_fuser_reads_only_its_own_window_and_starts_as_identity():
    C = 8
    fuser = TokenFuser(C)
    x, s = torch.randn(1, 12, 19, C), torch.randn(1, 6, 9, C)
    assert torch.equal(fuser.token_mix(s), s)  # zero-initialised mixing = identity residual
    out, s_out = fuser(x, s)
    assert s_out is None and out.shape == x.shape
    assert (out - x).abs().max() < 1e-3  # layer scales 1e-5
    fuser = randomize_(fuser)
    s2 = s.clone()
    s2[:, 3:6, 6:9] += 5.0  # tokens of window (1, 2)
    delta = (fuser(x, s2)[0] - fuser(x, s)[0]).abs().sum(-1)[0]  # (12, 19)
    changed = delta > 0
    expected = torch.zeros(12, 19, dtype=torch.bool)
    expected[7:, 14:] = True
    assert torch.equal(changed, expected)


def test_fuser_rejects_a_mismatched_grid():
    with pytest.raises(ValueError, match='does not match'):
        TokenFuser(8)(torch.randn(1, 14, 14, 8), torch.randn(1, 3, 6, 8))


# ---------------------------------------------------------------------------------------------------- backbone
def test_pattern_and_layout():
    model = STViTR(arch='tiny', sparsifier='tokenlearner')
    assert model.layers[2].pattern == TOKENLEARNER_UNIT
    kinds = [type(b).__name__ for b in model.layers[2].blocks]
    assert kinds == ['SwinBlock', 'TokenLearner', 'SemanticTokenGenerator', 'SemanticTokenBlock', 'SemanticTokenBlock',
                     'TokenFuser']
    stvit_keys = {k for k in STViTR(arch='tiny').state_dict() if not k.startswith('layers.2.blocks.1.')
                  and not k.startswith('layers.2.blocks.5.')}
    assert stvit_keys <= set(model.state_dict())  # everything outside 'learn' / 'fuse' keeps its key
    assert STViTR(arch='small', sparsifier='tokenlearner').layers[2].pattern == TOKENLEARNER_UNIT * 3


def test_bad_sparsifier_fails_clearly():
    with pytest.raises(ValueError, match="sparsifier must be one of \\('stvit', 'tokenlearner'\\)"):
        STViTR(sparsifier='token_learner')


@pytest.mark.parametrize('hw', [(511, 511), (800, 1216), (112, 137)])
def test_output_shapes_meta(hw):
    model = STViTR(arch='tiny', sparsifier='tokenlearner').to('meta').eval()
    outs = model(torch.empty(1, 3, *hw, device='meta'))
    assert [tuple(o.shape) for o in outs] == [(1, c, h, w) for c, (h, w) in zip(CHANNELS, expected_sizes(*hw))]


@pytest.mark.parametrize('hw', [(112, 137), (30, 30)])
def test_output_shapes_real_values(hw):
    model = small_stvit(sparsifier='tokenlearner').eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    assert [tuple(o.shape) for o in outs] == [(2, 32 * 2**i, h, w) for i, (h, w) in enumerate(expected_sizes(*hw))]
    assert all(torch.isfinite(o).all() for o in outs)


def test_every_parameter_gets_a_gradient():
    model = small_stvit(sparsifier='tokenlearner', drop_path_rate=0.1).train()
    outs = model(torch.randn(2, 3, 75, 90))  # at init: zero-init token mixing, 1e-5 layer scales
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    assert missing == []


@pytest.mark.parametrize('hw', [(75, 90), (40, 33)])
def test_with_cp_changes_nothing(hw):
    assert_with_cp_parity(hw, sparsifier='tokenlearner')


# ---------------------------------------------------------------------------------------------------- detector
def test_mask_rcnn_config_loss_and_predict():
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(CONFIG)
    assert cfg.model.backbone.sparsifier == 'tokenlearner'
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    # fewer RoIs than the COCO recipe keeps the CPU smoke test fast; the heads' code path is the same
    model_cfg.train_cfg.rcnn.sampler.num = 64
    model_cfg.train_cfg.rpn_proposal.max_per_img = 100
    model_cfg.test_cfg.rpn.max_per_img = 100
    model = MODELS.build(model_cfg)
    model.init_weights()
    assert model.backbone.layers[2].pattern == TOKENLEARNER_UNIT
    packed = demo_mm_inputs(2, [[3, 96, 128], [3, 112, 80]], num_classes=80, with_mask=True)
    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model.forward(**data, mode='loss')
    total = sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed, False)
        results = model.forward(**data, mode='predict')
    assert len(results) == 2
    for r in results:
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(r.pred_instances.keys())
