"""Convert checkpoints for stvit_det: backbone weights, whole released detectors, ImageNet classifiers.

Backbone (default): Swin (official / timm / mmdet layout) or STViT-R weights -> an STViTR state dict::

    python tools/convert_ckpt.py swin_small_patch4_window7_224.pth stvit-r-s_from-swin.pth --arch small

Detector (``--detector CONFIG``): an MMDetection 2.x STViT-R detector checkpoint (the released Cascade Mask
R-CNNs, mmdet 2.11) -> an MMDetection 3.x checkpoint for CONFIG, checked tensor by tensor against the model CONFIG
builds (every missing, unexpected or reshaped tensor is named; any of them is an error) and against its class
order::

    python tools/convert_ckpt.py --detector \\
        configs/stvit-r/cascade-mask-rcnn_stvit-r-s-released_fpn_4conv1fc-giou_ms-crop-3x_coco.py RELEASED.pth OUT.pth

Classifier (``--classifier CONFIG``): an official STViT-R ImageNet checkpoint (backbone keys, ``norm``, ``head``)
or a classifier checkpoint -> an MMPretrain ``ImageClassifier`` checkpoint for CONFIG, checked the same way;
``--drop-head`` keeps the backbone only (fine-tuning on other classes)::

    python tools/convert_ckpt.py --classifier configs/stvit-r-cls/stvit-r-s-released_16xb64_in1k.py \\
        STViT-R-Swin-S.pth OUT.pth

Outputs hold ``{'state_dict': ..., 'meta': {...}}``: a backbone file loads with
``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=OUT)``, a detector or classifier file with
``tools/test.py CONFIG OUT`` (or ``load_from=OUT``). The conversions are the pure functions of
``stvit_det.utils.ckpt_convert``.
"""
import argparse
import functools
import os
import sys
from collections import OrderedDict

import torch

import stvit_det  # noqa: F401  (registers STViTR, also into the installed toolboxes)
from stvit_det import STViTR
from stvit_det.utils.ckpt_convert import (compare_state_dicts, convert_to_stvit, describe_mismatch,
                                          detector_2x_to_3x, drop_classifier_head, imagenet_to_classifier,
                                          summarise_keys)
from stvit_det.utils.ckpt_file import CheckpointError, class_order_error, head_classes_error, read_checkpoint
from stvit_det.utils.errors import first_line
from stvit_det.utils.paths import atomic_output, unwritable_reason, write_error


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', help='source checkpoint (.pth)')
    p.add_argument('dst', help='output checkpoint (.pth)')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--detector', metavar='CONFIG', help='convert a whole MMDetection 2.x detector for CONFIG')
    mode.add_argument('--classifier', metavar='CONFIG', help='convert an ImageNet classifier for CONFIG')
    p.add_argument('--drop-head', action='store_true', help='with --classifier: keep the backbone only')
    p.add_argument('--arch', default='tiny', choices=['tiny', 'small', 'base'], help='target STViTR variant')
    p.add_argument('--no-sparsify', action='store_true', help='target has plain Swin blocks in stage 3')
    p.add_argument('--stem', default='conv', choices=['conv', 'patch'], help='target stem')
    args = p.parse_args(argv)
    if args.drop_head and not args.classifier:
        p.error('--drop-head goes with --classifier CONFIG')
    # '~' is the home folder, also when quoted (as mmengine's loader reads it): the source, and the output, which
    # must neither replace the source spelt another way nor make a folder named '~'
    args.src, args.dst = os.path.expanduser(args.src), os.path.expanduser(args.dst)
    return args


@functools.lru_cache(maxsize=4)
def build_model(config: str):
    """The model of CONFIG (random weights, nothing loaded) and the config, in the config's default scope. Only its
    tensor names and shapes are used; cached per config path within a process (the tests call :func:`main` often)."""
    from stvit_det.toolboxes.scope import ConfigError, build_bare_model, load_config

    if not os.path.isfile(config):
        raise CheckpointError(f'config file not found: {config}')
    try:
        cfg = load_config(config, need_model=True)
    except ConfigError as e:  # not Python, no model, its toolbox missing
        raise CheckpointError(str(e)) from None
    try:
        model = build_bare_model(cfg)
    except (ValueError, TypeError, KeyError, AssertionError, AttributeError) as e:  # a value refused, an unknown type
        raise CheckpointError(f'the model of {config} cannot be built: {first_line(e)}') from None
    return model, cfg


def check_against_model(sd, model, source: str, allow_missing=()) -> dict:
    """Names and shapes of ``sd`` against ``model``; raises CheckpointError naming every misfit."""
    report = compare_state_dicts(sd, {k: v.shape for k, v in model.state_dict().items()})
    report['missing'] = [k for k in report['missing'] if not k.startswith(tuple(allow_missing))]
    problem = describe_mismatch(report)
    if problem:
        raise CheckpointError(f'{source} does not fit the config\'s model. {problem}')
    return report


def convert_detector(args):
    ckpt = read_checkpoint(args.src)
    try:
        sd, meta = detector_2x_to_3x(ckpt)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f'{args.src}: {e}') from None
    model, cfg = build_model(args.detector)
    report = check_against_model(sd, model, args.src)
    error = class_order_error(cfg, dict(meta=meta), args.src)
    if error:
        raise CheckpointError(error)
    meta.update(source=os.path.basename(args.src), config=os.path.basename(args.detector))
    return sd, meta, report


def convert_classifier(args):
    ckpt = read_checkpoint(args.src)
    try:
        sd, info = imagenet_to_classifier(ckpt, need_head=not args.drop_head)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f'{args.src}: {e}') from None
    model, cfg = build_model(args.classifier)
    if args.drop_head:
        sd = drop_classifier_head(sd)
    else:
        error = head_classes_error(cfg.model, {'state_dict': sd}, args.src)
        if error:
            raise CheckpointError(error)
    report = check_against_model(sd, model, args.src, allow_missing=('head.', ) if args.drop_head else ())
    report['dropped'] = info['dropped']
    meta = dict(source=os.path.basename(args.src), source_layout=info['layout'],
                config=os.path.basename(args.classifier), head_dropped=args.drop_head)
    return sd, meta, report


def convert_backbone(args):
    ckpt = read_checkpoint(args.src)
    sparsify = not args.no_sparsify
    model = STViTR(arch=args.arch, sparsify=sparsify, stem=args.stem)
    try:
        sd, report = convert_to_stvit(ckpt, sparsify=sparsify, patch_stem=args.stem == 'patch')
        _, loaded = model.check_pretrained(sd, source=args.src)  # names and shapes (no load: the report is below)
    except (TypeError, ValueError) as e:
        msg = str(e) if str(e).startswith(args.src) else f'{args.src}: {e}'
        if 'another arch' in msg or 'wrong arch' in msg:
            msg += f' (converted for --arch {args.arch}: pass the arch the weights were trained with)'
        raise CheckpointError(msg) from None
    report.update(missing=loaded['missing'], unexpected=loaded['unexpected'])
    no_place = set(loaded['unexpected'])  # not written
    sd = OrderedDict((k, v) for k, v in sd.items() if k not in no_place)
    meta = dict(source=os.path.basename(args.src), source_layout=report['layout'], arch=args.arch,
                missing=report['missing'], dropped=report['dropped'])
    return sd, meta, report


def main(argv=None):
    args = parse_args(argv)
    reason = unwritable_reason(args.dst, inputs={'source checkpoint': args.src,
                                                 'config': args.detector or args.classifier})
    if reason:
        sys.exit(f'convert_ckpt: error: cannot write {args.dst}: {reason}')
    try:
        if args.detector:
            sd, meta, report = convert_detector(args)
        elif args.classifier:
            sd, meta, report = convert_classifier(args)
        else:
            sd, meta, report = convert_backbone(args)
    except CheckpointError as e:
        sys.exit(f'convert_ckpt: error: {e}')
    try:
        with atomic_output(args.dst) as part:  # an interrupted save leaves an existing dst as it was
            torch.save(dict(state_dict=sd, meta=meta), part)
    except (OSError, RuntimeError) as e:  # a full disk: torch.save raises RuntimeError ("enforce fail ...")
        sys.exit(f'convert_ckpt: error: cannot write {args.dst}: {write_error(args.dst, e)}')
    if args.detector or args.classifier:
        print(f'{args.src} -> {args.dst}: {len(sd)} tensors; {len(report["missing"])} missing, '
              f'{len(report["unexpected"])} unexpected, {len(report["mismatched"])} reshaped against '
              f'{args.detector or args.classifier}' + (' (head dropped)' if args.drop_head else ''))
        for k in report.get('dropped', []):
            print(f'  dropped (recomputed buffer): {k}')
        return report
    # backbone: only the converted tensors that fit this STViTR are written; the rest keeps its initialisation
    print(f'{args.src} ({report["layout"]}) -> {args.dst}: {len(sd)} tensors; {len(report["missing"])} STViTR keys '
          f'not in the source (they keep their initialisation), {len(report["unexpected"])} converted tensors with '
          f'no place in this STViTR (--arch / --stem / --no-sparsify; not written), {len(report["dropped"])} source '
          f'keys without counterpart, {report["split_qkv"]} qkv tensors split into q/kv' +
          (f', {len(report["outside_backbone"])} tensors outside the backbone (not written)'
           if report['outside_backbone'] else ''))
    for name, label in (('missing', 'missing'), ('unexpected', 'unexpected (not written)'), ('dropped', 'dropped')):
        for k in report[name]:
            print(f'  {label}: {k}')
    if report['outside_backbone']:  # a whole detector / segmentor / classifier: its neck and heads
        print(f'  outside the backbone (not written; --detector / --classifier convert whole models): '
              f'{summarise_keys(report["outside_backbone"])}')
    return report


if __name__ == '__main__':
    main()
