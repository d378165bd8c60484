"""ImageNet classification through MMPretrain 1.x: the same STViTR class in mmpretrain's registry, the
``configs/stvit-r-cls`` recipe, an ``ImageClassifier`` with STViTR through ``loss`` + backward + ``predict`` at 224,
official ImageNet checkpoints loading 0 / 0, classifier -> detector weight transfer, and the head-size error."""
import copy
import math
import os.path as osp
import pickle
import re
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import stvit_det
from stvit_det.utils.ckpt_file import CheckpointError, check_checkpoint_for_config

from test_released_models import stvit_backbone_layout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import convert_ckpt  # noqa: E402

CLS = osp.join(ROOT, 'configs', 'stvit-r-cls')
TRAIN_LEAVES = {'t': 'stvit-r-t_16xb64_in1k.py', 's': 'stvit-r-s_16xb64_in1k.py', 'b': 'stvit-r-b_16xb64_in1k.py'}
RELEASED = {'s': 'stvit-r-s-released_16xb64_in1k.py', 'b': 'stvit-r-b-released_16xb64_in1k.py'}
NARROW = dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2))  # last stage: 128 channels


@pytest.fixture(scope='module', autouse=True)
def _scope():
    init_default_scope('mmpretrain')


def test_one_class_in_every_registry():
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as PRETRAIN

    assert PRETRAIN.get('STViTR') is DET.get('STViTR') is stvit_det.STViTR
    assert 'mmpretrain' in stvit_det.register_toolboxes()  # idempotent


@pytest.mark.parametrize('arch', ['t', 's', 'b'])
def test_official_pretraining_recipe(arch):
    """Design spec 7.2 / changsn/STViT-R log/small.txt: 300 epochs, AdamW 1e-3 at batch 1024, wd 0.05 (none on
    norms, biases, layer scales), 20 warm-up epochs, cosine to 1e-5, clip 5, drop path 0.2 / 0.3 / 0.4, RandAugment
    m9 + Mixup 0.8 + CutMix 1.0 + label smoothing 0.1 + random erasing 0.25; test: resize 256, centre crop 224."""
    cfg = Config.fromfile(osp.join(CLS, TRAIN_LEAVES[arch]))
    assert cfg.default_scope == 'mmpretrain' and cfg.custom_imports.imports == ['stvit_det']
    bb = cfg.model.backbone
    assert bb.type == 'STViTR' and bb.arch == dict(t='tiny', s='small', b='base')[arch]
    assert bb.drop_path_rate == dict(t=0.2, s=0.3, b=0.4)[arch] and bb.out_indices == (3, )
    assert bb.get('stage3_form', 'detection') == 'detection'  # what the detectors fine-tune
    assert cfg.model.type == 'ImageClassifier' and cfg.model.neck.type == 'GlobalAveragePooling'
    assert cfg.model.head.type == 'LinearClsHead' and cfg.model.head.num_classes == 1000
    assert cfg.model.head.in_channels == stvit_det.STViTR(arch=bb.arch).num_features[3]
    assert cfg.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    assert [a['type'] for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']
    assert [a['alpha'] for a in cfg.model.train_cfg.augments] == [0.8, 1.0]
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW' and opt.optimizer.lr == 1e-3 and opt.optimizer.weight_decay == 0.05
    assert opt.clip_grad == dict(max_norm=5.0)
    assert opt.paramwise_cfg.norm_decay_mult == 0 and opt.paramwise_cfg.bias_decay_mult == 0
    assert opt.paramwise_cfg.flat_decay_mult == 0  # 1-D parameters: layer scales, norms
    assert cfg.train_dataloader.batch_size * 16 == cfg.auto_scale_lr.base_batch_size == 1024
    assert cfg.train_cfg.max_epochs == 300
    # the lr curve, as the Runner builds it (epochs in iterations; 4 per epoch here), against the official one:
    # timm's CosineLRScheduler(t_initial=all steps, warmup_t=20 epochs, warmup_lr_init=1e-6, lr_min=1e-5, per step)
    from mmengine.registry import PARAM_SCHEDULERS

    # The warm-up ramp is multiplied by the cosine, so it peaks at cos-value(epoch 20) = 0.989 base where the official
    # ramp reaches base just before its cosine takes over: at most 1.1% of base apart (the README's figure), checked
    # at ImageNet's 1251 iterations per epoch over the warm-up; the whole curve at 4 per epoch.
    base, low = 1e-3, 1e-5
    for ipe, epochs in ((4, 300), (1251, 21)):
        steps, warmup = 300 * ipe, 20 * ipe
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([param], lr=opt.optimizer.lr)
        schedulers = [PARAM_SCHEDULERS.get(c['type']).build_iter_from_epoch(
            optimizer, epoch_length=ipe, **{k: v for k, v in c.items() if k not in ('type', 'convert_to_iter_based')})
            for c in copy.deepcopy(cfg.param_scheduler)]
        worst = 0.0
        for t in range(epochs * ipe):
            lr = optimizer.param_groups[0]['lr']
            official = (1e-6 + t * (base - 1e-6) / warmup if t < warmup else
                        low + 0.5 * (base - low) * (1 + math.cos(math.pi * t / steps)))
            assert abs(lr - official) <= (0.011 if t < warmup else 1e-3) * base, (t, lr, official)
            worst = max(worst, abs(lr - official) / base if t < warmup else 0.0)
            for s in schedulers:
                s.step()
        assert worst > 0.01 or ipe == 4  # the 1.1% bound is the real gap at 1251 per epoch, not a loose one
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResizedCrop'].scale == 224 and train['RandomResizedCrop'].interpolation == 'bicubic'
    ra = train['RandAugment']
    assert (ra.policies, ra.magnitude_level, ra.magnitude_std, ra.num_policies) == ('timm_increasing', 9, 0.5, 2)
    assert train['RandomErasing'].erase_prob == 0.25
    test = {t.type: t for t in cfg.test_dataloader.dataset.pipeline}
    assert test['ResizeEdge'].scale == 256 and test['CenterCrop'].crop_size == 224


@pytest.mark.parametrize('arch', ['s', 'b'])
def test_released_leaves_select_the_classification_form(arch):
    cfg = Config.fromfile(osp.join(CLS, RELEASED[arch]))
    assert cfg.model.backbone.stage3_form == 'classification'
    assert cfg.model.backbone.arch == dict(s='small', b='base')[arch]


def narrow_classifier(stage3_form='detection'):
    cfg = Config.fromfile(osp.join(CLS, TRAIN_LEAVES['t']))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.update(NARROW, drop_path_rate=0.1, stage3_form=stage3_form)
    model_cfg.head.in_channels = 128
    model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)  # what mmengine's Runner does
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def _batch(n=2, size=224):
    from mmpretrain.structures import DataSample

    inputs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=inputs, data_samples=[DataSample().set_gt_label(i * 7) for i in range(n)])


@pytest.mark.parametrize('form', ['detection', 'classification'])
def test_image_classifier_loss_backward_predict(form):
    """The config's ImageClassifier (data preprocessor with Mixup / CutMix, label-smoothing loss) with a narrow
    STViTR: loss + backward reach every backbone parameter; predict gives 1000 scores per image."""
    model = narrow_classifier(form)
    assert type(model.backbone) is stvit_det.STViTR
    model.train()
    data = model.data_preprocessor(_batch(), True)
    losses = model(**data, mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.backbone.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(_batch(), False), mode='predict')
    assert len(preds) == 2 and all(p.pred_score.shape == (1000, ) for p in preds)
    assert all(abs(float(p.pred_score.sum()) - 1) < 1e-4 for p in preds)


def tagged_tensors(layout):
    """Zero-stride tensors of the given shapes, each filled with its own key's number (1, 2, ...), so that a
    conversion that puts a tensor under another key's name is seen."""
    return {k: torch.full((), i + 1, dtype=torch.long if k.endswith(('index', 'num_batches_tracked')) else
                          torch.float32).expand(shape) for i, (k, shape) in enumerate(layout.items())}


def classifier_key(official_key):
    """Where the official ImageNet layout's key goes in the MMPretrain classifier (spelled out independently of
    ``ckpt_convert``): ``norm`` -> ``backbone.norm3``, ``head`` -> ``head.fc``, the rest under ``backbone.``."""
    for src, dst in (('norm.', 'backbone.norm3.'), ('head.', 'head.fc.')):
        if official_key.startswith(src):
            return dst + official_key[len(src):]
    return 'backbone.' + official_key


def assert_tensors_went_to(converted, source, rename):
    """Every tensor of ``converted`` is the one ``source`` holds under the name ``rename`` maps back to."""
    back = {rename(k): k for k in source}
    for k, v in converted.items():
        assert k in back, k
        assert v.shape == source[back[k]].shape and torch.equal(v.reshape(-1)[:1], source[back[k]].reshape(-1)[:1]), \
            f'{k} holds the tensor of another key than {back[k]}'


def official_imagenet_checkpoint(path, arch='s'):
    """An official STViT-R ImageNet checkpoint (``{'model': ...}``: backbone keys, ``norm``, ``head``, the two
    attn_mask buffers; changsn/STViT-R, DET log 'unexpected key' line), zero-stride tensors, each holding its
    key's number (``tagged_tensors``)."""
    sizes = dict(s=dict(C=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24)),
                 b=dict(C=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32)))[arch]
    layout = stvit_backbone_layout(**sizes, imagenet=True)
    tensors = tagged_tensors(layout)
    torch.save({'model': tensors}, path)
    return tensors


@pytest.mark.parametrize('arch', ['s', 'b'])
def test_official_imagenet_checkpoint_loads_0_0(tmp_path, arch):
    src, dst = tmp_path / f'STViT-R-Swin-{arch.upper()}.pth', tmp_path / f'stvit-r-{arch}_in1k_mmpretrain.pth'
    source = official_imagenet_checkpoint(src, arch)
    assert sorted(k for k in source if k.endswith('attn_mask')) == ['layers.0.blocks.1.attn_mask',
                                                                     'layers.1.blocks.1.attn_mask']
    config = osp.join(CLS, RELEASED[arch])
    report = convert_ckpt.main(['--classifier', config, str(src), str(dst)])
    assert report['missing'] == [] and report['unexpected'] == [] and report['mismatched'] == []
    assert sorted(report['dropped']) == ['layers.0.blocks.1.attn_mask', 'layers.1.blocks.1.attn_mask']
    model = convert_ckpt.build_model(config)[0]
    sd = torch.load(dst, weights_only=True)['state_dict']
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert 'backbone.norm3.weight' in sd and 'head.fc.weight' in sd and 'norm.weight' not in sd
    assert_tensors_went_to(sd, source, classifier_key)  # each tensor under its own new name


def save_like_official_training(path, state_dict):
    """What the official ImageNet training code writes (Swin's ``utils.save_checkpoint``, kept by changsn/STViT-R):
    model, optimizer, lr_scheduler, max_accuracy, epoch, amp and the whole yacs training config. yacs is no
    dependency of ours: a class of the same module and name, holding what yacs' ``CfgNode`` keeps in its
    ``__dict__`` (frozen flag, key sets), is pickled in its place."""
    import types
    from unittest import mock

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__.update({'__immutable__': False, '__deprecated_keys__': set(), '__renamed_keys__': {}})

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    yacs, yacs_config = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    yacs.config, yacs_config.CfgNode = yacs_config, CfgNode
    config = CfgNode(MODEL=CfgNode(TYPE='stvit', NAME='stvit_small', DROP_PATH_RATE=0.3),
                     TRAIN=CfgNode(BASE_LR=1e-3, EPOCHS=300, WARMUP_EPOCHS=20))
    config.__dict__['__immutable__'] = True  # frozen, as train.py leaves it
    with mock.patch.dict(sys.modules, {'yacs': yacs, 'yacs.config': yacs_config}):
        torch.save(dict(model=state_dict, optimizer=dict(state={}, param_groups=[dict(lr=1e-5, params=[0])]),
                        lr_scheduler=dict(t_initial=375300, warmup_t=25020), max_accuracy=83.1, epoch=299,
                        config=config, amp=dict(loss_scaler0=dict(loss_scale=65536.0, unskipped=0))), path)


def test_official_training_checkpoint_reads_without_yacs(tmp_path):
    """A checkpoint as the official training code saves it (its yacs config beside the weights) reads under
    weights_only without yacs (the config as plain dicts), converts to the classifier 0 / 0, and initialises the
    detection backbone through init_cfg=Pretrained (mmengine's loader)."""
    from stvit_det.utils.ckpt_file import read_checkpoint

    src = tmp_path / 'ckpt_best.pth'
    layout = stvit_backbone_layout(C=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24), imagenet=True)
    source = tagged_tensors(layout)
    save_like_official_training(src, source)
    ckpt = read_checkpoint(str(src))
    assert type(ckpt['config']) is not dict and isinstance(ckpt['config'], dict)  # an OrderedDict, not a CfgNode
    assert ckpt['config']['TRAIN']['BASE_LR'] == 1e-3 and ckpt['config'].__dict__['__immutable__'] is True
    report = convert_ckpt.main(['--classifier', osp.join(CLS, RELEASED['s']), str(src), str(tmp_path / 'c.pth')])
    assert report['missing'] == [] and report['unexpected'] == [] and report['mismatched'] == []
    assert_tensors_went_to(torch.load(tmp_path / 'c.pth', weights_only=True)['state_dict'], source, classifier_key)

    det = stvit_det.STViTR(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                           init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    det.init_weights()
    # the checkpoint's tensors, each under its own name (no prefix in a backbone)
    loaded = {k: v for k, v in det.state_dict().items() if k in source}
    assert 'layers.2.blocks.1.attn.kv.weight' in loaded and len(loaded) > 300
    assert_tensors_went_to(loaded, source, lambda k: k)


def test_head_of_another_size_is_refused_with_advice(tmp_path):
    src = tmp_path / 'STViT-R-Swin-S.pth'
    official_imagenet_checkpoint(src)
    config = tmp_path / 'stvit-r-s-released_100cls.py'
    config.write_text(f"_base_ = '{osp.join(CLS, RELEASED['s'])}'\n"
                      "model = dict(head=dict(num_classes=100))\n"
                      "data_preprocessor = dict(num_classes=100)\n")
    with pytest.raises(SystemExit) as e:
        convert_ckpt.main(['--classifier', str(config), str(src), str(tmp_path / 'out.pth')])
    msg = str(e.value.code)
    assert 'head has 1000 classes' in msg and 'num_classes is 100' in msg and '--drop-head' in msg
    # --drop-head: the backbone only; the head keeps its initialisation
    report = convert_ckpt.main(['--classifier', str(config), '--drop-head', str(src), str(tmp_path / 'bb.pth')])
    assert report['unexpected'] == [] and report['mismatched'] == []
    assert not any(k.startswith('head.') for k in torch.load(tmp_path / 'bb.pth', weights_only=True)['state_dict'])
    again = convert_ckpt.main(['--classifier', str(config), '--drop-head', str(tmp_path / 'bb.pth'),
                               str(tmp_path / 'bb2.pth')])  # its own output converts again, to the same tensors
    assert again['unexpected'] == [] and again['mismatched'] == []
    first, second = (torch.load(tmp_path / n, weights_only=True)['state_dict'] for n in ('bb.pth', 'bb2.pth'))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # the same check before tools/test.py / tools/train.py (load_from) run: a converted 1000-class classifier
    convert_ckpt.main(['--classifier', osp.join(CLS, RELEASED['s']), str(src), str(tmp_path / 'cls1000.pth')])
    with pytest.raises(CheckpointError, match='--drop-head'):
        check_checkpoint_for_config(Config.fromfile(str(config)), str(tmp_path / 'cls1000.pth'))
    check_checkpoint_for_config(Config.fromfile(osp.join(CLS, RELEASED['s'])), str(tmp_path / 'cls1000.pth'))


def test_classifier_weights_transfer_to_the_detection_backbone(tmp_path):
    """A classifier checkpoint (mmengine layout: backbone.* + head.fc.*) initialises the detection backbone
    through init_cfg=Pretrained: every backbone tensor loads (norm3 included), only the detection norms 0-2 are
    missing, and the head is reported as outside the backbone."""
    classifier = narrow_classifier()
    path = tmp_path / 'epoch_300.pth'
    torch.save({'state_dict': classifier.state_dict(), 'meta': {'epoch': 300}}, path)
    det = stvit_det.STViTR(**NARROW, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    det.init_weights()  # the only load: what init_cfg did is what is checked
    for k, v in det.state_dict().items():
        if not k.startswith(('norm0', 'norm1', 'norm2')):
            assert torch.equal(v, classifier.backbone.state_dict()[k]), k
    # the report of that load, from a fresh model (check_pretrained converts and checks, loads nothing)
    _, report = stvit_det.STViTR(**NARROW).check_pretrained(torch.load(path, weights_only=True), source=str(path))
    assert sorted(report['missing']) == sorted(f'norm{i}.{n}' for i in range(3) for n in ('weight', 'bias'))
    assert report['unexpected'] == [] and report['dropped'] == []
    assert sorted(report['outside_backbone']) == ['head.fc.bias', 'head.fc.weight']


SMOKE_CONFIG = """_base_ = '{base}'
# two classes (the fake data's folders): head, Mixup / CutMix one-hot targets and top-k metric to match
model = dict(backbone=dict(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2)),
             head=dict(in_channels=128, num_classes=2))
data_preprocessor = dict(num_classes=2)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
_data = dict(type='CustomDataset', data_root='{root}', with_label=True)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(_delete_=True, data_prefix='train', pipeline={{{{_base_.train_pipeline}}}},
                                     **_data))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(_delete_=True, data_prefix='val', pipeline={{{{_base_.test_pipeline}}}}, **_data))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
"""


def test_train_and_test_tools_run_a_classification_config(tmp_path):
    """End to end: tools/train.py trains the STViT-R-T ImageNet config (narrow, on 8 fake images in class folders)
    for one epoch, tools/test.py evaluates its checkpoint (top-1: 4 classes here) and dumps predictions; the
    checkpoint then initialises a detection backbone reporting only the detection norms as missing."""
    import subprocess

    import numpy as np
    from mmcv import imwrite

    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in ('cat', 'dog'):
            for i in range(2):
                image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                imwrite(image, str(tmp_path / 'data' / split / c / f'{c}{i}.png'))  # unique names: painted by name
    cfg = tmp_path / 'stvit-r-t-narrow_smoke.py'
    cfg.write_text(SMOKE_CONFIG.format(base=osp.join(CLS, TRAIN_LEAVES['t']), root=tmp_path / 'data'))
    work = tmp_path / 'work'
    run = dict(cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    # --auto-scale-lr with MMPretrain's `auto_scale_lr = dict(base_batch_size=1024)` (no `enable` key): batch 2
    r = subprocess.run([sys.executable, 'tools/train.py', str(cfg), '--work-dir', str(work), '--auto-scale-lr'], **run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f'Scaling the original LR by {2 / 1024}' in r.stdout + r.stderr
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    r = subprocess.run([sys.executable, 'tools/test.py', str(cfg), str(ckpt), '--work-dir', str(work), '--out',
                        str(tmp_path / 'preds.pkl'), '--show-dir', str(tmp_path / 'vis')], **run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'accuracy/top1' in r.stdout + r.stderr and (tmp_path / 'preds.pkl').is_file()
    assert len(list((tmp_path / 'vis').glob('*.png'))) == 4  # every val image painted (mmpretrain's hook)
    # --tta without tta_model / tta_pipeline in the config: mmpretrain's flip averaging, as its tools/test.py
    r = subprocess.run([sys.executable, 'tools/test.py', str(cfg), str(ckpt), '--work-dir', str(work), '--tta',
                        '--out', str(tmp_path / 'tta.pkl')], **run)
    assert r.returncode == 0 and 'accuracy/top1' in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    with open(tmp_path / 'tta.pkl', 'rb') as f:
        tta = pickle.load(f)
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        plain = pickle.load(f)
    assert len(tta) == len(plain) == 4
    assert not all(torch.allclose(a['pred_score'], b['pred_score']) for a, b in zip(tta, plain))  # mirrors count
    # class counts that do not agree stop train.py / test.py in one line, before the Runner: a head narrower than
    # Mixup / CutMix's one-hot targets, and a top-5 accuracy of 2 classes (raised after the whole evaluation)
    listing = tmp_path / 'data' / 'train.txt'  # an image list naming an image that is not there
    listing.write_text('cat/cat0.png 0\ndog/dog9.png 1\n')
    for tool, options, expected in [
            ('train.py', ['data_preprocessor.num_classes=1000'],
             'model.head.num_classes is 2 but data_preprocessor.num_classes is 1000'),
            ('train.py', [f'train_dataloader.dataset.ann_file={listing}'],
             f'{listing} line 2: image not found: {tmp_path / "data" / "train" / "dog" / "dog9.png"}'),
            ('test.py', ['test_evaluator.topk=(1,5)'], 'test_evaluator.topk is (1, 5): top-5 accuracy needs at least 5 '
             'classes and the head has 2')]:
        argv = [str(ckpt)] if tool == 'test.py' else []
        r = subprocess.run([sys.executable, f'tools/{tool}', str(cfg), *argv, '--work-dir', str(tmp_path / 'w3'),
                            '--cfg-options', *options], **run)
        assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
        assert r.stderr.strip().splitlines()[-1].startswith(f'{tool}: error: {expected}'), r.stderr[-3000:]
    # tools/test.py refuses, before its Runner and in one line, a checkpoint of another arch (here wider MLPs)
    r = subprocess.run([sys.executable, 'tools/test.py', str(cfg), str(ckpt), '--work-dir', str(work),
                        '--cfg-options', 'model.backbone.mlp_ratio=2.0'], **run)
    assert r.returncode != 0 and 'accuracy/top1' not in r.stdout + r.stderr
    assert f'test.py: error: {ckpt} does not fit the model of the config' in r.stderr, r.stderr[-3000:]
    assert 'backbone.layers.0.blocks.0.mlp.fc1.weight (64, 16) vs (32, 16)' in r.stderr
    # tools/train.py stops before its Runner, in one line, on a missing image folder and on a backbone init_cfg
    # file that does not fit (a classifier of stage-4 depth 2 for a backbone of depth 1: its 13 tensors of block 1)
    r = subprocess.run([sys.executable, 'tools/train.py', str(cfg), '--work-dir', str(tmp_path / 'w2'),
                        '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path / "nowhere"}'], **run)
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == ('train.py: error: image directory not found: '
                                                 f'{tmp_path / "nowhere" / "train"} '
                                                 '(train_dataloader.dataset.data_prefix)')
    init = tmp_path / 'init_from_classifier.py'
    init.write_text(f"_base_ = '{cfg}'\nmodel = dict(backbone=dict(depths=(2, 2, 6, 1), "
                    f"init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='{ckpt}')))\n")
    r = subprocess.run([sys.executable, 'tools/train.py', str(init), '--work-dir', str(tmp_path / 'w2')], **run)
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f'train.py: error: model.backbone.init_cfg: {ckpt}: 13 backbone tensors have no place in '
                           'this STViTR'), r.stderr[-3000:]
    assert not (tmp_path / 'w2').exists()
    # and a checkpoint against a 10-class head
    bad = Config.fromfile(str(cfg))
    bad.merge_from_dict({'model.head.num_classes': 10})
    with pytest.raises(CheckpointError, match='head has 2 classes.*num_classes is 10.*--drop-head'):
        check_checkpoint_for_config(bad, str(ckpt))

    det = stvit_det.STViTR(**NARROW)
    stvit_det.utils.allow_checkpoint_globals()  # the Runner's checkpoint holds its message hub
    report = det.load_pretrained(torch.load(ckpt, weights_only=True), source=str(ckpt))
    assert sorted(report['missing']) == sorted(f'norm{i}.{n}' for i in range(3) for n in ('weight', 'bias'))
    assert report['unexpected'] == [] and sorted(report['outside_backbone']) == ['head.fc.bias', 'head.fc.weight']


def test_tools_give_classification_configs_mmpretrain_loader_defaults(tmp_path, monkeypatch):
    """tools/train.py and tools/test.py add to an MMPretrain config's dataloaders what MMPretrain's own tools add
    (pinned memory, tensor batches, workers kept between epochs in training), under the config's values and the
    --no-* flags; --no-validate drops validation; a detection config's loaders stay as its file states them. The
    tools run in this process up to the Runner, which is replaced by a stand-in that keeps the config."""
    import runpy

    import _launch

    seen = []

    def keep(cfg):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(_launch, 'check_inputs', lambda *args, **kwargs: None)  # no ImageNet here
    monkeypatch.setattr(_launch, 'build_runner', keep)
    ckpt = tmp_path / 'any.pth'
    ckpt.write_bytes(b'')  # test.py needs the file to exist; its reading is check_inputs' business

    def config(script, cfg_file, *args):
        argv = [cfg_file, *([str(ckpt)] if script == 'test.py' else []), '--work-dir', str(tmp_path / 'w'), *args]
        monkeypatch.setattr(sys, 'argv', [script, *argv])
        with pytest.raises(SystemExit) as exit:
            runpy.run_path(osp.join(ROOT, 'tools', script), run_name='__main__')
        assert exit.value.code in (0, None)
        return seen.pop()

    leaf = osp.join(CLS, TRAIN_LEAVES['t'])
    collate = dict(type='default_collate')
    cfg = config('train.py', leaf)
    for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[field]
        assert (loader.pin_memory, loader.persistent_workers, loader.collate_fn) == (True, True, collate), field
        assert loader.num_workers == 5 and loader.batch_size == 64  # the config's own values kept
    # the config's values win over the defaults; no persistent workers without workers (PyTorch refuses them)
    cfg = config('train.py', leaf, '--cfg-options', 'train_dataloader.num_workers=0', 'val_dataloader.pin_memory=False')
    assert not cfg.train_dataloader.get('persistent_workers') and cfg.train_dataloader.pin_memory is True
    assert cfg.val_dataloader.pin_memory is False and cfg.test_dataloader.pin_memory is True
    cfg = config('train.py', leaf, '--no-pin-memory', '--no-persistent-workers', '--no-validate')
    assert cfg.train_dataloader.pin_memory is False and cfg.train_dataloader.persistent_workers is False
    assert cfg.test_dataloader.pin_memory is False and cfg.train_dataloader.collate_fn == collate
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
    cfg = config('test.py', leaf)  # MMPretrain's test.py: pinned memory and tensor batches, nothing on workers
    assert (cfg.test_dataloader.pin_memory, cfg.test_dataloader.collate_fn) == (True, collate)
    assert 'persistent_workers' not in cfg.test_dataloader
    assert config('test.py', leaf, '--no-pin-memory').test_dataloader.pin_memory is False
    detection = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')
    stated = Config.fromfile(detection)
    cfg = config('train.py', detection)
    assert cfg.train_dataloader.to_dict() == stated.train_dataloader.to_dict()
    assert 'pin_memory' not in cfg.train_dataloader
    assert config('test.py', detection).test_dataloader.to_dict() == stated.test_dataloader.to_dict()
    cfg = config('train.py', detection, '--no-persistent-workers', '--no-pin-memory')  # the flags: every toolbox
    assert stated.train_dataloader.persistent_workers is True and cfg.train_dataloader.persistent_workers is False
    assert cfg.train_dataloader.pin_memory is False and 'collate_fn' not in cfg.train_dataloader


def test_layer_wise_lr_decay_counts_depths_as_mmpretrain_swin():
    """MMPretrain's fine-tuning recipes decay the lr by layer depth (LearningRateDecayOptimWrapperConstructor needs
    get_layer_depth): a Swin-like STViTR counts every parameter's depth as MMPretrain's own Swin does for the same
    parameter, and the constructor builds its groups, the stem slowest and the head fastest."""
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.models import SwinTransformer

    from stvit_det import STViTR

    ours = STViTR(embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2), stem='patch', sparsify=False,
                  out_indices=(3, ))
    swin = SwinTransformer(arch=dict(embed_dims=16, depths=[2, 2, 6, 2], num_heads=[1, 1, 2, 2]))
    theirs = dict(swin.named_parameters())
    compared = 0
    for name, _ in ours.named_parameters():
        twin = name.replace('layers.', 'stages.').replace('attn.', 'attn.w_msa.')
        if twin in theirs:
            assert ours.get_layer_depth('backbone.' + name, 'backbone.') == \
                swin.get_layer_depth('backbone.' + twin, 'backbone.'), name
            compared += 1
    assert compared > 50
    assert ours.get_layer_depth('head.fc.weight', 'backbone.') == swin.get_layer_depth('head.fc.weight', 'backbone.')

    model = MODELS.build(dict(type='mmpretrain.ImageClassifier', backbone=dict(
        type='STViTR', embed_dims=16, depths=(2, 2, 6, 2), num_heads=(1, 1, 2, 2), out_indices=(3, )),
        neck=dict(type='mmpretrain.GlobalAveragePooling'),
        head=dict(type='mmpretrain.LinearClsHead', num_classes=10, in_channels=128)))
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05), paramwise_cfg=dict(layer_decay_rate=0.5),
        constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor'))
    lrs = {id(p): g['lr'] for g in wrapper.optimizer.param_groups for p in g['params']}
    stem = lrs[id(model.backbone.patch_embed.proj[0].c.weight)]
    assert stem == pytest.approx(0.5 ** 13) and lrs[id(model.head.fc.weight)] == pytest.approx(1.0)
    assert stem < lrs[id(model.backbone.layers[2].blocks[0].attn.qkv.weight)] < lrs[id(model.head.fc.weight)]


def test_class_counts_that_disagree_are_named(tmp_path):
    """stvit_det.datasets.cls_check: the head against Mixup / CutMix's one-hot width, the data's classes (named, by
    the dataset class, or one subfolder each) and an Accuracy top-k; nothing for a consistent or a detection
    config."""
    from stvit_det.datasets.cls_check import classifier_config_problem
    from stvit_det.toolboxes.scope import load_config

    cfg = load_config(osp.join(CLS, TRAIN_LEAVES['t']))
    assert classifier_config_problem(cfg, ('train', 'val')) is None  # ImageNet: 1000 everywhere
    cfg.model.head.num_classes = 3
    assert classifier_config_problem(cfg, ('train', 'val')).startswith(
        'model.head.num_classes is 3 but data_preprocessor.num_classes is 1000')
    assert classifier_config_problem(cfg, ('test', )).startswith(  # no training: no one-hot targets
        'test_dataloader.dataset has 1000 classes but model.head.num_classes is 3')
    cfg.data_preprocessor.num_classes = 3
    for name in 'abcd':
        (tmp_path / 'train' / name).mkdir(parents=True)
    for phase in ('train', 'val', 'test'):
        cfg[f'{phase}_dataloader'].dataset = dict(type='CustomDataset', data_root=str(tmp_path), data_prefix='train')
    assert classifier_config_problem(cfg, ('train', )) == ('train_dataloader.dataset has 4 classes but '
                                                           'model.head.num_classes is 3: set the head (and '
                                                           'data_preprocessor.num_classes) to 4')
    cfg.model.head.num_classes = cfg.data_preprocessor.num_classes = 4
    assert classifier_config_problem(cfg, ('train', )) is None
    assert classifier_config_problem(cfg, ('train', 'val')).startswith(
        'val_evaluator.topk is (1, 5): top-5 accuracy needs at least 5 classes and the head has 4')
    cfg.val_evaluator.topk = (1, 4)
    assert classifier_config_problem(cfg, ('train', 'val')) is None
    tta = copy.deepcopy(cfg)  # test.py --tta wraps the classifier
    tta.model = dict(type='AverageClsScoreTTA', module=tta.model)
    tta.test_evaluator = dict(type='Accuracy', topk=(1, 5))
    assert classifier_config_problem(tta, ('test', )).startswith('test_evaluator.topk is (1, 5)')
    detection = load_config(osp.join(osp.dirname(CLS), 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py'))
    assert classifier_config_problem(detection, ('train', 'val')) is None


def test_folder_classes_in_another_order_are_refused(tmp_path):
    """MMPretrain numbers a folder dataset's subfolders sorted and takes the names from the config: the folder names
    in another order would name every image wrongly (train.py's check); with no names in the config, test.py
    compares a checkpoint's classes with the sorted subfolders."""
    import numpy as np
    from mmcv import imwrite

    from stvit_det.datasets import DatasetCheckError, check_dataset_cfg
    from stvit_det.toolboxes.scope import load_config
    from stvit_det.utils.ckpt_file import class_order_error

    for name in ('cat', 'dog'):
        imwrite(np.zeros((8, 8, 3), np.uint8), str(tmp_path / 'train' / name / '0.jpg'))
    dataset = dict(type='CustomDataset', data_root=str(tmp_path), data_prefix='train')
    check_dataset_cfg(dict(dataset, classes=('cat', 'dog')), 'train_dataloader.dataset', 'mmpretrain')
    check_dataset_cfg(dict(dataset, classes=('kitten', 'puppy')), 'train_dataloader.dataset', 'mmpretrain')
    with pytest.raises(DatasetCheckError, match=r"the classes of train_dataloader.dataset.data_prefix are the "
                                                r"subfolder names of .*train in another order: .* list them sorted: "
                                                r"classes=\('cat', 'dog'\)"):
        check_dataset_cfg(dict(dataset, classes=['dog', 'cat']), 'train_dataloader.dataset', 'mmpretrain')
    cfg = dict(default_scope='mmpretrain', test_dataloader=dict(dataset=dataset))
    assert class_order_error(cfg, {'meta': {'dataset_meta': {'classes': ('cat', 'dog')}}}, 'c.pth') is None
    assert class_order_error(cfg, {'meta': {'dataset_meta': {'classes': ('dog', 'cat')}}}, 'c.pth') == (
        "c.pth: its 2 classes are not the config's 2 classes in the same order (checkpoint vs config: 0: 'dog' vs "
        "'cat', 1: 'cat' vs 'dog')")
    # a detector's checkpoint for this classifier: named as another model, not as a class-order problem
    det = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.norm0.weight': torch.ones(16), 'roi_head.bbox_head.fc_cls.weight':
                               torch.ones(2, 16)}, 'meta': {'dataset_meta': {'classes': ('nucleus', )}}}, det)
    narrow = load_config(osp.join(CLS, TRAIN_LEAVES['t']), {
        'model.backbone.embed_dims': 16, 'model.backbone.num_heads': (1, 1, 2, 2), 'model.head.in_channels': 128,
        'model.head.num_classes': 2, 'test_dataloader.dataset': dataset})
    with pytest.raises(CheckpointError, match='det.pth does not fit the model of the config'):
        check_checkpoint_for_config(narrow, str(det))


def test_image_lists_are_read_as_mmpretrain_reads_them(tmp_path, monkeypatch):
    """An ImageNet-style list (meta/train.txt): lines without an integer label, labels outside the head's classes,
    images that are not there and empty lines are named with their line; a list that passed is remembered by its
    stamp, and one that changes is read again."""
    import numpy as np
    from mmcv import imwrite

    from stvit_det.datasets import DatasetCheckError
    from stvit_det.datasets.cls_check import check_cls_dataset_cfgs

    monkeypatch.setenv('STVIT_DATA_CHECK_CACHE', str(tmp_path / 'cache'))
    imwrite(np.zeros((8, 8, 3), np.uint8), str(tmp_path / 'train' / 'cat' / '0.jpg'))
    listing = tmp_path / 'meta' / 'train.txt'
    listing.parent.mkdir()
    cfg = dict(default_scope='mmpretrain', model=dict(head=dict(num_classes=2)),
               train_dataloader=dict(dataset=dict(type='ImageNet', data_root=str(tmp_path), split='train')))
    where = 'train_dataloader.dataset'
    for text, expected in [
            ('cat/0.jpg 0\ncat/ghost.jpg 1\n', f'line 2: image not found: {tmp_path / "train" / "cat" / "ghost.jpg"} '
                                              f'({where})'),
            ('cat/0.jpg 2\n', "line 1: class label 2 is outside 0..1, the head's 2 classes"),
            ('cat/0.jpg\n', 'line 1: "cat/0.jpg" has no integer class label after the image path'),
            ('cat/0.jpg 1\n\n', 'line 2 is empty')]:
        listing.write_text(text)
        with pytest.raises(DatasetCheckError, match=re.escape(f'{listing} {expected}')):
            check_cls_dataset_cfgs(cfg, ('train', ))
    listing.write_text('cat/0.jpg 1\ncat/0.jpg 0\n')
    assert check_cls_dataset_cfgs(cfg, ('train', )) == [(where, 2)]
    (tmp_path / 'train' / 'cat' / '0.jpg').rename(tmp_path / 'train' / 'cat' / '1.jpg')
    assert check_cls_dataset_cfgs(cfg, ('train', )) == [(where, 2)]  # remembered: the list is not read again
    listing.write_text('cat/0.jpg 1\n')
    with pytest.raises(DatasetCheckError, match='image not found'):  # a changed list is
        check_cls_dataset_cfgs(cfg, ('train', ))
    assert check_cls_dataset_cfgs(dict(cfg, default_scope='mmdet'), ('train', )) == []
    # a list without labels (ImageNet's test split) is read line by line as it stands: a trailing space is part of
    # the file name for MMPretrain (with labels it splits the stripped line)
    (tmp_path / 'test').mkdir()
    imwrite(np.zeros((8, 8, 3), np.uint8), str(tmp_path / 'test' / '0.jpg'))
    (tmp_path / 'meta' / 'test.txt').write_text('0.jpg \n')
    test_cfg = dict(cfg, test_dataloader=dict(dataset=dict(type='ImageNet', data_root=str(tmp_path), split='test')))
    with pytest.raises(DatasetCheckError, match=re.escape(f'line 1: image not found: {tmp_path / "test" / "0.jpg"} ')):
        check_cls_dataset_cfgs(test_cfg, ('test', ))
    (tmp_path / 'meta' / 'test.txt').write_text('0.jpg\n')
    assert check_cls_dataset_cfgs(test_cfg, ('test', )) == [('test_dataloader.dataset', 1)]
