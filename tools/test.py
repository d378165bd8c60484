"""Test (and evaluate) a checkpoint with an stvit_det config (the shape of MMDetection 3.3's ``tools/test.py``).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR] [--cfg-options ...]

Any toolbox's config: the config's ``default_scope`` decides (mmdet detectors, mmseg segmentors). The additions to
mmdet's script: ``import stvit_det`` (registers STViTR into every installed toolbox), allow-listing the classes
mmengine stores in checkpoints for ``torch.load(weights_only=True)``, early checks of the config (its toolbox
installed), the checkpoint and the test dataset that end with a one-line message; and for mmseg / mmpretrain
configs what their own ``tools/test.py`` does differently. ``--show-dir DIR`` paints every test image, each toolbox
with its own hook and visualiser: detection under ``WORK_DIR/TIMESTAMP/DIR`` (mmdet's ``DetVisualizationHook``);
segmentation under ``DIR/vis_data/vis_image`` (mmseg's ``SegVisualizationHook``: image and ground truth | prediction
by ``SegLocalVisualizer``; its ``interval``, 50 in mmseg's configs, set to ``--interval``, 1 by default, here);
classification under ``DIR`` (mmpretrain's ``VisualizationHook``). A relative ``DIR`` of the last two is relative to
the current directory, as in mmseg's and mmpretrain's tools. ``--out`` dumps the raw predictions (``DetDataSample``
/ ``SegDataSample`` / ``DataSample``) to a pickle for every toolbox, or with ``--out-item metrics`` (MMPretrain's
option) the evaluation results (.json / .yaml / .pkl); ``--interval N`` paints every N-th image (segmentation,
classification); ``--amp`` (MMPretrain's option) tests in mixed precision (bfloat16 on the CPU, where detection is
refused). ``--tta`` takes the config's ``tta_model`` / ``tta_pipeline``; a config without them gets its
toolbox's defaults (mmdet: boxes of the image and its horizontal mirror merged by NMS, refused for a detector that
predicts instance masks, which mmdet's ``DetTTAModel`` cannot merge; mmpretrain: scores averaged over both).
MMPretrain classifiers (``configs/stvit-r-cls``) run the same way, with MMPretrain's dataloader defaults
(``--no-pin-memory`` as in its tool). The checkpoint is checked strictly before the Runner starts: an unreadable
file, missing, unexpected or reshaped tensors, a classifier head with another number of classes than the config's,
or another class order end with one line (``stvit_det.utils.ckpt_file``); so are an MMPretrain config's class counts
that disagree (``stvit_det.datasets.cls_check``: head, Mixup / CutMix targets, data, top-k). What both tools share
(launcher arguments, config loading, the early checks, the Runner) is in ``tools/_launch.py``.
"""
import argparse
import copy
import os
import os.path as osp
import sys
import warnings

import mmengine
from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmengine.config import ConfigDict
from mmengine.device import get_device
from mmengine.dist import is_main_process
from mmengine.evaluator import DumpResults

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _launch import (add_launch_args, add_loader_args, apply_loader_defaults, build_runner, check_inputs,  # noqa: E402
                     check_output_file, load_tool_config, set_local_rank)
from stvit_det.toolboxes.scope import config_scope  # noqa: E402
from stvit_det.utils.paths import missing_file_error, uncreatable_dir_reason  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a .pkl file for offline evaluation; segmentation (mmseg) also takes '
                        'a directory, as mmseg\'s tools/test.py: the predicted label maps are kept there as PNGs')
    parser.add_argument('--out-item', choices=['metrics', 'pred'],
                        help="what --out holds (MMPretrain's option, for every toolbox here): 'pred' the predictions "
                        "(default), 'metrics' the evaluation results (.json, .yaml / .yml or .pkl)")
    parser.add_argument('--amp', action='store_true',
                        help="mixed-precision testing (MMPretrain's option; the test loop's fp16): float16 on a GPU, "
                        'bfloat16 on the CPU (segmentation and classification; mmcv\'s compiled detection ops, '
                        'RoIAlign and NMS, take no bfloat16)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='paint every test image into this directory (detection: under work_dir/timestamp/SHOW_DIR; '
        'segmentation: SHOW_DIR/vis_data/vis_image; classification: SHOW_DIR)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--interval', type=int, default=1,
                        help='with --show / --show-dir, paint every N-th test image (classification; segmentation: '
                        'every N-th batch, as mmseg\'s hook counts, one image with its test configs\' batch size 1; '
                        'detection paints every one, as mmdet\'s hook does at test time)')
    add_launch_args(parser)
    parser.add_argument('--tta', action='store_true')
    add_loader_args(parser, persistent_workers=False)
    args = parser.parse_args()
    set_local_rank(args)
    return args


def _visualization_hook(cfg):
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('test.py: error: --show / --show-dir need `default_hooks.visualization` in the config')
    return hook


def trigger_seg_visualization_hook(cfg, args):
    """mmseg's ``--show`` / ``--show-dir``: its ``SegVisualizationHook`` draws (every ``--interval``-th image), the
    visualiser saves under the dir."""
    hook = _visualization_hook(cfg)
    hook['draw'] = True
    hook['interval'] = args.interval
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def trigger_cls_visualization_hook(cfg, args):
    """mmpretrain's ``--show`` / ``--show-dir`` (as its ``tools/test.py``, with ``--interval``): its
    ``VisualizationHook`` is switched on and writes every image to ``out_dir``."""
    hook = _visualization_hook(cfg)
    hook.update(enable=True, show=args.show, wait_time=args.wait_time, out_dir=args.show_dir, interval=args.interval)
    return cfg


#: what ``--out-item metrics`` writes (mmengine.dump's formats)
METRICS_FORMATS = ('.json', '.yaml', '.yml', '.pkl', '.pickle')

VISUALIZATION_TRIGGERS = {'mmdet': trigger_visualization_hook, 'mmseg': trigger_seg_visualization_hook,
                          'mmpretrain': trigger_cls_visualization_hook}


def _tta_defaults(cfg, scope):
    """The ``tta_model`` / ``tta_pipeline`` that the toolbox's own ``tools/test.py --tta`` fills in when a config has
    none, as (model, pipeline); None where that tool fills in nothing (mmseg)."""
    pipeline = copy.deepcopy(_leaf_datasets(cfg.test_dataloader.dataset)[0].pipeline)
    flips = [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)]
    if scope == 'mmpretrain':  # scores averaged over the image and its mirror; the config's packing step kept
        pipeline[-1] = dict(type='TestTimeAug', transforms=[flips, [pipeline[-1]]])
        return dict(type='mmpretrain.AverageClsScoreTTA'), pipeline
    if scope == 'mmdet':  # boxes of the image and its mirror merged by NMS
        pack = dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                                                     'flip', 'flip_direction'))
        pipeline[-1] = dict(type='TestTimeAug', transforms=[flips, [pack]])
        model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        return model, pipeline
    return None


def _leaf_datasets(dataset_cfg):
    """The datasets that read the data, through wrappers (``dataset``: RepeatDataset, ...) and concatenations
    (``datasets``: ConcatDataset): each takes the TTA pipeline."""
    if 'dataset' in dataset_cfg:
        return _leaf_datasets(dataset_cfg['dataset'])
    if 'datasets' in dataset_cfg:
        return [leaf for d in dataset_cfg['datasets'] for leaf in _leaf_datasets(d)]
    return [dataset_cfg]


def _test_evaluators(cfg) -> list:
    """The config's test evaluator(s) as a list (an evaluator may be given alone or as a list)."""
    evaluators = cfg.get('test_evaluator') or []
    return list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]


def _predicts_instance_masks(cfg) -> bool:
    """A detector with a mask head (Mask / Cascade Mask R-CNN, ...), or one evaluated on ``segm``."""
    def has_mask_head(node):
        if isinstance(node, dict):
            return node.get('mask_head') is not None or any(has_mask_head(v) for v in node.values())
        return isinstance(node, (list, tuple)) and any(has_mask_head(v) for v in node)

    metrics = set()
    for evaluator in _test_evaluators(cfg):
        metric = evaluator.get('metric') or []
        metrics.update([metric] if isinstance(metric, str) else metric)
    return has_mask_head(cfg.model) or 'segm' in metrics


def apply_tta(cfg, scope):
    """``--tta``: the model wrapped in the config's ``tta_model``, the test data read through its ``tta_pipeline``;
    where the config has none, the defaults of the toolbox's own tool (mmdet: ``DetTTAModel``, NMS over the image and
    its mirror; mmpretrain: ``AverageClsScoreTTA``), with mmdet's warning. mmdet's ``DetTTAModel`` merges boxes only
    (it asserts 'TTA of instance segmentation does not support now' at the first batch): refused before the Runner
    for a model that predicts instance masks."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if cfg.get(key) is None]
    defaults = _tta_defaults(cfg, scope) if missing else None
    for key, default in zip(('tta_model', 'tta_pipeline'), defaults or ()):
        if key in missing:
            if scope == 'mmdet':
                warnings.warn(f'Cannot find ``{key}`` in config, we will set it as default.')
            cfg[key] = default
    if cfg.get('tta_model') is None or cfg.get('tta_pipeline') is None:
        raise SystemExit('test.py: error: --tta needs `tta_model` and `tta_pipeline` in the config')
    tta_type = cfg.tta_model.get('type')
    tta_name = getattr(tta_type, '__name__', str(tta_type)).split('.')[-1]  # 'mmdet.DetTTAModel', or the class
    if scope == 'mmdet' and tta_name == 'DetTTAModel' and _predicts_instance_masks(cfg):
        raise SystemExit("test.py: error: --tta: mmdet's DetTTAModel merges boxes only, and this detector predicts "
                         'instance masks (mmdet stops at the first batch: "TTA of instance segmentation does not '
                         'support now"); test without --tta, or give a tta_model that merges masks')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    for dataset in _leaf_datasets(cfg.test_dataloader.dataset):
        dataset.pipeline = copy.deepcopy(cfg.tta_pipeline)


def main():
    args = parse_args()
    missing = missing_file_error('checkpoint', args.checkpoint)
    if missing:
        raise SystemExit(f'test.py: error: {missing}')
    cfg = load_tool_config('test.py', args)
    scope = config_scope(cfg)
    cfg.load_from = args.checkpoint
    apply_loader_defaults(cfg, args, ('test_dataloader', ), training=False)
    if args.amp:  # as mmpretrain's tools/test.py
        if scope == 'mmdet' and get_device() == 'cpu':
            raise SystemExit("test.py: error: --amp without a GPU runs bfloat16 (mmengine's CPU autocast), which "
                             "mmcv's compiled detection ops (RoIAlign, NMS) do not take: test without --amp on the "
                             'CPU')
        if cfg.get('test_cfg') is None:
            cfg.test_cfg = dict()
        cfg.test_cfg.fp16 = True
    if args.interval < 1:
        raise SystemExit(f'test.py: error: --interval must be a positive integer, got {args.interval}')
    if args.out_item and args.out is None:
        raise SystemExit('test.py: error: --out-item needs --out, the file to write')
    if args.out_item == 'metrics' and not args.out.endswith(METRICS_FORMATS):
        raise SystemExit(f"test.py: error: --out-item metrics writes {' / '.join(METRICS_FORMATS)} files, got "
                         f'--out {args.out}')
    metrics_file = args.out if args.out_item == 'metrics' else None
    pickled = args.out if not metrics_file and args.out is not None and args.out.endswith(('.pkl', '.pickle')) else None
    if args.out is not None and not (pickled or metrics_file):
        if scope != 'mmseg':
            raise SystemExit(f'test.py: error: --out must be a .pkl or .pickle file, got {args.out}')
        # mmseg's tools/test.py: --out DIR keeps the predicted label maps there (its IoUMetric's output_dir)
        reason = uncreatable_dir_reason(args.out)
        if reason:
            raise SystemExit(f'test.py: error: --out {args.out}: {reason}')
        for evaluator in _test_evaluators(cfg):
            evaluator.update(output_dir=args.out, keep_results=True)
    # the results are written after the whole evaluation, and must not replace what it reads
    check_output_file('test.py', pickled or metrics_file,
                      inputs={'config': args.config, 'checkpoint': args.checkpoint})

    if args.show or args.show_dir:
        cfg = VISUALIZATION_TRIGGERS.get(scope, trigger_visualization_hook)(cfg, args)

    if args.show_dir:  # detection paints under WORK_DIR/TIMESTAMP/DIR, the other toolboxes under DIR
        where = osp.join(cfg.work_dir, args.show_dir) if scope == 'mmdet' else args.show_dir
        reason = uncreatable_dir_reason(where)
        if reason:
            raise SystemExit(f'test.py: error: --show-dir {args.show_dir}: {reason}')

    if args.tta:
        apply_tta(cfg, scope)

    # fail early, in one line: the test dataset, and a checkpoint that cannot be read or whose classifier head has
    # another number of classes than the config's
    check_inputs('test.py', cfg, ('test', ), checkpoint=args.checkpoint)
    runner = build_runner(cfg)

    # add `DumpResults` dummy metric
    if pickled:
        dump = DumpDetResults if scope == 'mmdet' else DumpResults
        runner.test_evaluator.metrics.append(dump(out_file_path=pickled))

    # start testing
    metrics = runner.test()
    if metrics_file and is_main_process():  # as mmpretrain's tools/test.py, written once
        # numpy scalars (mmseg's IoUMetric) as plain numbers: YAML would tag them as Python objects
        mmengine.dump({k: v.item() if hasattr(v, 'item') and getattr(v, 'ndim', None) == 0 else v
                       for k, v in metrics.items()}, metrics_file)
        print(f'test.py: the metrics are in {metrics_file}')


if __name__ == '__main__':
    main()
