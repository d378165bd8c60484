"""Train a model with an stvit_det config (the shape of MMDetection 3.3's ``tools/train.py``).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options k=v ...]

Any toolbox's config: the config's ``default_scope`` decides (mmdet detectors, mmseg segmentors), as in each
toolbox's own ``tools/train.py``, which this script equals apart from the additions: ``import stvit_det`` (registers
STViTR into every installed toolbox), allow-listing the classes mmengine stores in checkpoints for
``torch.load(weights_only=True)``, a clear message when the config's toolbox is not installed, and an early check of
the config's datasets (COCO files; segmentation images and label maps) that ends with a one-line message instead of
a traceback from inside the Runner. MMPretrain classifiers (``configs/stvit-r-cls``) train the same way; a
``load_from`` checkpoint is checked like ``tools/test.py`` checks its checkpoint.
"""
import argparse
import os
import os.path as osp

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import stvit_det  # noqa: F401  (registers STViTR)
from stvit_det.datasets import DatasetCheckError, check_dataset_cfgs, check_seg_dataset_cfgs
from stvit_det.toolboxes.scope import ToolboxMissingError, load_config
from stvit_det.utils import allow_mmengine_checkpoints, prepare_cpu_distributed
from stvit_det.utils.ckpt_file import CheckpointError, check_checkpoint_for_config


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
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will be merged into '
        'config file. If the value to be overwritten is a list, it should be like key="[a,b]" or key=a,b It also '
        'allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the quotation marks are necessary and '
        'that no white space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    # torch.distributed.launch / torchrun of PyTorch >= 2.0 pass `--local-rank` instead of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    if not osp.isfile(args.config):
        raise SystemExit(f'train.py: error: config file not found: {args.config}')
    if args.resume not in (None, 'auto') and not osp.isfile(args.resume):
        raise SystemExit(f'train.py: error: checkpoint file not found: {args.resume}')
    allow_mmengine_checkpoints()

    # Reduce the number of repeated compilations and improve training speed.
    setup_cache_size_limit_of_dynamo()

    # load config (a clear message when its toolbox, e.g. mmseg, is not installed)
    try:
        cfg = load_config(args.config)
    except ToolboxMissingError as e:
        raise SystemExit(f'train.py: error: {e}') from None
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    prepare_cpu_distributed(cfg, args.launcher)  # DDP over gloo when there is no GPU (mmengine assumes CUDA)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    # enable automatic-mixed-precision training
    if args.amp is True:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    # enable automatically scaling LR
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'enable' in cfg.auto_scale_lr and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # fail early, in one line, on missing / malformed annotation files, image directories and label maps
    try:
        phases = ('train', 'val') if cfg.get('val_cfg') else ('train', )
        check_dataset_cfgs(cfg, phases=phases)
        check_seg_dataset_cfgs(cfg, phases=phases)
    except DatasetCheckError as e:
        raise SystemExit(f'train.py: error: {e}') from None

    # fine-tuning from a whole-model checkpoint (load_from): one line if it cannot be read or its classifier head
    # does not fit the config
    if cfg.get('load_from') and not cfg.get('resume'):
        try:
            check_checkpoint_for_config(cfg, cfg.load_from)
        except CheckpointError as e:
            raise SystemExit(f'train.py: error: {e}') from None

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    # start training
    runner.train()


if __name__ == '__main__':
    main()
