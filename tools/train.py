"""Train a model with an stvit_det config (the shape of MMDetection 3.3's ``tools/train.py``).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr] [--resume [CKPT]] [--no-validate]
        [--cfg-options k=v ...] [--no-pin-memory] [--no-persistent-workers]

Any toolbox's config: the config's ``default_scope`` decides (mmdet detectors, mmseg segmentors), as in each
toolbox's own ``tools/train.py``, which this script equals apart from the additions: ``import stvit_det`` (registers
STViTR into every installed toolbox), allow-listing the classes mmengine stores in checkpoints for
``torch.load(weights_only=True)``, a clear message when the config's toolbox is not installed, and an early check of
the config's datasets (COCO files; segmentation images and label maps) that ends with a one-line message instead of
a traceback from inside the Runner. MMPretrain classifiers (``configs/stvit-r-cls``) train the same way (with
MMPretrain's dataloader defaults and its ``--no-validate`` / ``--no-pin-memory`` / ``--no-persistent-workers``); a
``load_from`` checkpoint is checked like ``tools/test.py`` checks its checkpoint. What both tools share (launcher
arguments, config loading, the early checks, the Runner) is in ``tools/_launch.py``.
"""
import argparse
import os
import sys

from mmengine.device import get_device
from mmengine.runner import find_latest_checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _launch import (add_launch_args, add_loader_args, apply_loader_defaults, build_runner, check_inputs,  # noqa: E402
                     load_tool_config, set_local_rank)
from stvit_det.utils.paths import missing_file_error  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true', default=False, help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not specify, try to auto resume from the latest '
        'checkpoint in the work directory.')
    parser.add_argument('--no-validate', action='store_true',
                        help='train without validation (no val_cfg, val_dataloader, val_evaluator)')
    add_loader_args(parser)
    add_launch_args(parser)
    args = parser.parse_args()
    set_local_rank(args)
    return args


def main():
    args = parse_args()
    missing = missing_file_error('checkpoint', args.resume) if args.resume not in (None, 'auto') else None
    if missing:
        raise SystemExit(f'train.py: error: {missing}')
    cfg = load_tool_config('train.py', args)
    if args.no_validate:  # as MMPretrain's tools/train.py
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    apply_loader_defaults(cfg, args, ('train_dataloader', 'val_dataloader', 'test_dataloader'), training=True)

    # enable automatic-mixed-precision training
    if args.amp is True:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if str(cfg.get('optim_wrapper', {}).get('type', '')).endswith('AmpOptimWrapper') and get_device() == 'cpu':
        raise SystemExit("train.py: error: mixed precision (--amp, or the config's AmpOptimWrapper) needs a GPU: "
                         "mmengine's AmpOptimWrapper runs on cuda, npu, mlu or musa only; on the CPU train without "
                         '--amp, with a config that is not *_amp-*')

    # enable automatically scaling LR
    if args.auto_scale_lr:  # mmengine scales the lr by (GPUs x batch per GPU) / base_batch_size
        if isinstance(cfg.get('auto_scale_lr'), dict) and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True  # MMPretrain's configs state the base batch without an `enable` key
        else:
            raise SystemExit('train.py: error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config (the '
                             'total batch its lr is set for), e.g. --cfg-options auto_scale_lr.base_batch_size=16')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # fail early, in one line: datasets (annotation files, image directories, label maps) and a fine-tuning
    # checkpoint (load_from) that cannot be read or whose classifier head does not fit the config
    phases = ('train', 'val') if cfg.get('val_cfg') else ('train', )
    if cfg.get('resume'):  # the run's own checkpoint (named, or the work dir's last): the same model, strictly
        resumed = cfg.get('load_from') or find_latest_checkpoint(cfg.work_dir)
        check_inputs('train.py', cfg, phases, checkpoint=resumed, strict=True, resume=True)
    else:
        check_inputs('train.py', cfg, phases, checkpoint=cfg.get('load_from'))
    runner = build_runner(cfg)

    # start training
    runner.train()


if __name__ == '__main__':
    main()
