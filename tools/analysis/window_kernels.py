"""Which kernel should a Swin block's window attention use on this device: the written-out matmul-softmax-matmul
(mmdet's ``WindowMSA``) or PyTorch's fused ``scaled_dot_product_attention`` with the (window, head) bias?

    python tools/analysis/window_kernels.py [--arch tiny] [--shape 800 1216 [--shape H W ...]] [--threads 2]
        [--repeats 12] [--device cpu]

For every stage of the arch at each input size, one ``WindowAttention`` (random weights) runs a W-MSA and an SW-MSA
call on that stage's windows with each kernel, the timed repeats INTERLEAVED (A B B A ...), as
``tools/analysis/benchmark.py`` does; the table gives min / median per kernel and fused / written-out (> 1: the
written-out kernel is faster). The figures depend on the processor, which is why
``stvit_det.models.layers.swin_block.use_fused_window_attention`` measures the two kernels once per process (in a
Swin block, as the backbone runs them) before CPU inference picks one; the tool swaps that rule to time both.
"""
import argparse
import math
import os.path as osp
import statistics
import sys
import time

import torch

import stvit_det.models.layers.swin_block as swin_block
from stvit_det.models.backbones.stvit_r import ARCH_SETTINGS
from stvit_det.models.layers.window_ops import shift_window_mask
from stvit_det.utils.errors import first_line, is_out_of_memory
from stvit_det.utils.values import positive_int, warn_oversubscribed

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import print_table  # noqa: E402


def stage_windows(shape, arch: str, window: int = 7):
    """(stage, C, heads, padded H, padded W) of every stage (numbered from 1, as in ``benchmark.py --profile``) for
    an input of ``shape`` (stride 4, then x2)."""
    setting = ARCH_SETTINGS[arch]
    for i, heads in enumerate(setting['num_heads']):
        h, w = (math.ceil(s / 4 / 2**i) for s in shape)
        yield i + 1, setting['embed_dims'] * 2**i, heads, math.ceil(h / window) * window, math.ceil(w / window) * window


def time_kernels(dim, heads, hp, wp, device, repeats, window=7):
    """{'written': [s, ...], 'fused': [...]} of W-MSA + SW-MSA calls, interleaved, two untimed calls first."""
    attn = swin_block.WindowAttention(dim, window, heads).to(device).eval()
    x = torch.randn(1, (hp // window) * (wp // window), window**2, dim, device=device)
    mask = shift_window_mask(hp, wp, window, window // 2, x.device)
    rules = {'written': lambda d: False, 'fused': lambda d: True}
    times = {name: [] for name in rules}
    original = swin_block.use_fused_window_attention
    try:
        for rep in range(repeats + 2):
            for name in (('written', 'fused') if rep % 2 == 0 else ('fused', 'written')):
                swin_block.use_fused_window_attention = rules[name]
                with torch.inference_mode():
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    attn(x, mask)
                    attn(x, None)
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    if rep >= 2:
                        times[name].append(time.perf_counter() - start)
    finally:
        swin_block.use_fused_window_attention = original
    return times


def main():
    parser = argparse.ArgumentParser(description='written-out vs fused window attention, per stage')
    parser.add_argument('--arch', default='tiny', choices=sorted(ARCH_SETTINGS))
    parser.add_argument('--shape', type=positive_int, nargs=2, action='append', metavar=('H', 'W'))
    parser.add_argument('--threads', type=positive_int, default=None)
    parser.add_argument('--repeats', type=positive_int, default=12)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    args = parser.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device available')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cpu':
        warn_oversubscribed(torch.get_num_threads())
    torch.manual_seed(0)
    rows = []
    for shape in args.shape or [(800, 1216)]:
        for stage, dim, heads, hp, wp in stage_windows(shape, args.arch):
            try:
                t = time_kernels(dim, heads, hp, wp, torch.device(args.device), args.repeats)
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise SystemExit(f'error: out of memory at --shape {shape[0]} {shape[1]} (stage {stage}: '
                                 f'{first_line(e)}): give a smaller --shape') from None
            w, f = t['written'], t['fused']
            rows.append([f'{shape[0]}x{shape[1]}', str(stage), str(dim), str(heads), str((hp // 7) * (wp // 7)),
                         f'{min(w) * 1e3:.1f} / {statistics.median(w) * 1e3:.1f}',
                         f'{min(f) * 1e3:.1f} / {statistics.median(f) * 1e3:.1f}',
                         f'{min(f) / min(w):.2f} / {statistics.median(f) / statistics.median(w):.2f}'])
    where = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{where}; torch {torch.__version__}; fp32, batch 1; W-MSA + SW-MSA per call; {args.repeats} timed calls '
          'per kernel, interleaved; min / median (ms)')
    print_table(['input', 'stage', 'C', 'heads', 'windows', 'written-out', 'fused SDPA', 'fused / written'], rows)


if __name__ == '__main__':
    main()
