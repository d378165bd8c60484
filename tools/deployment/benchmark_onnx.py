"""Time exported ONNX files side by side in ONNX Runtime (CPU), interleaved call by call, with ratios to the first.

    python tools/deployment/benchmark_onnx.py A.onnx B.onnx [...] [--batch 1] [--threads 2] [--warmup 1]
        [--repeats 5]

Files come from ``tools/deployment/export_onnx.py`` (any config, also ``mmdet::`` ones, so that an STViT-R backbone
and mmdet's Swin can be compared in the runtime a deployment uses). Each file gets a seeded random float input of
its own static shape (a dynamic batch dimension takes ``--batch``; a file with a static batch refuses a ``--batch``
other than 1). As in ``tools/analysis/benchmark.py``, the
machines are shared and noisy: the files run in turn (A B A B ...) after the warm-up calls, and the table gives
min / median of the timed calls and speed-up = first file's time / this file's (by min / by median).
Nothing here knows about models; bad input (a missing or unloadable file, a graph without inputs, an input that is
not float or has a dynamic dimension other than the batch, a graph that fails when run) ends with one ``error:``
line naming the file.
"""
import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'analysis'))
from _common import print_table  # noqa: E402
from stvit_det.deployment import OnnxInputError, OnnxLoadError, load_session  # noqa: E402
from stvit_det.deployment.onnx_export import graph_inputs, interleaved_times_ms  # noqa: E402
from stvit_det.utils.errors import first_line  # noqa: E402
from stvit_det.utils.values import non_negative_int, positive_int, warn_oversubscribed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Time ONNX files in ONNX Runtime, interleaved')
    parser.add_argument('files', nargs='+', help='.onnx files (the first is the reference of the ratios)')
    parser.add_argument('--batch', type=positive_int, default=1, help='size of a dynamic batch dimension')
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='intra-op threads (default: torch\'s count)')
    parser.add_argument('--warmup', type=non_negative_int, default=1,
                        help='untimed calls per file first (each file is run once anyway, to check that it runs)')
    parser.add_argument('--repeats', type=positive_int, default=5, help='timed calls per file')
    return parser.parse_args(argv)


class OnnxRunError(RuntimeError):
    """ONNX Runtime loaded a file but cannot run it (e.g. a Reshape to a shape of another size)."""


def random_feeds(session, batch: int, path: str, seed: int = 0) -> dict:
    """A seeded standard-normal float32 input of the graph's shape; the batch dimension may be dynamic."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in graph_inputs(session):
        if dtype != 'tensor(float)':
            raise OnnxInputError(f"{path}: input '{name}' is {dtype}: only float inputs get random data")
        dims = [d if isinstance(d, int) else batch if i == 0 else None for i, d in enumerate(shape)]
        if None in dims:
            raise OnnxInputError(f"{path}: input '{name}' has the shape {shape}: only the batch dimension may be "
                                 'dynamic')
        if shape and isinstance(shape[0], int) and shape[0] != batch and batch != 1:
            raise OnnxInputError(f"{path}: input '{name}' has a static batch of {shape[0]} (shape {shape}), so "
                                 f'--batch {batch} cannot apply: export it without --static-batch, or time it '
                                 'without --batch')
        try:
            feeds[name] = rng.standard_normal(dims, dtype=np.float32)
        except MemoryError:
            raise OnnxInputError(f"{path}: input '{name}' of shape {tuple(dims)} does not fit in memory: give a "
                                 'smaller --batch') from None
    if not feeds:  # a graph of constants: nothing that depends on an input to time
        raise OnnxInputError(f'{path}: the graph has no inputs: there is nothing to give random data to')
    return feeds


def first_run(session, feed: dict, path: str) -> None:
    """One untimed call, so that a graph ONNX Runtime loads but cannot run ends in one line naming the file before
    any timing, instead of ONNX Runtime's traceback (and its own log line of the failing node: fatal only here)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    try:
        session.run(None, feed, options)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail / RuntimeException / InvalidArgument
        raise OnnxRunError(f'ONNX Runtime cannot run {path}: {first_line(exc)}') from None


def main(argv=None) -> int:
    args = parse_args(argv)
    warn_oversubscribed(args.threads or torch.get_num_threads())
    try:
        sessions = [load_session(f, args.threads) for f in args.files]
        feeds = [random_feeds(s, args.batch, f) for s, f in zip(sessions, args.files)]
        for session, feed, path in zip(sessions, feeds, args.files):
            first_run(session, feed, path)
    except (OnnxLoadError, OnnxInputError, OnnxRunError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    calls = [lambda session=session, feed=feed: session.run(None, feed) for session, feed in zip(sessions, feeds)]
    times = interleaved_times_ms(calls, args.repeats, warmup=max(args.warmup - 1, 0))  # first_run was one warm-up

    threads = sessions[0].get_session_options().intra_op_num_threads
    print(f'ONNX Runtime, CPU, {threads} threads; {args.repeats} timed calls per file after {max(args.warmup, 1)} '
          'warm-up, interleaved; speed-up vs the first file, by min / by median (> 1 = faster)')
    ref_min, ref_med = min(times[0]), statistics.median(times[0])
    names = [os.path.basename(f) for f in args.files]
    if len(set(names)) < len(names):  # two folders' model.onnx: the table tells them apart by the paths given
        names = list(args.files)
    rows, shapes = [], []
    for name, feed, t in zip(names, feeds, times):
        shapes.append(', '.join('x'.join(map(str, a.shape)) for a in feed.values()))
        t_min, t_med = min(t), statistics.median(t)
        rows.append([name, shapes[-1], f'{t_min:.1f}', f'{t_med:.1f}',
                     f'{ref_min / t_min:.2f} / {ref_med / t_med:.2f}'])
    print_table(['file', 'input', 'min (ms)', 'median (ms)', 'speed-up'], rows)
    if len(set(shapes)) > 1:
        print('note: the files take inputs of different shapes: a speed-up then compares different amounts of work')
    return 0


if __name__ == '__main__':
    sys.exit(main())
