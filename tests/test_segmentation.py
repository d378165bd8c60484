"""STViT-R in MMSegmentation 1.x: one class in every registry, UperNet (our configs) and two stock mmseg segmentors
with STViTR swapped in (loss + backward, predict at odd sizes, sliding windows), the configs' recipe, weights /
frozen stages / with_cp through an mmseg config, the label-map checks, the toolbox-missing message, and the nuclei
segmentation demo end to end through tools/train.py and tools/test.py.

Backbones are narrowed to ``conftest.SMALL`` (C=32) and heads to a few channels, so that everything runs on CPU.
"""
import copy
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from mmengine.config import ConfigDict
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS
from mmengine.structures import PixelData

from mmseg.structures import SegDataSample  # installed by tools/install.sh (requirements/seg.txt)

import stvit_det
from stvit_det.datasets import DatasetCheckError, SegDatasetError, check_seg_dataset_cfgs
from stvit_det.models.backbones.stvit_r import ARCH_SETTINGS
from stvit_det.toolboxes.scope import ToolboxMissingError, init_toolbox_scope, load_config

from conftest import SMALL, randomize_

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_DIR = osp.join(ROOT, 'configs', 'stvit-r-seg')
ADE_T = osp.join(SEG_DIR, 'stvit-r-t-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py')
CITYSCAPES_S = osp.join(SEG_DIR, 'stvit-r-s-in1k-pre_upernet_4xb2-80k_cityscapes-512x1024.py')
DEMO = osp.join(SEG_DIR, 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py')
SEG_CONFIGS = sorted(glob.glob(osp.join(SEG_DIR, '*.py')))
SMALL_CHANNELS = [SMALL['embed_dims'] * 2**i for i in range(4)]
BN = dict(type='BN', requires_grad=True)
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _narrow(cfg, num_classes=3):
    """``cfg.model`` with the SMALL backbone, random weights and narrow heads (in place); returns cfg.model."""
    model = cfg.model
    model.backbone.update(SMALL, init_cfg=None, drop_path_rate=0.0)
    model.backbone.pop('arch', None)
    head = model.decode_head
    if 'in_index' in head and isinstance(head.in_index, int):
        head.in_channels = SMALL_CHANNELS[head.in_index]
    elif 'in_channels' in head:
        head.in_channels = SMALL_CHANNELS
    head.update(channels=16, num_classes=num_classes, norm_cfg=BN)
    if model.get('neck') is not None:  # Semantic FPN
        model.neck.update(in_channels=SMALL_CHANNELS, out_channels=16)
        head.update(in_channels=[16] * 4)
    if model.get('auxiliary_head') is not None:
        model.auxiliary_head.update(
            in_channels=SMALL_CHANNELS[model.auxiliary_head.in_index], channels=8, num_classes=num_classes, norm_cfg=BN)
    return model


def _build(model_cfg):
    init_toolbox_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(copy.deepcopy(model_cfg)))
    model.init_weights()
    return model


def _samples(batch, h, w, num_classes=3, with_gt=True):
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                        padding_size=[0, 0, 0, 0]))
        if with_gt:
            s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w)))
        samples.append(s)
    return samples


def _loss_backward_all_backbone_grads(model, h, w):
    model.train()
    losses = model.loss(torch.randn(2, 3, h, w), _samples(2, h, w))
    total = sum(v for k, v in losses.items() if k.startswith(('decode.loss', 'aux.loss')))
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'backbone parameters without a gradient: {missing}'
    return losses


def _predict_shapes(model, h, w, num_classes=3):
    model.eval()
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, h, w), _samples(1, h, w, with_gt=False))
    pred, logits = out[0].pred_sem_seg.data, out[0].seg_logits.data
    assert pred.shape == (1, h, w) and logits.shape == (num_classes, h, w)
    assert torch.isfinite(logits).all() and 0 <= pred.min() and pred.max() < num_classes


# ------------------------------------------------------------------------------------------ one class, registries
def test_one_class_in_every_registry():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    assert SEG_MODELS.get('STViTR') is stvit_det.STViTR is DET_MODELS.get('STViTR')


# ------------------------------------------------------------------------------------------ UperNet (our configs)
@pytest.fixture(scope='module')
def upernet():
    return _build(_narrow(load_config(ADE_T)))


def test_upernet_loss_backward(upernet):
    losses = _loss_backward_all_backbone_grads(upernet, 161, 237)  # odd: padded to windows inside the backbone
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)  # the auxiliary FCN head trains too
    assert all(p.grad is not None for p in upernet.auxiliary_head.parameters())


@pytest.mark.parametrize('hw', [(512, 512), (383, 517)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_upernet_predict(upernet, hw):
    _predict_shapes(upernet, *hw)


@pytest.mark.parametrize('pad_mask', ['correct', 'official', 'none'])
def test_attention_paths_and_pad_modes_through_upernet(upernet, pad_mask):
    """The backbone options reach the segmentor from its config (every semantic block gets the pad-mask mode), and at
    an odd size each mode gives the same logits with the default attention path ('auto') as with the oracle
    ('reference')."""
    x = torch.randn(1, 3, 161, 237)
    # random weights with layer scales near 1 (``randomize_``): at init the semantic blocks' 1e-5 scales would hide
    # any difference below the tolerance
    torch.manual_seed(0)
    state = randomize_(copy.deepcopy(upernet)).state_dict()
    logits = {}
    for impl in ('auto', 'reference'):
        cfg = _narrow(load_config(ADE_T))
        cfg.backbone.update(attn_impl=impl, pad_mask=pad_mask)
        model = _build(cfg)
        model.load_state_dict(state)
        assert {getattr(m, 'pad_mask', pad_mask) for m in model.backbone.modules()} == {pad_mask}
        model.eval()
        with torch.no_grad():
            logits[impl] = model.predict(x, _samples(1, 161, 237, with_gt=False))[0].seg_logits.data
    torch.testing.assert_close(logits['auto'], logits['reference'], rtol=1e-4, atol=1e-5)


def test_slide_inference_visits_every_window():
    """Cityscapes config with the documented slide options (scaled down 4x): the backbone sees every window at the
    crop size, and the stitched prediction covers the whole image; whole-image inference works on the same model."""
    cfg = load_config(CITYSCAPES_S)
    model = _build(_narrow(cfg))
    h, w, crop, stride = 256, 512, (128, 256), (85, 171)
    model.test_cfg = ConfigDict(mode='slide', crop_size=crop, stride=stride)
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[2:])))
    try:
        _predict_shapes(model, h, w)
    finally:
        hook.remove()
    rows = (h - crop[0] + stride[0] - 1) // stride[0] + 1
    cols = (w - crop[1] + stride[1] - 1) // stride[1] + 1
    assert (rows, cols) == (3, 3) and seen == [crop] * (rows * cols)
    model.test_cfg = ConfigDict(mode='whole')
    seen.clear()
    _predict_shapes(model, 133, 291)  # whole: one odd-sized pass


# ------------------------------------------------------------------------------------------ stock mmseg configs
STOCK = {
    # UperNet R-50 on ADE20K: the ResNet replaced (its `pretrained` URL dropped), the heads' inputs widened
    'upernet': 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py',
    # Semantic FPN R-50: an FPN neck between STViTR and the FPNHead
    'sem_fpn': 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
}


@pytest.mark.parametrize('name', sorted(STOCK))
def test_stvitr_in_stock_mmseg_config(name):
    """The README recipe: custom_imports + backbone=dict(_delete_=True, type='STViTR') + the heads' in_channels."""
    cfg = load_config(STOCK[name])
    cfg.merge_from_dict(dict(
        custom_imports=dict(imports=['stvit_det'], allow_failed_imports=False),
        model=dict(pretrained=None, backbone=dict(_delete_=True, type='STViTR', out_indices=(0, 1, 2, 3)))))
    assert cfg.model.backbone == dict(type='STViTR', out_indices=(0, 1, 2, 3))
    model = _build(_narrow(cfg))
    assert type(model.backbone) is stvit_det.STViTR
    _loss_backward_all_backbone_grads(model, 96, 128)
    _predict_shapes(model, 97, 131)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize('path', SEG_CONFIGS, ids=osp.basename)
def test_config_recipe(path):
    cfg = load_config(path)
    name = osp.basename(path)
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(imports=['stvit_det'], allow_failed_imports=False)
    model_cfg = cfg.model
    assert model_cfg.type == 'EncoderDecoder' and model_cfg.backbone.type == 'STViTR'
    assert model_cfg.decode_head.type == 'UPerHead' and model_cfg.auxiliary_head.type == 'FCNHead'
    crop = tuple(int(v) for v in re.search(r'(\d+)x(\d+)\.py$', name).groups())
    assert tuple(model_cfg.data_preprocessor.size) == crop
    if 'demo' in name:
        assert model_cfg.backbone.init_cfg is None  # trained from scratch
        return
    arch = re.match(r'stvit-r-([tsb])-in1k-pre_upernet_', name).group(1)
    assert model_cfg.backbone.arch == dict(t='tiny', s='small', b='base')[arch]
    assert model_cfg.backbone.init_cfg == dict(type='Pretrained', checkpoint=None)  # a local file via --cfg-options
    assert model_cfg.backbone.drop_path_rate == 0.3
    iters, classes = (160000, 150) if '_ade20k-' in name else (80000, 19)
    assert model_cfg.decode_head.num_classes == model_cfg.auxiliary_head.num_classes == classes
    assert cfg.train_cfg.max_iters == iters
    # mmseg's Swin UperNet recipe: AdamW 6e-5, wd 0.01 but none on norms / position tables (the conv stem's
    # BatchNorms named), warm-up 1500, poly
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 6e-5, 0.01)
    assert {k: v.decay_mult for k, v in cfg.optim_wrapper.paramwise_cfg.custom_keys.items()} == {
        'absolute_pos_embed': 0.0, 'relative_position_bias_table': 0.0, 'norm': 0.0,
        'patch_embed.proj.0.bn': 0.0, 'patch_embed.proj.2.bn': 0.0}
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.begin, poly.end) == ('LinearLR', 1500, 'PolyLR', 1500, iters)

    # heads wired to the backbone's channels (tests/test_configs.py builds every config at full size)
    channels = [ARCH_SETTINGS[model_cfg.backbone.arch]['embed_dims'] * 2**i for i in range(4)]
    assert model_cfg.decode_head.in_channels == channels
    assert model_cfg.auxiliary_head.in_channels == channels[model_cfg.auxiliary_head.in_index] == channels[2]


def test_pretrained_without_a_checkpoint_stops():
    """The ADE20K / Cityscapes configs want ImageNet weights from a local file: none given is an error, not a
    silent start from random weights."""
    init_toolbox_scope('mmseg')
    backbone = MODELS.build(copy.deepcopy(load_config(ADE_T).model.backbone))
    with pytest.raises(ValueError, match='checkpoint'):
        backbone.init_weights()


def test_no_weight_decay_on_norms_and_position_tables():
    """The paramwise keys reach STViTR's parameters (LayerNorms, relative position tables) in the built optimizer."""
    from mmengine.optim import build_optim_wrapper

    cfg = load_config(ADE_T)
    model = _build(_narrow(cfg))
    wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: g['weight_decay'] for g in wrapper.optimizer.param_groups for p in g['params']}
    assert decay['backbone.layers.0.blocks.0.attn.relative_position_bias_table'] == 0.0
    assert decay['backbone.norm2.weight'] == 0.0 and decay['backbone.layers.2.blocks.1.norm1.weight'] == 0.0
    assert decay['backbone.layers.2.blocks.1.attn.q.weight'] == 0.01
    assert all(v == 0.0 for n, v in decay.items() if 'norm' in n)
    # by type: every norm layer of the backbone (LayerNorms, the conv stem's BatchNorms), whatever its name
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
    norms = [f'backbone.{m}.{p}' for m, mod in model.backbone.named_modules() if isinstance(mod, norm_types)
             for p, _ in mod.named_parameters(recurse=False)]
    assert 'backbone.patch_embed.proj.0.bn.weight' in norms and len(norms) > 20
    assert [n for n in norms if decay[n] != 0.0] == []


def test_weights_frozen_stages_and_with_cp_through_mmseg_config(tmp_path, monkeypatch):
    """Same loading and training duties as in detection: a local checkpoint through init_cfg, frozen stem + stage 1
    in eval mode without gradients, activation checkpointing of every block."""
    import torch.utils.checkpoint as cp

    source = stvit_det.STViTR(**SMALL)
    source.init_weights()
    path = tmp_path / 'stvit-small.pth'
    torch.save(source.state_dict(), path)
    cfg = load_config(ADE_T)
    model_cfg = _narrow(cfg)
    model_cfg.backbone.update(init_cfg=dict(type='Pretrained', checkpoint=str(path)), frozen_stages=1, with_cp=True)
    model = _build(model_cfg).train()
    for name, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
    frozen = [model.backbone.patch_embed, model.backbone.layers[0]]
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(not p.requires_grad for f in frozen for p in f.parameters())
    calls = []
    checkpoint = cp.checkpoint
    monkeypatch.setattr(cp, 'checkpoint', lambda fn, *a, **k: calls.append(fn) or checkpoint(fn, *a, **k))
    losses = model.loss(torch.randn(2, 3, 64, 96), _samples(2, 64, 96))
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert len(calls) == sum(SMALL['depths'])  # every block checkpointed
    assert model.backbone.layers[1].blocks[0].attn.qkv.weight.grad is not None


# ------------------------------------------------------------------------------------------ bad input
def _png(path, array):
    import cv2

    os.makedirs(osp.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def seg_root(tmp_path):
    """A 2-class dataset of three 24x32 images with valid label maps (0, 1 and the ignore index 255)."""
    for i in range(3):
        _png(tmp_path / 'img' / f'a{i}.png', np.full((24, 32, 3), 40 * i, np.uint8))
        label = np.zeros((24, 32), np.uint8)
        label[:, 16:] = 1
        label[0, 0] = 255
        _png(tmp_path / 'ann' / f'a{i}.png', label)
    return tmp_path


def _seg_cfg(root, **dataset):
    ds = dict(type='BaseSegDataset', data_root=str(root), metainfo=dict(classes=('bg', 'fg')), img_suffix='.png',
              seg_map_suffix='.png', data_prefix=dict(img_path='img', seg_map_path='ann'),
              pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')])
    ds.update(dataset)
    return dict(model=dict(decode_head=dict(ignore_index=255)), train_dataloader=dict(dataset=ds),
                val_dataloader=None)


def test_valid_labels_pass(seg_root):
    assert check_seg_dataset_cfgs(_seg_cfg(seg_root), phases=('train', 'val')) == [('train_dataloader.dataset', 3)]


def _expect(cfg, *fragments):
    with pytest.raises(SegDatasetError) as info:
        check_seg_dataset_cfgs(cfg, phases=('train', ))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_checked_samples_are_remembered_until_they_change(seg_root, tmp_path_factory, monkeypatch):
    """A second check reads no file; a changed label map is read again (and a bad one never remembered); another
    class count is another setting; a corrupt memory file counts as empty."""
    from stvit_det.datasets import seg_check

    cache = tmp_path_factory.mktemp('remembered')
    reads = []
    read = seg_check.read_label_map
    monkeypatch.setattr(seg_check, 'read_label_map',
                        lambda path, *a: reads.append(osp.basename(path)) or read(path, *a))
    ds = _seg_cfg(seg_root)['train_dataloader']['dataset']

    def check(dataset=ds):
        reads.clear()
        return seg_check.check_seg_dataset_cfg(dataset, cache_dir=str(cache))

    assert check() == 3 and sorted(reads) == ['a0.png', 'a1.png', 'a2.png']
    assert check() == 3 and reads == []
    bad = np.full((24, 32), 5, np.uint8)
    _png(seg_root / 'ann' / 'a1.png', bad)
    os.utime(seg_root / 'ann' / 'a1.png', ns=(1, 1))  # a new stamp even where the clock is coarse
    for _ in range(2):
        with pytest.raises(SegDatasetError, match='a1.png has class values 5'):
            check()
        assert reads == ['a1.png']
    _png(seg_root / 'ann' / 'a1.png', np.ones((24, 32), np.uint8))
    assert check() == 3 and reads == ['a1.png']
    assert check(dict(ds, metainfo=dict(classes=('bg', 'fg', 'other')))) == 3 and len(reads) == 3
    for memory in cache.iterdir():
        memory.write_text('{not json')
    assert check() == 3 and len(reads) == 3
    assert check() == 3 and reads == []


def test_unwritable_check_cache_only_costs_a_reread(seg_root, tmp_path_factory):
    from stvit_det.datasets import seg_check

    blocker = tmp_path_factory.mktemp('blocked') / 'a_file'
    blocker.write_text('')  # a file where the cache folder should be
    ds = _seg_cfg(seg_root)['train_dataloader']['dataset']
    assert seg_check.check_seg_dataset_cfg(ds, cache_dir=str(blocker / 'cache')) == 3
    assert seg_check.check_seg_dataset_cfg(ds, cache_dir=None) == 3


def test_label_values_outside_the_classes(seg_root):
    bad = np.ones((24, 32), np.uint8)
    bad[3, 3], bad[4, 4] = 2, 7
    _png(seg_root / 'ann' / 'a1.png', bad)
    _expect(_seg_cfg(seg_root), str(seg_root / 'ann' / 'a1.png'), 'class values 2, 7', 'outside [0, 2)',
            'ignore index 255')


def test_model_classes_differ_from_the_dataset(seg_root):
    """Labels are checked against the dataset's classes; a head with fewer would still crash training on them."""
    cfg = _seg_cfg(seg_root)
    cfg['model'].update(num_classes=2)  # a segmentor's own key, not a head's: ignored
    cfg['model']['decode_head'].update(num_classes=2)
    cfg['model']['auxiliary_head'] = dict(num_classes=3)
    _expect(cfg, 'model.auxiliary_head.num_classes is 3', 'train_dataloader.dataset has 2 classes (bg, fg)',
            'set model.auxiliary_head.num_classes=2')
    cfg['model']['auxiliary_head'] = [dict(num_classes=2), dict(num_classes=1)]  # 1: a binary (sigmoid) head
    assert check_seg_dataset_cfgs(cfg, phases=('train', )) == [('train_dataloader.dataset', 3)]


def test_reduce_zero_label_is_applied_before_the_range_check(seg_root):
    """ADE20K style: raw 1..K are classes 0..K-1, raw 0 (and 255) are ignored; so raw 2 is class 1 (valid for two
    classes) and raw 3 is class 2 (not), where without the reduction both are out of range."""
    label = np.zeros((24, 32), np.uint8)
    label[0, :4] = (1, 2, 3, 255)
    _png(seg_root / 'ann' / 'a1.png', label)
    _expect(_seg_cfg(seg_root, reduce_zero_label=True), 'a1.png', 'class values 2 after reduce_zero_label')
    _expect(_seg_cfg(seg_root), 'a1.png', 'class values 2, 3,')


def test_label_map_size_differs_from_its_image(seg_root):
    _png(seg_root / 'ann' / 'a2.png', np.zeros((24, 31), np.uint8))
    _expect(_seg_cfg(seg_root), str(seg_root / 'ann' / 'a2.png'), 'is 24x31 (HxW)', str(seg_root / 'img' / 'a2.png'),
            'is 24x32')


def test_missing_label_map(seg_root):
    os.remove(seg_root / 'ann' / 'a0.png')
    _expect(_seg_cfg(seg_root), 'label map not found', str(seg_root / 'ann' / 'a0.png'))


def test_unlabelled_inference_needs_images_only(seg_root):
    """A pipeline without LoadAnnotations (predictions on unlabelled images, e.g. a test-server submission) does
    not read label maps, so none is required; its images still are."""
    shutil.rmtree(seg_root / 'ann')
    images_only = _seg_cfg(seg_root, pipeline=[dict(type='LoadImageFromFile'), dict(type='PackSegInputs')])
    assert check_seg_dataset_cfgs(images_only, phases=('train', )) == [('train_dataloader.dataset', 3)]
    _expect(_seg_cfg(seg_root), 'label map not found', str(seg_root / 'ann' / 'a0.png'))
    from stvit_det.datasets import check_dataset_cfgs
    assert check_dataset_cfgs(images_only, phases=('train', )) == [('train_dataloader.dataset', str(seg_root / 'img'))]
    with pytest.raises(DatasetCheckError, match='image directory not found: .*ann'):  # labels read: folder needed
        check_dataset_cfgs(_seg_cfg(seg_root), phases=('train', ))
    (seg_root / 'split.txt').write_text('a0\na9\n')
    images_only['train_dataloader']['dataset']['ann_file'] = 'split.txt'
    _expect(images_only, 'image file not found', str(seg_root / 'img' / 'a9.png'))


def test_hidden_files_are_not_samples(seg_root):
    """mmengine lists no hidden file (macOS '._a0.png' resource forks), and a hidden folder of label maps
    (.ipynb_checkpoints) holds copies, not labels of missing images: neither stops the check."""
    for folder in ('img', 'ann'):
        (seg_root / folder / '._a0.png').write_bytes(b'\0' * 10)
    _png(seg_root / 'ann' / '.ipynb_checkpoints' / 'a0-checkpoint.png', np.zeros((24, 32), np.uint8))
    assert check_seg_dataset_cfgs(_seg_cfg(seg_root), phases=('train', )) == [('train_dataloader.dataset', 3)]
    _png(seg_root / 'ann' / 'a7.png', np.zeros((24, 32), np.uint8))  # a visible one still is a missing image's
    _expect(_seg_cfg(seg_root), 'image file not found', str(seg_root / 'img' / 'a7.png'))


def test_dataset_mmseg_refuses_is_one_line(seg_root):
    _expect(_seg_cfg(seg_root, type='ADE20KDataset', metainfo=dict(classes=('wall', 'bulding'))),
            'train_dataloader.dataset cannot be built: ValueError: ', 'bulding')


def test_image_size_follows_the_pipeline_decoder(tmp_path, monkeypatch):
    """The size a sample's label map must have is the image as LoadImageFromFile decodes it: the EXIF rotation
    applies for cv2 / pillow with color_type 'color' or 'grayscale', not 'unchanged'; tifffile gives H x W x bands
    of a multi-band image; other formats with an orientation, and images over PIL's pixel limit, are decoded. Checked
    against mmcv itself."""
    import mmcv
    import tifffile
    from PIL import Image

    from stvit_det.datasets.seg_check import image_size

    rotated = tmp_path / 'rotated.jpg'
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24x32, shown 32x24
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(rotated, exif=exif)
    for backend in ('cv2', 'pillow'):
        for color_type in ('color', 'grayscale', 'unchanged'):
            expected = mmcv.imread(str(rotated), flag=color_type, backend=backend).shape[:2]
            assert image_size(str(rotated), backend, color_type) == expected, (backend, color_type)
    assert image_size(str(rotated)) == (32, 24)
    bands = tmp_path / 'bands.tif'
    tifffile.imwrite(bands, np.zeros((24, 32, 5), np.float32))
    assert image_size(str(bands), 'tifffile') == mmcv.imread(str(bands), backend='tifffile').shape[:2] == (24, 32)
    for suffix in ('tif', 'webp', 'png'):  # decoders differ on other formats' orientation: as mmcv decodes them
        other = tmp_path / f'rotated.{suffix}'
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(other, exif=exif)
        for backend in ('cv2', 'pillow'):
            expected = mmcv.imread(str(other), flag='color', backend=backend).shape[:2]
            assert image_size(str(other), backend) == expected, (suffix, backend)
    import PIL.Image
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 100)  # 768 pixels: over twice the limit, PIL refuses
    assert image_size(str(tmp_path / 'rotated.png')) == mmcv.imread(str(tmp_path / 'rotated.png')).shape[:2]


def test_no_images_with_the_suffix(seg_root):
    """An image folder without an image of the configured suffix (empty, or .jpg for '.png') is named, not a
    numpy error from serialising an empty data list."""
    _expect(_seg_cfg(seg_root, img_suffix='.jpg'), 'no images found in', str(seg_root / 'img'), "suffix '.jpg'")
    shutil.rmtree(seg_root / 'img')
    os.makedirs(seg_root / 'img')
    _expect(_seg_cfg(seg_root), 'no images found in', str(seg_root / 'img'))


def test_labels_loaded_inside_test_time_augmentation(seg_root):
    """mmseg's TTA pipeline loads the label maps inside TestTimeAug's transforms: still checked (its IoUMetric
    would silently drop out-of-range values)."""
    _png(seg_root / 'ann' / 'a1.png', np.full((24, 32), 7, np.uint8))
    tta = [dict(type='LoadImageFromFile'),
           dict(type='TestTimeAug', transforms=[[dict(type='Resize', scale_factor=1.0, keep_ratio=True)],
                                                [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
    _expect(_seg_cfg(seg_root, pipeline=tta), str(seg_root / 'ann' / 'a1.png'), 'class values 7')


def test_missing_image(seg_root):
    os.remove(seg_root / 'img' / 'a2.png')  # its label map is left without an image
    _expect(_seg_cfg(seg_root), 'image file not found', str(seg_root / 'img' / 'a2.png'))


def test_missing_image_of_a_split_list(seg_root):
    (seg_root / 'split.txt').write_text('a0\na9\n')
    _expect(_seg_cfg(seg_root, ann_file='split.txt'), 'image file not found', str(seg_root / 'img' / 'a9.png'))


def test_colour_label_map(seg_root):
    _png(seg_root / 'ann' / 'a0.png', np.zeros((24, 32, 3), np.uint8))
    _expect(_seg_cfg(seg_root), str(seg_root / 'ann' / 'a0.png'), 'expected one channel')


def test_16_bit_labels_above_255(seg_root):
    _png(seg_root / 'ann' / 'a0.png', np.full((24, 32), 256, np.uint16))
    _expect(_seg_cfg(seg_root), 'outside 0..255', 'would be wrapped')


# ------------------------------------------------------------------------------------------ toolbox missing
def test_toolbox_missing_message_from_base_resolution(monkeypatch):
    """mmengine's own error for an absent `mmseg::` base becomes one line naming the config and the install."""
    from mmengine.config import config as mmengine_config

    monkeypatch.setattr(mmengine_config, 'is_installed', lambda package: package != 'mmsegmentation')
    with pytest.raises(ToolboxMissingError) as info:
        load_config(ADE_T)
    assert str(info.value).startswith(ADE_T)
    assert 'inherits `mmseg::` configs' in str(info.value) and 'requirements/seg.txt' in str(info.value)


def test_toolbox_that_fails_to_import_is_named(monkeypatch, tmp_path):
    """An installed mmseg that fails at import (mmseg asserts the mmcv version in its __init__) stops a segmentation
    config with one message, not a traceback from deep inside the tools."""
    from stvit_det.toolboxes import scope

    real = scope.importlib.import_module

    def broken(name, *args):
        if name == 'mmseg':
            raise AssertionError('MMCV==2.3.0 is used but incompatible. Please install mmcv>=2.0.0rc4, <2.2.0.')
        return real(name, *args)

    monkeypatch.setattr(scope.importlib, 'import_module', broken)
    cfg = tmp_path / 'seg.py'
    cfg.write_text("default_scope = 'mmseg'\nmodel = dict(type='EncoderDecoder')\n")
    for load in (lambda: load_config(str(cfg)), lambda: scope.resolve_config_path('mmseg::_base_/x.py')):
        with pytest.raises(ToolboxMissingError, match=r"MMSegmentation \(`mmseg`\) is installed and fails to import: "
                                                      r"AssertionError: MMCV==2\.3\.0 is used but incompatible"):
            load()


def test_toolbox_that_fails_to_import_only_warns_at_import(monkeypatch):
    """`import stvit_det` (register_toolboxes) survives an installed mmseg or mmpretrain that fails at import (a
    version assertion, a broken module): a warning naming the toolbox, detection unaffected."""
    from mmdet.registry import MODELS as DET_MODELS

    from stvit_det import toolboxes
    from stvit_det.toolboxes import mmseg_glue

    def mmcv_assertion():
        raise AssertionError('MMCV==2.3.0 is used but incompatible. Please install mmcv>=2.0.0rc4, <2.2.0.')

    monkeypatch.setattr(mmseg_glue, 'register', mmcv_assertion)
    monkeypatch.setitem(sys.modules, 'mmpretrain.registry', None)  # `from mmpretrain.registry import ...` fails
    with pytest.warns(UserWarning) as record:
        assert toolboxes.register_toolboxes() == []
    messages = [str(w.message) for w in record]
    assert any(m.startswith('mmseg is installed but cannot be imported (AssertionError: MMCV==2.3.0') for m in messages)
    assert any(m.startswith('mmpretrain is installed but cannot be imported (ModuleNotFoundError') for m in messages)
    assert DET_MODELS.get('STViTR') is stvit_det.STViTR


# ------------------------------------------------------------------------------------------ tools, end to end
def _tool(script, *args, cwd, code=None):
    cmd = [sys.executable, osp.join(ROOT, 'tools', script), *args]
    if code is not None:  # run the tool after `code` in the same interpreter
        cmd = [sys.executable, '-c', f'{code}; import runpy, sys; sys.argv = {[script, *args]!r}; '
               f'runpy.run_path({osp.join(ROOT, "tools", script)!r}, run_name="__main__")']
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_show_dir_paints_every_image_of_a_stock_mmseg_config():
    """tools/test.py --show-dir on an mmseg config whose SegVisualizationHook paints every 50th image (ADE20K's:
    the hook's default interval): switched on for every image (every --interval-th), saved under the given folder
    (mmseg's rule), the config's other hooks untouched; the same --interval for an MMPretrain config."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location('stvit_test_tool', osp.join(ROOT, 'tools', 'test.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = load_config(ADE_T)
    assert 'interval' not in cfg.default_hooks.visualization and 'draw' not in cfg.default_hooks.visualization
    args = argparse.Namespace(show=False, show_dir='painted', wait_time=2, interval=1)  # test.py's defaults
    cfg = tool.VISUALIZATION_TRIGGERS['mmseg'](cfg, args)
    hook = cfg.default_hooks.visualization
    assert (hook.type, hook.draw, hook.interval) == ('SegVisualizationHook', True, 1)
    assert cfg.visualizer.save_dir == 'painted' and cfg.default_hooks.logger.interval == 50
    args.interval = 7  # --interval 7, as in mmpretrain's tool
    assert tool.VISUALIZATION_TRIGGERS['mmseg'](load_config(ADE_T), args).default_hooks.visualization.interval == 7
    cls_cfg = load_config(osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-t_16xb64_in1k.py'))
    hook = tool.VISUALIZATION_TRIGGERS['mmpretrain'](cls_cfg, args).default_hooks.visualization
    assert (hook.type, hook.enable, hook.interval, hook.out_dir) == ('VisualizationHook', True, 7, 'painted')


def test_auto_scale_lr_needs_a_base_batch(monkeypatch):
    """mmseg's configs state no base batch size: --auto-scale-lr stops in one line saying what to add."""
    msg = _run_tool_in_process(monkeypatch, 'train.py', ADE_T, '--auto-scale-lr')
    assert msg.startswith('train.py: error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config')


def test_train_without_mmseg_says_so(tmp_path):
    """Where mmseg cannot be imported, `import stvit_det` still works (detection) and a segmentation config stops
    before anything is built, in one line naming the toolbox."""
    block = ("import sys; sys.modules['mmseg'] = None; import stvit_det; from mmdet.registry import MODELS; "
             "assert MODELS.get('STViTR') is stvit_det.STViTR")
    rc, out, err = _tool('train.py', ADE_T, cwd=tmp_path, code=block)
    assert rc != 0 and 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('train.py: error:') and "default_scope='mmseg'" in last and 'MMSegmentation' in last


def _run_tool_in_process(monkeypatch, script, *args):
    """Run a tool's ``__main__`` here (no interpreter start-up) and return its SystemExit message."""
    import runpy

    monkeypatch.setattr(sys, 'argv', [script, *args])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(osp.join(ROOT, 'tools', script), run_name='__main__')
    return str(info.value.code)


def test_seg_demo_end_to_end(tmp_path, monkeypatch):
    """The demo's steps at smoke scale: build the semantic dataset (tools/make_demo_dataset.py --semantic), a bad
    label map stops tools/train.py in one line before anything is built, train 2 iterations with tools/train.py,
    test with tools/test.py: mIoU, a painted PNG and the predicted label maps (--out DIR)."""
    from stvit_det.datasets.demo_nuclei_seg import make_seg_demo_dataset

    data = tmp_path / 'data' / 'nuclei_demo'
    info, built = make_seg_demo_dataset(str(data))
    assert built and info['counts']['val']['images'] == 1
    opts = ['--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'train_dataloader.dataset.pipeline.2.scale=(128,128)',
            'train_dataloader.dataset.pipeline.3.crop_size=(112,112)', 'model.data_preprocessor.size=(112,112)']

    label = data / 'seg_maps' / 'train' / 'nuclei_train_005.png'
    good = label.read_bytes()
    _png(label, np.full((256, 256), 3, np.uint8))  # class 3 of a 2-class dataset
    monkeypatch.chdir(tmp_path)  # the config's data_root is relative
    message = _run_tool_in_process(monkeypatch, 'train.py', DEMO, '--work-dir', str(tmp_path / 'bad'), *opts)
    rel = osp.join('data', 'nuclei_demo', 'seg_maps', 'train', 'nuclei_train_005.png')
    assert message.startswith(f'train.py: error: label map {rel} has class values 3, outside [0, 2)'), message
    assert not (tmp_path / 'bad').exists()  # stopped before the Runner
    label.write_bytes(good)

    rc, out, err = _tool('train.py', DEMO, '--work-dir', str(tmp_path / 'work'), *opts, cwd=tmp_path)
    assert rc == 0, (out + err)[-4000:]
    ckpt = (tmp_path / 'work' / 'last_checkpoint').read_text().strip()
    rc, out, err = _tool('test.py', DEMO, ckpt, '--work-dir', str(tmp_path / 'test'), '--show-dir',
                         str(tmp_path / 'vis'), '--out', str(tmp_path / 'preds'), cwd=tmp_path)
    assert rc == 0, (out + err)[-4000:]
    miou = re.findall(r'Iter\(test\).*mIoU: ([\d.]+)', out + err)
    assert miou and float(miou[-1]) > 0
    # per-class table: background is most of every image, so even a barely trained model finds much of it
    background = re.findall(r'\|\s*background\s*\|\s*([\d.]+)', out + err)
    assert re.search(r'\|\s*nucleus\s*\|', out + err) and background, (out + err)[-3000:]
    assert float(background[-1]) > 10
    pngs = glob.glob(str(tmp_path / 'vis' / '**' / '*nuclei_val_000*.png'), recursive=True)
    assert len(pngs) == 1
    # --out DIR, as mmseg's tools/test.py: the predicted label maps as PNGs (a .pkl file: the pickled results)
    import cv2
    pred = cv2.imread(str(tmp_path / 'preds' / 'nuclei_val_000.png'), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (256, 256) and set(np.unique(pred)) <= {0, 1}
    # --amp (MMPretrain's option): the test loop's fp16, bfloat16 autocast on the CPU; --out-item metrics: a YAML
    # file any YAML reader takes (mmseg's metrics are numpy scalars, which mmengine.dump tags as Python objects)
    rc, out, err = _tool('test.py', DEMO, ckpt, '--work-dir', str(tmp_path / 'test_amp'), '--amp', '--out',
                         str(tmp_path / 'metrics.yaml'), '--out-item', 'metrics', cwd=tmp_path)
    assert rc == 0, (out + err)[-4000:]
    assert re.search(r"test_cfg = dict\(.*fp16=True", out + err), (out + err)[-4000:]
    metrics = yaml.safe_load((tmp_path / 'metrics.yaml').read_text())
    assert abs(metrics['mIoU'] - float(miou[-1])) < 10  # bfloat16 moves a few pixels of a barely trained model
