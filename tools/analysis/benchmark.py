"""Speed and memory of models built from configs (mmdet detectors, mmseg segmentors, mmpretrain classifiers): the
backbone alone and the whole model, inference or a training step, several configs / shapes / batch sizes / dtypes
in one run, with ratios against the first config.

    python tools/analysis/benchmark.py CONFIG [CONFIG ...] [--shape H W [--shape H W ...]] [--batch-size 1 ...]
        [--dtype fp32 ...] [--mode backbone|detector|both] [--train] [--warmup 2] [--repeats 5] [--device cpu]
        [--compile] [--threads N] [--profile] [--cfg-options k=v ...]

A config may carry its own overrides after ``@`` (``CONFIG@model.backbone.attn_impl=flex``): variants of one
config side by side, e.g. on a GPU Swin-T, STViT-R-T's default attention and its FlexAttention path::

    T=configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py
    python tools/analysis/benchmark.py mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py $T \
        $T@model.backbone.attn_impl=flex --device cuda --batch-size 8 --dtype bf16 --mode backbone [--compile]

e.g. STViT-R-S against mmdet's Swin-S Mask R-CNN on the CPU, inference at two sizes, then a training step::

    python tools/analysis/benchmark.py mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py \\
        configs/stvit-r/mask-rcnn_stvit-r-s_fpn_1x_coco.py --mode backbone --shape 800 1216 --shape 1344 2016
    python tools/analysis/benchmark.py ... --mode backbone --train --shape 800 1216 --profile

Every ``init_cfg`` is dropped before building (mmdet's Swin configs point at a URL: never used); weights are random.

How it measures (these machines are shared and noisy, so only ratios within one run mean much):

- every config is built once per setting (mode, shape, batch size, dtype); after ``--warmup`` untimed calls of
  each, the ``--repeats`` timed calls are INTERLEAVED across configs (A B A B ...), so a slow minute of the machine
  hits every config alike. The table gives the minimum and the median of each config's repeats, and the speed-up
  against the first config both ways (min / median; > 1 = faster).
- inference: one call under ``torch.no_grad`` (and ``torch.autocast`` for bf16 / fp16). Backbone: ``backbone(x)``;
  detector: ``model.predict`` (backbone, neck, heads, NMS, mask pasting; no data preprocessor) with every
  ``score_thr`` set to 0, so random heads keep ``max_per_img`` boxes (a fixed, full load); segmentor: ``predict``
  with the config's ``test_cfg`` (whole or slide); classifier: ``predict``.
- ``--train``: one training step without the optimizer: forward, loss and backward, gradients dropped. Backbone:
  the loss is the mean of every output map; detector / segmentor / classifier: the model's own ``loss`` on fake
  annotations (detector: 5 boxes with masks per image; segmentor: a random label map; classifier: a random label).
  The model is in train mode (BatchNorm statistics, drop path on).
- peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over one call; CPU: an estimate, the peak of the bytes held
  by live tensor storages (weights, input, every tensor an aten op returns, and in training the activations kept for
  the backward and the gradients), tracked by a ``TorchDispatchMode`` during one extra eager call. Allocator overhead
  and scratch buffers inside one op are not seen: a lower bound comparable across configs, not the process RSS.
  PyTorch's FlexAttention (``attn_impl='flex'``) cannot run under that mode: no CPU memory figure for it ('-').
- ``--profile``: the time of every stage and every block kind of each backbone (forward hooks, which synchronise
  the device around every module: so they run in extra calls after the timed ones, as many and interleaved alike,
  never inside a timed call; in training only the forward part counts, not the recomputation of ``with_cp`` in
  the backward), and the share of the attention inside each block kind. STViTR blocks are named by their stage
  pattern (window, shifted, generate, refine, local, global, recover, ...), other backbones' blocks by their class.
  Not with ``--compile`` (hooks do not run inside a compiled graph).
- Interleaving: each round times every config once, in alternating order (A B, then B A, ...), so that no config
  always runs right after the same one.
- ``--compile``: ``torch.compile`` of the backbone (and the neck in detector mode); heads stay eager (NMS is data
  dependent). Warm-up calls include compilation.

A config / setting that cannot run (e.g. ``--mode detector --dtype bf16`` on the CPU: mmcv's CPU NMS kernel is fp32
only) gets its error in the table, the other rows are still measured, and the exit status is 1.
"""
import argparse
import os
import statistics
import sys
import time
import weakref
from contextlib import nullcontext
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import build_model, fake_batch, load_config, print_table, short_name, uses_flex_attention  # noqa: E402
from stvit_det.toolboxes.scope import CfgOptionsAction  # noqa: E402
from stvit_det.utils.errors import error_summary, is_out_of_memory  # noqa: E402
from stvit_det.utils.values import non_negative_int, positive_int, warn_oversubscribed  # noqa: E402

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


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def fake_annotations(samples: List, scope: str, shape: Tuple[int, int], num_classes: int) -> List:
    """Give the predict samples of :func:`fake_batch` random training targets of their toolbox (in place)."""
    h, w = shape
    g = torch.Generator().manual_seed(1)
    for s in samples:
        if scope == 'mmdet':
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData

            xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 8
            boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1)
            masks = torch.zeros(5, h, w, dtype=torch.uint8)
            for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
                m[y0:y1 + 1, x0:x1 + 1] = 1
            s.gt_instances = InstanceData(bboxes=boxes, labels=torch.randint(0, num_classes, (5, ), generator=g),
                                          masks=BitmapMasks(masks.numpy(), h, w))
        elif scope == 'mmseg':
            from mmengine.structures import PixelData

            s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g))
        elif scope == 'mmpretrain':
            s.set_gt_label(torch.randint(0, num_classes, (1, ), generator=g))
    return samples


def _num_classes(node, default: int = 2) -> int:
    """The first ``num_classes`` found in a (nested) model config."""
    if isinstance(node, dict):
        if 'num_classes' in node:
            return int(node['num_classes'])
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        for item in node:
            found = _num_classes(item, -1)
            if found >= 0:
                return found
    return default


class Bench:
    """One config at one setting: the model, its input and the call to time."""

    def __init__(self, config: str, mode: str, shape: Tuple[int, int], batch_size: int, dtype_name: str, args):
        cfg = load_config(config, args.cfg_options)
        scope = cfg.get('default_scope', 'mmdet')
        torch.manual_seed(0)  # the same random weights and input whatever the position of the config in the list
        model = build_model(cfg, 'cpu', whole=mode != 'backbone')
        self.net = model.backbone if mode == 'backbone' else model  # backbone mode: only the backbone on the device
        self.net.to(args.device)
        self.inputs, samples = fake_batch(batch_size, shape, args.device, scope=scope)
        if args.train and mode != 'backbone':
            samples = fake_annotations(samples, scope, shape, _num_classes(cfg.model))
            samples = [s.to(args.device) for s in samples]
        self.samples = samples
        self.mode, self.train, self.device, self.dtype = mode, args.train, args.device, DTYPES[dtype_name]
        self.net.train(self.train)
        if args.compile:
            if mode == 'backbone':
                self.net = torch.compile(self.net)
            else:
                model.backbone = torch.compile(model.backbone)
                if getattr(model, 'neck', None) is not None:
                    model.neck = torch.compile(model.neck)
        self.backbone = model.backbone
        self.times: List[float] = []
        self.profile: Optional[Profile] = None

    def call(self, profile: Optional['Profile'] = None) -> None:
        """One inference call or training step; with ``profile``, its hooks record the forward part."""
        if profile is not None:
            profile.active = True
        try:
            self._call(profile)
        finally:
            if profile is not None:
                profile.active = False

    def _call(self, profile: Optional['Profile']) -> None:
        if not self.train:
            with torch.no_grad(), _autocast(self.device, self.dtype):
                if self.mode == 'backbone':
                    self.net(self.inputs)
                else:
                    self.net.predict(self.inputs, self.samples)
            return
        with _autocast(self.device, self.dtype):
            if self.mode == 'backbone':
                loss = sum(o.float().mean() for o in self.net(self.inputs))
            else:
                losses = self.net.loss(self.inputs, self.samples)
                loss = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k)
        if profile is not None:
            profile.active = False  # the backward recomputes checkpointed blocks (with_cp): not forward time
        loss.backward()
        for p in self.net.parameters():
            p.grad = None

    def timed(self) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self.call()
        _sync(self.device)
        self.times.append(time.perf_counter() - t0)

    def peak_bytes(self) -> int:
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.call()
            return torch.cuda.max_memory_allocated()
        baseline = [*self.net.parameters(), *self.net.buffers(), self.inputs]
        with LiveTensorBytes(baseline) as tracker:
            self.call()
        return tracker.baseline + tracker.peak


class Profile:
    """Forward time per backbone stage and block kind (and of the ``attn`` inside each kind), from hooks.

    A stage's row includes its patch merging either way: mmdet's Swin merges inside the stage's forward, STViT-R
    after it (``STViTStage.downsample_forward``), whose time is then added to the stage's row."""

    def __init__(self, backbone: torch.nn.Module, device: str) -> None:
        self.device = device
        self.active = False  # hooks record only while a profiled call's forward runs
        self.total: Dict[str, float] = {}  # insertion order = stem, stage 1, its block kinds, ...
        self.runs: Dict[str, int] = {}  # forward runs recorded per key
        self.running: Dict[str, int] = {}  # forwards of each key under way (to tell inside from after a stage)
        self.calls = 0
        self.handles = []
        for module, key, stage in self._parts(backbone):
            self.total.setdefault(key, 0.0)
            self.runs.setdefault(key, 0)
            self._hook(module, key, stage)

    @staticmethod
    def _parts(backbone):
        """(module, key, the stage key its time also belongs to when it runs outside that stage's forward)."""
        stem = getattr(backbone, 'patch_embed', None)
        if stem is not None:
            yield stem, 'stem', None
        stages = getattr(backbone, 'layers', None) or getattr(backbone, 'stages', None) or []
        for i, stage in enumerate(stages):
            yield stage, f'stage {i + 1}', None
            blocks = getattr(stage, 'blocks', [])
            kinds = getattr(stage, 'pattern', None) or [type(b).__name__ for b in blocks]
            for kind, blk in zip(kinds, blocks):
                yield blk, f'stage {i + 1} / {kind}', None
                attn = getattr(blk, 'attn', None)
                if attn is not None:
                    yield attn, f'stage {i + 1} / {kind} / attention', None
            down = getattr(stage, 'downsample', None)
            if down is not None:
                yield down, f'stage {i + 1} / patch merging', f'stage {i + 1}'

    def _hook(self, module: torch.nn.Module, key: str, stage: Optional[str] = None) -> None:
        start = []

        def pre(mod, inp):
            if self.active:
                _sync(self.device)
                start.append(time.perf_counter())
                self.running[key] = self.running.get(key, 0) + 1

        def post(mod, inp, out):
            if self.active and start:
                _sync(self.device)
                seconds = time.perf_counter() - start.pop()
                self.total[key] += seconds
                self.runs[key] += 1
                self.running[key] -= 1
                if stage is not None and not self.running.get(stage):  # merged after the stage's forward
                    self.total[stage] += seconds

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def rows(self, prefix: List[str]) -> List[List[str]]:
        """[*prefix, part, ms per call, attention ms per call] per stage / block kind."""
        n = max(1, self.calls)
        out = []
        for key, seconds in self.total.items():
            if key.endswith(' / attention'):
                continue
            attn = self.total.get(f'{key} / attention')
            out.append([*prefix, key, f'{seconds / n * 1e3:.1f}', '-' if attn is None else f'{attn / n * 1e3:.1f}'])
        return out


def run_setting(configs: List[str], mode: str, shape, batch_size: int, dtype_name: str, args) -> Dict[int, Dict]:
    """Measure every config at one setting, timed calls interleaved; returns per config a dict with ``times``,
    ``peak`` (bytes) and optional ``profile`` rows, or ``error``; keyed by position in ``configs`` (a config given
    twice, to see the noise floor, is measured twice)."""
    benches: Dict[int, Bench] = {}
    results: Dict[int, Dict] = {}
    for i, c in enumerate(configs):
        try:
            benches[i] = Bench(c, mode, shape, batch_size, dtype_name, args)
            benches[i].call()  # first call outside the warm-up count: fail early, before any timing
        except Exception as e:  # noqa: BLE001 - whatever a model build or call raises: its row says it, the others run
            benches.pop(i, None)
            results[i] = dict(error=_one_line(e, c, mode, shape, batch_size, dtype_name, args.device))
    for _ in range(args.warmup):
        for b in benches.values():
            b.call()
    for i, b in benches.items():
        results[i] = dict(peak=None)
        if not args.memory:
            continue
        if args.device == 'cpu' and uses_flex_attention(b.net):  # under the tracker it fails, and breaks its kernel
            print(f"{short_name(configs[i])} ({mode}): no CPU memory figure: attn_impl='flex' cannot run under the "
                  'memory tracker', file=sys.stderr)
            continue
        results[i]['peak'] = b.peak_bytes()
    order = list(benches.values())
    for r in range(args.repeats):
        for b in (order if r % 2 == 0 else order[::-1]):  # A B, B A, A B, ...
            b.timed()
    if args.profile:  # extra calls with hooks, after the timed ones
        for b in order:
            b.profile = Profile(b.backbone, args.device)
        for r in range(args.repeats):
            for b in (order if r % 2 == 0 else order[::-1]):
                b.call(b.profile)
                b.profile.calls += 1
    for i, b in benches.items():
        results[i]['times'] = b.times
        if b.profile is not None:
            setting = [short_name(configs[i]), mode, f'{shape[0]}x{shape[1]}', str(batch_size), dtype_name]
            results[i]['profile'] = b.profile.rows(setting)
            b.profile.remove()
    del benches
    if args.device == 'cuda':
        torch.cuda.empty_cache()
    return results


def _one_line(e: Exception, config: str, mode: str, shape=None, batch_size: int = 1, dtype_name: str = 'fp32',
              device: str = 'cpu') -> str:
    """``Type: message`` of a failure for stderr, shortened for its table cell; a bare ``assert`` of a library
    (no message) says where it was raised; the known causes are said instead of a kernel's words."""
    summary = error_summary(e)
    if 'Expected more than 1 value per channel when training' in summary:  # BatchNorm of a head (UperNet's)
        summary = f'{type(e).__name__}: BatchNorm in training needs more than one value per channel: --batch-size 2'
    elif is_out_of_memory(e) and shape is not None:
        summary = (f'{type(e).__name__}: out of memory at {batch_size}x3x{shape[0]}x{shape[1]}: a smaller --shape '
                   f'or --batch-size ({summary})')
    elif (device == 'cpu' and dtype_name != 'fp32' and mode == 'detector'
          and ('BFloat16' in summary or 'Half' in summary)):  # mmcv's NMS / RoIAlign on the CPU
        summary = (f"{type(e).__name__}: a CPU op of the heads (mmcv's NMS, RoIAlign) takes fp32 only: "
                   f'--mode backbone or --dtype fp32 ({summary})')
    print(f'{short_name(config)} ({mode}): {summary}', file=sys.stderr)
    return summary[:len(type(e).__name__) + 2 + 80]  # the type and up to 80 characters of the message


def parse_args():
    parser = argparse.ArgumentParser(description='Speed and peak memory, inference or training: backbone and model')
    parser.add_argument('configs', nargs='+', help='config files; `mmdet::path` picks a config shipped with mmdet; '
                        '`CONFIG@key=value[@key=value]` overrides settings of that config only')
    parser.add_argument('--shape', type=positive_int, nargs=2, action='append', metavar=('H', 'W'),
                        help='input size; repeat the option for several sizes (default 800 1216)')
    parser.add_argument('--batch-size', type=positive_int, nargs='+', default=[1], help='one or more batch sizes')
    parser.add_argument('--dtype', choices=list(DTYPES), nargs='+', default=['fp32'],
                        help='fp32, or autocast to bf16 / fp16; several values are measured in turn')
    parser.add_argument('--mode', choices=['backbone', 'detector', 'both'], default='both',
                        help="'detector' = the whole model (detector, segmentor or classifier)")
    parser.add_argument('--train', action='store_true', help='time a training step (forward + loss + backward)')
    parser.add_argument('--warmup', type=non_negative_int, default=2, help='untimed calls of each config first')
    parser.add_argument('--repeats', type=positive_int, default=5, help='timed calls of each config, interleaved')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile the backbone (and neck)')
    parser.add_argument('--threads', type=positive_int,
                        help='CPU threads (torch.set_num_threads); default: torch default')
    parser.add_argument('--profile', action='store_true', help='time per stage and block kind of every backbone')
    parser.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory call')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction, help='override settings of every config, key=value')
    args = parser.parse_args()
    args.shape = [tuple(s) for s in (args.shape or [(800, 1216)])]
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device available')
    if args.profile and args.compile:
        parser.error('--profile times eager modules with hooks, which do not run inside a compiled graph: drop '
                     '--compile for the breakdown')
    return args


def main():
    args = parse_args()
    for config in args.configs:  # a missing or unreadable config ends the run before any other is measured
        load_config(config, args.cfg_options)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cpu':
        warn_oversubscribed(torch.get_num_threads())
    modes = ['backbone', 'detector'] if args.mode == 'both' else [args.mode]
    settings = [(m, s, b, d) for m in modes for s in args.shape for b in args.batch_size for d in args.dtype]
    results = {st: run_setting(args.configs, *st, args) for st in settings}

    rows, failed, profiles = [], False, []
    for st in settings:
        mode, (h, w), b, d = st
        first = results[st][0]
        for i, c in enumerate(args.configs):
            r = results[st][i]
            cells = [short_name(c), mode, f'{h}x{w}', str(b), d]
            if 'error' in r:
                failed = True
                rows.append(cells + ['-'] * 6 + [r['error']])
                continue
            tmin, tmed = min(r['times']), statistics.median(r['times'])
            speed = mem = '-'
            if 'error' not in first:
                fmin, fmed = min(first['times']), statistics.median(first['times'])
                speed = f'{fmin / tmin:.2f} / {fmed / tmed:.2f}'
                if r['peak'] and first['peak']:
                    mem = f'{r["peak"] / first["peak"]:.2f}'
            peak = '-' if r['peak'] is None else f'{r["peak"] / 2**20:.0f}'
            rows.append(cells + [f'{tmin * 1e3:.1f}', f'{tmed * 1e3:.1f}', f'{b / tmed:.2f}', peak, speed, mem, ''])
            profiles += r.get('profile', [])
    where = (torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads')
    memory = ('torch.cuda.max_memory_allocated' if args.device == 'cuda' else
              'CPU estimate: peak live tensor storage bytes, eager')
    what = 'training step (forward + loss + backward)' if args.train else 'inference'
    print(f'\n{where}; torch {torch.__version__}; {what}{", torch.compile" if args.compile else ""}; '
          f'{args.repeats} timed calls per config after {args.warmup} warm-up, interleaved across configs; '
          f'memory: {memory}; speed-up vs the first config at the same setting, by min / by median (> 1 = faster)')
    header = ['config', 'mode', 'input', 'batch', 'dtype', 'min (ms)', 'median (ms)', 'img/s', 'peak mem (MiB)',
              'speed-up', 'mem ratio', 'error']
    print_table(header if failed else header[:-1], rows if failed else [r[:-1] for r in rows])
    if profiles:
        print(f'\nPer stage / block kind, forward only, ms per call (mean over {args.repeats} profiled calls after the '
              'timed ones, hooks synchronising around every module); "attention": the time inside the blocks\' attn '
              'modules')
        print_table(['config', 'mode', 'input', 'batch', 'dtype', 'part', 'ms', 'attention (ms)'], profiles)
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
