"""Released COCO detectors in MMDetection 3: a checkpoint with the FULL key layout of the released STViT-R-S / -B
Cascade Mask R-CNN 3x (mmdet 2.11) converts and loads with 0 missing / 0 unexpected / 0 reshaped tensors into
our evaluation leaves; those leaves reproduce the released inference settings and run ``predict``; bad checkpoints
get one clear error naming the tensors.

The layout is written here from the official configs (changsn/STViT-R-Object-Detection
``configs/swin/cascade_mask_rcnn_swin_{small,base}_..._giou_4conv1f_adamw_3x_coco.py``, ``configs/_base_/models/
cascade_mask_rcnn_swin_fpn.py``) and mmdet 2.11's module classes (``FPN``, ``RPNHead``, ``ConvFCBBoxHead`` with
SyncBN ``ConvModule``s, ``FCNMaskHead``), not from our models. Its tensors are zero-stride expansions of one
element: the right shapes in a file of a few hundred kB.
"""
import copy
import os
import os.path as osp
import re
import sys
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules

import stvit_det  # noqa: F401  (registers STViTR)
from stvit_det.utils.ckpt_file import CheckpointError, check_checkpoint_for_config, dataset_classes

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import convert_ckpt  # noqa: E402

CFG = {a: osp.join(ROOT, 'configs', 'stvit-r', f'cascade-mask-rcnn_stvit-r-{a}-released_fpn_4conv1fc-giou_ms-crop-3x'
                                                '_coco.py') for a in 'sb'}
ARCH = {'s': dict(C=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24)),
        'b': dict(C=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32))}
BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
# mmdet 2.11 CocoDataset.CLASSES (changsn/STViT-R-Object-Detection mmdet/datasets/coco.py)
COCO_2X_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant',
    'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
    'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli',
    'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet',
    'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')


# ----------------------------------------------------------------------------------- the released key layout
def _linear(out, name, o, i=None, bias=True):
    out[f'{name}.weight'] = (o, ) if i is None else (o, i)
    if bias:
        out[f'{name}.bias'] = (o, )


def _bn(out, name, c):
    for n in BN:
        out[f'{name}.{n}'] = () if n == 'num_batches_tracked' else (c, )


def stvit_backbone_layout(C, depths, heads, imagenet=False):
    """Official STViT-R backbone tensors (design spec 7.1): conv stem, Swin blocks with qkv and relative tables,
    stage-3 semantic blocks (6u+1..6u+5) with q / kv and layer scales; norm0..3 (detector) or norm + head
    (ImageNet, with the attn_mask buffers of the shifted blocks of stages 1 and 2 at 224)."""
    out = OrderedDict()
    out['patch_embed.proj.0.c.weight'] = (C // 2, 3, 3, 3)
    _bn(out, 'patch_embed.proj.0.bn', C // 2)
    out['patch_embed.proj.2.c.weight'] = (C, C // 2, 3, 3)
    _bn(out, 'patch_embed.proj.2.bn', C)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = C * 2**i
        for k in range(depth):
            p = f'layers.{i}.blocks.{k}.'
            _linear(out, p + 'norm1', d)
            if i == 2 and k % 6:
                _linear(out, p + 'attn.q', d, d)
                _linear(out, p + 'attn.kv', 2 * d, d)
            else:
                _linear(out, p + 'attn.qkv', 3 * d, d)
                out[p + 'attn.relative_position_bias_table'] = (13 * 13, h)
                out[p + 'attn.relative_position_index'] = (49, 49)
                if imagenet and i < 2 and k % 2:
                    out[p + 'attn_mask'] = ((56 // 2**i // 7)**2, 49, 49)
            _linear(out, p + 'attn.proj', d, d)
            _linear(out, p + 'norm2', d)
            _linear(out, p + 'mlp.fc1', 4 * d, d)
            _linear(out, p + 'mlp.fc2', d, 4 * d)
            if i == 2 and k % 6:
                out[p + 'layer_scale_1'] = (d, )
                out[p + 'layer_scale_2'] = (d, )
        if i < 3:
            _linear(out, f'layers.{i}.downsample.norm', 4 * d)
            _linear(out, f'layers.{i}.downsample.reduction', 2 * d, 4 * d, bias=False)
    if imagenet:
        _linear(out, 'norm', 8 * C)
        _linear(out, 'head', 1000, 8 * C)
    else:
        for i in range(4):
            _linear(out, f'norm{i}', C * 2**i)
    return out


def _fpn_rpn(out, C):
    for lvl in range(4):
        out[f'neck.lateral_convs.{lvl}.conv.weight'] = (256, C * 2**lvl, 1, 1)
        out[f'neck.lateral_convs.{lvl}.conv.bias'] = (256, )
        out[f'neck.fpn_convs.{lvl}.conv.weight'] = (256, 256, 3, 3)
        out[f'neck.fpn_convs.{lvl}.conv.bias'] = (256, )
    out['rpn_head.rpn_conv.weight'] = (256, 256, 3, 3)
    out['rpn_head.rpn_conv.bias'] = (256, )
    out['rpn_head.rpn_cls.weight'] = (3, 256, 1, 1)  # 3 anchors, sigmoid
    out['rpn_head.rpn_cls.bias'] = (3, )
    out['rpn_head.rpn_reg.weight'] = (12, 256, 1, 1)
    out['rpn_head.rpn_reg.bias'] = (12, )


def _mask_head(out, p):
    for j in range(4):
        out[f'{p}convs.{j}.conv.weight'] = (256, 256, 3, 3)
        out[f'{p}convs.{j}.conv.bias'] = (256, )
    out[f'{p}upsample.weight'] = (256, 256, 2, 2)  # ConvTranspose2d: (in, out, k, k)
    out[f'{p}upsample.bias'] = (256, )
    out[f'{p}conv_logits.weight'] = (80, 256, 1, 1)
    out[f'{p}conv_logits.bias'] = (80, )


def released_cascade_layout(arch):
    """Every tensor of the released Cascade Mask R-CNN 3x: backbone, FPN, RPN, three 4conv1fc bbox heads with
    SyncBN (class-aware GIoU), three FCN mask heads."""
    a = ARCH[arch]
    out = OrderedDict((f'backbone.{k}', v) for k, v in stvit_backbone_layout(a['C'], a['depths'], a['heads']).items())
    _fpn_rpn(out, a['C'])
    for s in range(3):
        p = f'roi_head.bbox_head.{s}.'
        for j in range(4):
            out[f'{p}shared_convs.{j}.conv.weight'] = (256, 256, 3, 3)  # no bias: followed by SyncBN
            _bn(out, f'{p}shared_convs.{j}.bn', 256)
        _linear(out, p + 'shared_fcs.0', 1024, 256 * 7 * 7)
        _linear(out, p + 'fc_cls', 81, 1024)
        _linear(out, p + 'fc_reg', 4 * 80, 1024)
    for s in range(3):
        _mask_head(out, f'roi_head.mask_head.{s}.')
    return out


def mask_rcnn_layout(arch):
    """A 2.x Mask R-CNN with the same backbone (another detector type): one Shared2FC bbox head, one mask head."""
    a = ARCH[arch]
    out = OrderedDict((f'backbone.{k}', v) for k, v in stvit_backbone_layout(a['C'], a['depths'], a['heads']).items())
    _fpn_rpn(out, a['C'])
    _linear(out, 'roi_head.bbox_head.shared_fcs.0', 1024, 256 * 7 * 7)
    _linear(out, 'roi_head.bbox_head.shared_fcs.1', 1024, 1024)
    _linear(out, 'roi_head.bbox_head.fc_cls', 81, 1024)
    _linear(out, 'roi_head.bbox_head.fc_reg', 320, 1024)
    _mask_head(out, 'roi_head.mask_head.')
    return out


def tiny_tensors(layout):
    """Tensors of the given shapes backed by one element each (zero strides), each holding its key's number (1, 2,
    ...) so that a conversion that puts a tensor under another name is seen."""
    return OrderedDict((k, torch.full((), i + 1, dtype=torch.long if k.endswith(('index', 'num_batches_tracked'))
                                      else torch.float32).expand(shape)) for i, (k, shape) in enumerate(layout.items()))


def save_2x_checkpoint(path, layout, classes=COCO_2X_CLASSES):
    """What mmdet 2.11 (mmcv 1.x ``save_checkpoint``) writes: state_dict, meta with CLASSES, optimizer state."""
    meta = dict(mmdet_version='2.11.0', mmcv_version='1.3.1', epoch=36, iter=263880, CLASSES=classes,
                config='# the training config as text', time='Fri May  6 14:37:19 2022')
    torch.save(dict(state_dict=tiny_tensors(layout), meta=meta, optimizer=dict(state={}, param_groups=[])), path)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module', autouse=True)
def _registry():
    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='module')
def released_s(tmp_path_factory):
    path = tmp_path_factory.mktemp('released') / 'cascade_s_2x.pth'
    save_2x_checkpoint(path, released_cascade_layout('s'))
    yield str(path)
    path.unlink()


def _convert(argv):
    return convert_ckpt.main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize('arch', ['s', 'b'])
def test_released_layout_converts_and_loads_0_0(arch, tmp_path):
    """The evaluation leaf builds and predicts (random weights, a tiny image); the full released key layout converts
    with 0 missing / 0 unexpected / 0 reshaped tensors, and the converted file loads strictly into the leaf's model
    (PyTorch's own check of names and shapes)."""
    model, cfg = convert_ckpt.build_model(CFG[arch])  # the converter's own (cached) build of the leaf
    layout = released_cascade_layout(arch)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dict(layout)

    model.eval()
    rpn_cfg, rcnn_cfg = copy.deepcopy(model.rpn_head.test_cfg), copy.deepcopy(model.roi_head.test_cfg)
    # CPU time: 20 proposals and 5 detections instead of 1000 / 100 (the three 4-conv bbox heads and three mask
    # heads at full load take ~30 s here); random heads score below 0.05, so keep every box to run the mask heads
    model.rpn_head.test_cfg['max_per_img'] = 20
    model.roi_head.test_cfg.update(score_thr=0.0, max_per_img=5)
    packed = demo_mm_inputs(1, [(3, 61, 83)], num_items=[2], num_classes=80, with_mask=True)
    try:
        with torch.no_grad():
            results = model.test_step(packed)
    finally:
        model.rpn_head.test_cfg, model.roi_head.test_cfg = rpn_cfg, rcnn_cfg
    pred = results[0].pred_instances
    assert len(pred) == 5 and pred.masks.shape[1:] == (61, 83) and pred.bboxes.shape == (len(pred), 4)

    src, dst = tmp_path / f'released_{arch}.pth', tmp_path / f'released_{arch}_mmdet3.pth'
    save_2x_checkpoint(src, layout)
    assert os.path.getsize(src) < 2e6  # zero-stride tensors: a few hundred kB, not hundreds of MB
    report = _convert(['--detector', CFG[arch], src, dst])
    assert report['missing'] == [] and report['unexpected'] == [] and report['mismatched'] == []
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['dataset_meta']['classes'] == COCO_2X_CLASSES
    assert 'optimizer' not in converted and len(converted['state_dict']) == len(layout)
    source = tiny_tensors(layout)
    for k, v in converted['state_dict'].items():  # every tensor under its own name, values kept
        assert v.shape == source[k].shape and torch.equal(v, source[k]), k
    result = model.load_state_dict(converted['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize('arch', ['s', 'b'])
def test_released_inference_settings(arch):
    """The evaluation leaves reproduce the released inference: padding mask, test pipeline, normalisation, class
    order and test_cfg of the official 2.11 configs (values written from them)."""
    cfg = Config.fromfile(CFG[arch])
    bb = cfg.model.backbone
    assert bb.type == 'STViTR' and bb.arch == dict(s='small', b='base')[arch] and bb.pad_mask == 'official'
    assert bb.init_cfg is None
    built = convert_ckpt.build_model(CFG[arch])[0].backbone
    assert built.layers[2].pattern == ('window', 'generate', 'refine', 'local', 'global', 'recover') * 3
    assert {blk.pad_mask for blk in built.layers[2].blocks if hasattr(blk, 'pad_mask')} == {'official'}
    assert [b.region for b in built.layers[2].blocks[1:3]] == [14, 21] and built.layers[2].blocks[5].region == 27
    # normalisation and padding (released: Normalize(mean, std, to_rgb=True) then Pad(size_divisor=32))
    dp = cfg.model.data_preprocessor
    assert dp.mean == [123.675, 116.28, 103.53] and dp.std == [58.395, 57.12, 57.375]
    assert dp.bgr_to_rgb and dp.pad_size_divisor == 32 and dp.get('pad_value', 0) == 0
    # test pipeline (released: MultiScaleFlipAug(img_scale=(1333, 800), flip=False, Resize(keep_ratio=True)))
    pipeline = cfg.test_dataloader.dataset.pipeline
    resize = [t for t in pipeline if t.type == 'Resize']
    assert len(resize) == 1 and tuple(resize[0].scale) == (1333, 800) and resize[0].keep_ratio
    assert resize[0].get('interpolation', 'bilinear') == 'bilinear' and resize[0].get('backend', 'cv2') == 'cv2'
    assert not any(t.type in ('RandomFlip', 'TestTimeAug', 'RandomChoiceResize') for t in pipeline)
    # class order
    from mmdet.datasets import CocoDataset
    assert cfg.test_dataloader.dataset.type == 'CocoDataset' and 'metainfo' not in cfg.test_dataloader.dataset
    assert tuple(CocoDataset.METAINFO['classes']) == COCO_2X_CLASSES
    assert dataset_classes(cfg) == COCO_2X_CLASSES
    # test_cfg of configs/_base_/models/cascade_mask_rcnn_swin_fpn.py
    rpn, rcnn = cfg.model.test_cfg.rpn, cfg.model.test_cfg.rcnn
    assert (rpn.nms_pre, rpn.max_per_img, rpn.nms.iou_threshold, rpn.min_bbox_size) == (1000, 1000, 0.7, 0)
    assert (rcnn.score_thr, rcnn.nms.iou_threshold, rcnn.max_per_img, rcnn.mask_thr_binary) == (0.05, 0.5, 100, 0.5)
    heads = cfg.model.roi_head.bbox_head
    assert [h.bbox_coder.target_stds for h in heads] == [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                                                         [0.033, 0.033, 0.067, 0.067]]
    assert cfg.model.roi_head.stage_loss_weights == [1, 0.5, 0.25]


# ----------------------------------------------------------------------------------------- bad checkpoints
def _convert_error(argv):
    with pytest.raises(SystemExit) as e:
        _convert(argv)
    return str(e.value.code)


def test_another_arch_names_the_tensors(released_s, tmp_path):
    msg = _convert_error(['--detector', CFG['b'], released_s, tmp_path / 'out.pth'])
    assert 'other shapes' in msg and 'another arch' in msg
    assert 'backbone.patch_embed.proj.0.c.weight (48, 3, 3, 3) vs (64, 3, 3, 3)' in msg
    assert not (tmp_path / 'out.pth').exists()


def test_another_detector_type_names_the_tensors(tmp_path):
    src = tmp_path / 'mask_rcnn_s_2x.pth'
    save_2x_checkpoint(src, mask_rcnn_layout('s'))
    msg = _convert_error(['--detector', CFG['s'], src, tmp_path / 'out.pth'])
    assert 'not in the checkpoint (another model type?)' in msg
    assert 'roi_head.bbox_head.0.shared_convs.0.conv.weight' in msg and 'roi_head.mask_head.2' in msg
    assert 'no place in the model' in msg and 'roi_head.bbox_head.shared_fcs.1.weight' in msg


def test_other_class_order_is_refused(tmp_path):
    src = tmp_path / 'released_s_swapped.pth'
    classes = ('bicycle', 'person') + COCO_2X_CLASSES[2:]
    save_2x_checkpoint(src, released_cascade_layout('s'), classes=classes)
    msg = _convert_error(['--detector', CFG['s'], src, tmp_path / 'out.pth'])
    assert "0: 'bicycle' vs 'person'" in msg
    # evaluating the 2.x file as it is (tools/test.py's check) refuses it too; fine-tuning (load_from) does not ask
    cfg = Config.fromfile(CFG['s'])
    with pytest.raises(CheckpointError, match=r"its 80 classes are not the config's 80 classes .*0: 'bicycle' vs "
                                              r"'person', 1: 'person' vs 'bicycle'"):
        check_checkpoint_for_config(cfg, str(src))
    assert check_checkpoint_for_config(cfg, str(src), strict=False)['missing'] == []


def test_mmdet3_checkpoint_keeps_its_classes(tmp_path):
    """An mmdet 3.x file (meta.dataset_meta, no 2.x CLASSES) given to --detector keeps its class names (they were
    dropped, and with them the class-order check and mmdet's init_detector names), also when converted again."""
    def save(path, classes):
        torch.save(dict(state_dict=tiny_tensors(released_cascade_layout('s')),
                        meta=dict(dataset_meta=dict(classes=classes, palette=[(0, 0, 0)] * 80))), path)

    src, out, again = tmp_path / 'mmdet3.pth', tmp_path / 'out.pth', tmp_path / 'again.pth'
    save(src, COCO_2X_CLASSES)
    _convert(['--detector', CFG['s'], src, out])
    _convert(['--detector', CFG['s'], out, again])
    for path in (out, again):
        meta = torch.load(path, weights_only=True)['meta']['dataset_meta']
        assert tuple(meta['classes']) == COCO_2X_CLASSES and len(meta['palette']) == 80
    swapped = tmp_path / 'swapped.pth'
    save(swapped, ('bicycle', 'person') + COCO_2X_CLASSES[2:])
    assert "0: 'bicycle' vs 'person'" in _convert_error(['--detector', CFG['s'], swapped, tmp_path / 'x.pth'])
    assert not (tmp_path / 'x.pth').exists()


def test_dataset_classes_of_every_spelling(tmp_path):
    """The test classes the evaluation check compares with: metainfo names or a file of names, MMPretrain's
    ``classes`` argument, the dataset class's METAINFO; unknown (None, no check) for several datasets."""
    (tmp_path / 'names.txt').write_text('cat\ndog\n')

    def cfg(**dataset):
        return dict(test_dataloader=dict(dataset=dataset))

    assert dataset_classes(cfg(type='CocoDataset', metainfo=dict(classes=['a', 'b']))) == ('a', 'b')
    assert dataset_classes(cfg(type='CustomDataset', metainfo=dict(classes=str(tmp_path / 'names.txt')))) == \
        ('cat', 'dog')
    assert dataset_classes(cfg(type='CustomDataset', data_root=str(tmp_path), metainfo=dict(classes='names.txt'))) \
        == ('cat', 'dog')
    assert dataset_classes(cfg(type='ImageNet', _scope_='mmpretrain', classes=['tench', 'goldfish'])) == \
        ('tench', 'goldfish')
    assert dataset_classes(cfg(type='CocoDataset'))[:2] == ('person', 'bicycle')
    assert dataset_classes(cfg(type='ConcatDataset', datasets=[dict(type='CocoDataset')])) is None


@pytest.mark.parametrize('damage', ['truncated', 'text', 'backbone-only', 'missing'])
def test_unreadable_or_non_detector_files(damage, released_s, tmp_path):
    src = tmp_path / 'bad.pth'
    if damage == 'truncated':
        with open(released_s, 'rb') as f:
            src.write_bytes(f.read()[:5000])
    elif damage == 'text':
        src.write_text('this is a config, not a checkpoint\n')
    elif damage == 'backbone-only':
        torch.save({'model': tiny_tensors(stvit_backbone_layout(**ARCH['s'], imagenet=True))}, src)
    msg = _convert_error(['--detector', CFG['s'], src, tmp_path / 'out.pth'])
    assert str(src) in msg
    unreadable = 'not a readable PyTorch checkpoint (truncated or another kind of file)'
    expected = {'truncated': unreadable, 'text': unreadable,
                'backbone-only': 'not a detector checkpoint: no backbone.* tensors', 'missing': 'not found'}[damage]
    assert expected in msg, msg


# ------------------------------------------------------------------ the check before tools/test.py and train.py
def test_evaluation_refuses_a_checkpoint_that_does_not_fit(released_s, tmp_path):
    """What tools/test.py checks before its Runner (strict; mmengine alone would log the misfits and evaluate random
    tensors): the released S layout fits the S leaf as it is; against the B leaf the reshaped tensors are named, in
    evaluation and in fine-tuning (tools/train.py with load_from) alike; a backbone-only file says how to load it.
    Fine-tuning accepts heads of another number of classes (they keep their initialisation), evaluation does not."""
    cfg_s, cfg_b = Config.fromfile(CFG['s']), Config.fromfile(CFG['b'])
    assert check_checkpoint_for_config(cfg_s, released_s) == dict(missing=[], unexpected=[], mismatched=[])
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r'does not fit the model .*backbone\.patch_embed\.proj\.0\.c\.weight '
                                                  r'\(48, 3, 3, 3\) vs \(64, 3, 3, 3\)'):
            check_checkpoint_for_config(cfg_b, released_s, strict=strict)

    # the weights under 'model' (where mmengine's Runner does not look: it would load nothing and go on)
    wrapped = tmp_path / 'wrapped.pth'
    torch.save({'model': torch.load(released_s, weights_only=True)['state_dict']}, wrapped)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"wrapped\.pth holds its weights under 'model', where MMEngine's "
                                                  r"Runner .*does not look .*\{'state_dict': ckpt\['model'\]\}"):
            check_checkpoint_for_config(cfg_s, str(wrapped), strict=strict)

    backbone = tmp_path / 'backbone.pth'
    torch.save({'model': tiny_tensors(stvit_backbone_layout(**ARCH['s']))}, backbone)
    with pytest.raises(CheckpointError, match=r"holds a backbone only \(stvit layout\).*init_cfg=dict\(type="
                                              r"'Pretrained'"):
        check_checkpoint_for_config(cfg_s, str(backbone))

    layout = released_cascade_layout('s')
    for stage in range(3):  # a detector fine-tuned on 10 classes
        layout[f'roi_head.bbox_head.{stage}.fc_cls.weight'] = (11, 1024)
        layout[f'roi_head.bbox_head.{stage}.fc_cls.bias'] = (11, )
    ten = tmp_path / 'ten_classes.pth'
    save_2x_checkpoint(ten, layout)
    with pytest.raises(CheckpointError, match=r'6 tensors have other shapes .*fc_cls\.weight \(11, 1024\) vs '
                                              r'\(81, 1024\)'):
        check_checkpoint_for_config(cfg_s, str(ten))
    report = check_checkpoint_for_config(cfg_s, str(ten), strict=False)
    assert report['missing'] == [] and report['unexpected'] == []
    assert sorted(m[0] for m in report['mismatched']) == sorted(
        f'roi_head.bbox_head.{i}.fc_cls.{n}' for i in range(3) for n in ('weight', 'bias'))

    # fine-tuning from an ImageNet classifier's checkpoint (backbone.* + head.fc.*; the detection norms 0-2 absent):
    # accepted for training, refused for evaluation
    from stvit_det.utils.ckpt_convert import imagenet_to_classifier

    classifier = tmp_path / 'classifier.pth'
    sd, _ = imagenet_to_classifier({'model': tiny_tensors(stvit_backbone_layout(**ARCH['s'], imagenet=True))})
    torch.save({'state_dict': sd}, classifier)
    report = check_checkpoint_for_config(cfg_s, str(classifier), strict=False)
    assert sorted(report['missing'])[:2] == ['backbone.norm0.bias', 'backbone.norm0.weight']
    assert set(report['unexpected']) == {'head.fc.weight', 'head.fc.bias'}
    with pytest.raises(CheckpointError, match='model tensors are not in the checkpoint'):
        check_checkpoint_for_config(cfg_s, str(classifier))
    # another backbone type (mmdet Swin names: stages.*): refused for training too
    other = tmp_path / 'other_backbone.pth'
    save_2x_checkpoint(other, OrderedDict((k.replace('backbone.layers.', 'backbone.stages.'), v)
                                          for k, v in released_cascade_layout('s').items()))
    with pytest.raises(CheckpointError, match=r'does not fit the model .*backbone\.layers'):
        check_checkpoint_for_config(cfg_s, str(other), strict=False)
    # a deeper arch of the same widths (the released S detector with the T Cascade config: stage 3 has 6 blocks
    # there, not 18; everything else fits): refused for training too, naming the blocks
    cfg_t = Config.fromfile(osp.join(ROOT, 'configs', 'stvit-r',
                                     'cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'))
    with pytest.raises(CheckpointError, match=r'checkpoint tensors have no place in the model: backbone\.layers\.2 '):
        check_checkpoint_for_config(cfg_t, released_s, strict=False)
    # ... and a shallower one (T weights for the S config: stage-3 blocks 6..17 have nothing), where most of the
    # backbone fits and the rest would train from random weights
    shallow = tmp_path / 'shallow.pth'
    save_2x_checkpoint(shallow, OrderedDict((k, v) for k, v in released_cascade_layout('s').items()
                                            if not re.match(r'backbone\.layers\.2\.blocks\.([6-9]|1\d)\.', k)))
    with pytest.raises(CheckpointError, match=r"shallow\.pth holds no tensor of 12 backbone blocks of the config's "
                                              r"model .*e\.g\. backbone\.layers\.2\.blocks\.6, "
                                              r"backbone\.layers\.2\.blocks\.7, backbone\.layers\.2\.blocks\.8:"):
        check_checkpoint_for_config(cfg_s, str(shallow), strict=False)
