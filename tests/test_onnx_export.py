"""ONNX export (stvit_det.deployment, tools/deployment/export_onnx.py): exportable equivalents equal the kernels
they replace; backbones of every attention implementation, both sparsifiers and the pad-mask modes exported and run
by ONNX Runtime equal PyTorch (relative 1e-4, dynamic batch); the whole Mask R-CNN of the demo config on the demo's
held-out image, and narrow 80-class COCO Mask R-CNN / Cascade Mask R-CNN, give predict's detections; bad input gets
one clear error.

Exports use the TorchScript-based exporter (the tool's default); narrow models keep each export to seconds.
"""
import importlib.util
import itertools
import logging
import os
import os.path as osp
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger

from stvit_det import STViTR
from stvit_det.deployment import (CheckpointMismatchError, ExportError, ExportableOps, OnnxInputError,
                                  OnnxLoadError, adaptive_max_pool2d_as_slices, build_detector, build_part, compare,
                                  export_onnx, load_exact, load_session, match_detections, median_latency_ms,
                                  run_session, sdpa_as_matmul)
from stvit_det.deployment.equivalents import (EXPORTABLE_REGION_ATTENTION, adaptive_avg_pool2d_as_slices,
                                              exportable_attention)
from stvit_det.deployment.onnx_export import batch_mismatch, failing_operator, label_flips
from stvit_det.deployment.two_stage import TwoStageExport
from stvit_det.models.layers import swin_block
from stvit_det.models.layers.attention import ATTN_IMPLS

from conftest import randomize_

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r', 'mask-rcnn_stvit-r-demo_fpn_nuclei.py')
SEG_DEMO_CONFIG = osp.join(ROOT, 'configs', 'stvit-r-seg', 'stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py')
TOOL = osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py')
# narrow STViT-R: one dumbbell unit, few blocks elsewhere; a few seconds per export
NARROW = dict(embed_dims=16, depths=(1, 1, 6, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


@pytest.fixture(autouse=True)
def _quiet_mmengine():
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # init_weights logs every parameter
    yield
    logger.setLevel(level)


def _tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ equivalents
@pytest.mark.parametrize('hw,out', [((7, 7), (3, 3)), ((7, 7), (2, 5)), ((9, 6), (4, 4)), ((5, 5), (5, 5))])
def test_adaptive_max_pool_equivalent_equals_kernel(hw, out):
    x = torch.randn(3, 4, *hw)
    x[0, 0] = 0  # ties: the kernel and the equivalent both pick the first maximum
    values, indices = F.adaptive_max_pool2d(x, out, return_indices=True)
    v2, i2 = adaptive_max_pool2d_as_slices(x, out)
    torch.testing.assert_close(v2, values, rtol=0, atol=0)
    torch.testing.assert_close(i2, indices, rtol=0, atol=0)


@pytest.mark.parametrize('hw,out', [((7, 7), 1), ((7, 9), (2, 3)), ((13, 11), (6, 6)), ((6, 6), (3, None))])
def test_adaptive_avg_pool_equivalent_equals_kernel(hw, out):
    x = torch.randn(2, 3, *hw)
    torch.testing.assert_close(adaptive_avg_pool2d_as_slices(x, out), F.adaptive_avg_pool2d(x, out),
                               rtol=1e-6, atol=1e-6)


def test_sdpa_equivalent_equals_kernel():
    q, k, v = torch.randn(2, 3, 4, 9, 8), torch.randn(2, 3, 4, 20, 8), torch.randn(2, 3, 4, 20, 8)  # 5-D windows
    bias = torch.randn(3, 1, 9, 20).masked_fill(torch.rand(3, 1, 9, 20) < 0.3, float('-inf'))
    bias[..., 0] = 0  # no fully masked row
    for mask in (None, bias, bias > -1):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        torch.testing.assert_close(sdpa_as_matmul(q, k, v, attn_mask=mask, scale=0.3), ref, rtol=1e-5, atol=1e-6)


def _cached_entries() -> int:
    """Entries held by the ``functools.lru_cache`` functions of the model code."""
    import functools
    import sys

    caches = [getattr(obj, 'cache', obj) for name, mod in list(sys.modules.items())
              if name.startswith('stvit_det.models') and mod is not None for obj in vars(mod).values()]
    return sum(c.cache_info().currsize for c in caches if isinstance(c, functools._lru_cache_wrapper))


def test_exportable_ops_swap_only_inside_and_keep_caches_clean():
    """Inside the mode the model runs the equivalents (same output); the model's cached masks / indices are
    emptied on entry and exit, so no tensor made while tracing survives into eager calls."""
    model = randomize_(STViTR(**NARROW)).eval()
    x = torch.randn(1, 3, 90, 75)
    with torch.no_grad():
        ref = model(x)
        assert _cached_entries() > 0  # the eager run cached something
        with ExportableOps():
            assert _cached_entries() == 0
            out = model(x)
    assert _cached_entries() == 0
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- backbones
BACKBONE_CASES = [
    # (sparsifier, attn_impl (None: the constructor's default), pad_mask, (H, W), model: 'tiny' (STViT-R-T itself),
    # 'narrow' (NARROW) or 'deep' (NARROW with the S / B stage-3 depth: three dumbbell units))
    ('stvit', None, 'correct', (224, 224), 'tiny'),  # default attention path
    ('tokenlearner', None, 'correct', (224, 224), 'narrow'),
    ('stvit', None, 'correct', (230, 333), 'tiny'),  # STViT-R-T at an odd size: padding, shifted windows (torch.roll)
    ('tokenlearner', None, 'correct', (230, 333), 'tiny'),
    ('tokenlearner', None, 'official', (230, 333), 'narrow'),
    ('stvit', None, 'official', (230, 333), 'deep'),
] + [('stvit', impl, mode, (230, 333), 'narrow')  # every attention implementation, the pad-mask modes in turn
     for impl, mode in zip(ATTN_IMPLS, itertools.cycle(('correct', 'official', 'none')))]


@pytest.mark.parametrize('sparsifier,attn_impl,pad_mask,hw,size', BACKBONE_CASES)
def test_backbone_onnx_equals_pytorch(tmp_path, sparsifier, attn_impl, pad_mask, hw, size):
    """ONNX Runtime output == PyTorch (relative 1e-4) for batch 1 and, through the dynamic batch, batch 2."""
    kwargs = dict(tiny=dict(arch='tiny', drop_path_rate=0.0), narrow=NARROW,
                  deep=dict(NARROW, depths=(1, 1, 18, 1)))[size]
    kwargs = dict(kwargs)
    if attn_impl is not None:
        kwargs['attn_impl'] = attn_impl
    model = randomize_(STViTR(sparsifier=sparsifier, pad_mask=pad_mask, **kwargs), 0.02).eval()
    path = export_onnx(model, (torch.randn(1, 3, *hw), ), str(tmp_path / 'b.onnx'), ['image'],
                       [f'out{i}' for i in range(4)], dynamic_batch=True)
    session = load_session(path)
    for batch in (1, 2):
        x = torch.randn(batch, 3, *hw)
        with torch.no_grad():
            ref = [o.numpy() for o in model(x)]
        out = run_session(session, {'image': x.numpy()})
        assert [o.shape for o in out] == [r.shape for r in ref]
        diff = compare(ref, out)
        assert diff['max_rel'] <= 1e-4, (batch, diff)


def test_backbone_dynamo_export_equals_pytorch(tmp_path):
    """The dynamo exporter (``torch.export``) too: the region bias's border column is the log-sum-exp of masked
    (-inf) entries in rows without a border token, which ONNX's ReduceLogSumExp turned into NaN, folded into the
    graph's constant bias: stage 3 and 4 came out all NaN (and the comparison skipped NaN)."""
    model = randomize_(STViTR(**NARROW), 0.02).eval()
    x = torch.randn(1, 3, 97, 131)
    path = export_onnx(model, (x, ), str(tmp_path / 'b.onnx'), ['image'], [f'out{i}' for i in range(4)],
                       dynamic_batch=False, exporter='dynamo')
    out = run_session(load_session(path), {'image': x.numpy()})
    with torch.no_grad():
        ref = [o.numpy() for o in model(x)]
    assert not any(np.isnan(o).any() for o in out)
    assert compare(ref, out)['max_rel'] <= 1e-4


def test_masked_logsumexp_rows_stay_minus_infinity():
    from stvit_det.models.layers.attention import _logsumexp_rows

    x = torch.tensor([[0.0, 0.0, float('-inf')], [float('-inf')] * 3, [3.0, -2.0, 80.0]])
    out = _logsumexp_rows(x)
    assert out[1] == float('-inf') and not out.isnan().any()
    torch.testing.assert_close(out, torch.logsumexp(x, dim=1))


def test_comparison_does_not_skip_nan():
    ref = [np.array([1.0, 2.0, 3.0])]
    assert compare(ref, [np.array([1.0, np.nan, 3.0])]) == dict(max_abs=float('inf'), max_rel=float('inf'))
    assert compare([np.array([1.0, np.nan])], [np.array([1.0, np.nan])])['max_abs'] == 0.0  # NaN in both: equal
    # an infinity where the other has a number or the other infinity: no agreement (the relative difference was
    # inf / inf, taken as 0); the same infinity in both: equal, the rest compared at the reference's finite scale
    inf = float('inf')
    for actual in ([1e30, 1.0], [-inf, 1.0]):
        assert compare([np.array([inf, 1.0])], [np.array(actual)]) == dict(max_abs=inf, max_rel=inf)
    assert compare([np.array([1.0, 2.0])], [np.array([1.0, inf])]) == dict(max_abs=inf, max_rel=inf)
    assert compare([np.array([inf, 2.0])], [np.array([inf, 2.5])]) == dict(max_abs=0.5, max_rel=0.25)


def test_detection_matching_does_not_skip_nan():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    masks = np.ones((2, 50, 50), dtype=bool)
    reference = [boxes, np.array([0.9, 0.8]), np.array([1, 2]), masks]
    nan_box = boxes.copy()
    nan_box[1, 2] = np.nan
    m = match_detections(reference, [nan_box, reference[1], reference[2], masks], 0.5)
    assert m['n_actual'] == 2 and m['max_box_diff'] == float('inf')
    m = match_detections(reference, [boxes + 0.25, reference[1], reference[2], masks], 0.5)
    assert m['max_box_diff'] == 0.25 and m['same_labels'] and m['min_mask_iou'] == 1.0


def test_batch_check_weighs_scores_not_labels():
    """The batch-2 check compares the float outputs: a label flipped at a near-tie (a segmentor's, a classifier's)
    neither hides a graph that mixes the images of a batch nor fakes one."""
    class ScoresAndLabels(torch.nn.Module):
        def forward(self, x):  # (B, 3, H, W) -> scores (B, 3), labels (B,)
            scores = x.mean(dim=(2, 3))
            return scores, scores.argmax(dim=1)

    class Session:  # stands in for ONNX Runtime: float noise, optionally mixing the batch, optionally a flip
        def __init__(self, mix, flip_at):
            self.mix, self.flip_at = mix, flip_at

        def get_inputs(self):
            return [SimpleNamespace(name='image', shape=('batch', 3, 4, 4), type='tensor(float)')]

        def run(self, _, feeds):
            x = feeds['image'] + 1e-7
            if self.mix and len(x) > 1:
                x = x.mean(axis=0, keepdims=True).repeat(len(x), axis=0)
            scores = x.mean(axis=(2, 3))
            labels = scores.argmax(axis=1)
            if len(x) == self.flip_at:
                labels[0] = (labels[0] + 1) % 3
            return [scores, labels]

    module, image = ScoresAndLabels(), torch.randn(1, 3, 4, 4)
    assert batch_mismatch(module, Session(mix=False, flip_at=2), image, 'image') is None
    assert batch_mismatch(module, Session(mix=True, flip_at=0), image, 'image').startswith('at batch 2')
    assert batch_mismatch(module, Session(mix=True, flip_at=1), image, 'image').startswith('at batch 2')


def test_latency_is_timed_in_turns():
    """The two runtimes are timed call by call in turn (A B A B ...), after a warm-up call of each."""
    calls = []
    medians = median_latency_ms([lambda: calls.append('torch'), lambda: calls.append('ort')], repeats=3)
    assert calls == ['torch', 'ort'] * 4 and len(medians) == 2 and all(m >= 0 for m in medians)


def test_label_flips_are_excused_only_at_near_ties():
    from stvit_det.deployment.onnx_export import label_flips

    scores = np.array([[[0.50, 0.10], [0.49, 0.90], [0.01, 0.00]]])  # (B=1, K=3, 2 positions)
    labels = scores.argmax(1)  # [[0, 1]]: position 0 a near-tie (0.50 vs 0.49), position 1 decided
    assert label_flips(scores, labels, labels, 0.0) == (0, 0)
    assert label_flips(scores, labels, np.array([[1, 1]]), 0.006) == (1, 0)  # margin 0.01 <= 2 * 0.006
    assert label_flips(scores, labels, np.array([[1, 1]]), 0.004) == (1, 1)  # 0.01 > 2 * 0.004
    assert label_flips(scores, labels, np.array([[0, 0]]), 0.006) == (1, 1)  # margin 0.8
    logits = np.array([[[0.01, 3.0]]])  # one channel, threshold 0.5 (logit 0): the first pixel nearly ties
    binary = (logits[:, 0] > 0).astype(np.int64)
    assert label_flips(logits, binary, np.array([[0, 1]]), 0.02, threshold=0.5) == (1, 0)
    assert label_flips(logits, binary, np.array([[1, 0]]), 0.02, threshold=0.5) == (1, 1)


def _softmax_widths(path, x):
    """The last dimension of every Softmax input of an ONNX file, run by ONNX Runtime on ``x``."""
    import onnx
    model = onnx.load(path)
    names = [n.input[0] for n in model.graph.node if n.op_type == 'Softmax']
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    patched = path + '.softmax.onnx'
    onnx.save(model, patched)
    return [o.shape[-1] for o in run_session(load_session(patched), {'image': x.numpy()})[-len(names):]]


def test_auto_exports_each_block_as_it_runs(tmp_path):
    """'auto' keeps choosing per block while exporting: at 448x480 the generation region (14x14) is a small part of
    the 28x35-token map, so its block runs tiled and exports as gathered regions (softmax over the 14*14 region
    keys), while refinement (21x21, most of the map) runs and exports dense (softmax over all 28*35+1 keys); an
    all-'dense' export puts both over all keys. Both graphs equal PyTorch."""
    from stvit_det.models.layers.attention import Region, choose_region_impl
    grid = (28, 35)  # stage-3 map of 448x480, padded to windows
    assert choose_region_impl(Region(grid, 7, 14, 'correct', grid, (0, 0)), 9) == 'tiled'
    assert choose_region_impl(Region(grid, 7, 21, 'correct', grid, (0, 0)), 9) == 'dense'
    x = torch.randn(1, 3, 448, 480)
    widths = {}
    for impl in ('auto', 'dense'):
        model = randomize_(STViTR(attn_impl=impl, **NARROW), 0.02).eval()
        with exportable_attention(model):  # only the exported model's modules get stand-ins, and only meanwhile
            assert model.layers[2].blocks[1].attn.stand_ins == EXPORTABLE_REGION_ATTENTION
            assert STViTR(**NARROW).layers[2].blocks[1].attn.stand_ins == {}
        assert all(m.stand_ins == {} for m in model.modules() if hasattr(m, 'stand_ins'))
        path = export_onnx(model, (x, ), str(tmp_path / f'{impl}.onnx'), ['image'], [f'out{i}' for i in range(4)])
        with torch.no_grad():
            ref = [o.numpy() for o in model(x)]
        assert compare(ref, run_session(load_session(path), {'image': x.numpy()}))['max_rel'] <= 1e-4
        widths[impl] = _softmax_widths(path, x)
    all_keys = 28 * 35 + 1
    assert widths['auto'].count(all_keys) == 1 and widths['dense'].count(all_keys) == 2
    assert widths['auto'].count(14 * 14) == 1 and widths['dense'].count(14 * 14) == 0
    assert all(m.stand_ins == {} for m in model.modules() if hasattr(m, 'stand_ins'))  # restored after export


# ---------------------------------------------------------------------------------------------- detector
@pytest.fixture(scope='module')
def demo_image(tmp_path_factory):
    from stvit_det.datasets import make_demo_dataset

    root = str(tmp_path_factory.mktemp('nuclei_demo'))
    make_demo_dataset(root)
    return osp.join(root, 'val', 'nuclei_val_000.png')


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """A checkpoint of the demo config: seeded random weights, perturbed so that the heads are not at their
    symmetric init (spread scores, boxes off the anchors), with a decisive mask head (random mask logits near 0
    would put most pixels of every mask at the 0.5 threshold, where float rounding flips them)."""
    torch.manual_seed(0)
    detector, _ = build_detector(DEMO_CONFIG)
    detector.init_weights()
    randomize_(detector, 0.02)
    with torch.no_grad():
        detector.roi_head.mask_head.conv_logits.weight.mul_(50)
    path = str(tmp_path_factory.mktemp('ckpt') / 'demo.pth')
    torch.save(dict(state_dict=detector.state_dict()), path)
    return path


def test_detector_onnx_equals_predict_on_demo_image(tmp_path, demo_image, demo_checkpoint):
    """Mask R-CNN of the demo config, whole inference in ONNX Runtime vs mmdet predict (rescale=False: network
    input coordinates) on the held-out demo image: same detections, boxes within 1 px, mask IoU >= 0.98."""
    from stvit_det.deployment import preprocess_image

    detector, cfg = build_detector(DEMO_CONFIG, demo_checkpoint)
    image, sample = preprocess_image(detector, cfg, demo_image)
    assert tuple(image.shape) == (1, 3, 448, 448)  # 256 x 256 quadrant resized by the test pipeline
    with torch.no_grad():
        pred = detector.predict(image, [sample], rescale=False)[0].pred_instances
    reference = [pred.bboxes.numpy(), pred.scores.numpy(), pred.labels.numpy(), pred.masks.numpy()]
    assert len(pred) > 10  # enough detections to compare

    module, inputs, outputs, dynamic = build_part(detector, 'detector', (448, 448), sample.img_shape)
    assert not dynamic
    with torch.no_grad():  # the traced module itself equals predict exactly
        eager = [o.numpy() for o in module(image)]
    for a, b in zip(eager, reference):
        np.testing.assert_array_equal(a, b)

    path = export_onnx(module, (image, ), str(tmp_path / 'det.onnx'), inputs, outputs, dynamic_batch=False)
    session = load_session(path)
    actual = run_session(session, {'image': image.numpy()})
    assert actual[3].dtype == np.bool_ and actual[3].shape[1:] == (448, 448)
    m = match_detections(reference, actual, score_thr=cfg.model.test_cfg.rcnn.score_thr)
    assert m['n_actual'] == m['n_reference'] == len(pred)
    assert m['same_labels']
    assert m['max_box_diff'] <= 1.0
    assert m['min_mask_iou'] >= 0.98
    assert m['max_score_diff'] <= 1e-4

    # the graph is not tied to the image it was traced with (no data-dependent size frozen in): another image
    other = osp.join(osp.dirname(osp.dirname(demo_image)), 'train', 'nuclei_train_003.png')
    image2, sample2 = preprocess_image(detector, cfg, other)
    assert sample2.img_shape == sample.img_shape  # what the graph holds as a constant (box clipping)
    with torch.no_grad():
        pred2 = detector.predict(image2, [sample2], rescale=False)[0].pred_instances
    m = match_detections([pred2.bboxes.numpy(), pred2.scores.numpy(), pred2.labels.numpy(), pred2.masks.numpy()],
                         run_session(session, {'image': image2.numpy()}), score_thr=cfg.model.test_cfg.rcnn.score_thr)
    assert m['n_actual'] == m['n_reference'] == len(pred2) > 10 and m['same_labels']
    assert m['max_box_diff'] <= 1.0 and m['min_mask_iou'] >= 0.98


# 80-class COCO detectors with a narrow STViT-R, few proposals and no score threshold (random weights score every
# class about 1/81): a few seconds each
COCO_NARROW = {
    'model.backbone.embed_dims': 16, 'model.backbone.depths': (1, 1, 6, 1), 'model.backbone.num_heads': (1, 2, 4, 8),
    'model.neck.in_channels': [16, 32, 64, 128], 'model.test_cfg.rpn.nms_pre': 200,
    'model.test_cfg.rpn.max_per_img': 30, 'model.test_cfg.rcnn.score_thr': 0.0, 'model.test_cfg.rcnn.max_per_img': 20}


@pytest.mark.parametrize('config', ['mask-rcnn_stvit-r-t_fpn_1x_coco.py',
                                    'cascade-mask-rcnn_stvit-r-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py'])
def test_coco_detector_onnx_equals_predict(tmp_path, config, monkeypatch):
    """80-class Mask R-CNN and Cascade Mask R-CNN (class-aware boxes, stage-averaged scores and masks) on an image
    padded below and right (img_shape inside the input, as a keep-ratio resize leaves it): the traced module equals
    mmdet's predict (masks over img_shape, boxes clipped to it), and ONNX Runtime gives the same detections (boxes
    within 1 px, mask IoU >= 0.98). PyTorch runs the Swin window attention written out, as the graph does: the
    random heads' near-ties would otherwise follow the processor's kernel choice (a mask IoU of 0.9799 with the
    fused kernel on one machine)."""
    from mmdet.structures import DetDataSample

    monkeypatch.setattr(swin_block, '_cpu_inference_fused', False)
    torch.manual_seed(0)
    detector, _ = build_detector(osp.join(ROOT, 'configs', 'stvit-r', config), cfg_options=COCO_NARROW)
    detector.init_weights()
    randomize_(detector, 0.02)
    mask_heads = detector.roi_head.mask_head  # one FCNMaskHead, or one per cascade stage
    with torch.no_grad():  # decisive masks (see demo_checkpoint)
        for head in (mask_heads if isinstance(mask_heads, torch.nn.ModuleList) else [mask_heads]):
            head.conv_logits.weight.mul_(50)
    hw, img_hw = (128, 160), (117, 151)
    image = F.pad(torch.randn(1, 3, *img_hw), (0, hw[1] - img_hw[1], 0, hw[0] - img_hw[0]))
    sample = DetDataSample(metainfo=dict(img_shape=img_hw, ori_shape=img_hw, pad_shape=hw, batch_input_shape=hw,
                                         scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        pred = detector.predict(image, [sample], rescale=False)[0].pred_instances
    reference = [pred.bboxes.numpy(), pred.scores.numpy(), pred.labels.numpy(), pred.masks.numpy()]
    assert len(pred) == 20 and len(set(pred.labels.tolist())) > 1  # several classes among the detections

    module, inputs, outputs, _ = build_part(detector, 'detector', hw, img_hw)
    with torch.no_grad():
        eager = [o.numpy() for o in module(image)]
    assert eager[3].shape == reference[3].shape == (20, *img_hw)
    for a, b in zip(eager, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    path = export_onnx(module, (image, ), str(tmp_path / 'det.onnx'), inputs, outputs, dynamic_batch=False)
    actual = run_session(load_session(path), {'image': image.numpy()})
    m = match_detections(reference, actual, score_thr=0.0)
    assert m['n_actual'] == m['n_reference'] == 20 and m['same_labels']
    assert m['max_box_diff'] <= 1.0 and m['min_mask_iou'] >= 0.98


def test_paste_masks_equals_mmdet():
    """The separable paste equals mmdet's ``_do_paste_mask`` (grid_sample over every pixel): boxes inside, across
    the image border, smaller than a pixel and larger than the image."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    from stvit_det.deployment.two_stage import paste_masks
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 1, 28, 28, generator=g)
    boxes = torch.tensor([[10.3, 20.7, 60.2, 45.9], [-15.0, 30.0, 40.0, 120.5], [70.1, 70.2, 70.6, 70.9],
                          [-50.0, -40.0, 200.0, 180.0], [0.0, 0.0, 99.0, 77.0]])
    ref = _do_paste_mask(probs, boxes, 77, 99, skip_empty=False)[0]  # (K, H, W)
    torch.testing.assert_close(paste_masks(probs, boxes, (77, 99)), ref, rtol=0, atol=1e-5)


def test_roi_features_pool_each_level_only_its_rois(tmp_path):
    """The RoI extractor of the export equals mmdet's ``SingleRoIExtractor`` (every RoI from the level of its
    scale), in PyTorch and in ONNX Runtime, also when a level has no RoI."""
    import onnxruntime as ort
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    extractor = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0), 8, [4, 8, 16, 32])
    g = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(1, 8, 128 // s, 160 // s, generator=g) for s in (4, 8, 16, 32))
    # sides 20..60 (level 0), 90 / 150 (levels 1, 2); no RoI large enough for level 3
    sides = torch.tensor([20., 90., 35., 150., 60., 90., 25.])
    x0 = torch.rand(7, generator=g) * 10
    rois = torch.stack([torch.zeros(7), x0, x0 / 2, x0 + sides, x0 / 2 + sides * 0.8], dim=1)  # (R, 5)

    class Pool(torch.nn.Module):
        def forward(self, r, *f):
            return TwoStageExport.roi_features(extractor, f, r)

    ref = extractor(feats, rois)
    torch.testing.assert_close(Pool()(rois, *feats), ref)
    path = export_onnx(Pool(), (rois, *feats), str(tmp_path / 'pool.onnx'), ['rois', 'f0', 'f1', 'f2', 'f3'],
                       ['out'])
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for r in (rois, rois[[0, 2, 4]]):  # the second: level 0 only
        feeds = dict(rois=r.numpy(), **{f'f{i}': f.numpy() for i, f in enumerate(feats)})
        np.testing.assert_allclose(session.run(None, feeds)[0], extractor(feats, r).numpy(), rtol=1e-4, atol=1e-5)


def test_random_weights_are_repeatable():
    """Without a checkpoint two builds give the same weights (two exports make the same file), and the caller's
    random state is not touched."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_detector(DEMO_CONFIG)[0].state_dict()
    assert torch.equal(torch.rand(3), expected)
    b = build_detector(DEMO_CONFIG)[0].state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_detector_export_names_unsupported_component():
    """Components the export does not express are refused, named, instead of exported as something else (soft
    NMS or class-agnostic NMS would silently become plain per-class NMS)."""
    with pytest.raises(ExportError, match='is not a two-stage detector'):
        TwoStageExport._check_supported(torch.nn.Conv2d(3, 3, 1))
    detector, _ = build_detector(DEMO_CONFIG)
    TwoStageExport._check_supported(detector)
    for head, change, where in [('roi_head', dict(type='soft_nms'), 'rcnn'),
                                ('roi_head', dict(class_agnostic=True), 'rcnn'),
                                ('rpn_head', dict(type='soft_nms'), 'rpn')]:
        nms = getattr(detector, head).test_cfg.nms
        saved = dict(nms)
        nms.update(change)
        with pytest.raises(ExportError, match=rf"test_cfg\.{where}\.nms=.*only plain NMS, per class"):
            TwoStageExport._check_supported(detector)
        nms.clear()
        nms.update(saved)
    detector.roi_head.shared_head = torch.nn.Identity()  # a ResLayer between the RoI features and the heads
    with pytest.raises(ExportError, match='RoI head with a shared_head'):
        TwoStageExport._check_supported(detector)


# ---------------------------------------------------------------------------------------------- bad input
def test_checkpoint_that_does_not_fit_names_the_tensors(tmp_path, demo_checkpoint):
    state = torch.load(demo_checkpoint, weights_only=True)['state_dict']
    state['backbone.norm0.weight'] = torch.ones(5)
    del state['neck.fpn_convs.0.conv.bias']
    state['head.extra'] = torch.ones(1)
    bad = str(tmp_path / 'bad.pth')
    torch.save(dict(state_dict=state), bad)
    detector, _ = build_detector(DEMO_CONFIG)
    with pytest.raises(CheckpointMismatchError) as info:
        load_exact(detector, bad)
    msg = str(info.value)
    for name in ('backbone.norm0.weight (5,)', 'neck.fpn_convs.0.conv.bias', 'head.extra'):
        assert name in msg
    assert 'without that prefix' not in msg  # one stray key is not a part without its prefix
    # the backbone's own weights given for the detector: said so, not only hundreds of names
    alone = str(tmp_path / 'backbone.pth')
    torch.save(dict(state_dict={k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}),
               alone)
    with pytest.raises(CheckpointMismatchError,
                       match=r"unexpected tensors are the model's 'backbone\.' ones without that prefix: the file "
                             r"holds the backbone alone.*model\.backbone\.init_cfg"):
        load_exact(detector, alone)


@pytest.mark.parametrize('option,value,message', [('--rtol', 'nan', 'a positive number'),
                                                  ('--rtol', '-1e-4', 'a positive number'),
                                                  ('--score-thr', '1.5', r'a number in \[0, 1\]')])
def test_tolerances_out_of_range_are_refused_by_the_parser(capsys, option, value, message):
    """A NaN or negative tolerance (every comparison then fails: exit 2, "does not reproduce PyTorch") or a score
    threshold outside [0, 1] stops at the command line, naming the value."""
    argv = ['cfg.py', '--shape', '64', '64', '--part', 'backbone', '--out', 'b.onnx', f'{option}={value}']
    with pytest.raises(SystemExit):
        _tool().parse_args(argv)
    assert re.search(f"argument {option}: '{value}' is not {message}", capsys.readouterr().err)


def test_tool_reports_bad_input_in_one_line(tmp_path, capsys, demo_checkpoint, demo_image):
    import argparse

    tool = _tool()
    garbage, namespace, broken = tmp_path / 'garbage.pth', tmp_path / 'args.pth', tmp_path / 'broken.py'
    garbage.write_bytes(bytes(range(256)) * 4)
    torch.save(dict(state_dict={}, args=argparse.Namespace(lr=0.1)), namespace)  # common in third-party files
    broken.write_text('model = dict(type=\n')
    out = str(tmp_path / 'x.onnx')
    shape = ['--shape', '224', '224', '--out', out]
    cases = [
        ([DEMO_CONFIG, *shape, '--part', 'head'],
         "unknown part 'head': choose one of backbone, backbone+neck, detector, segmentor, classifier"),
        ([DEMO_CONFIG, *shape, '--part', 'classifier'],
         '--part classifier exports MMPretrain ImageClassifier models; this config builds MaskRCNN'),
        ([osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-t_16xb64_in1k.py'), *shape, '--part', 'detector'],
         '--part detector: ImageClassifier is a classifier; its whole inference exports with --part classifier'),
        ([DEMO_CONFIG, *shape, '--part', 'segmentor'],
         '--part segmentor exports MMSegmentation EncoderDecoder / CascadeEncoderDecoder models; this config '
         'builds MaskRCNN'),
        ([SEG_DEMO_CONFIG, *shape, '--part', 'detector'],
         '--part detector: EncoderDecoder is a segmentor; its whole inference exports with --part segmentor'),
        ([SEG_DEMO_CONFIG, *shape, '--part', 'segmentor', '--cfg-options', 'model.test_cfg.mode=slide'],
         "test_cfg.mode='slide' needs test_cfg.crop_size = (h, w), two positive integers; got None"),
        ([SEG_DEMO_CONFIG, *shape, '--part', 'segmentor', '--cfg-options', 'model.test_cfg.mode=slide',
          'model.test_cfg.crop_size=(64,64)', 'model.test_cfg.stride=(0,43)'],
         "test_cfg.mode='slide' needs test_cfg.stride = (h, w), two positive integers; got (0, 43)"),
        ([SEG_DEMO_CONFIG, *shape, '--part', 'segmentor', '--exporter', 'dynamo', '--cfg-options',
          'model.test_cfg.mode=slide', 'model.test_cfg.crop_size=(64,64)', 'model.test_cfg.stride=(43,43)'],
         "--exporter dynamo cannot trace mmseg's slide inference"),
        ([DEMO_CONFIG, str(tmp_path / 'none.pth'), *shape, '--part', 'backbone'], 'checkpoint file not found'),
        ([DEMO_CONFIG, *shape, '--part', 'detector', '--image', demo_image],
         'preprocesses to (448, 448), not --shape 224 224'),
        ([str(tmp_path / 'none.py'), *shape, '--part', 'backbone'], 'config file not found'),
        ([DEMO_CONFIG, *shape, '--part', 'detector', '--exporter', 'dynamo'],
         '--part detector exports with the TorchScript exporter only'),
        ([DEMO_CONFIG, str(garbage), *shape, '--part', 'backbone'],
         f'{garbage}: not a readable PyTorch checkpoint'),
        ([DEMO_CONFIG, str(namespace), *shape, '--part', 'backbone'],
         f'{namespace}: refused by the weights-only unpickler (it stores objects other than tensors'),
        ([str(broken), *shape, '--part', 'backbone'], f'{broken}: not a readable config: SyntaxError'),
        ([DEMO_CONFIG, *shape, '--part', 'backbone', '--cfg-options', 'model.backbone.type=Nope'],
         'cannot build its model: KeyError'),
        ([DEMO_CONFIG, *shape, '--part', 'detector', '--image', str(garbage)],
         f'{garbage}: the test pipeline cannot read it'),
        ([DEMO_CONFIG, '--shape', '224', '224', '--part', 'backbone', '--out', str(garbage / 'x.onnx')],
         f'cannot write the ONNX file {garbage / "x.onnx"}: {garbage} is a file'),
        # a typo in --out must not replace a file the tool does not read (a checkpoint, a config)
        ([DEMO_CONFIG, '--shape', '224', '224', '--part', 'backbone', '--out', str(namespace)],
         f'--out {namespace}: give a file name ending in .onnx'),
        # 1.2e17 bytes: beyond the address space, refused whatever the kernel's overcommit setting
        ([DEMO_CONFIG, '--shape', '100000000', '100000000', '--part', 'backbone', '--out', out],
         'out of memory at --shape 100000000 100000000 ('),
        ([DEMO_CONFIG, *shape, '--part', 'backbone+neck', '--cfg-options', 'model.backbone.embed_dims=64'],
         'model.neck.in_channels=[48, 96, 192, 384] does not fit the backbone: STViTR (out_indices (0, 1, 2, 3)) '
         'returns 4 maps of [64, 128, 256, 512] channels'),  # was a channel RuntimeError in the trial forward
        ([osp.join(ROOT, 'configs', '_base_', 'models', 'mask-rcnn_stvit-r-t_fpn.py'), *shape, '--part', 'backbone',
          '--image', demo_image],  # a model config without dataloaders
         "--image needs the config's test pipeline (test_dataloader.dataset.pipeline), and this config's cannot be "
         'built here'),
    ]
    for argv, expected in cases:
        rc = tool.main(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith('error: ')]
        assert rc == 1 and len(errors) == 1 and expected in errors[0] and 'Traceback' not in err, err
    assert namespace.stat().st_size > 0 and torch.load(namespace, weights_only=False)['state_dict'] == {}
    assert not osp.exists(out)
    # bad arguments: one line and status 1 too (argparse's status 2 is the tool's "ONNX Runtime differs")
    for argv, expected in [([DEMO_CONFIG, '--shape', '224.5', '224', '--part', 'backbone', '--out', out],
                            "argument --shape: '224.5' is not a positive integer"),
                           ([DEMO_CONFIG, *shape, '--part', 'backbone', '--threads', '-1'],
                            "argument --threads: '-1' is not a positive integer"),
                           ([DEMO_CONFIG, *shape, '--part', 'backbone', '--exporter', 'tf'],
                            "argument --exporter: invalid choice: 'tf'")]:
        with pytest.raises(SystemExit) as info:
            tool.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 1 and err.startswith('error: ') and err.count('\n') == 1 and expected in err, err


def test_tool_exports_backbone_neck_and_reports(tmp_path, capsys):
    """The tool end to end on the demo config's backbone + FPN: exported, run, compared, timed."""
    import re

    rc = _tool().main([DEMO_CONFIG, '--shape', '96', '128', '--part', 'backbone+neck', '--out',
                       str(tmp_path / 'bn.onnx'), '--repeats', '1'])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "('image', ['batch', 3, 96, 128])" in out
    # every FPN level declares its own size (the exporter gave all five one symbolic name)
    import onnx
    declared = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
                for o in onnx.load(str(tmp_path / 'bn.onnx')).graph.output]
    actual = run_session(load_session(str(tmp_path / 'bn.onnx')), {'image': np.zeros((1, 3, 96, 128), np.float32)})
    assert declared == [['batch', *a.shape[1:]] for a in actual], declared
    assert len({tuple(d[2:]) for d in declared}) == 5  # five levels, five sizes
    rel = float(re.search(r'max relative diff ([0-9.e+-]+)', out).group(1))
    assert rel <= 1e-4
    assert re.search(r'PyTorch eager [0-9.]+ ms, ONNX Runtime [0-9.]+ ms', out)
    # a tolerance the runtimes do not meet (their kernels round differently): exit status 2 with one error line
    assert rel > 1e-12
    rc = _tool().main([DEMO_CONFIG, '--shape', '96', '128', '--part', 'backbone+neck', '--out',
                       str(tmp_path / 'bn.onnx'), '--repeats', '1', '--rtol', '1e-12'])
    err = capsys.readouterr().err
    assert rc == 2 and 'error: ONNX Runtime does not reproduce PyTorch within the tolerances' in err, err
    assert 'The weights are random' not in err  # backbone parts compare features: no near-ties to blame


# ------------------------------------------------------------------------------------------ segmentor


@pytest.mark.parametrize('mode', ['whole', 'slide', 'binary'])
def test_segmentor_onnx_equals_predict(tmp_path, mode):
    """UperNet + STViT-R (the segmentation demo config) at an odd size: the exported module equals mmseg's
    ``predict`` (logits and labels), and ONNX Runtime equals the module, at batch 2 through a graph traced at 1;
    slide mode with overlapping windows unrolled into the graph; a one-channel head (binary) thresholds."""
    from mmseg.structures import SegDataSample

    from stvit_det.deployment.segmentor import SegmentorExport

    options = {'slide': {'model.test_cfg': dict(mode='slide', crop_size=(64, 64), stride=(43, 43))},
               'binary': {'model.decode_head.out_channels': 1, 'model.decode_head.threshold': 0.45,
                          'model.decode_head.loss_decode.use_sigmoid': True}}.get(mode, {})
    segmentor, _ = build_detector(SEG_DEMO_CONFIG, cfg_options=options)
    randomize_(segmentor, 0.02)
    shape = (97, 131)
    module, inputs, outputs, dynamic = build_part(segmentor, 'segmentor', shape)
    assert isinstance(module, SegmentorExport) and outputs == ['logits', 'labels'] and dynamic
    assert module.describe(shape) == ('whole inference: the network once on the 97x131 input' if mode != 'slide'
                                      else 'slide inference (test_cfg crop_size (64, 64), stride (43, 43)): its '
                                      '6 windows over the 97x131 input are unrolled into the graph')
    image = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    samples = [SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape)) for _ in range(2)]
    with torch.inference_mode():
        logits, labels = module(image)
        predicted = segmentor.predict(image, samples)
    channels = 1 if mode == 'binary' else 2
    assert logits.shape == (2, channels, *shape) and labels.shape == (2, *shape) and labels.dtype == torch.int64
    for i, p in enumerate(predicted):  # mmseg keeps a one-channel head's sigmoid as its seg_logits
        torch.testing.assert_close(logits[i].sigmoid() if mode == 'binary' else logits[i], p.seg_logits.data,
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(labels[i], p.pred_sem_seg.data[0])
    assert 0 < labels.float().mean() < 1  # both classes present: the labels are not a constant
    path = str(tmp_path / f'{mode}.onnx')
    export_onnx(module, (image[:1], ), path, inputs, outputs, dynamic)
    session = load_session(path)
    actual = run_session(session, {'image': image.numpy()})  # batch 2 through a graph traced at batch 1
    diff = compare([logits.numpy()], actual[:1])
    assert diff['max_rel'] <= 1e-4
    threshold = 0.45 if mode == 'binary' else None
    assert module.threshold == threshold
    assert label_flips(logits.numpy(), labels.numpy(), actual[1], diff['max_abs'], threshold)[1] == 0


def test_tool_exports_segmentor_from_an_image(tmp_path, capsys, demo_image):
    """The tool end to end on the segmentation demo config and the demo's held-out image (256x256 through mmseg's
    test pipeline and data preprocessor): exported, run, logits compared, differing labels counted, timed."""
    rc = _tool().main([SEG_DEMO_CONFIG, '--shape', '256', '256', '--part', 'segmentor', '--image', demo_image,
                       '--out', str(tmp_path / 'seg.onnx'), '--repeats', '1'])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert 'whole inference: the network once on the 256x256 input' in out
    assert "('image', ['batch', 3, 256, 256])" in out
    assert float(re.search(r'max relative diff ([0-9.e+-]+) \(logits\)', out).group(1)) <= 1e-4
    assert int(re.search(r'labels: ([0-9]+) of 65536 pixels differ', out).group(1)) <= 6, out


# ------------------------------------------------------------------------------------------ classifier


@pytest.mark.parametrize('config', ['stvit-r-t_16xb64_in1k.py', 'stvit-r-s-released_16xb64_in1k.py'])
def test_classifier_onnx_equals_predict(tmp_path, config):
    """An MMPretrain ImageClassifier with STViT-R (our ImageNet configs, narrow: the detection form and the released
    classification form of stage 3) at an odd size: the exported module gives predict's scores and labels, and ONNX
    Runtime the module's, at batch 2 through a graph traced at 1."""
    from stvit_det.deployment.classifier import ClassifierExport

    options = {'model.backbone.embed_dims': 16, 'model.backbone.num_heads': (1, 2, 4, 8),
               'model.backbone.depths': (1, 1, 6, 1), 'model.head.in_channels': 128, 'model.head.num_classes': 7}
    classifier, cfg = build_detector(osp.join(ROOT, 'configs', 'stvit-r-cls', config), cfg_options=options)
    assert cfg.model.backbone.get('stage3_form', 'detection') == ('classification' if 'released' in config
                                                                   else 'detection')
    randomize_(classifier, 0.05)
    shape = (215, 330) if 'released' in config else (97, 131)  # the released form takes stage-3 sides 14 or 21
    module, inputs, outputs, dynamic = build_part(classifier, 'classifier', shape)
    assert isinstance(module, ClassifierExport) and outputs == ['scores', 'labels'] and dynamic
    image = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scores, labels = module(image)
        predicted = classifier.predict(image)
    assert scores.shape == (2, 7) and labels.dtype == torch.int64
    for i, p in enumerate(predicted):
        torch.testing.assert_close(scores[i], p.pred_score, rtol=1e-6, atol=1e-7)
        assert int(labels[i]) == int(p.pred_label)
    path = str(tmp_path / 'cls.onnx')
    export_onnx(module, (image[:1], ), path, inputs, outputs, dynamic)
    actual = run_session(load_session(path), {'image': image.numpy()})
    assert compare([scores.numpy()], actual[:1])['max_rel'] <= 1e-4
    assert np.array_equal(actual[1], labels.numpy())
    # heads that predict otherwise (a multi-label head thresholds per image; ConformerHead adds two branches'
    # logits in its own predict): refused, naming the head and the part that exports
    from mmpretrain.models.heads import LinearClsHead, MultiLabelLinearClsHead

    class OwnPredictHead(LinearClsHead):
        def predict(self, feats, data_samples=None):
            return super().predict(feats, data_samples)

    for head in (MultiLabelLinearClsHead(num_classes=7, in_channels=128),
                 OwnPredictHead(num_classes=7, in_channels=128)):
        classifier.head = head
        with pytest.raises(ExportError, match=f'predict as ClsHead does .* has {type(head).__name__}: export '
                                              '--part backbone'):
            ClassifierExport(classifier)


def test_labels_that_differ_beyond_near_ties_fail_the_check(tmp_path, capsys, monkeypatch):
    """A graph whose label step is wrong (scores equal, labels not) ends with exit status 2, naming the count."""
    tool = _tool()
    run = tool.run_session

    def wrong_labels(session, feeds):
        scores, labels = run(session, feeds)
        return [scores, (labels + 1) % scores.shape[1]]

    monkeypatch.setattr(tool, 'run_session', wrong_labels)
    options = ['model.backbone.embed_dims=16', 'model.backbone.num_heads=(1,2,4,8)',
               'model.backbone.depths=(1,1,6,1)', 'model.head.in_channels=128']
    rc = tool.main([osp.join(ROOT, 'configs', 'stvit-r-cls', 'stvit-r-t_16xb64_in1k.py'), '--shape', '64', '64',
                    '--part', 'classifier', '--out', str(tmp_path / 'c.onnx'), '--repeats', '1', '--cfg-options',
                    *options])
    captured = capsys.readouterr()
    assert 'labels: 1 of 1 images differ, 1 of them beyond a near-tie of the scores' in captured.out, captured.out
    assert rc == 2 and 'error: ONNX Runtime does not reproduce PyTorch within the tolerances' in captured.err


def test_detector_that_differs_without_a_checkpoint_says_why(tmp_path, capsys, monkeypatch):
    """Random heads score every box near one value and every mask pixel near 0.5, where float rounding flips
    detections and pixels: a disagreement of a detector exported without a checkpoint names that cause."""
    tool = _tool()
    monkeypatch.setattr(tool, 'report_detections', lambda *args: False)  # whatever the rounding did this time
    rc = tool.main([DEMO_CONFIG, '--shape', '64', '64', '--part', 'detector', '--out', str(tmp_path / 'd.onnx'),
                    '--repeats', '1'])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('error: ') == 1
    assert 'The weights are random (no checkpoint): untrained heads put scores and mask pixels at near-ties' in err


def test_shape_the_graph_cannot_take(tmp_path):
    model = randomize_(STViTR(**NARROW)).eval()
    path = export_onnx(model, (torch.randn(1, 3, 64, 64), ), str(tmp_path / 'b.onnx'), ['image'],
                       [f'out{i}' for i in range(4)], dynamic_batch=True)
    session = load_session(path)
    with pytest.raises(OnnxInputError, match=r"input 'image' has shape \(1, 3, 230, 333\), but the exported graph "
                       r"takes \(\?, 3, 64, 64\)"):
        run_session(session, {'image': np.zeros((1, 3, 230, 333), np.float32)})
    with pytest.raises(OnnxInputError, match=r'takes \(\?, 3, 64, 64\) .*; give 3 channels \(RGB\)$'):
        run_session(session, {'image': np.zeros((1, 1, 64, 64), np.float32)})
    with pytest.raises(OnnxInputError, match=r'; give a 4-D array \(N, C, H, W\)$'):
        run_session(session, {'image': np.zeros((3, 64, 64), np.float32)})
    with pytest.raises(OnnxInputError, match='takes float32, got float64'):
        run_session(session, {'image': np.zeros((1, 3, 64, 64))})
    with pytest.raises(OnnxInputError, match=r"takes inputs \['image'\]"):
        run_session(session, {'x': np.zeros((1, 3, 64, 64), np.float32)})


def test_static_batch_graph_says_so(tmp_path):
    model = randomize_(STViTR(**NARROW)).eval()
    path = export_onnx(model, (torch.randn(1, 3, 64, 64), ), str(tmp_path / 'b.onnx'), ['image'],
                       [f'out{i}' for i in range(4)], dynamic_batch=False)
    with pytest.raises(OnnxInputError, match=r'takes \(1, 3, 64, 64\) .*static batch of 1: run one image at a '
                       r'time \(export_onnx.py exports a dynamic batch unless --static-batch'):
        run_session(load_session(path), {'image': np.zeros((2, 3, 64, 64), np.float32)})


def test_static_batch_export_with_a_shifted_block_on_one_window(tmp_path):
    """224x224 leaves stage 4 one 7x7 window, and its second block a shifted one: Swin's first mask slice is empty
    there, which stopped the static-batch export in PyTorch's ONNX shape inference ('shape_has_zero = true &&
    minus_one_pos == -1'); the mask is now built without it. Also equal to PyTorch."""
    model = randomize_(STViTR(**dict(NARROW, depths=(1, 1, 6, 2)))).eval()
    x = torch.randn(1, 3, 224, 224)
    path = export_onnx(model, (x, ), str(tmp_path / 'b.onnx'), ['image'], [f'out{i}' for i in range(4)],
                       dynamic_batch=False)
    with torch.no_grad():
        ref = [o.numpy() for o in model(x)]
    assert compare(ref, run_session(load_session(path), {'image': x.numpy()}))['max_rel'] <= 1e-4


def test_onnx_file_that_fails_to_load(tmp_path):
    bad = tmp_path / 'broken.onnx'
    bad.write_bytes(b'not a protobuf')
    with pytest.raises(OnnxLoadError, match=f'ONNX Runtime cannot load {bad}'):
        load_session(str(bad))
    with pytest.raises(OnnxLoadError, match='ONNX file not found'):
        load_session(str(tmp_path / 'missing.onnx'))


def test_export_failure_names_the_operator(tmp_path, capfd):
    """One error naming the operator; the TorchScript exporter's graph dump (written to stdout from C++) goes to a
    log file that the error names, not to the terminal."""
    import re

    class Svd(torch.nn.Module):

        def forward(self, x):
            return torch.linalg.svd(x)[1]

    with pytest.raises(ExportError, match=r'operator aten::linalg_svd') as info:
        export_onnx(Svd(), (torch.randn(1, 4, 4), ), str(tmp_path / 's.onnx'), ['x'], ['s'], dynamic_batch=False)
    assert 'svd' in failing_operator(info.value.__cause__).lower()
    assert 'Torch IR graph' not in capfd.readouterr().out
    log = re.search(r"\(the exporter's output: (\S+)\)$", str(info.value)).group(1)
    try:
        with open(log) as f:
            assert 'Torch IR graph at exception' in f.read()
    finally:
        os.remove(log)


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    """An export that fails (or is interrupted) keeps an existing file as it was, makes no half-written one,
    removes the folders it made and keeps no empty exporter log; running out of memory is said, not blamed on an
    operator."""
    import tempfile

    class Svd(torch.nn.Module):

        def forward(self, x):
            return torch.linalg.svd(x)[1]

    logs = tmp_path / 'tmp'  # where the exporter logs go here (not the shared temp folder other runs write to)
    logs.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(logs))
    tmp_path = tmp_path / 'out'
    tmp_path.mkdir()
    old = tmp_path / 'old.onnx'
    old.write_bytes(b'previous export')
    with pytest.raises(ExportError) as info:
        export_onnx(Svd(), (torch.randn(1, 4, 4), ), str(old), ['x'], ['s'], dynamic_batch=False)
    os.remove(re.search(r"\(the exporter's output: (\S+)\)$", str(info.value)).group(1))
    assert old.read_bytes() == b'previous export' and os.listdir(tmp_path) == ['old.onnx']

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def no_memory(*args, **kwargs):
        raise RuntimeError('[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can\'t allocate memory: you '
                           'tried to allocate 120000000000 bytes.')

    model = randomize_(STViTR(**NARROW)).eval()
    new = tmp_path / 'a' / 'b' / 'new.onnx'
    for failure, expected in ((interrupted, KeyboardInterrupt), (no_memory, ExportError)):
        monkeypatch.setattr(torch.onnx, 'export', failure)
        with pytest.raises(expected) as info:
            export_onnx(model, (torch.randn(1, 3, 64, 64), ), str(new), ['image'], [f'out{i}' for i in range(4)])
        assert os.listdir(tmp_path) == ['old.onnx']
    assert str(info.value).startswith('torchscript export ran out of memory for the input (1, 3, 64, 64): '
                                      'RuntimeError: [enforce fail')
    assert os.listdir(logs) == []


def test_running_out_of_memory_is_blamed_on_the_size(tmp_path, capsys, monkeypatch):
    """An input that fits but whose activations do not: the tool says out of memory at --shape, not that the model
    "does not run on" it (which points at the config)."""
    from stvit_det.utils.errors import is_out_of_memory

    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried "
                       'to allocate 8589934592 bytes.')
    assert is_out_of_memory(oom) and is_out_of_memory(MemoryError()) and not is_out_of_memory(
        RuntimeError('mat1 and mat2 shapes cannot be multiplied'))
    detector, _ = build_detector(DEMO_CONFIG)

    def no_memory(*args, **kwargs):
        raise oom

    monkeypatch.setattr(detector.backbone, 'forward', no_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        build_part(detector, 'backbone', (64, 64))
    tool = _tool()
    monkeypatch.setattr(tool, 'build_detector', lambda *args: (detector, None))
    out = tmp_path / 'b.onnx'
    assert tool.main([DEMO_CONFIG, '--shape', '64', '64', '--part', 'backbone', '--out', str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory at --shape 64 64 ([enforce fail") and err.count('\n') == 1, err
    assert not out.exists()


def test_failed_static_batch_export_leaves_out_as_it_was(tmp_path, capsys, monkeypatch):
    """The dynamic-batch graph is checked before it reaches --out: when it mixes images and the export again with a
    static batch fails, an existing --out is left as it was (and none is made where there was none)."""
    tool = _tool()
    calls = []

    def export_once(*args, **kwargs):
        calls.append(args[5])  # dynamic_batch
        if len(calls) % 2 == 0:
            raise ExportError('torchscript export failed at operator aten::xyz: RuntimeError: stand-in')
        return export_onnx(*args, **kwargs)

    monkeypatch.setattr(tool, 'export_onnx', export_once)
    monkeypatch.setattr(tool, 'batch_mismatch', lambda *args: 'at batch 2 ONNX Runtime differs (stand-in)')
    out, kept = tmp_path / 'b.onnx', tmp_path / 'kept.onnx'
    kept.write_bytes(b'an earlier export')
    for path in (out, kept):
        assert tool.main([DEMO_CONFIG, '--shape', '64', '64', '--part', 'backbone', '--out', str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith('error: torchscript export failed at operator aten::xyz'), err
        assert f'{path} was left as it was' in err
    assert calls == [True, False] * 2 and not out.exists() and kept.read_bytes() == b'an earlier export'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['kept.onnx']


def test_onnx_benchmark_tool_interleaves_files_and_reports_ratios(tmp_path, capsys):
    """tools/deployment/benchmark_onnx.py: one row per file with its own input shape (dynamic batch from
    --batch), ratios to the first file; bad files and inputs end in one error line."""
    spec = importlib.util.spec_from_file_location('benchmark_onnx_tool',
                                                  osp.join(osp.dirname(TOOL), 'benchmark_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = randomize_(STViTR(**NARROW)).eval()
    files = []
    for hw in ((64, 64), (64, 96)):
        files.append(export_onnx(model, (torch.randn(1, 3, *hw), ), str(tmp_path / f'b{hw[1]}.onnx'), ['image'],
                                 [f'out{i}' for i in range(4)], dynamic_batch=True))
    assert tool.main([*files, '--batch', '2', '--repeats', '2', '--threads', '1']) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| b')]
    assert [r.split('|')[1:3] for r in rows] == [[' b64.onnx ', ' 2x3x64x64 '], [' b96.onnx ', ' 2x3x64x96 ']]
    assert rows[0].rstrip(' |').endswith('1.00 / 1.00')

    (tmp_path / 'broken.onnx').write_bytes(b'not a protobuf')
    assert tool.main([files[0], str(tmp_path / 'broken.onnx'), '--threads', '1']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ONNX Runtime cannot load') and err.count('\n') == 1
    assert tool.main([str(tmp_path), '--threads', '1']) == 1  # (a thread count above the CPUs would warn first)
    assert capsys.readouterr().err == f'error: ONNX {tmp_path} is a directory, not a file\n'
    static = export_onnx(model, (torch.randn(1, 3, 64, 64), ), str(tmp_path / 'static' / 'b64.onnx'), ['image'],
                         [f'out{i}' for i in range(4)], dynamic_batch=False)
    assert tool.main([files[0], static, '--batch', '2', '--repeats', '1', '--threads', '1']) == 1  # batch 1 vs 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {static}: input 'image' has a static batch of 1") and '--batch 2' in err
    # two files of one name: the table shows the paths; inputs of different shapes: said under the table
    from stvit_det.utils.values import available_cpus
    too_many = available_cpus() + 1
    assert tool.main([files[0], static, files[1], '--repeats', '1', '--threads', str(too_many)]) == 0
    captured = capsys.readouterr()
    assert [r.split('|')[1].strip() for r in captured.out.splitlines() if r.startswith('| ')][1:] == [*files[:1],
                                                                                                   static, files[1]]
    assert 'note: the files take inputs of different shapes' in captured.out
    assert captured.err.startswith(f'warning: {too_many} threads on {too_many - 1} CPUs')
    for option in ('--batch', '--threads', '--repeats'):  # counts: refused by argparse, not by ONNX Runtime
        with pytest.raises(SystemExit):
            tool.main([files[0], option, '0'])
        assert f"argument {option}: '0' is not a positive integer" in capsys.readouterr().err


def test_other_mmdet_backbone_exports(tmp_path):
    """Any mmdet backbone exports (the peer in a deployment comparison): mmdet's SwinTransformer, whose train()
    returns None, at an odd size; ONNX Runtime equals PyTorch. Its traced graph holds batch 1 as a constant
    although the input is declared dynamic (``batch_mismatch`` sees it); STViT-R's takes any batch."""
    from mmdet.models.backbones import SwinTransformer

    from stvit_det.deployment import batch_mismatch

    swin = randomize_(SwinTransformer(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)))
    swin.eval()
    x = torch.randn(1, 3, 70, 101)
    path = export_onnx(swin, (x, ), str(tmp_path / 'swin.onnx'), ['image'], [f'out{i}' for i in range(4)])
    with torch.no_grad():
        ref = [o.numpy() for o in swin(x)]
    session = load_session(path)
    assert compare(ref, run_session(session, {'image': x.numpy()}))['max_rel'] <= 1e-4
    assert 'at batch 2' in batch_mismatch(swin, session, x, 'image')

    ours = randomize_(STViTR(**NARROW)).eval()
    path = export_onnx(ours, (x, ), str(tmp_path / 'ours.onnx'), ['image'], [f'out{i}' for i in range(4)])
    assert batch_mismatch(ours, load_session(path), x, 'image') is None


def test_batch_check_does_not_follow_the_accuracy_tolerance(tmp_path, capsys):
    """Whether a graph holds batch 1 as a constant is structural: a loose --rtol must not let mmdet's Swin keep a
    dynamic batch that mixes images, and a tight one must not take float noise at batch 2 for a fixed batch."""
    swin = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '--cfg-options', 'model.backbone.embed_dims=16',
            'model.backbone.depths=[1,1,2,1]', 'model.backbone.num_heads=[1,2,2,4]']
    ours = ['configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py', '--cfg-options', 'model.backbone.embed_dims=16',
            'model.backbone.depths=[1,1,6,1]', 'model.backbone.num_heads=[1,2,4,8]']
    for cmd, rtol, dynamic in ((swin, '0.5', False), (ours, '1e-9', True)):
        out = str(tmp_path / 'part.onnx')
        _tool().main([*cmd[:1], '--shape', '70', '101', '--part', 'backbone', '--out', out, '--repeats', '1',
                      '--rtol', rtol, *cmd[1:]])
        stdout = capsys.readouterr().out
        assert ("('image', ['batch', 3, 70, 101])" in stdout) == dynamic, stdout
        assert ('exported again with a static batch of 1' in stdout) != dynamic, stdout


def test_tool_falls_back_to_a_static_batch(tmp_path, capsys):
    """The tool checks a dynamic-batch file at batch 2 and exports mmdet's Swin (narrow) again with a static batch,
    saying so; the file then takes batch 1 only and reproduces PyTorch."""
    out = str(tmp_path / 'swin.onnx')
    rc = _tool().main(['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '--shape', '70', '101', '--part',
                       'backbone', '--out', out, '--repeats', '1', '--cfg-options', 'model.backbone.embed_dims=16',
                       'model.backbone.depths=[1,1,2,1]', 'model.backbone.num_heads=[1,2,2,4]'])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert 'dynamic batch: at batch 2 ONNX Runtime differs from PyTorch' in stdout
    assert 'exported again with a static batch of 1' in stdout
    assert "('image', [1, 3, 70, 101])" in stdout
