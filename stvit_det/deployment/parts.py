"""What ``tools/deployment/export_onnx.py`` exports: a detector built from its config (and checkpoint), and the
module of one part of it, with the names of its graph inputs and outputs.

Parts (:data:`PARTS`):

* ``'backbone'``: ``detector.backbone`` (STViT-R or any mmdet backbone); image -> ``out{i}`` feature maps.
* ``'backbone+neck'``: ``detector.extract_feat``; image -> ``p{i}`` FPN maps.
* ``'detector'``: the whole two-stage inference of ``two_stage.TwoStageExport``; image -> boxes, scores, labels,
  masks.
* ``'segmentor'``: the whole inference of an MMSegmentation ``EncoderDecoder`` (``segmentor.SegmentorExport``,
  whole or slide mode as the config says); image -> logits, labels.
* ``'classifier'``: the whole inference of an MMPretrain ``ImageClassifier`` (``classifier.ClassifierExport``);
  image -> scores, labels.

The image input is the *preprocessed* tensor (normalised, padded), as the model's ``data_preprocessor`` returns it.
Checkpoints must fit the config exactly: a missing, unexpected or differently shaped tensor is an error that names
the tensors (a deployed model must not silently run with random weights).
"""
import copy
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..datasets.pipelines import without_annotation_loading
from ..toolboxes.feature_fit import feature_fit_problem
from ..toolboxes.scope import (ConfigError, config_scope, drop_init_cfgs, init_toolbox_scope, load_config,
                               resolve_config_path)
from ..utils.errors import error_summary, is_out_of_memory
from ..utils.paths import missing_file_error
from .onnx_export import ExportError

PARTS = ('backbone', 'backbone+neck', 'detector', 'segmentor', 'classifier')


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model built from the config."""


def check_part(part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"unknown part '{part}': choose one of {', '.join(PARTS)}")
    return part


def _model_state(checkpoint) -> Dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointMismatchError('the checkpoint holds no state dict (a dict of tensors, or one under '
                                      "'state_dict')")
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in checkpoint.items()}


def _names(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _part_hint(model: nn.Module, unexpected: Sequence[str]) -> str:
    """Say so when the unexpected keys are a part of ``model`` without its prefix (a backbone's own checkpoint given
    for a detector: ``norm0.weight`` for ``backbone.norm0.weight``); '' otherwise."""
    own = model.state_dict()
    for part, _ in model.named_children():
        matched = sum(f'{part}.{k}' in own for k in unexpected)
        if unexpected and matched >= len(unexpected) / 2:
            return (f". {matched} of the unexpected tensors are the model's '{part}.' ones without that prefix: "
                    f'the file holds the {part} alone; give a checkpoint of the whole model (a {part} checkpoint '
                    f"goes into model.{part}.init_cfg=dict(type='Pretrained', checkpoint=PATH) for training)")
    return ''


def load_exact(model: nn.Module, path: str) -> None:
    """Load a checkpoint that must fit ``model`` exactly.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointMismatchError: a file that cannot be read (truncated, not a checkpoint, objects the weights-only
            unpickler refuses), or naming the tensors whose shapes differ, that are missing or unexpected.
    """
    from ..utils.ckpt_file import CheckpointError, read_checkpoint

    missing = missing_file_error('checkpoint', path)
    if missing:
        raise FileNotFoundError(missing)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointMismatchError(str(e)) from None
    state = _model_state(checkpoint)
    own = model.state_dict()
    shape = [f'{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})' for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    problems = []
    if shape:
        problems.append(f'{len(shape)} tensors with another shape: {_names(shape)}')
    if missing:
        problems.append(f'{len(missing)} tensors missing: {_names(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected tensors: {_names(unexpected)}')
    if problems:
        raise CheckpointMismatchError(f'checkpoint {path} does not fit the config: ' + '; '.join(problems)
                                      + _part_hint(model, unexpected))
    model.load_state_dict(state, strict=False)


def build_detector(config: str, checkpoint: Optional[str] = None, cfg_options: Optional[dict] = None):
    """Build the model of a config (a detector; also a segmentor or classifier: ``mmseg::`` / ``mmpretrain::``
    configs and ours, in the registry of the config's toolbox, as the Runner builds them) in eval mode from a config
    path, and load ``checkpoint`` exactly.

    Without a checkpoint the weights are random (every ``init_cfg`` dropped, nothing is downloaded) but seeded, so
    that two exports of a config make the same file; the caller's random state is left as it was.

    Returns:
        (model, Config).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS

    import stvit_det  # noqa: F401  (registers STViTR)

    try:
        if not osp.isfile(resolve_config_path(config)):
            raise FileNotFoundError(f'config file not found: {config}')
        cfg = load_config(config, cfg_options, need_model=True)
    except ConfigError as e:  # not Python, no model, options that do not merge, its toolbox missing
        raise ValueError(str(e)) from None
    init_toolbox_scope(config_scope(cfg))  # its test pipeline (--image) is built in the same scope
    model_cfg = copy.deepcopy(cfg.model)
    drop_init_cfgs(model_cfg)
    try:
        with torch.random.fork_rng(devices=[]):  # CPU generator only: the weights do not depend on a GPU
            torch.manual_seed(0)
            model = revert_sync_batchnorm(MODELS.build(model_cfg))
    except (KeyError, TypeError) as e:  # a type not in the registry, an argument the class does not take
        raise ValueError(f'{config}: cannot build its model: {error_summary(e)}') from None
    if checkpoint:
        load_exact(model, checkpoint)
    return model.eval(), cfg


class BackboneNeck(nn.Module):
    """``detector.extract_feat`` as a module returning a tuple of maps."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.detector.extract_feat(image))


def build_part(detector: nn.Module, part: str, shape: Tuple[int, int],
               img_shape: Optional[Tuple[int, int]] = None) -> Tuple[nn.Module, List[str], List[str], bool]:
    """The module to export for ``part``, its input / output names, and whether its batch can be dynamic.

    Args:
        detector: from :func:`build_detector` (a segmentor for ``'segmentor'``, a classifier for ``'classifier'``).
        part: one of :data:`PARTS`.
        shape: (H, W) of the network input.
        img_shape: detector only: the image extent inside the input (box clipping); default ``shape``.
    """
    check_part(part)
    if min(shape) < 1:
        raise ValueError(f'input shape must be positive, got {tuple(shape)}')
    problem = feature_fit_problem(detector) if part != 'backbone' else None  # the backbone alone needs no neck
    if problem:
        raise ExportError(problem)
    try:
        with torch.no_grad():
            if part == 'backbone':
                module = detector.backbone
                n = len(module(torch.zeros(1, 3, *shape)))
                return module, ['image'], [f'out{i}' for i in range(n)], True
            if part == 'backbone+neck':
                module = BackboneNeck(detector)
                n = len(module(torch.zeros(1, 3, *shape)))
                return module, ['image'], [f'p{i}' for i in range(n)], True
        from .classifier import ClassifierExport, is_classifier
        from .segmentor import SegmentorExport, is_segmentor
        from .two_stage import TwoStageExport

        if part in ('segmentor', 'classifier'):
            module = SegmentorExport(detector) if part == 'segmentor' else ClassifierExport(detector)
            with torch.no_grad():  # a head that does not fit the backbone, a size the model cannot take
                module(torch.zeros(1, 3, *shape))
            return module, ['image'], list(module.output_names), True
        for is_kind, kind in ((is_segmentor, 'segmentor'), (is_classifier, 'classifier')):
            if is_kind(detector):
                raise ExportError(f'--part detector: {type(detector).__name__} is a {kind}; its whole inference '
                                  f'exports with --part {kind}')
        return TwoStageExport(detector, shape, img_shape), ['image'], ['boxes', 'scores', 'labels', 'masks'], False
    except ExportError:  # a detector component the export does not express: already named
        raise
    except (RuntimeError, AssertionError) as e:  # a neck whose in_channels do not fit the backbone's outputs
        if is_out_of_memory(e):  # the size, not the model: the caller says so
            raise
        raise ValueError(f'the {part} does not run on a (1, 3, {shape[0]}, {shape[1]}) input: '
                         f'{error_summary(e)}') from None


def preprocess_image(detector: nn.Module, cfg, image_path: str) -> Tuple[torch.Tensor, object]:
    """Run the config's test pipeline (annotation loading removed) and the model's data preprocessor on one image
    file (detection, segmentation and classification configs: the pipeline is built in the config's scope by
    :func:`build_detector`).

    Returns:
        (inputs (1, 3, H, W), the data sample with its metainfo: ``img_shape``, ``scale_factor``, ...).

    Raises:
        FileNotFoundError: no such file; ValueError: the pipeline cannot read it (not an image, truncated).
    """
    from mmcv.transforms import Compose

    missing = missing_file_error('image', image_path)
    if missing:
        raise FileNotFoundError(missing)
    try:
        pipeline = Compose(without_annotation_loading(cfg.test_dataloader.dataset.pipeline))
    except Exception as e:  # noqa: BLE001 - no test_dataloader; a transform of another toolbox (KeyError)
        raise ValueError(f"--image needs the config's test pipeline (test_dataloader.dataset.pipeline), and this "
                         f"config's cannot be built here ({error_summary(e)}); without --image the input is a "
                         'random tensor') from None
    try:
        data = pipeline(dict(img_path=image_path, img_id=0))
    except Exception as e:  # noqa: BLE001 - mmcv's loader asserts ('failed to load image'); decoders raise others
        raise ValueError(f'{image_path}: the test pipeline cannot read it ({type(e).__name__}: {e})') from None
    batch = detector.data_preprocessor(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
    return batch['inputs'], batch['data_samples'][0]
