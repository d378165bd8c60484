"""FLOPs and parameters of detectors built from configs: the backbone alone and the whole detector in predict mode.

    python tools/analysis/get_flops.py CONFIG [CONFIG ...] [--shape 800 1216] [--mode both] [--cfg-options k=v ...]

e.g. STViT-R-T against the stock mmdet Swin-T Mask R-CNN (its pretrained URL is never used: every ``init_cfg`` is
dropped before building)::

    python tools/analysis/get_flops.py configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py \\
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --shape 800 1216

Counting: ``torch.utils.flop_counter.FlopCounterMode`` sees every aten matmul / bmm / linear / convolution, also
``q @ k.transpose()`` written in Python (mmcv's hook-based counter misses those). PyTorch's own table has no entry
for the CPU fused attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``), so this tool adds the
standard SDPA formula for it; otherwise SDPA attention would count as zero on CPU. Figures are MACs (one multiply-
add = 1), which is what mmdet's ``get_flops.py`` and most papers print as "FLOPs"; the table gives GFLOPs = 1e9 MACs.
Not counted: element-wise ops, softmax, norms, RoIAlign, NMS, mask pasting (no matmul inside).

Predict mode runs the detector's real ``predict`` on one batch of noise with random weights; every ``score_thr`` in
``test_cfg`` is set to 0 so the second stages always see ``max_per_img`` boxes (a fixed, worst-case load). The
data preprocessor (normalisation, padding) is not run: the input already has the given shape.
"""
import argparse
import os
import sys
from typing import Dict

import torch
from mmengine.config import DictAction
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import build_detector, fake_batch, load_config, print_table, short_name  # noqa: E402


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


def measure(config: str, args) -> Dict[str, float]:
    cfg = load_config(config, args.cfg_options)
    torch.manual_seed(0)  # the same random weights and input whatever the position of the config in the list
    model = build_detector(cfg, args.device)
    inputs, samples = fake_batch(1, args.shape, args.device)
    out = dict(backbone_params=num_params(model.backbone) / 1e6, detector_params=num_params(model) / 1e6)
    if args.mode in ('backbone', 'both'):
        out['backbone_gflops'] = count_macs(model.backbone, inputs) / 1e9
    if args.mode in ('detector', 'both'):
        out['detector_gflops'] = count_macs(model.predict, inputs, samples) / 1e9
    return out


def parse_args():
    parser = argparse.ArgumentParser(description='FLOPs (MACs) and params: backbone and whole detector (predict)')
    parser.add_argument('configs', nargs='+', help='config files; `mmdet::path` picks a config shipped with mmdet')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'), help='input size')
    parser.add_argument('--mode', choices=['backbone', 'detector', 'both'], default='both')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (counts do not depend on it)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override settings of every config, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    results = [measure(c, args) for c in args.configs]

    h, w = args.shape
    header = ['config', 'backbone params (M)']
    if args.mode in ('backbone', 'both'):
        header += ['backbone GFLOPs', 'vs first']
    header += ['detector params (M)']
    if args.mode in ('detector', 'both'):
        header += ['detector GFLOPs', 'vs first']
    rows = []
    for config, r in zip(args.configs, results):
        row = [short_name(config), f'{r["backbone_params"]:.2f}']
        if 'backbone_gflops' in r:
            row += [f'{r["backbone_gflops"]:.1f}', f'{r["backbone_gflops"] / results[0]["backbone_gflops"]:.3f}']
        row += [f'{r["detector_params"]:.2f}']
        if 'detector_gflops' in r:
            row += [f'{r["detector_gflops"]:.1f}', f'{r["detector_gflops"] / results[0]["detector_gflops"]:.3f}']
        rows.append(row)
    print(f'\nInput 1x3x{h}x{w}; GFLOPs = 1e9 multiply-accumulates (FlopCounterMode, SDPA included); '
          f'detector = predict mode, score_thr 0.')
    print_table(header, rows)


if __name__ == '__main__':
    main()
