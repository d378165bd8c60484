"""Test (and evaluate) a checkpoint with an stvit_det config (the shape of MMDetection 3.3's ``tools/test.py``).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR] [--cfg-options ...]

Any toolbox's config: the config's ``default_scope`` decides (mmdet detectors, mmseg segmentors). The additions to
mmdet's script: ``import stvit_det`` (registers STViTR into every installed toolbox), allow-listing the classes
mmengine stores in checkpoints for ``torch.load(weights_only=True)``, early checks of the config (its toolbox
installed), the checkpoint and the test dataset that end with a one-line message; and for mmseg configs what
mmseg's own ``tools/test.py`` does differently: ``--show-dir`` switches on its ``SegVisualizationHook`` (image,
ground truth and prediction painted by ``SegLocalVisualizer``, PNGs under ``WORK_DIR/TIMESTAMP/SHOW_DIR``).
``--out`` dumps the raw predictions (``DetDataSample`` / ``SegDataSample``) to a pickle for every toolbox.
MMPretrain classifiers (``configs/stvit-r-cls``) run the same way. The checkpoint is checked before the
Runner starts: an unreadable file, or a classifier head with another number of classes than the config's,
ends with one line (``stvit_det.utils.ckpt_file``).
"""
import argparse
import os
import os.path as osp

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import ConfigDict, DictAction
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import stvit_det  # noqa: F401  (registers STViTR)
from stvit_det.datasets import DatasetCheckError, check_dataset_cfgs, check_seg_dataset_cfgs
from stvit_det.toolboxes.scope import ToolboxMissingError, config_scope, load_config
from stvit_det.utils import allow_mmengine_checkpoints, prepare_cpu_distributed
from stvit_det.utils.ckpt_file import CheckpointError, check_checkpoint_for_config


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it will be automatically saved to the '
        'work_dir/timestamp/show_dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will be merged into '
        'config file. If the value to be overwritten is a list, it should be like key="[a,b]" or key=a,b It also '
        'allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the quotation marks are necessary and '
        'that no white space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true')
    # torch.distributed.launch / torchrun of PyTorch >= 2.0 pass `--local-rank` instead of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_seg_visualization_hook(cfg, args):
    """mmseg's ``--show`` / ``--show-dir``: its ``SegVisualizationHook`` draws, the visualiser saves under the dir."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('test.py: error: --show / --show-dir need `default_hooks.visualization` in the config')
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def main():
    args = parse_args()
    if not osp.isfile(args.config):
        raise SystemExit(f'test.py: error: config file not found: {args.config}')
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'test.py: error: checkpoint file not found: {args.checkpoint}')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'test.py: error: --out must be a .pkl or .pickle file, got {args.out}')
    allow_mmengine_checkpoints()

    # Reduce the number of repeated compilations and improve testing speed.
    setup_cache_size_limit_of_dynamo()

    # load config (a clear message when its toolbox, e.g. mmseg, is not installed)
    try:
        cfg = load_config(args.config)
    except ToolboxMissingError as e:
        raise SystemExit(f'test.py: error: {e}') from None
    scope = config_scope(cfg)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    prepare_cpu_distributed(cfg, args.launcher)  # DDP over gloo when there is no GPU (mmengine assumes CUDA)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_seg_visualization_hook(cfg, args) if scope == 'mmseg' else trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_model' not in cfg:
            raise SystemExit('test.py: error: --tta needs `tta_model` and `tta_pipeline` in the config')
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        test_data_cfg.pipeline = cfg.tta_pipeline

    # fail early, in one line, on missing / malformed annotation files and image directories
    try:
        check_dataset_cfgs(cfg, phases=('test', ))
        check_seg_dataset_cfgs(cfg, phases=('test', ))
    except DatasetCheckError as e:
        raise SystemExit(f'test.py: error: {e}') from None

    # one line for an unreadable checkpoint or a classifier head of another size than the config's (mmengine would
    # only warn and go on with a random head)
    try:
        check_checkpoint_for_config(cfg, args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f'test.py: error: {e}') from None

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    # add `DumpResults` dummy metric
    if args.out is not None:
        dump = DumpDetResults if scope == 'mmdet' else DumpResults
        runner.test_evaluator.metrics.append(dump(out_file_path=args.out))

    # start testing
    runner.test()


if __name__ == '__main__':
    main()
