"""Export a detector's backbone, backbone + neck, or whole inference (a segmentor's or classifier's too) to ONNX,
run it with ONNX Runtime on the same input and report the difference to PyTorch and the CPU latency of both.

    python tools/deployment/export_onnx.py CONFIG [CHECKPOINT] --shape H W
        --part {backbone,backbone+neck,detector,segmentor,classifier} --out FILE.onnx [--image IMG]
        [--exporter {torchscript,dynamo}] [--threads N] [--repeats 5] [--static-batch] [--rtol 1e-4]
        [--score-thr 0.3] [--cfg-options k=v ...]

The input is the preprocessed tensor (normalised, padded) of a fixed H x W; ``--image`` takes it from an image file
through the config's test pipeline (H x W must then be its padded size), else from a seeded random normal tensor.
Backbone parts have a dynamic batch dimension unless ``--static-batch``; the file is then also checked at batch 2,
and a graph that holds the traced batch as a constant (mmdet's Swin) is exported again with a static batch (said
so). The detector takes one image. ``segmentor`` is an MMSegmentation config's whole inference (whole or slide
mode, as its ``test_cfg`` says): image -> logits and labels at the input's size; ``classifier`` an MMPretrain
config's (single-label head): image -> scores (softmax) and labels. Without a checkpoint the weights are random,
seeded. Everything is in ``stvit_det.deployment``; this file only parses and prints.
Exit status 1 with one ``error:`` line on bad input (arguments, config, checkpoint, part, shape, image) or an export
failure (naming the operator); 2 when ONNX Runtime's result differs from PyTorch's beyond ``--rtol`` (backbone parts:
max relative difference; segmentor, classifier: that of the logits / scores, or a label that differs where the
reference's scores do not nearly tie; detector: other detections above ``--score-thr``, a box more than 1 px off
or a mask IoU below 0.98).
"""
import argparse
import sys

import torch

from stvit_det.deployment import (PARTS, CheckpointMismatchError, ExportError, OnnxInputError, OnnxLoadError,
                                  batch_mismatch, build_detector, build_part, compare, export_onnx, load_session,
                                  median_latency_ms, preprocess_image, run_session)
from stvit_det.deployment.equivalents import EXPORTABLE_REGION_ATTENTION, stand_in_modules
from stvit_det.deployment.onnx_export import EXPORTERS, as_numpy_list, label_flips
from stvit_det.toolboxes.scope import CfgOptionsAction
from stvit_det.utils.errors import first_line, is_out_of_memory
from stvit_det.utils.paths import atomic_output, unwritable_reason
from stvit_det.utils.values import positive_float, positive_int, unit_float, warn_oversubscribed


class _Parser(argparse.ArgumentParser):
    """Bad arguments end like every other bad input: one ``error:`` line, exit status 1 (argparse's own status 2
    is this tool's "ONNX Runtime differs")."""

    def error(self, message):
        self.exit(1, f'error: {message} (see --help)\n')


def parse_args(argv=None):
    parser = _Parser(description='Export to ONNX and check the file against PyTorch')
    parser.add_argument('config', help='config file (also mmdet::... paths)')
    parser.add_argument('checkpoint', nargs='?',
                        help='checkpoint that fits the config (default: seeded random weights)')
    parser.add_argument('--shape', type=positive_int, nargs=2, required=True, metavar=('H', 'W'),
                        help='network input size')
    parser.add_argument('--part', required=True, help=f"one of {', '.join(PARTS)}")
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--image', help='image file: the input comes from the test pipeline (else random)')
    parser.add_argument('--exporter', default='torchscript', choices=EXPORTERS, help='torch.onnx exporter')
    parser.add_argument('--static-batch', action='store_true', help='no dynamic batch dimension')
    parser.add_argument('--threads', type=positive_int, default=None, help='CPU threads for both runtimes')
    parser.add_argument('--repeats', type=positive_int, default=5, help='timed runs per runtime (median reported)')
    parser.add_argument('--score-thr', type=unit_float, default=0.3, help='detector: detections compared above this')
    parser.add_argument('--rtol', type=positive_float, default=1e-4,
                        help='backbone parts, segmentor logits, classifier scores: largest max relative difference '
                        'accepted (else exit status 2)')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    warn_oversubscribed(threads)
    try:
        if not args.out.lower().endswith('.onnx'):  # a typo must not replace a checkpoint or config not read here
            raise ValueError(f'--out {args.out}: give a file name ending in .onnx')
        # before any work: the export must not replace the config, checkpoint or image it comes from
        reason = unwritable_reason(args.out, inputs={'config': args.config, 'checkpoint': args.checkpoint,
                                                     'image': args.image})
        if reason:
            raise ValueError(f'cannot write the ONNX file {args.out}: {reason}')
        if args.part not in PARTS:
            raise ValueError(f"unknown part '{args.part}': choose one of {', '.join(PARTS)}")
        if args.part == 'detector' and args.exporter == 'dynamo':
            raise ValueError('--part detector exports with the TorchScript exporter only: its RoI stages run on '
                             'as many boxes as NMS keeps, a size the dynamo exporter cannot trace (it fails on '
                             'numel() of a symbolic size); drop --exporter dynamo')
        detector, cfg = build_detector(args.config, args.checkpoint, args.cfg_options)
        shape = tuple(args.shape)
        img_shape = None
        if args.image:
            image, sample = preprocess_image(detector, cfg, args.image)
            if tuple(image.shape[-2:]) != shape:
                raise OnnxInputError(f'{args.image} preprocesses to {tuple(image.shape[-2:])}, not --shape '
                                     f'{shape[0]} {shape[1]}: export with --shape {image.shape[-2]} '
                                     f'{image.shape[-1]}')
            img_shape = sample.img_shape
        else:
            image = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
        module, inputs, outputs, dynamic = build_part(detector, args.part, shape, img_shape)
        affected = stand_in_modules(module)  # what export_onnx will export through a stand-in
        if affected:
            impls = sorted({impl for _, impl in affected})
            stand_ins = ', '.join(f"'{a}' as '{b}'" for a, b in EXPORTABLE_REGION_ATTENTION.items())
            print(f'attention: {len(affected)} modules with attn_impl {impls}; exported with their exportable '
                  f'equivalents ({stand_ins}: the tiled attention has no ONNX translation)')
        if args.part == 'segmentor':
            if args.exporter == 'dynamo' and module.slide:
                raise ValueError("--exporter dynamo cannot trace mmseg's slide inference (it asserts on the data "
                                 'that every pixel was covered); export it with the TorchScript exporter (the '
                                 'default), or in whole mode')
            print(module.describe(shape))
        dynamic = dynamic and not args.static_batch
        with torch.inference_mode():
            reference = as_numpy_list(module(image))
        # backbone parts: the outputs' sizes declared in the graph (the detector's depend on the image)
        shapes = None if args.part == 'detector' else [r.shape for r in reference]
        # the graph reaches --out only once it has passed the batch check: until then it is staged beside it, so
        # a failed or interrupted export (or a graph that mixes the images of a batch) leaves --out as it was
        try:
            with atomic_output(args.out) as staged:
                export_onnx(module, (image, ), staged, inputs, outputs, dynamic, args.exporter, output_shapes=shapes)
                session = load_session(staged, threads)
                reason = batch_mismatch(module, session, image, inputs[0], reference) if dynamic else None
                if reason:
                    print(f'dynamic batch: {reason}; the traced graph holds batch 1 as a constant, so {args.out} '
                          'is exported again with a static batch of 1')
                    export_onnx(module, (image, ), staged, inputs, outputs, False, args.exporter,
                                output_shapes=shapes)
                    session = load_session(staged, threads)
        except ExportError as exc:
            raise ExportError(f'{exc}; {args.out} was left as it was') from None
        feeds = {inputs[0]: image.numpy()}
        actual = run_session(session, feeds)
    except (ValueError, FileNotFoundError, ExportError, OnnxLoadError, CheckpointMismatchError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as exc:  # the input or a forward on it (build_part's trial) does not fit
        if not is_out_of_memory(exc):
            raise
        print(f'error: out of memory at --shape {args.shape[0]} {args.shape[1]} ({first_line(exc)}): give a '
              'smaller --shape', file=sys.stderr)
        return 1

    print(f'exported {args.part} of {args.config} ({args.exporter} exporter) to {args.out}')
    print(f'inputs: {[(i.name, i.shape) for i in session.get_inputs()]}')
    if args.part == 'detector':
        agree = report_detections(reference, actual, args.score_thr)
    else:  # a segmentor's / classifier's labels are counted, its logits / scores compared as features are
        unit = getattr(module, 'label_unit', None)
        diff = compare(reference[:1], actual[:1]) if unit else compare(reference, actual)
        print(f"ONNX Runtime vs PyTorch: max abs diff {diff['max_abs']:.3g}, max relative diff {diff['max_rel']:.3g}"
              + (f' ({outputs[0]})' if unit else ''))
        agree = diff['max_rel'] <= args.rtol
        if unit:  # a label may change only where the reference's scores nearly tie (within the difference)
            differ, unexplained = label_flips(reference[0], reference[1], actual[1], diff['max_abs'],
                                              module.threshold)
            print(f'labels: {differ} of {reference[1].size} {unit} differ'
                  + (f', {unexplained} of them beyond a near-tie of the scores' if unexplained else
                     ', all at near-ties of the scores' if differ else ''))
            agree = agree and not unexplained

    def run_torch():
        with torch.inference_mode():
            module(image)

    t_torch, t_ort = median_latency_ms([run_torch, lambda: session.run(None, feeds)], args.repeats)
    print(f'latency, CPU, {threads} threads, median of {args.repeats}, interleaved: PyTorch eager {t_torch:.1f} ms, '
          f'ONNX Runtime {t_ort:.1f} ms ({t_torch / t_ort:.2f}x)')
    if not agree:
        untrained = (' The weights are random (no checkpoint): untrained heads put scores and mask pixels at '
                     'near-ties that float rounding flips; check with a trained checkpoint.'
                     if args.part == 'detector' and not args.checkpoint else '')
        print(f'error: ONNX Runtime does not reproduce PyTorch within the tolerances (see above): {args.out}.'
              f'{untrained}', file=sys.stderr)
        return 2
    return 0


def report_detections(reference, actual, score_thr: float) -> bool:
    """Print the detections above ``score_thr`` of both runtimes (count, box and score differences, mask IoU);
    whether they agree: the same detections and labels, boxes within 1 px, every mask IoU >= 0.98."""
    from stvit_det.deployment import match_detections

    m = match_detections(reference, actual, score_thr)
    print(f"detections with score >= {score_thr}: PyTorch {m['n_reference']}, ONNX Runtime {m['n_actual']}, "
          f"same labels: {m['same_labels']}")
    if not (m['n_reference'] == m['n_actual'] and m['same_labels']):
        return False
    if not m['n_reference']:
        return True
    print(f"max box difference {m['max_box_diff']:.3g} px, max score difference {m['max_score_diff']:.3g}, "
          f"min mask IoU {m['min_mask_iou']:.4f}")
    return m['max_box_diff'] <= 1.0 and m['min_mask_iou'] >= 0.98


if __name__ == '__main__':
    sys.exit(main())
