"""Inference speed and memory of detectors built from configs: the backbone alone and the whole detector (predict),
for several configs in one run, with ratios against the first one.

    python tools/analysis/benchmark.py CONFIG [CONFIG ...] [--shape 800 1216] [--batch-size 1] [--dtype fp32]
        [--warmup 5] [--repeats 20] [--device cuda] [--compile] [--mode both] [--threads N] [--cfg-options k=v ...]

``--batch-size`` and ``--dtype`` take several values (e.g. ``--batch-size 1 8 --dtype fp32 bf16``): every
combination is measured in the same run and printed in one table.

e.g. STViT-R-T against the stock mmdet Swin-T Mask R-CNN (its pretrained URL is never used: every ``init_cfg`` is
dropped before building; weights are random)::

    python tools/analysis/benchmark.py configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py \\
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py --device cuda --batch-size 8 --mode backbone --dtype bf16

What is measured, per config and mode, on one fixed batch of noise of the given shape:

- latency: median over ``--repeats`` calls (after ``--warmup`` calls) of one forward of the whole batch, under
  ``torch.no_grad`` and, for bf16 / fp16, ``torch.autocast``. CUDA: CUDA events around each call; CPU:
  ``time.perf_counter``. Throughput = batch size / median latency.
- detector = ``model.predict`` (backbone, neck, heads, NMS, mask pasting); the data preprocessor is not run. Every
  ``score_thr`` in ``test_cfg`` is set to 0 so that random heads keep ``max_per_img`` boxes (a fixed load).
- peak memory, CUDA: ``torch.cuda.max_memory_allocated`` over the timed calls (weights + activations; the caching
  allocator's reserve is not included). Backbone mode puts only the backbone on the device. CPU: an estimate, the peak of the bytes held by live tensor storages
  (weights, input and every tensor an aten op returns, freed when its last Python / C++ reference dies), tracked
  by a ``TorchDispatchMode`` during one extra eager call; allocator overhead and scratch buffers inside a single
  op are not seen, so it is a lower bound comparable across configs, not the process RSS.
- ``--compile``: ``torch.compile`` of the backbone (and the neck in detector mode); the heads stay eager because
  their shapes depend on the data (NMS). Warm-up calls include compilation.

A config / mode that cannot run (e.g. ``--mode detector --dtype bf16`` on the CPU: mmcv's CPU NMS kernel is fp32
only) gets its error in the table instead of figures, the other rows are still measured, and the exit status is 1.
"""
import argparse
import os
import statistics
import sys
import time
import weakref
from contextlib import nullcontext
from typing import Callable, Dict, List

import torch
from mmengine.config import DictAction
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import build_detector, fake_batch, load_config, print_table, short_name  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once while the mode is active (CPU memory estimate).

    Storages already alive when the mode starts (weights, inputs) are the baseline. Every tensor an op returns is
    tracked by its storage; a storage counts until the last tracked tensor object using it is garbage.
    """

    def __init__(self, baseline: List[torch.Tensor]) -> None:
        super().__init__()
        self._known = {self._key(t) for t in baseline}  # storages owned outside the measured call
        self.baseline = sum(self._nbytes(t) for t in {self._key(t): t for t in baseline}.values())
        self._live: Dict[int, List[int]] = {}  # storage key -> [nbytes, tracked tensor objects]
        self.current = 0
        self.peak = 0

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    @staticmethod
    def _nbytes(t: torch.Tensor) -> int:
        return t.untyped_storage().nbytes()

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type != 'cpu' or t.is_sparse or self._nbytes(t) == 0:
            return
        key = self._key(t)
        if key in self._known:
            return
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [self._nbytes(t), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _autocast(device: str, dtype):
    return torch.autocast(device_type=device, dtype=dtype) if dtype is not None else nullcontext()


def time_calls(fn: Callable, device: str, warmup: int, repeats: int) -> List[float]:
    """Seconds per call of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    if device == 'cuda':
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def cpu_peak_bytes(fn: Callable, net: torch.nn.Module, inputs: torch.Tensor) -> int:
    baseline = [*net.parameters(), *net.buffers(), inputs]
    with LiveTensorBytes(baseline) as tracker:
        fn()
    return tracker.baseline + tracker.peak


def bench_one(config: str, mode: str, batch_size: int, dtype_name: str, args) -> Dict[str, float]:
    cfg = load_config(config, args.cfg_options)
    torch.manual_seed(0)  # the same random weights and input whatever the position of the config in the list
    model = build_detector(cfg, 'cpu')
    net = model.backbone if mode == 'backbone' else model  # backbone mode: only the backbone goes to the device
    net.to(args.device)
    inputs, samples = fake_batch(batch_size, args.shape, args.device)
    dtype = DTYPES[dtype_name]

    def call():
        with torch.no_grad(), _autocast(args.device, dtype):
            if mode == 'backbone':
                return net(inputs)
            return net.predict(inputs, samples)

    peak = None
    if args.device == 'cpu':
        peak = cpu_peak_bytes(call, net, inputs)  # eager, untimed
    if args.compile:
        if mode == 'backbone':
            net = torch.compile(net)
        else:
            net.backbone = torch.compile(net.backbone)
            if getattr(net, 'neck', None) is not None:
                net.neck = torch.compile(net.neck)
    if args.device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = time_calls(call, args.device, args.warmup, args.repeats)
    if args.device == 'cuda':
        peak = torch.cuda.max_memory_allocated()
    latency = statistics.median(times)
    del model, net
    if args.device == 'cuda':
        torch.cuda.empty_cache()
    return dict(latency=latency, throughput=batch_size / latency, peak=peak)


def parse_args():
    parser = argparse.ArgumentParser(description='Throughput, latency and peak memory: backbone and detector')
    parser.add_argument('configs', nargs='+', help='config files; `mmdet::path` picks a config shipped with mmdet')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'), help='input size')
    parser.add_argument('--batch-size', type=int, nargs='+', default=[1], help='one or more batch sizes')
    parser.add_argument('--dtype', choices=list(DTYPES), nargs='+', default=['fp32'],
                        help='fp32, or autocast to bf16 / fp16; several values are measured in turn')
    parser.add_argument('--warmup', type=int, default=5, help='untimed calls first (compilation happens here)')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls; the median is reported')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile the backbone (and neck)')
    parser.add_argument('--mode', choices=['backbone', 'detector', 'both'], default='both')
    parser.add_argument('--threads', type=int, help='CPU threads (torch.set_num_threads); default: torch default')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override settings of every config, key=value')
    args = parser.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device available')
    if args.repeats < 1 or args.warmup < 0 or min(args.batch_size) < 1 or (args.threads is not None and args.threads < 1):
        parser.error('--repeats, --batch-size and --threads must be >= 1, --warmup >= 0')
    return args


def _run_or_report(config: str, mode: str, batch_size: int, dtype_name: str, args) -> Dict:
    """``bench_one``, or ``{'error': one line}`` when the model cannot run this way (e.g. mmcv's CPU NMS has no
    fp16 / bf16 kernel, so ``--mode detector`` needs fp32 on the CPU): the other rows are still measured."""
    try:
        return bench_one(config, mode, batch_size, dtype_name, args)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else ''
        print(f'{short_name(config)} ({mode}): {type(e).__name__}: {message}', file=sys.stderr)
        return dict(error=f'{type(e).__name__}: {message[:80]}')


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ['backbone', 'detector'] if args.mode == 'both' else [args.mode]
    settings = [(m, b, d) for m in modes for b in args.batch_size for d in args.dtype]
    results = {(c, *st): _run_or_report(c, *st, args) for st in settings for c in args.configs}

    h, w = args.shape
    rows = []
    for m, b, d in settings:
        first = results[(args.configs[0], m, b, d)]
        for c in args.configs:
            r = results[(c, m, b, d)]
            if 'error' in r:
                rows.append([short_name(c), m, str(b), d, '-', '-', '-', '-', '-', r['error']])
                continue
            ratios = ['-', '-'] if 'error' in first else [
                f'{first["latency"] / r["latency"]:.2f}', f'{r["peak"] / first["peak"]:.2f}']
            rows.append([
                short_name(c), m, str(b), d, f'{r["latency"] * 1e3:.1f}', f'{r["throughput"]:.2f}',
                f'{r["peak"] / 2**20:.0f}', *ratios, ''
            ])
    where = (torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads')
    memory = ('torch.cuda.max_memory_allocated' if args.device == 'cuda' else
              'CPU estimate: peak live tensor storage bytes, eager')
    print(f'\n{where}; torch {torch.__version__}; input Bx3x{h}x{w}'
          f'{", torch.compile" if args.compile else ""}; median of {args.repeats} after {args.warmup} warm-up; '
          f'memory: {memory}; ratios vs the first config at the same mode / batch / dtype (speed-up > 1 = faster)')
    header = ['config', 'mode', 'batch', 'dtype', 'latency (ms)', 'img/s', 'peak mem (MiB)', 'speed-up', 'mem ratio', 'error']
    failed = any('error' in r for r in results.values())
    print_table(header if failed else header[:-1], rows if failed else [r[:-1] for r in rows])
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
