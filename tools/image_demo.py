"""Detect and segment the objects of one image with a trained detector and draw the result.

    python tools/image_demo.py IMAGE CONFIG CHECKPOINT --out OUT.png [--score-thr 0.3] [--device cpu]
        [--cfg-options k=v ...]

Thin wrapper over mmdet's ``init_detector`` / ``inference_detector`` and ``DetLocalVisualizer`` (the shape of
mmdet 3.x ``demo/image_demo.py``) plus ``import stvit_det``. Nothing is downloaded: the backbone's ``init_cfg`` is
dropped and every weight comes from ``CHECKPOINT``; class names come from the checkpoint's ``dataset_meta``
(mmdet's Runner saves them) or the config's test dataset. Annotation loading is removed from the test pipeline.
"""
import argparse
import os
import os.path as osp
import sys

import cv2
import mmcv

import stvit_det  # noqa: F401  (registers STViTR)
from mmdet.apis import inference_detector, init_detector
from mmdet.evaluation import get_classes
from mmdet.registry import DATASETS, VISUALIZERS
from stvit_det.datasets.pipelines import without_annotation_loading
from stvit_det.toolboxes.scope import CfgOptionsAction, ConfigError, config_scope, load_config as load_toolbox_config
from stvit_det.utils import allow_checkpoint_globals
from stvit_det.utils.paths import missing_file_error, read_image
from stvit_det.utils.values import unit_float

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _launch import check_device, check_inputs, check_output_file  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Draw the detections and masks of a detector on one image')
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='detector config')
    parser.add_argument('checkpoint', help='detector checkpoint (a local file)')
    parser.add_argument('--out', required=True, help='output image (PNG / JPG)')
    parser.add_argument('--score-thr', type=unit_float, default=0.3, help='draw detections scoring at least this')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda:0'")
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, help='override config settings')
    return parser.parse_args()


def load_config(path, cfg_options=None):
    cfg = load_toolbox_config(path, cfg_options, need_model=True)
    if 'dataset' not in (cfg.get('test_dataloader') or {}):  # e.g. a _base_/models file
        raise ConfigError(f'{path} defines no test_dataloader.dataset (the demo takes its test pipeline and class '
                          'names)')
    if 'backbone' in cfg.model:
        cfg.model.backbone.init_cfg = None  # weights come from the checkpoint only
    dataset = cfg.test_dataloader.dataset
    dataset.pipeline = without_annotation_loading(dataset.pipeline)  # inference has no labels
    return cfg


def main():
    args = parse_args()
    for what, path in (('image', args.image), ('config', args.config), ('checkpoint', args.checkpoint)):
        missing = missing_file_error(what, path)  # also a folder, a download URL
        if missing:
            raise SystemExit(f'image_demo.py: error: {missing}')
    if not cv2.haveImageWriter(args.out):  # mmcv.imwrite (OpenCV) picks the format by the extension
        raise SystemExit(f'image_demo.py: error: --out {args.out}: not an image file name OpenCV can write (use '
                         '.png or .jpg)')
    # before anything is read: the drawing must not replace the image, config or checkpoint it comes from
    check_output_file('image_demo.py', args.out, inputs={'image': args.image, 'config': args.config,
                                                         'checkpoint': args.checkpoint})
    check_device('image_demo.py', args.device)
    try:
        image = read_image(args.image)  # (H, W, 3) BGR
    except ValueError as e:
        raise SystemExit(f'image_demo.py: error: {e}') from None
    image = mmcv.bgr2rgb(image)  # (H, W, 3), RGB for the visualiser
    try:
        cfg = load_config(args.config, args.cfg_options)
    except ConfigError as e:
        raise SystemExit(f'image_demo.py: error: {e}') from None
    scope = config_scope(cfg)
    if scope != 'mmdet':
        raise SystemExit(f"image_demo.py: error: {args.config} is an {scope} config (default_scope='{scope}'): this "
                         'tool draws detections; paint segmentation or classification results with tools/test.py '
                         'CONFIG CHECKPOINT --show-dir DIR')
    # one line, before anything runs, for a model the config cannot build and a checkpoint that does not fit it
    # (mmengine would only log the misfits and draw with random heads)
    check_inputs('image_demo.py', cfg, phases=(), checkpoint=args.checkpoint, strict=True)
    allow_checkpoint_globals()  # Runner checkpoints under torch.load(weights_only=True)
    model = init_detector(cfg, args.checkpoint, device=args.device)
    test_meta = DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=True)).metainfo
    if tuple(model.dataset_meta['classes']) == tuple(get_classes('coco')) != tuple(test_meta['classes']):
        model.dataset_meta = dict(test_meta)  # the checkpoint has no dataset_meta: init_detector guessed COCO
    result = inference_detector(model, args.image)

    visualizer = VISUALIZERS.build(cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample(
        'result', image, data_sample=result, draw_gt=False, show=False, out_file=args.out,
        pred_score_thr=args.score_thr)
    kept = int((result.pred_instances.scores >= args.score_thr).sum())
    print(f'wrote {args.out}: {kept} of {len(result.pred_instances)} detections at score >= {args.score_thr}')


if __name__ == '__main__':
    sys.exit(main())
