"""STViTR as a detection backbone: shapes at odd sizes, gradients, checkpointing parity, frozen stages, FLOPs."""
import math
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stvit_det import STViTR
from stvit_det.models.layers import DUMBBELL_UNIT

from conftest import SMALL, assert_with_cp_parity, randomize_, small_stvit
from test_released_models import stvit_backbone_layout

CHANNELS = {'tiny': (96, 192, 384, 768), 'small': (96, 192, 384, 768), 'base': (128, 256, 512, 1024)}


def expected_sizes(H, W):
    h, w = math.ceil(H / 4), math.ceil(W / 4)
    sizes = [(h, w)]
    for _ in range(3):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
@pytest.mark.parametrize('hw', [(224, 224), (511, 511), (112, 137), (800, 1216), (30, 30)])
def test_output_shapes_all_archs(arch, hw):
    """Exact shapes for every variant, computed on the meta device (no arithmetic)."""
    model = STViTR(arch=arch).to('meta').eval()
    outs = model(torch.empty(2, 3, *hw, device='meta'))
    assert [tuple(o.shape) for o in outs] == [(2, c, h, w) for c, (h, w) in zip(CHANNELS[arch], expected_sizes(*hw))]
    assert model.num_features == CHANNELS[arch]


@pytest.mark.parametrize('hw', [(224, 224), (112, 137), (30, 30), (57, 250)])
def test_tiny_forward_real_values(hw):
    model = STViTR(arch='tiny')
    model.init_weights()
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert [tuple(o.shape[2:]) for o in outs] == expected_sizes(*hw)
    assert all(torch.isfinite(o).all() for o in outs)


def test_layout_and_pattern():
    tiny, small = STViTR(arch='tiny'), STViTR(arch='small')
    assert tiny.layers[2].pattern == DUMBBELL_UNIT
    assert small.layers[2].pattern == DUMBBELL_UNIT * 3
    assert small.layers[0].pattern == ('window', 'shifted')
    assert small.layers[3].downsample is None and small.layers[2].downsample is not None
    assert STViTR(arch='tiny', sparsify=False).layers[2].pattern == ('window', 'shifted') * 3
    # parameters: those of the released layout (written from the official code), 27.55 M and 48.86 M
    buffers = ('running_mean', 'running_var', 'num_batches_tracked', 'relative_position_index')
    for model, depths, millions in ((tiny, (2, 2, 6, 2), 27.55), (small, (2, 2, 18, 2), 48.86)):
        layout = stvit_backbone_layout(96, depths, (3, 6, 12, 24))
        count = sum(math.prod(shape) for k, shape in layout.items() if not k.endswith(buffers))
        assert sum(p.numel() for p in model.parameters()) == count and round(count / 1e6, 2) == millions


def test_out_indices_subset():
    model = small_stvit(out_indices=(1, 2))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128]
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm3')


def test_negative_out_indices_count_from_the_end():
    """mmpretrain's Swin spells the last stage -1: the same backbone as (3, ), outputs in stage order."""
    model = small_stvit(out_indices=(-1, ))
    assert model.out_indices == (3, ) and hasattr(model, 'norm3') and not hasattr(model, 'norm0')
    assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [256]
    assert small_stvit(out_indices=(-3, 2)).out_indices == (1, 2)
    with pytest.raises(ValueError, match='without repeats'):
        small_stvit(out_indices=(3, -1))
    with pytest.raises(ValueError, match=r'subset of \(0, 1, 2, 3\)'):
        small_stvit(out_indices=(-5, ))


def test_swin_settings_are_refused_together():
    """A Swin base config with only the backbone type changed: every argument STViTR does not take is named in
    one error (Python's own names the first only), with the _delete_ cure."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    cfg = Config.fromstring("_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'\n"
                            "model = dict(backbone=dict(type='STViTR'))\n", '.py')
    with pytest.raises(TypeError) as info:
        MODELS.build(cfg.model.backbone)
    msg = str(info.value)
    assert ('STViTR got arguments it does not take: attn_drop_rate, convert_weights, drop_rate, patch_norm, '
            'qk_scale.') in msg
    assert "backbone=dict(_delete_=True, type='STViTR', ...)" in msg and 'converted automatically' in msg
    # a near miss of STViTR's own names is a typo, not another backbone's setting
    with pytest.raises(TypeError) as info:
        STViTR(attn_imp='flex')
    assert str(info.value) == 'STViTR got arguments it does not take: attn_imp (did you mean attn_impl?).'


@pytest.mark.parametrize('out_indices', [(0, 1, 2), (2, ), (0, )])
def test_out_indices_leave_no_parameter_without_a_gradient(out_indices):
    """DDP's rule: every parameter that requires a gradient gets one. The stages after the last output (and its
    patch merging) never run: they keep their checkpoint keys but require none, also after train()."""
    model = randomize_(small_stvit(out_indices=out_indices)).train()
    sum((o * torch.randn_like(o)).sum() for o in model(torch.randn(1, 3, 75, 90))).backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []
    last = max(out_indices)
    idle = {n for n, p in model.named_parameters() if not p.requires_grad}
    unused = tuple(f'layers.{i}.' for i in range(last + 1, 4)) + (f'layers.{last}.downsample.', )
    assert idle and all(n.startswith(unused) for n in idle)
    assert set(model.state_dict()) == set(small_stvit(out_indices=(0, 1, 2, 3)).state_dict()) - {
        f'norm{i}.{w}' for i in range(4) if i not in out_indices for w in ('weight', 'bias')}


def test_every_parameter_gets_a_gradient():
    model = randomize_(small_stvit(drop_path_rate=0.1))
    model.train()
    outs = model(torch.randn(2, 3, 75, 90))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    assert missing == []


@pytest.mark.parametrize('sparsifier', ['stvit', 'tokenlearner'])
def test_every_parameter_can_change_the_output(sparsifier):
    """Moving any one parameter tensor moves the outputs: none is cancelled by what follows it (TokenLearner's
    selection-MLP bias, one constant per token before a softmax over positions, and TokenFuser's mixing bias, one
    constant per token before a LayerNorm over channels, were; they got round-off gradients and weight decay)."""
    torch.manual_seed(0)
    model = randomize_(small_stvit(embed_dims=16, depths=(1, 1, 6, 1), sparsifier=sparsifier)).eval()
    x = torch.randn(2, 3, 97, 129)
    with torch.no_grad():
        ref = model(x)
        scale = max(float(o.abs().max()) for o in ref)
        inert = []
        for name, p in model.named_parameters():
            saved = p.clone()
            p.add_(torch.randn_like(p))
            change = max(float((a - b).abs().max()) for a, b in zip(model(x), ref))
            p.copy_(saved)
            if change <= 1e-4 * scale:
                inert.append((name, change / scale))
    assert inert == []


@pytest.mark.parametrize('train', [False, True])
def test_gradient_of_one_image_does_not_depend_on_its_batch(train):
    """Alone or beside another image, an image gets the same input and parameter gradients (stem BNs in eval, so
    samples are independent): no kernel of the stem or the stages takes another path at batch 1 with a different
    answer (PyTorch 2.13's CPU BatchNorm backward does, for channels-last output gradients of a batch of one:
    ``tests/data/make_official_fixture.py``)."""
    model = randomize_(small_stvit(norm_eval=True)).train(train)
    x = torch.randn(1, 3, 75, 101)
    grads = []
    for batch in (x, torch.cat([x, torch.randn_like(x)])):
        batch = batch.clone().requires_grad_()
        model.zero_grad()
        outs = model(batch)
        sum((o[:1] * torch.cos(torch.arange(o[:1].numel(), dtype=o.dtype)).view_as(o[:1])).sum()
            for o in outs).backward()
        grads.append([batch.grad[:1]] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 100
    for a, b in zip(*grads):
        assert float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) < 1e-4


@pytest.mark.parametrize('hw,impl', [((75, 90), 'auto'), ((40, 33), 'auto'), ((75, 90), 'tiled')])
def test_with_cp_changes_nothing(hw, impl):
    """'auto' runs dense at these sizes; 'tiled' adds its autograd function under recomputation."""
    assert_with_cp_parity(hw, attn_impl=impl)


def test_with_cp_is_used_in_every_stage(monkeypatch):
    import torch.utils.checkpoint as tcp
    calls = []
    orig = tcp.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(type(fn).__name__)
        return orig(fn, *args, **kwargs)

    monkeypatch.setattr(tcp, 'checkpoint', spy)
    model = small_stvit(with_cp=True)
    model.train()
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert len(calls) == sum(SMALL['depths'])
    assert {'SemanticTokenGenerator', 'SemanticTokenBlock', 'SpatialRecovery', 'SwinBlock'} == set(calls)


def _frozen_names(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize('frozen', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages(frozen):
    model = small_stvit(frozen_stages=frozen)
    expected = set()
    for n, _ in model.named_parameters():
        if frozen >= 0 and n.startswith('patch_embed.'):
            expected.add(n)
        for i in range(frozen):
            if n.startswith(f'layers.{i}.') or n.startswith(f'norm{i}.'):
                expected.add(n)
    assert _frozen_names(model) == expected
    model.train()
    assert _frozen_names(model) == expected
    frozen_modules = [model.patch_embed] * (frozen >= 0) + [model.layers[i] for i in range(frozen)]
    assert all(not m.training for fm in frozen_modules for m in fm.modules())
    if frozen < 4:
        assert model.layers[3].training
    if frozen == 4:
        assert not any(p.requires_grad for p in model.parameters())
        return
    # a training step with every parameter in the optimizer (as mmengine's constructor does) gets no gradient into
    # the frozen weights and leaves them untouched, the stem BN statistics included; the others move
    randomize_(model)  # 1e-5 layer scales would leave most weights with gradients too small to move them
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    assert {n for n, p in model.named_parameters() if p.grad is None} == expected
    opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_keys = {k for k in before if (frozen >= 0 and k.startswith('patch_embed.')) or any(
        k.startswith(f'layers.{i}.') or k.startswith(f'norm{i}.') for i in range(frozen))}
    assert not moved & frozen_keys
    assert {n for n, p in model.named_parameters() if p.requires_grad} <= moved
    if frozen == -1:
        assert 'patch_embed.proj.0.bn.running_mean' in moved


def test_norm_eval_keeps_stem_bn_in_eval():
    model = small_stvit(norm_eval=True)
    model.train()
    bns = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 2 and not any(bn.training for bn in bns)
    assert model.layers[0].training


def test_pretrained_prefix_without_its_dot_selects_as_mmengine(tmp_path):
    """``prefix='backbone'`` means ``'backbone.'``, as mmengine's ``_load_checkpoint_with_prefix`` reads it."""
    src = randomize_(small_stvit())
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()}}, path)
    for prefix in ('backbone', 'backbone.'):
        model = small_stvit(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix=prefix))
        model.init_weights()
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('sparsifier', ['stvit', 'tokenlearner'])
def test_integer_layer_scale_init_builds_float_scales(sparsifier):
    """``layer_scale_init=1`` (an integer, e.g. from --cfg-options) gives the same float32 scales as 1.0."""
    model = small_stvit(layer_scale_init=1, sparsifier=sparsifier)
    scales = [p for n, p in model.named_parameters() if 'layer_scale' in n]
    assert scales and all(p.dtype == torch.float32 and bool((p == 1).all()) for p in scales)


@pytest.mark.parametrize('convert', ['sync', 'sync_reverted'])
def test_stem_trains_with_batch_statistics_after_sync_bn_conversion(convert):
    """mmengine's ``sync_bn='torch'`` turns the stem's BatchNorm2d into SyncBatchNorm (and its
    ``revert_sync_batchnorm`` into ``_BatchNormXd``): in train() the stem still uses batch statistics and updates
    its running statistics, as with BatchNorm2d (it once took the eval-only folded path, silently)."""
    import copy

    from mmengine.model import revert_sync_batchnorm

    torch.manual_seed(0)
    plain = randomize_(small_stvit()).train()
    other = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    if convert == 'sync_reverted':
        other = revert_sync_batchnorm(other)
    other.train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in other.patch_embed.modules())
    bn, bn_other = plain.patch_embed.proj[0].bn, other.patch_embed.proj[0].bn
    before = bn_other.running_mean.clone()
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    for a, b in zip(plain(x), other(x)):
        torch.testing.assert_close(a, b)
    assert not torch.equal(bn_other.running_mean, before)
    torch.testing.assert_close(bn.running_mean, bn_other.running_mean)


def test_stem_trains_with_batch_statistics_after_mmcv_sync_bn_conversion(tmp_path):
    """mmengine's ``sync_bn='mmcv'`` turns the stem's BatchNorm2d into ``mmcv.ops.SyncBatchNorm``, which is not a
    torch ``_BatchNorm``: in train() the stem must still run its BatchNorms (batch statistics; mmcv's kernel needs a
    GPU, so the test stops at the call), ``norm_eval`` must still put them in eval mode, and eval must fold them
    with the same result (it once took the eval-only folded path in training, silently)."""
    import copy

    import torch.distributed as dist
    from mmcv.ops import SyncBatchNorm
    from mmengine.model import convert_sync_batchnorm

    class BatchStatistics(Exception):
        pass

    def refuse(module, args):
        raise BatchStatistics

    torch.manual_seed(0)
    plain = randomize_(small_stvit())
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        model = convert_sync_batchnorm(copy.deepcopy(plain), implementation='mmcv')
    finally:
        dist.destroy_process_group()
    bns = model.patch_embed.batch_norms
    assert all(isinstance(bn, SyncBatchNorm) for bn in bns)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))
    handle = bns[0].register_forward_pre_hook(refuse)
    with pytest.raises(BatchStatistics):
        model.train()(x)
    handle.remove()
    model.norm_eval = True
    model.train()
    assert not any(bn.training for bn in bns) and model.layers[0].training


@pytest.mark.parametrize('impl', ['reference', 'sdpa', 'auto'])
def test_training_after_an_inference_mode_forward(impl):
    """A forward under torch.inference_mode() must not leave inference tensors in the shared geometry caches: a
    training step at the same size afterwards (here on a fresh model) saves them for its backward."""
    from stvit_det.deployment.equivalents import clear_model_caches

    clear_model_caches()
    x = torch.randn(1, 3, 64, 80)
    with torch.inference_mode():
        small_stvit(attn_impl=impl).eval()(x)
    model = small_stvit(attn_impl=impl).train()
    sum(o.square().mean() for o in model(x)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('kwargs,match', [
    (dict(depths=(2, 2, 8, 2)), 'multiple of 6'),
    (dict(depths=(2, 2, 0, 2)), r'depths must be 4 positive integers, got \(2, 2, 0, 2\)'),
    (dict(arch='huge'), r"arch must be one of \('tiny', 'small', 'base'\), got 'huge'"),
    (dict(arch=dict(embed_dims=64, depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16))),
     r'got \{.*\} \(for other sizes keep an arch and give embed_dims / depths / num_heads as arguments\)'),
    (dict(pad_mask='partial'), 'pad_mask'),
    (dict(attn_impl='flash3'), 'attn_impl'),
    (dict(stem='vit'), 'stem'),
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(out_indices=(0, 0)), 'without repeats'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(num_heads=(5, 6, 12, 24)), 'heads'),
    (dict(regions=(5, 21, 27)), 'at least the window'),
    (dict(regions=(14.5, 21, 27)), 'integer sides'),
    (dict(window_size=0), 'window_size must be a positive integer, got 0'),
    (dict(embed_dims=0), 'embed_dims must be a positive integer'),
    (dict(mlp_ratio=0), 'mlp_ratio must be positive'),
    (dict(drop_path_rate=1.5), r'drop_path_rate must be in \[0, 1\), got 1.5'),
    (dict(window_size=True), 'window_size must be a positive integer, got True'),
    (dict(num_heads=(0, 2, 4, 8)), r'num_heads must be 4 positive integers, got \(0, 2, 4, 8\)'),
    (dict(depths=(2.0, 2, 6, 2)), r'depths must be 4 positive integers'),
    (dict(semantic_samples=2.5), r'semantic_samples must be an integer in \[1, window_size=7\], got 2.5'),
    (dict(semantic_samples=8), r'semantic_samples must be an integer in \[1, window_size=7\], got 8'),
    (dict(embed_dims=1, num_heads=(1, 1, 1, 1)), r"stem='conv' needs embed_dims >= 2"),
    (dict(embed_dims=32, num_heads=(1, 2, 4, 8), mlp_ratio=0.01), 'at least one hidden channel'),
    (dict(layer_scale_init=float('nan')), 'layer_scale_init must be a finite number, got nan'),
    (dict(drop_path_rate='0.1'), r"drop_path_rate must be in \[0, 1\), got '0.1'"),
    (dict(frozen_stages=None), 'frozen_stages must be an integer in'),
    (dict(out_indices=3), 'out_indices must be a non-empty subset'),
    (dict(out_indices=(0, 1.0)), r'out_indices must be a non-empty subset of \(0, 1, 2, 3\) without repeats '
                                 r'\(-1 \.\. -4 count from the end\), got \(0, 1.0\)'),
    (dict(out_indices=(True, 2)), 'out_indices must be a non-empty subset'),
    (dict(frozen_stages=True), 'frozen_stages must be an integer in'),
    (dict(frozen_stages=1.0), 'frozen_stages must be an integer in'),
    (dict(regions=14), r'regions needs 3 integer sides \(generate, refine, recover\), got 14'),
    (dict(depths=2), 'depths and num_heads need 4 entries, got 2'),
    (dict(attn_impl='tiled', regions=(15, 21, 27)),
     r"attn_impl='tiled' .*regions\[0\] \(generation\) = 15 is not a multiple of window_size = 7 .*'auto'"),
    (dict(attn_impl='tiled', semantic_samples=2),
     r"regions\[2\] \(recovery\) = 27 is not a multiple of semantic_samples = 2"),
    (dict(depths=(2, 2, 7, 2), stage3_form='classification'), r"multiple of 6 \(one dumbbell unit = \('window', "
                                                              r"'cls-generate'"),
    (dict(pretrained='open-mmlab://resnet50_v1c'), r"pretrained='open-mmlab://resnet50_v1c' .*model\.pretrained=None"),
    (dict(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')), 'not both'),
    # weights come from a file the user gives: nothing is downloaded (storage backends such as s3:// stay)
    (dict(init_cfg=dict(type='Pretrained', checkpoint='https://host/stvit-r-t.pth')),
     r"checkpoint 'https://host/stvit-r-t.pth' is a download URL.*local file"),
    (dict(init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')), 'is a download URL'),
])
def test_bad_config_values_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STViTR(**kwargs)


def test_pretrained_path_is_an_init_cfg():
    """mmseg's EncoderDecoder hands ``model.pretrained`` to the backbone: a local file becomes the init_cfg."""
    with pytest.warns(UserWarning, match='deprecated'):
        model = STViTR(pretrained='/weights/stvit-r-t.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='/weights/stvit-r-t.pth')


@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 4, 64, 64), (1, 1, 3, 64, 64), (0, 3, 64, 64), (1, 3, 0, 64)])
def test_input_that_is_not_a_batch_of_rgb_images_fails_clearly(shape):
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\), got a tensor of shape ' + re.escape(str(shape))):
        small_stvit()(torch.zeros(shape))


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64, torch.bool])
def test_images_that_are_not_floating_point_fail_clearly(dtype):
    """Raw uint8 pixels (the data preprocessor normalises them to float): one line naming the dtype."""
    with pytest.raises(ValueError, match=f'floating-point images, got {dtype}'.replace('.', r'\.')):
        small_stvit()(torch.zeros(1, 3, 64, 64, dtype=dtype))


def test_sdpa_equals_reference_backbone():
    ref = randomize_(small_stvit(attn_impl='reference')).eval()
    fast = small_stvit(attn_impl='sdpa').eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 93, 117)
    with torch.no_grad():
        for a, b in zip(ref(x), fast(x)):
            assert float((a - b).abs().max() / a.abs().max()) < 1e-4


def _macs(model, hw):
    model = model.to('meta')
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, *hw, device='meta'))
    return counter.get_total_flops() / 2


def test_flops_small_at_most_070_of_swin_small():
    """Matmul-aware count (FlopCounterMode) at 800x1216: STViT-R-S <= 0.70 x Swin-S (paper: -31%), counted on the
    reference path, which executes each window's key regions exactly (the paper's arithmetic)."""
    from mmdet.models.backbones import SwinTransformer
    swin = _macs(SwinTransformer(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)), (800, 1216))
    ratio = _macs(STViTR(arch='small', attn_impl='reference'), (800, 1216)) / swin
    assert ratio <= 0.70, ratio
    assert _macs(STViTR(arch='small', attn_impl='sdpa'), (800, 1216)) / swin == pytest.approx(ratio)
    assert _macs(STViTR(arch='small', sparsify=False, stem='patch'), (800, 1216)) == pytest.approx(
        _macs(SwinTransformer(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)), (800, 1216)),
        rel=1e-3)


@pytest.mark.parametrize('hw', [(800, 1216), (1344, 2016), (2048, 2048)])
def test_default_path_executes_the_region_arithmetic(hw):
    """The default attention path's executed GMACs stay within 1.15x of the region arithmetic at every size (the
    dense path alone would grow with the square of the map: 1.12x / 1.37x / 1.68x for S), and the tiled path never
    exceeds it (its one shared border key stands for every out-of-grid position of a region)."""
    for arch in ('tiny', 'small'):
        region = _macs(STViTR(arch=arch, attn_impl='reference'), hw)
        assert _macs(STViTR(arch=arch), hw) <= 1.15 * region
        assert _macs(STViTR(arch=arch, attn_impl='tiled'), hw) <= region
        if hw != (800, 1216):  # where a region covers most of the map, dense is close to the arithmetic anyway
            assert _macs(STViTR(arch=arch, attn_impl='dense'), hw) > 1.15 * region  # so the test can fail
