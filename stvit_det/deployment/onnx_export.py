"""Export a PyTorch module to ONNX, run the file with ONNX Runtime, and compare it with PyTorch.

Model-agnostic: what is exported (backbone, backbone + neck, a whole detector) is decided by
``stvit_det.deployment.parts``. Two exporters of ``torch.onnx.export`` are offered:

* ``'dynamo'`` (``dynamo=True``): ``torch.export`` traces the module to an FX graph which is translated
  op by op through onnxscript; dynamic dimensions are declared with ``torch.export.Dim``. Custom ops get their
  ONNX translation through ``custom_translation_table`` (``deployment/ops.py``).
* ``'torchscript'`` (default, ``dynamo=False``): the legacy tracer plus per-op symbolic functions; the only one
  that exports the whole detector (its RoI stages run on as many boxes as NMS keeps, a data-dependent size).

Errors are reported once, naming the problem: :class:`ExportError` names the operator that could not be exported
and why; :func:`load_session` names a file that ONNX Runtime cannot load; :func:`check_feeds` names an input whose
shape the graph cannot take.

References: PyTorch ``torch.onnx`` documentation (``torch.onnx.export``, ``dynamic_shapes``,
``custom_translation_table``); ONNX Runtime Python API (``InferenceSession``, ``SessionOptions``).
"""
import contextlib
import ctypes
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..utils.errors import is_out_of_memory
from ..utils.paths import (atomic_output, missing_file_error, missing_folders, remove_new_folders,
                           unwritable_reason)
from .equivalents import ExportableOps, exportable_attention

EXPORTERS = ('dynamo', 'torchscript')
#: ONNX opset: 18 is the dynamo exporter's floor in recent PyTorch; RoiAlign half_pixel needs >= 16
OPSET = 18


class ExportError(RuntimeError):
    """A module could not be exported; the message names the operator (when known) and the exporter's reason."""


class OnnxInputError(ValueError):
    """An input does not fit what the exported graph takes (name, shape or dtype)."""


class OnnxLoadError(RuntimeError):
    """ONNX Runtime could not load a file."""


_OP_PATTERNS = (
    r"operator '?(aten::\w+)'?",  # TorchScript: Exporting the operator 'aten::xyz' to ONNX opset ...
    r'export of operator (\w+)',  # TorchScript: Unsupported: ONNX export of operator xyz, ...
    r'(aten\.\w+(?:\.\w+)?)',  # dynamo: aten.xyz.default
    r'(torchvision::\w+|mmcv::\w+|mmdeploy::\w+|stvit_deploy::\w+)',
    r"(torch\.ops\.\w+\.\w+)",
)


def failing_operator(exc: BaseException) -> Optional[str]:
    """Best-effort name of the operator an exporter complained about, read from its error message chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for pattern in _OP_PATTERNS:
            m = re.search(pattern, str(exc))
            if m:
                return m.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException, width: int = 400) -> str:
    text = ' '.join(str(exc).split())
    return f'{type(exc).__name__}: {text[:width]}'


@contextlib.contextmanager
def _native_stdout_to(path: str):
    """Send what is written to the process's stdout (file descriptor 1, so also from C++) to ``path`` meanwhile.

    torch 2.13's TorchScript exporter always enables its ONNX log (``setup_onnx_logging`` tests the function
    ``_jit_is_onnx_log_enabled`` instead of calling it) and, on a failure, writes the whole traced graph to
    stdout from C++ ("Torch IR graph at exception"): thousands of lines for a detector.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, 'wb') as f:
            os.dup2(f.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers (std::cout is synchronised with them)
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(module: torch.nn.Module,
                args: Tuple[torch.Tensor, ...],
                path: str,
                input_names: Sequence[str],
                output_names: Sequence[str],
                dynamic_batch: bool = True,
                exporter: str = 'torchscript',
                opset: int = OPSET,
                custom_translation_table: Optional[Dict[Callable, Callable]] = None,
                optimize: bool = True,
                output_shapes: Optional[Sequence[Sequence[int]]] = None) -> str:
    """Export ``module(*args)`` to ``path`` with static shapes, optionally a dynamic batch dimension.

    Args:
        module: module in eval mode whose forward takes ``args`` and returns a tensor or a tuple of tensors.
        args: example inputs; their shapes are baked in (except dim 0 with ``dynamic_batch``).
        path: output ``.onnx`` file (weights stored inside), written whole or not at all: a failed or interrupted
            export leaves an existing file as it was, and removes the folders it made for a new one.
        input_names, output_names: graph input / output names, one per tensor.
        dynamic_batch: declare dim 0 of every input (and output) dynamic.
        exporter: ``'dynamo'`` or ``'torchscript'``.
        opset: ONNX opset version.
        custom_translation_table: dynamo only: ``{torch op: onnxscript function}`` for custom ops.
        optimize: dynamo only: run onnxscript's graph optimiser on the result (slow on 2 cores; ONNX Runtime
            optimises the graph again when it loads it).
        output_shapes: the outputs' shapes at the example inputs, declared in the graph (dim 0 as ``'batch'``
            with ``dynamic_batch``): the TorchScript exporter leaves them symbolic, and may give outputs of
            different sizes one shared name (all FPN levels ``['batch', 256, 'Convp0_dim_2', 'Convp0_dim_3']``),
            which claims they have one size. None (detector outputs, whose sizes depend on the data): as exported.

    Returns:
        ``path``.

    Raises:
        ExportError: naming the operator that failed and why (or that the input did not fit in memory); what the
            exporter wrote to stdout meanwhile (the TorchScript exporter's graph dump) is kept in a log file that
            the message names.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got '{exporter}'")
    if len(input_names) != len(args):
        raise ValueError(f'{len(args)} inputs but {len(input_names)} input names')
    reason = unwritable_reason(path)  # fail here, not as an export error after minutes of tracing
    if reason:
        raise ValueError(f'cannot write the ONNX file {path}: {reason}')
    module.eval()  # not `module = module.eval()`: mmdet's backbones override train() and return None
    # the folders atomic_output will make (it follows links, as a plain write would): removed if the export fails
    new_dirs = missing_folders(os.path.dirname(os.path.realpath(path)))
    fd, log = tempfile.mkstemp(prefix='onnx_export_', suffix='.log')
    os.close(fd)
    keep_log = False
    try:
        # written beside `path` and moved there once complete: a failed or interrupted export leaves an existing
        # file as it was, and no half-written one
        with atomic_output(path) as tmp:
            try:
                with _native_stdout_to(log), torch.no_grad(), exportable_attention(module):
                    _export(module, args, tmp, input_names, output_names, dynamic_batch, exporter, opset,
                            custom_translation_table, optimize)
            except Exception as exc:  # the exporters raise many types; re-raise one, naming the operator
                keep_log = os.path.getsize(log) > 0
                dump = f' (the exporter\'s output: {log})' if keep_log else ''
                if is_out_of_memory(exc):
                    shapes = ', '.join(str(tuple(a.shape)) for a in args)
                    raise ExportError(f'{exporter} export ran out of memory for the input {shapes}: '
                                      f'{_first_line(exc, 200)}{dump}') from exc
                op = failing_operator(exc)
                where = f'operator {op}' if op else 'an operator it could not name'
                raise ExportError(f'{exporter} export failed at {where}: {_first_line(exc)}{dump}') from exc
            if output_shapes is not None:
                declare_output_shapes(tmp, output_shapes, dynamic_batch)
    except BaseException:  # also Ctrl-C: no folders made for a file that is not there
        remove_new_folders(new_dirs)
        raise
    finally:
        if not keep_log:
            os.remove(log)
    return path


def _export(module, args, path, input_names, output_names, dynamic_batch, exporter, opset, custom_translation_table,
            optimize) -> None:
    """The exporter call of :func:`export_onnx` (arguments as there)."""
    if exporter == 'dynamo':
        dynamic_shapes = None
        if dynamic_batch:
            batch = torch.export.Dim('batch', min=1, max=64)
            dynamic_shapes = tuple({0: batch} for _ in args)
            # torch.export specialises a size-1 dimension to the constant 1: trace with batch 2
            args = tuple(a.expand(2, *a.shape[1:]).contiguous() if a.shape[0] == 1 else a for a in args)
        with ExportableOps():
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=list(input_names), output_names=list(output_names),
            opset_version=opset, custom_translation_table=custom_translation_table, optimize=optimize,
            verbose=False)
        onnx_program.save(path, external_data=False)
    else:
        dynamic_axes = None
        if dynamic_batch:
            dynamic_axes = {n: {0: 'batch'} for n in list(input_names) + list(output_names)}
        with ExportableOps():
            torch.onnx.export(
                module, args, path, dynamo=False, input_names=list(input_names), output_names=list(output_names),
                opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, verbose=False)


def declare_output_shapes(path: str, shapes: Sequence[Sequence[int]], dynamic_batch: bool) -> None:
    """Rewrite the declared shapes of the graph outputs of ``path``: static sizes, and dim 0 named as the first
    input's batch dimension when the batch is dynamic (``'batch'``; the dynamo exporter names it ``s77`` or alike)."""
    import onnx

    model = onnx.load(path)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param or 'batch'
    if len(model.graph.output) != len(shapes):
        raise ValueError(f'{len(shapes)} output shapes for {len(model.graph.output)} graph outputs')
    for out, shape in zip(model.graph.output, shapes):
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate(shape):
            dim = dims.add()
            if i == 0 and dynamic_batch:
                dim.dim_param = batch
            else:
                dim.dim_value = int(size)
    onnx.save(model, path)


def load_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session for ``path``.

    Args:
        path: ``.onnx`` file.
        threads: intra-op threads (default: ``torch.get_num_threads()``, so both runtimes use the same number).

    Raises:
        OnnxLoadError: if the file is missing or ONNX Runtime refuses it (with ONNX Runtime's reason).
    """
    import onnxruntime as ort

    missing = missing_file_error('ONNX', path)  # a folder given for a file is not a missing file
    if missing:
        raise OnnxLoadError(missing)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=['CPUExecutionProvider'])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
        raise OnnxLoadError(f'ONNX Runtime cannot load {path}: {_first_line(exc)}') from exc


def graph_inputs(session) -> List[Tuple[str, Tuple, str]]:
    """(name, shape, element type) of every graph input; a dynamic dimension is its symbolic name (a str)."""
    return [(i.name, tuple(i.shape), i.type) for i in session.get_inputs()]


_ORT_TYPES = {'tensor(float)': np.float32, 'tensor(int64)': np.int64, 'tensor(uint8)': np.uint8}


def check_feeds(session, feeds: Dict[str, np.ndarray]) -> None:
    """Raise :class:`OnnxInputError` unless ``feeds`` has exactly the graph's inputs with shapes it can take."""
    expected = graph_inputs(session)
    names = [n for n, _, _ in expected]
    if sorted(feeds) != sorted(names):
        raise OnnxInputError(f'the graph takes inputs {names}, got {sorted(feeds)}')
    for name, shape, dtype in expected:
        arr = feeds[name]
        want = _ORT_TYPES.get(dtype)
        if want is not None and arr.dtype != want:
            raise OnnxInputError(f"input '{name}': the graph takes {np.dtype(want).name}, got {arr.dtype}")
        fixed = ['?' if not isinstance(d, int) else d for d in shape]
        ok = len(shape) == arr.ndim and all(not isinstance(d, int) or d == a for d, a in zip(shape, arr.shape))
        if not ok:
            raise OnnxInputError(f"input '{name}' has shape {tuple(arr.shape)}, but the exported graph takes "
                                 f"({', '.join(map(str, fixed))}) ('?' = dynamic); {_shape_advice(shape, arr.shape)}")


def _shape_advice(shape: Sequence, got: Sequence[int]) -> str:
    """What to change for an image input (N, C, H, W) the graph does not take: the dimension that differs."""
    if len(shape) != len(got):
        return f'give a {len(shape)}-D array (N, C, H, W)'
    differs = [i for i, (d, a) in enumerate(zip(shape, got)) if isinstance(d, int) and d != a]
    if len(shape) == 4 and 0 in differs and len(differs) == 1:
        return (f'the graph has a static batch of {shape[0]}: run one image at a time (export_onnx.py exports a '
                'dynamic batch unless --static-batch, where the part and its graph allow one)')
    if len(shape) == 4 and 1 in differs:
        return f'give {shape[1]} channels (RGB)'
    return f'export again with --shape {got[-2]} {got[-1]} for this size'


def run_session(session, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """Check the inputs, then run the graph; returns the outputs in graph order."""
    check_feeds(session, feeds)
    return session.run(None, feeds)


def compare(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> Dict[str, float]:
    """Max absolute difference and max difference relative to the reference's largest finite magnitude, over all
    outputs (``max_rel = max_i max|a_i - r_i| / max|r_i|``, over the finite values); both infinite where one output
    has NaN or an infinity and the other another value there (``max`` would skip a NaN, and an infinite difference
    over an infinite scale would read as 0). NaN in both, or the same infinity, count as equal."""
    if len(reference) != len(actual):
        raise ValueError(f'{len(reference)} reference outputs but {len(actual)} actual outputs')
    max_abs, max_rel = 0.0, 0.0
    for i, (r, a) in enumerate(zip(reference, actual)):
        r, a = np.asarray(r, dtype=np.float64), np.asarray(a, dtype=np.float64)
        if r.shape != a.shape:
            raise ValueError(f'output {i}: shape {a.shape} differs from the reference {r.shape}')
        finite = np.isfinite(r)
        if not (np.array_equal(np.isnan(r), np.isnan(a)) and np.array_equal(finite, np.isfinite(a))
                and np.array_equal(r[np.isinf(r)], a[np.isinf(r)])):
            return dict(max_abs=float('inf'), max_rel=float('inf'))
        if not finite.any():
            continue
        diff = float(np.abs(r[finite] - a[finite]).max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(np.abs(r[finite]).max()), 1e-12))
    return dict(max_abs=max_abs, max_rel=max_rel)


def label_flips(scores: np.ndarray, labels: np.ndarray, other_labels: np.ndarray, max_abs: float,
                threshold: Optional[float] = None) -> Tuple[int, int]:
    """How many of ``other_labels`` differ from ``labels``, and how many of those a score difference of at most
    ``max_abs`` cannot explain (a wrong label step in a graph, not rounding).

    Args:
        scores: the reference's (B, K, ...) per-class scores or logits; with ``threshold``, (B, 1, ...) logits.
        labels, other_labels: (B, ...) labels of the reference (argmax over K, or ``sigmoid > threshold``) and of
            the other runtime.
        max_abs: the largest absolute difference between the two runtimes' scores.
        threshold: the probability threshold of a one-channel head.

    Returns:
        (labels that differ, of those, the ones where the reference's decision margin exceeds what ``max_abs``
        can move: the top two scores more than ``2 * max_abs`` apart, or the logit more than ``max_abs`` from the
        threshold's).
    """
    differ = np.asarray(labels) != np.asarray(other_labels)
    n = int(differ.sum())
    if not n:
        return 0, 0
    s = np.asarray(scores, dtype=np.float64)
    if threshold is None:
        top2 = np.partition(s, s.shape[1] - 2, axis=1)[:, -2:]  # (B, 2, ...): the two largest per position
        margin, reach = top2[:, 1] - top2[:, 0], 2 * max_abs
    else:
        margin, reach = np.abs(s[:, 0] - np.log(threshold / (1 - threshold))), max_abs
    explained = margin <= reach * (1 + 1e-6) + 1e-12
    return n, int((differ & ~explained).sum())


def as_numpy_list(out) -> List[np.ndarray]:
    """A module's output (a tensor or a tuple / list of tensors) as the list of arrays ONNX Runtime returns."""
    return [o.detach().numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


#: smallest batch-2 difference (relative) that :func:`batch_mismatch` takes for mixed images; images mixed by a
#: batch baked into the graph differ by 0.1 or more, float noise by about 1e-6
BATCH_MIX_RTOL = 1e-3


def batch_mismatch(module: torch.nn.Module, session, example: torch.Tensor, input_name: str,
                   reference: Optional[List[np.ndarray]] = None) -> Optional[str]:
    """Why a graph exported with a dynamic batch does not reproduce ``module`` at batch 2 (None when it does).

    A traced graph can hold the example's batch size as a constant although its input is declared dynamic:
    mmdet's ``SwinTransformer`` reshapes its windows with sizes read as Python ints, so the TorchScript exporter
    bakes ``B = 1`` into them and ONNX Runtime then mixes the images of a larger batch (max relative difference
    0.26 at batch 2 in ``tests/test_onnx_export.py``), or fails. The check runs ``example`` beside a second,
    different image through both runtimes. It is structural, not the accuracy check: the batch-2 difference is
    measured against the graph's own difference at batch 1 (float noise, about 1e-6 in float32), with
    :data:`BATCH_MIX_RTOL` as the floor, so neither a loose nor a tight ``--rtol`` changes the verdict.
    ``reference``: ``module(example)`` as arrays, when the caller has it (else computed here).
    """
    second = torch.randn(example.shape, generator=torch.Generator().manual_seed(1), dtype=example.dtype)
    batch = torch.cat([example, second])  # (2, ...)
    with torch.inference_mode():
        alone = reference if reference is not None else as_numpy_list(module(example))
        together = as_numpy_list(module(batch))
    # the float outputs only: a label (a segmentor's, a classifier's) flipped at a near-tie of the scores would
    # weigh 1 / (classes - 1) and hide, or fake, the mixing of the images
    floats = [i for i, r in enumerate(alone) if np.issubdtype(np.asarray(r).dtype, np.floating)]
    try:
        ort_alone = run_session(session, {input_name: example.numpy()})
        ort_together = run_session(session, {input_name: batch.numpy()})
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own Fail / RuntimeException types, shape errors
        return f'ONNX Runtime fails at batch 2 ({_first_line(exc, 200)})'
    noise = compare([alone[i] for i in floats], [ort_alone[i] for i in floats])['max_rel']
    diff = compare([together[i] for i in floats], [ort_together[i] for i in floats])['max_rel']
    if diff > max(BATCH_MIX_RTOL, 100 * noise):
        return f'at batch 2 ONNX Runtime differs from PyTorch (max relative diff {diff:.3g}; {noise:.3g} at batch 1)'
    return None


def interleaved_times_ms(fns: Sequence[Callable[[], object]], repeats: int = 5, warmup: int = 1) -> List[List[float]]:
    """Wall-clock times of each ``fn()`` in milliseconds (``max(repeats, 1)`` per function), the functions called
    in turn (A B A B ...) after ``warmup`` untimed calls of each: on a shared machine a slow spell then falls on all
    of them, not on the one timed during it."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(max(repeats, 1)):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            fn()
            fn_times.append((time.perf_counter() - start) * 1e3)
    return times


def median_latency_ms(fns: Sequence[Callable[[], object]], repeats: int = 5, warmup: int = 1) -> List[float]:
    """Median of each function's :func:`interleaved_times_ms`."""
    return [statistics.median(t) for t in interleaved_times_ms(fns, repeats, warmup)]
