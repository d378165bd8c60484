"""FLOPs and parameters of models built from configs (mmdet detectors, mmseg segmentors: the config's
``default_scope`` decides): the backbone alone and the whole model in predict mode.

    python tools/analysis/get_flops.py CONFIG [CONFIG ...] [--shape 800 1216] [--mode both] [--cfg-options k=v ...]

e.g. STViT-R-T against the stock mmdet Swin-T Mask R-CNN (its pretrained URL is never used: every ``init_cfg`` is
dropped before building)::

    python tools/analysis/get_flops.py configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py \\
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --shape 800 1216

or UperNet STViT-R-T against mmseg's UperNet Swin-T, whole-image inference at the given shape::

    python tools/analysis/get_flops.py configs/stvit-r-seg/stvit-r-t-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py \\
        mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py --shape 512 512

Counting: ``torch.utils.flop_counter.FlopCounterMode`` sees every aten matmul / bmm / linear / convolution, also
``q @ k.transpose()`` written in Python (mmcv's hook-based counter misses those). PyTorch's own table has no entry
for the CPU fused attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``), so this tool adds the
standard SDPA formula for it; otherwise SDPA attention would count as zero on CPU. Figures are MACs (one multiply-
add = 1), which is what mmdet's ``get_flops.py`` and most papers print as "FLOPs"; the table gives GFLOPs = 1e9 MACs.
Not counted: element-wise ops, softmax, norms, RoIAlign, NMS, mask pasting (no matmul inside).

Predict mode runs the model's real ``predict`` on one batch of noise with random weights. Detectors: every
``score_thr`` in ``test_cfg`` is set to 0 so the second stages always see ``max_per_img`` boxes (a fixed, worst-case
load). Segmentors: the config's ``test_cfg`` mode (``whole``; ``slide`` counts every window). The data
preprocessor (normalisation, padding) is not run: the input already has the given shape. MMPretrain classifiers:
backbone, neck and head (``predict``).

``--device meta`` counts without arithmetic (seconds, no memory; what ``configs/*/metafile.yml`` and its test
use): the model is built and run on empty meta tensors. A two-stage detector's predict cannot run there (NMS and
RoIAlign need values), so it is counted at the same fixed load, module by module: backbone and neck, the RPN head
on every level, each bbox head on ``test_cfg.rpn.max_per_img`` RoIs and each mask head on
``test_cfg.rcnn.max_per_img`` RoIs (RoIAlign, NMS and pasting have no matmul). This equals the predict count on
real tensors whenever the RPN keeps ``max_per_img`` proposals, as it does at detection sizes (checked at 800x1216:
Mask R-CNN / Cascade STViT-R-T 239.9 / 718.2, Cascade STViT-R-B 857.0 GFLOPs both ways). Other models run their
tensor-mode forward on meta tensors.
"""
import argparse
import os
import sys
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import build_model, fake_batch, load_config, print_table, short_name, uses_flex_attention  # noqa: E402
from stvit_det.toolboxes.scope import CfgOptionsAction  # noqa: E402
from stvit_det.utils.errors import first_line, is_out_of_memory  # noqa: E402


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_macs(fn, *args, **kwargs) -> int:
    """Multiply-accumulates of ``fn(*args, **kwargs)`` (FlopCounterMode counts 2 FLOPs per MAC)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _first(module):
    """The first stage of a RoI head part (a ModuleList in cascades), or the module itself."""
    return module[0] if isinstance(module, torch.nn.ModuleList) else module


def _stages(module):
    return list(module) if isinstance(module, torch.nn.ModuleList) else [module]


def meta_predict(model: torch.nn.Module, inputs: torch.Tensor) -> None:
    """Everything ``predict`` multiplies, on meta tensors (see the module docstring): a two-stage detector module by
    module at its fixed test load, a segmentor in slide mode crop by crop (mmseg's window grid), any other model
    through its tensor-mode forward."""
    roi_head = getattr(model, 'roi_head', None)
    test_cfg = getattr(model, 'test_cfg', None) or {}
    if roi_head is None and test_cfg.get('mode') == 'slide':  # mmseg's slide_inference: every crop of its grid
        (h_stride, w_stride), (h_crop, w_crop) = test_cfg['stride'], test_cfg['crop_size']
        h_img, w_img = inputs.shape[-2:]
        for i in range(max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1):
            for j in range(max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1):
                y2, x2 = min(i * h_stride + h_crop, h_img), min(j * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                model(inputs[:, :, y1:y2, x1:x2], mode='tensor')
        return
    if roi_head is None or not hasattr(model, 'rpn_head'):
        model(inputs, mode='tensor')
        return
    feats = model.extract_feat(inputs)  # backbone + neck
    model.rpn_head(feats)
    proposals, detections = model.test_cfg.rpn.max_per_img, model.test_cfg.rcnn.max_per_img
    extractor = _first(roi_head.bbox_roi_extractor)
    for head in _stages(roi_head.bbox_head):
        head(inputs.new_empty(proposals, extractor.out_channels, *head.roi_feat_size))
    if getattr(roi_head, 'with_mask', False):
        extractor = _first(roi_head.mask_roi_extractor)
        for head in _stages(roi_head.mask_head):
            head(inputs.new_empty(detections, extractor.out_channels, *head.roi_feat_size))


def _failure(e: BaseException, shape) -> str:
    """What a forward that failed says: out of memory at the size, else the error's first line."""
    if is_out_of_memory(e):
        return f'out of memory at a 1x3x{shape[0]}x{shape[1]} input ({first_line(e)}): give a smaller --shape'
    return f'the model fails on a 1x3x{shape[0]}x{shape[1]} input: {first_line(e)}'


def measure(config: str, args) -> Dict[str, float]:
    cfg = load_config(config, args.cfg_options)
    torch.manual_seed(0)  # the same random weights and input whatever the position of the config in the list
    try:
        model = build_model(cfg, args.device, whole=args.mode != 'backbone')
    except (RuntimeError, NotImplementedError) as e:
        if args.device != 'meta' or is_out_of_memory(e):
            raise SystemExit(f'error: {config}: the model cannot be built: {first_line(e)}') from None
        raise SystemExit(f'error: {config}: this model cannot be built on the meta device (its construction reads '
                         f'tensor values: {first_line(e)}); count it with --device cpu') from None
    except Exception as e:  # noqa: BLE001 - a value the model refuses, an unknown type, a None where a dict goes
        raise SystemExit(f'error: {config}: the model cannot be built: {first_line(e)}') from None
    if uses_flex_attention(model):
        raise SystemExit(f"error: {config}: attn_impl='flex' cannot be counted (FlopCounterMode cannot run PyTorch's "
                         "FlexAttention); count attn_impl='reference' for the region arithmetic or 'dense' for every "
                         "(query, key) pair (flex computes the 128x128 blocks of the latter that hold region keys)")
    out = dict(backbone_params=num_params(model.backbone) / 1e6, detector_params=num_params(model) / 1e6)
    try:
        inputs, samples = fake_batch(1, args.shape, args.device, scope=cfg.get('default_scope'))
        if args.mode in ('backbone', 'both'):
            out['backbone_gflops'] = count_macs(model.backbone, inputs) / 1e9
        if args.mode in ('detector', 'both'):
            if args.device == 'meta':
                out['detector_gflops'] = count_macs(meta_predict, model, inputs) / 1e9
            else:
                out['detector_gflops'] = count_macs(model.predict, inputs, samples) / 1e9
    except Exception as e:  # noqa: BLE001 - a size the model refuses, a shape clash, mmdet's asserts, no memory
        raise SystemExit(f'error: {config}: {_failure(e, args.shape)}') from None
    return out


def gflops_text(value: float) -> str:
    """One decimal, as mmdet's tool prints them; three significant digits below 10 (a narrow model or a small input
    printed as 0.0)."""
    return f'{value:.1f}' if value >= 10 else f'{value:.3g}'


def parse_args():
    parser = argparse.ArgumentParser(description='FLOPs (MACs) and params: backbone and whole model (predict)')
    parser.add_argument(
        'configs', nargs='+', help='config files; `mmdet::path` / `mmseg::path`: a config shipped with the toolbox')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'), help='input size')
    parser.add_argument('--mode', choices=['backbone', 'detector', 'both'], default='both',
                        help="'detector': the whole model (detector or segmentor) in predict mode")
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'meta'],
                        help='counts do not depend on it; meta: no arithmetic, seconds, RoI heads at their fixed test '
                        'load')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction, help='override settings of every config, key=value')
    args = parser.parse_args()
    if min(args.shape) < 1:
        parser.error(f'--shape H W must be positive, got {args.shape[0]} {args.shape[1]}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device available')
    return args


def main():
    args = parse_args()
    configs, results, failed = [], [], []
    for c in args.configs:  # a config that fails is named and left out; the others are still counted
        try:
            results.append(measure(c, args))
            configs.append(c)
        except SystemExit as e:
            print(e.code, file=sys.stderr)
            failed.append(c)
    if not results:
        return 1

    h, w = args.shape
    header = ['config', 'backbone params (M)']
    if args.mode in ('backbone', 'both'):
        header += ['backbone GFLOPs', 'vs first']
    header += ['model params (M)']
    if args.mode in ('detector', 'both'):
        header += ['model GFLOPs', 'vs first']
    rows = []
    for config, r in zip(configs, results):
        row = [short_name(config), f'{r["backbone_params"]:.2f}']
        if 'backbone_gflops' in r:
            row += [gflops_text(r['backbone_gflops']),
                    f'{r["backbone_gflops"] / results[0]["backbone_gflops"]:.3f}']
        row += [f'{r["detector_params"]:.2f}']
        if 'detector_gflops' in r:
            row += [gflops_text(r['detector_gflops']),
                    f'{r["detector_gflops"] / results[0]["detector_gflops"]:.3f}']
        rows.append(row)
    print(f'\nInput 1x3x{h}x{w}; GFLOPs = 1e9 multiply-accumulates (FlopCounterMode, SDPA included); '
          f'model = predict mode (detectors: score_thr 0; segmentors: their test_cfg mode).')
    print_table(header, rows)
    if failed:
        print(f"error: not counted (see above): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
