"""Checkpoint compatibility: official STViT-R key layout, Swin warm start (official / timm / mmdet layouts), the
mmdet-Swin parity of the Swin parts, the Pretrained init_cfg and tools/convert_ckpt.py."""
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from stvit_det import STViTR
from stvit_det.utils.ckpt_convert import detect_layout, extract_state_dict
from stvit_det.utils.ckpt_file import CheckpointError, check_backbone_init_checkpoint

from conftest import randomize_

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
LIN = ('weight', 'bias')


def official_stvit_keys(depths=(2, 2, 18, 2)):
    """The official detection checkpoint's backbone keys, written from the spec's key list (section 7.1)."""
    keys = [f'patch_embed.proj.{i}.c.weight' for i in (0, 2)]
    keys += [f'patch_embed.proj.{i}.bn.{n}' for i in (0, 2) for n in BN]
    for i, depth in enumerate(depths):
        for k in range(depth):
            p = f'layers.{i}.blocks.{k}.'
            common = [f'{p}{m}.{n}' for m in ('norm1', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2') for n in LIN]
            if i == 2 and k % 6:
                keys += common + [f'{p}attn.{m}.{n}' for m in ('q', 'kv') for n in LIN]
                keys += [f'{p}layer_scale_1', f'{p}layer_scale_2']
            else:
                keys += common + [f'{p}attn.qkv.{n}' for n in LIN]
                keys += [f'{p}attn.relative_position_bias_table', f'{p}attn.relative_position_index']
        if i < 3:
            keys += [f'layers.{i}.downsample.norm.{n}' for n in LIN] + [f'layers.{i}.downsample.reduction.weight']
    keys += [f'norm{i}.{n}' for i in range(4) for n in LIN]
    return keys


def fake_official(model, keys):
    own = model.state_dict()
    return OrderedDict((k, torch.randn(own[k].shape) if own[k].is_floating_point() else own[k].clone())
                       for k in keys)


def test_parameter_names_are_the_official_layout():
    model = STViTR(arch='small')
    assert set(model.state_dict()) == set(official_stvit_keys())


@pytest.mark.parametrize('wrap', ['bare', 'model', 'detector'])
def test_official_state_dict_loads_with_zero_missing_and_unexpected(wrap):
    model = STViTR(arch='small')
    sd = fake_official(model, official_stvit_keys())
    if wrap == 'model':
        ckpt = {'model': sd}
    elif wrap == 'detector':  # an mmdet detector checkpoint: backbone. prefix next to neck / heads
        ckpt = {'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()}, 'neck.conv.weight': torch.zeros(1)},
                'meta': {}}
    else:
        ckpt = sd
    report = model.load_pretrained(ckpt)
    assert report['layout'] == 'stvit'
    assert report['missing'] == [] and report['unexpected'] == []
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())


def test_imagenet_checkpoint_reports_exactly_its_differences():
    """An ImageNet STViT-R checkpoint: norm, head and attn_mask unexpected, norm0..3 missing (spec 7.1)."""
    model = STViTR(arch='small')
    keys = [k for k in official_stvit_keys() if not k.startswith('norm')]
    sd = fake_official(model, keys)
    sd.update({'norm.weight': torch.ones(768), 'norm.bias': torch.zeros(768), 'head.weight': torch.zeros(1000, 768),
               'head.bias': torch.zeros(1000), 'layers.0.blocks.1.attn_mask': torch.zeros(4, 49, 49)})
    report = model.load_pretrained({'model': sd})
    assert sorted(report['missing']) == sorted(f'norm{i}.{n}' for i in range(4) for n in LIN)
    assert sorted(report['unexpected']) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    # a classifier's backbone (out_indices=(3,): norm3 is its only output norm) takes the final norm there, as
    # imagenet_to_classifier does; frozen stages may lack their output norms (LayerNorm's identity, as mmdet's Swin)
    sd['norm.weight'] = torch.full((768, ), 2.0)
    classifier = STViTR(arch='small', out_indices=(-1, ))
    report = classifier.load_pretrained({'model': sd})
    assert report['missing'] == [] and sorted(report['unexpected']) == ['head.bias', 'head.weight']
    assert torch.equal(classifier.norm3.weight, sd['norm.weight'])
    report = STViTR(arch='small', frozen_stages=2).load_pretrained({'model': sd})  # norm0, norm1 frozen at 1 / 0
    assert sorted(report['missing']) == sorted(f'norm{i}.{n}' for i in range(4) for n in LIN)


def test_wrong_arch_fails_naming_the_tensors():
    sd = STViTR(arch='base').state_dict()
    with pytest.raises(ValueError, match='do not fit this STViTR'):
        STViTR(arch='small').load_pretrained(sd)
    with pytest.raises(ValueError, match='unrecognised checkpoint layout'):
        STViTR(arch='tiny').load_pretrained({'conv1.weight': torch.zeros(1)})
    # the same widths, a deeper stage 3 (S: 18 blocks, T: 6): the blocks T lacks are named, nothing is loaded
    tiny = STViTR(arch='tiny')
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(ValueError, match=r'186 backbone tensors have no place in this STViTR .*layers\.2\.blocks '
                                         r'\(186 tensors\); e\.g\. layers\.2\.blocks\.6\.'):
        tiny.load_pretrained(STViTR(arch='small').state_dict())
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    # the other way (T weights, or Swin-T's, for S): the 12 blocks S would keep random are named, nothing loaded
    small = STViTR(arch='small')
    before = {k: v.clone() for k, v in small.state_dict().items()}
    for shallow in (STViTR(arch='tiny').state_dict(), _mmdet_swin().state_dict()):
        with pytest.raises(ValueError, match=r'holds no tensor of 12 blocks of this STViTR \(depths \(2, 2, 18, 2\): '
                                             r'another, shallower arch\?\), e\.g\. layers\.2\.blocks\.6, '
                                             r'layers\.2\.blocks\.7'):
            small.load_pretrained(shallow)
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())
    # blocks it has, of another kind (STViT-R weights for the TokenLearner sparsifier: its learn / fuse blocks have
    # no attention): reported as unexpected, the rest loads
    learner = STViTR(arch='tiny', sparsifier='tokenlearner')
    report = learner.load_pretrained(STViTR(arch='tiny').state_dict())
    assert report['unexpected'] and all(k.startswith(('layers.2.blocks.1.', 'layers.2.blocks.5.'))
                                        for k in report['unexpected'])
    with pytest.raises(TypeError, match='no state dict'):
        extract_state_dict({'meta': {'epoch': 1}})


def _mmdet_swin(depths=(2, 2, 6, 2)):
    from mmdet.models.backbones import SwinTransformer
    swin = SwinTransformer(embed_dims=96, depths=depths, num_heads=(3, 6, 12, 24), drop_path_rate=0.0)
    swin.init_weights()
    randomize_(swin, std=0.02)
    swin.eval()
    return swin


@pytest.mark.parametrize('impl', ['reference', 'fused'])
def test_swin_parts_equal_mmdet_swin(impl, monkeypatch):
    """sparsify=False + stem='patch' loaded from an mmdet SwinTransformer state dict gives mmdet's outputs, with
    the written-out window attention (the CPU's and the oracle's) and with the fused one that other devices run
    (forced on here: the CPU takes the written-out one whatever attn_impl says)."""
    from stvit_det.models.layers import swin_block
    if impl == 'fused':
        monkeypatch.setattr(swin_block, 'use_fused_window_attention', lambda device: True)
        impl = 'sdpa'
    swin = _mmdet_swin()
    ours = STViTR(arch='tiny', stem='patch', sparsify=False, drop_path_rate=0.0, attn_impl=impl).eval()
    report = ours.load_pretrained(swin.state_dict())
    assert report['layout'] == 'swin_mmdet'
    assert report['missing'] == [] and report['unexpected'] == [] and report['dropped'] == []
    for hw in [(112, 137), (67, 95), (30, 30)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            for a, b in zip(swin(x), ours(x)):
                assert a.shape == b.shape
                assert float((a - b).abs().max()) <= 1e-5


def test_timm_swin_layout_converts_to_the_same_model():
    """timm keeps each PatchMerging at the start of the next stage; after conversion the stage outputs match.

    448 input: timm drops the shift of stages whose map is no larger than one window (7x7 at 224), detection Swin
    (official and mmdet) never does, so every stage here is larger than a window."""
    import timm
    tm = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, num_classes=10, img_size=448)
    randomize_(tm, std=0.02)
    tm.eval()
    sd = tm.state_dict()
    assert detect_layout(sd) == 'swin_timm'
    ours = STViTR(arch='tiny', stem='patch', sparsify=False, drop_path_rate=0.0).eval()
    report = ours.load_pretrained(sd)
    assert sorted(report['missing']) == sorted(f'norm{i}.{n}' for i in range(4) for n in LIN)
    assert sorted(report['unexpected']) == ['norm.bias', 'norm.weight']  # as the official layout's final norm
    assert 'head.fc.weight' in report['dropped']
    # a classifier's backbone takes timm's final norm as its norm3, as it takes the official one (it was dropped)
    classifier = STViTR(arch='tiny', stem='patch', sparsify=False, out_indices=(3, ))
    report = classifier.load_pretrained(sd)
    assert report['missing'] == [] and report['unexpected'] == []
    assert torch.equal(classifier.norm3.weight, sd['norm.weight']) and torch.equal(classifier.norm3.bias,
                                                                                  sd['norm.bias'])
    feats = {}
    for i, layer in enumerate(ours.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: feats.__setitem__(i, out))
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        ours(x)
        y = tm.patch_embed(x)
        for i, stage in enumerate(tm.layers):
            y = stage(y)
            assert float((y - feats[i]).abs().max()) <= 1e-5, i


def test_swin_warm_start_splits_qkv_and_reports_the_rest():
    swin = _mmdet_swin()
    sd = swin.state_dict()
    ours = STViTR(arch='tiny')
    report = ours.load_pretrained({'state_dict': sd})
    assert report['split_qkv'] == 5  # stage-3 blocks 1..5 of the single dumbbell unit
    C = 384
    for k in range(1, 6):
        qkv_w = sd[f'stages.2.blocks.{k}.attn.w_msa.qkv.weight']
        assert torch.equal(ours.layers[2].blocks[k].attn.q.weight, qkv_w[:C])
        assert torch.equal(ours.layers[2].blocks[k].attn.kv.weight, qkv_w[C:])
        assert f'layers.2.blocks.{k}.attn.relative_position_bias_table' in report['dropped']  # official naming
    assert torch.equal(ours.layers[2].blocks[0].attn.qkv.weight, sd['stages.2.blocks.0.attn.w_msa.qkv.weight'])
    # the conv stem and the layer scales have no Swin counterpart
    assert all(k.startswith('patch_embed.') or 'layer_scale' in k for k in report['missing'])
    assert sum('layer_scale' in k for k in report['missing']) == 10
    assert any(k.startswith('patch_embed.proj.0.c') for k in report['missing'])
    assert report['unexpected'] == []


def test_weights_that_leave_a_frozen_part_random_are_refused():
    """Swin's weights have no conv stem: loaded into a conv-stem STViTR with frozen_stages >= 0, the stem would stay
    random (BN statistics 0 / 1) and frozen for the whole run. Unfrozen, it trains, as the warm start above."""
    sd = {'state_dict': _mmdet_swin().state_dict()}
    for frozen in (0, 2):
        with pytest.raises(ValueError, match=rf"lacks \d+ tensors of what frozen_stages={frozen} freezes: "
                                             r"patch_embed\.proj \(\d+ tensors\), .*initialisation "
                                             r"\(random, for weights\) .*stem='patch'"):
            STViTR(arch='tiny', frozen_stages=frozen).load_pretrained(sd)
    STViTR(arch='tiny', frozen_stages=-1).load_pretrained(sd)
    patch = STViTR(arch='tiny', stem='patch', sparsify=False, frozen_stages=2)
    assert patch.load_pretrained(sd)['missing'] == []  # a Swin-like STViTR: everything frozen is loaded
    with pytest.raises(ValueError, match=r"lacks 10 tensors of what frozen_stages=3 freezes: layers\.2 \(10 "
                                         r"tensors\), e\.g\. layers\.2\.blocks\.1\.layer_scale_1"):  # not Swin's
        STViTR(arch='tiny', stem='patch', frozen_stages=3).load_pretrained(sd)


def test_pretrained_init_cfg_loads_from_a_path(tmp_path, monkeypatch):
    src = randomize_(STViTR(arch='tiny'))
    path = tmp_path / 'stvit.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()}}, path)
    model = STViTR(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    bad = STViTR(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.pth')))
    with pytest.raises(CheckpointError, match='missing.pth: checkpoint file not found'):
        bad.init_weights()
    monkeypatch.setenv('HOME', str(tmp_path))  # '~' is the user's home, as mmengine's loader has it
    home = STViTR(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint='~/stvit.pth'))
    home.init_weights()
    assert all(torch.equal(home.state_dict()[k], v) for k, v in src.state_dict().items())
    (tmp_path / 'notes.pth').write_text('not a checkpoint\n')
    bad = STViTR(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'notes.pth')))
    with pytest.raises(CheckpointError, match='notes.pth: not a readable PyTorch checkpoint'):
        bad.init_weights()


@pytest.mark.parametrize('init_cfg', [dict(type='pretrained', checkpoint='w.pth'), dict(type='Kaiming', layer='Linear'),
                                      [dict(type='Pretrained', checkpoint='a.pth'), dict(type='Constant', val=1)],
                                      [dict(type='Pretrained', checkpoint='a.pth')] * 2, 'w.pth'],
                         ids=['lowercase', 'kaiming', 'extra', 'twice', 'str'])
def test_init_cfg_other_than_one_pretrained_is_refused(init_cfg):
    """An initialiser STViTR would ignore (it initialises itself) stops the build, naming it, instead of a run
    that silently trains from random weights."""
    with pytest.raises(ValueError, match="init_cfg is None or one dict\\(type='Pretrained'"):
        STViTR(arch='tiny', init_cfg=init_cfg)
    for fine in (None, dict(type='Pretrained', checkpoint=None), [dict(type='Pretrained', checkpoint='a.pth')]):
        assert STViTR(embed_dims=8, depths=(1, 1, 6, 1), num_heads=(1, 1, 1, 1), init_cfg=fine).init_cfg == fine


def test_backbone_init_checkpoint_is_checked_before_training(tmp_path):
    """What tools/train.py checks before its Runner: the file of the backbone's init_cfg=Pretrained is read and
    converted as loading would (on a bare backbone, nothing loaded): a good file gives the load report; a truncated
    file, another arch and an unrecognised layout end in one CheckpointError naming the file."""
    from mmengine.config import Config

    narrow = dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2))

    def cfg_for(path, **backbone):
        return Config(dict(default_scope='mmdet', model=dict(type='MaskRCNN', backbone=dict(
            type='STViTR', **dict(narrow, **backbone), init_cfg=dict(type='Pretrained', checkpoint=str(path))))))

    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in STViTR(**narrow).state_dict().items()}}, good)
    report = check_backbone_init_checkpoint(cfg_for(good))
    assert report['missing'] == [] and report['unexpected'] == []
    with pytest.raises(CheckpointError, match=r'model\.backbone\.init_cfg: .*good\.pth: 36 tensors do not fit'):
        check_backbone_init_checkpoint(cfg_for(good, mlp_ratio=2.0))
    with pytest.raises(CheckpointError, match=r'good\.pth: .*have no place in this STViTR'):
        check_backbone_init_checkpoint(cfg_for(good, depths=(2, 2, 6, 1)))
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='truncated.pth: not a readable PyTorch checkpoint'):
        check_backbone_init_checkpoint(cfg_for(truncated))
    other = tmp_path / 'other.pth'
    torch.save({'conv1.weight': torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match=r'model\.backbone\.init_cfg: .*other\.pth: unrecognised checkpoint '
                                              r'layout'):
        check_backbone_init_checkpoint(cfg_for(other))
    assert check_backbone_init_checkpoint(Config(dict(model=dict(backbone=dict(type='ResNet'))))) is None
    # the shipped configs without ImageNet weights say Pretrained with checkpoint=None: both ways out are named
    with pytest.raises(CheckpointError, match=r"without a checkpoint path: .*init_cfg\.checkpoint=PATH, .*"
                                              r"init_cfg=None"):
        check_backbone_init_checkpoint(cfg_for(''))


def test_pretrained_prefix_selects_the_keys_under_it(tmp_path):
    """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` as mmengine's PretrainedInit: only the keys
    under the prefix, stripped of it (e.g. the teacher of a semi-supervised detector); a prefix no key has is an
    error naming the file, before training and when loading."""
    from mmengine.config import Config

    narrow = dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2))
    torch.manual_seed(0)
    teacher, student = STViTR(**narrow), STViTR(**narrow)
    path = tmp_path / 'semi.pth'
    torch.save({'state_dict': {**{f'teacher.backbone.{k}': v for k, v in teacher.state_dict().items()},
                               **{f'student.backbone.{k}': v for k, v in student.state_dict().items()}}}, path)

    def model(prefix):
        return STViTR(**narrow, init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix=prefix))

    loaded = model('teacher.backbone.')
    loaded.init_weights()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert not torch.equal(loaded.layers[0].blocks[0].attn.qkv.weight, student.layers[0].blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match=r"semi\.pth: no tensor under the init_cfg prefix 'ema\.'; its keys start "
                                         r"with \['student\.', 'teacher\.'\]"):
        model('ema.').init_weights()
    cfg = Config(dict(model=dict(type='MaskRCNN', backbone=dict(
        type='STViTR', **narrow, init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='ema.')))))
    with pytest.raises(CheckpointError, match=r"model\.backbone\.init_cfg: .*no tensor under the init_cfg prefix"):
        check_backbone_init_checkpoint(cfg)
    cfg.model.backbone.init_cfg.prefix = 'student.backbone.'
    assert check_backbone_init_checkpoint(cfg)['missing'] == []


@pytest.mark.parametrize('target', [dict(sparsify=False), dict()], ids=['unsparsified', 'sparsified'])
def test_unsparsified_stvit_weights_keep_their_conv_stem(target):
    """Weights of ``STViTR(sparsify=False)`` (qkv everywhere, STViT-R's conv stem) are STViT-R weights: they load
    back with nothing missing, and into a sparsified model with the semantic blocks' qkv split into q / kv."""
    narrow = dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2))
    source = STViTR(**narrow, sparsify=False).state_dict()
    model = STViTR(**narrow, **target)
    report = model.load_pretrained({'state_dict': source})
    assert report['layout'] == 'stvit'
    assert torch.equal(model.patch_embed.proj[0].c.weight, source['patch_embed.proj.0.c.weight'])
    if target:
        assert report['missing'] == [] and report['split_qkv'] == 0
    else:  # the 5 semantic blocks of the unit: split qkv, new layer scales
        assert report['split_qkv'] == 5
        assert all('layer_scale' in k for k in report['missing']) and len(report['missing']) == 10
        assert torch.equal(model.layers[2].blocks[1].attn.kv.weight, source['layers.2.blocks.1.attn.qkv.weight'][64:])


def test_convert_ckpt_tool(tmp_path):
    swin = _mmdet_swin()
    src, dst = tmp_path / 'swin.pth', tmp_path / 'out' / 'stvit.pth'
    torch.save({'state_dict': swin.state_dict()}, src)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), str(src), str(dst)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 'swin_mmdet' in r.stdout and '5 qkv tensors split' in r.stdout and 'missing: patch_embed' in r.stdout
    # one report, of the source's layout (the check of the converted tensors against the model logs nothing)
    assert 'stvit layout' not in r.stdout + r.stderr and (r.stdout + r.stderr).count('patch_embed.proj.0.c.weight') == 1
    out = torch.load(dst, weights_only=True)
    model = STViTR(arch='tiny')
    report = model.load_pretrained(out)
    assert report['unexpected'] == [] and report['layout'] == 'stvit'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), str(tmp_path / 'nope.pth'),
                        str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and 'not found' in r.stderr and 'nope.pth' in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), str(src), str(dst), '--arch',
                        'base'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and 'do not fit' in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.count(str(src)) == 1 and '(converted for --arch base: pass the arch the weights were trained with)' \
        in last, last
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), str(src), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1] == (
        f'convert_ckpt: error: cannot write {tmp_path}: it is a directory')
    # STViT-R weights with a conv stem converted for the patch stem: the stem's tensors have no place there, are
    # counted in the summary (it said '0 source keys without counterpart') and are not written
    conv = STViTR(arch='tiny').state_dict()
    torch.save({'state_dict': conv}, src)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), str(src), str(dst), '--stem',
                        'patch'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stem = [k for k in conv if k.startswith('patch_embed.')]
    assert f'{len(stem)} converted tensors with no place in this STViTR' in r.stdout, r.stdout
    assert f'unexpected (not written): {stem[0]}' in r.stdout
    out = torch.load(dst, weights_only=True)['state_dict']
    assert not set(stem) & set(out) and len(out) == len(conv) - len(stem)
    assert STViTR(arch='tiny', stem='patch').load_pretrained(out)['unexpected'] == []
    # a whole detector: its backbone is converted, and the neck / head tensors left out are said (nothing was)
    detector = {f'backbone.{k}': v for k, v in swin.state_dict().items()}
    detector.update({'neck.lateral_convs.0.conv.weight': torch.zeros(256, 96, 1, 1),
                     'rpn_head.rpn_conv.weight': torch.zeros(256, 256, 3, 3)})
    torch.save({'state_dict': detector}, src)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), str(src), str(dst)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert ', 2 tensors outside the backbone (not written)' in r.stdout, r.stdout
    assert ('outside the backbone (not written; --detector / --classifier convert whole models): '
            'neck (neck.lateral_convs.0.conv.weight), rpn_head (rpn_head.rpn_conv.weight)') in r.stdout, r.stdout
    assert not any(k.startswith(('neck.', 'rpn_head.')) for k in torch.load(dst, weights_only=True)['state_dict'])


@pytest.mark.parametrize('mode,config,message', [
    ('--detector', 'configs/_base_/schedules/adamw-1x.py',
     'configs/_base_/schedules/adamw-1x.py defines no `model` (a _base_ fragment?)'),
    ('--detector', 'bad.py', "the model of {bad} cannot be built: arch must be one of ('tiny', 'small', 'base'), "
     "got 'huge'"),
    ('--classifier', 'bad.py', "the model of {bad} cannot be built: arch must be one of ('tiny', 'small', 'base'), "
     "got 'huge'"),
], ids=['detector-fragment', 'detector-bad-arch', 'classifier-bad-arch'])
def test_convert_ckpt_config_without_a_buildable_model_is_one_line(tmp_path, mode, config, message):
    """--detector / --classifier with a config whose model cannot be built: a _base_ fragment without `model`, or a
    backbone value STViTR refuses (a config inheriting a shipped one): one line, no traceback, nothing written."""
    src, dst = tmp_path / 'src.pth', tmp_path / 'out.pth'
    head = {'head.fc.weight': torch.zeros(2, 1)} if mode == '--classifier' else {}
    torch.save({'state_dict': {'backbone.x': torch.zeros(1), **head}}, src)
    base = ('configs/stvit-r-cls/stvit-r-s-released_16xb64_in1k.py' if mode == '--classifier' else
            'configs/stvit-r/mask-rcnn_stvit-r-demo_fpn_nuclei.py')
    bad = tmp_path / 'bad.py'
    bad.write_text(f"_base_ = '{os.path.join(ROOT, base)}'\nmodel = dict(backbone=dict(arch='huge'))\n")
    config = str(bad) if config == 'bad.py' else config
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/convert_ckpt.py'), mode, config, str(src),
                        str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == 'convert_ckpt: error: ' + message.format(bad=bad)
    assert not dst.exists()
