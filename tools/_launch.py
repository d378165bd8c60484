"""What ``tools/train.py`` and ``tools/test.py`` share: the launcher arguments, loading the config as the toolbox's
own tools do (``--cfg-options``, launcher, work dir), the early input checks that end in one line, and the Runner.

    args = parser.parse_args(); set_local_rank(args)
    cfg = load_tool_config('train.py', args)
    check_inputs('train.py', cfg, phases=('train', 'val'), checkpoint=cfg.get('load_from'))
    build_runner(cfg).train()

No model logic lives here: the networks come from the configs, through the registries of their toolbox.
"""
import argparse
import difflib
import inspect
import os
import os.path as osp
from typing import Callable, Collection, Mapping, Optional, Sequence

import torch
from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config, ConfigDict
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS, LOOPS, RUNNERS
from mmengine.runner import EpochBasedTrainLoop, FlexibleRunner, IterBasedTrainLoop, Runner, TestLoop, ValLoop

import stvit_det  # noqa: F401  (registers STViTR)
from stvit_det.datasets import DatasetCheckError, check_dataset_cfgs, check_seg_dataset_cfgs
from stvit_det.datasets.cls_check import check_cls_dataset_cfgs, classifier_config_problem
from stvit_det.toolboxes.scope import (CfgOptionsAction, ConfigError, apply_cfg_options, config_scope,
                                      init_toolbox_scope, load_config)
from stvit_det.utils import allow_checkpoint_globals, prepare_cpu_distributed
from stvit_det.utils.ckpt_file import (CheckpointError, check_backbone_init_checkpoint, check_checkpoint_for_config,
                                      model_tensor_shapes)
from stvit_det.utils.errors import first_line
from stvit_det.utils.paths import is_storage_path, uncreatable_dir_reason, unwritable_reason
from stvit_det.utils.values import is_count, is_finite_number, is_int


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``, as in MMDetection 3.3's tools."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will be merged into '
        'config file. If the value to be overwritten is a list, it should be like key="[a,b]" or key=a,b It also '
        'allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the quotation marks are necessary and '
        'that no white space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    # torch.distributed.launch / torchrun of PyTorch >= 2.0 pass `--local-rank` instead of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def set_local_rank(args: argparse.Namespace) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def load_tool_config(tool: str, args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the command line applied, as the toolboxes' tools build it.

    Also allow-lists the classes mmengine stores in checkpoints for ``torch.load(weights_only=True)`` and raises
    dynamo's cache limit (mmdet's tools do). Ends with ``TOOL: error: ...`` for a missing config file, one that
    does not execute or defines no model, a config whose toolbox (e.g. mmseg) is not installed, ``--cfg-options``
    that cannot be merged, a ``--launcher`` that cannot start here and a work dir that cannot be made.
    """
    if not osp.isfile(args.config):
        raise SystemExit(f'{tool}: error: config file not found: {args.config}')
    allow_checkpoint_globals()
    setup_cache_size_limit_of_dynamo()  # fewer repeated compilations
    try:
        cfg = load_config(args.config, need_model=True)
        cfg.launcher = args.launcher
        problem = new_run_key_problem(cfg, args.cfg_options)
        if problem:
            raise SystemExit(f'{tool}: error: {problem}')
        apply_cfg_options(cfg, args.cfg_options)  # after the launcher, as mmdet's tools do
    except ConfigError as e:
        raise SystemExit(f'{tool}: error: {e}') from None
    prepare_cpu_distributed(cfg, args.launcher, tool)  # DDP over gloo when there is no GPU (mmengine assumes CUDA)
    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    reason = uncreatable_dir_reason(cfg.work_dir)
    if reason:
        raise SystemExit(f'{tool}: error: work dir {cfg.work_dir}: {reason}')
    return cfg


def add_loader_args(parser: argparse.ArgumentParser, persistent_workers: bool = True) -> None:
    """MMPretrain 1.2's ``--no-pin-memory`` (and, for training, ``--no-persistent-workers``), here for every
    toolbox's config: see :func:`apply_loader_defaults`."""
    parser.add_argument('--no-pin-memory', action='store_true',
                        help='disable the pin_memory option of the dataloaders')
    if persistent_workers:
        parser.add_argument('--no-persistent-workers', action='store_true',
                            help='disable the persistent_workers option of the dataloaders')


def apply_loader_defaults(cfg: Config, args: argparse.Namespace, fields: Sequence[str], training: bool) -> None:
    """What MMPretrain 1.2's ``tools/train.py`` / ``tools/test.py`` add to the dataloaders of its configs, which
    state none of it: ``pin_memory=True``, ``collate_fn=dict(type='default_collate')`` (batches of tensors, where
    mmengine's default keeps lists) and, for training, ``persistent_workers=True`` (workers kept between epochs;
    here only with ``num_workers > 0``, where PyTorch allows it). A value the config states wins, the ``--no-*``
    flags win over both; other toolboxes' configs get only the flags (mmdet's dataset bases keep their workers)."""
    pretrain = config_scope(cfg) == 'mmpretrain'
    for field in fields:
        loader = cfg.get(field)
        if not isinstance(loader, Mapping):
            continue
        merged = ConfigDict(pin_memory=True, collate_fn=dict(type='default_collate')) if pretrain else ConfigDict()
        if pretrain and training and is_int(loader.get('num_workers')) and loader['num_workers'] > 0:
            merged.persistent_workers = True
        merged.update(loader)
        if args.no_pin_memory:
            merged.pin_memory = False
        if training and args.no_persistent_workers:
            merged.persistent_workers = False
        cfg[field] = merged


#: top-level settings read by the Runner (``Runner.from_cfg`` and the methods reading ``runner.cfg``; also
#: FlexibleRunner's) and by these tools, beyond those a config states
RUN_KEYS = frozenset(
    set(inspect.signature(Runner.__init__).parameters) | set(inspect.signature(FlexibleRunner.__init__).parameters)
    | {'runner_type', 'custom_imports', 'tta_model', 'tta_pipeline', 'sync_bn', 'model_wrapper_cfg',
       'find_unused_parameters', 'efficient_conv_bn_eval', 'compile', 'activation_checkpointing',
       'init_weights_for_test_or_val'}) - {'self', 'cfg'}


def _did_you_mean(name: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ''


def new_run_key_problem(cfg: Config, cfg_options: Optional[Mapping]) -> Optional[str]:
    """An option of ``--cfg-options`` whose first key neither the config has nor the Runner reads
    (``trian_cfg.max_iters=2``): merged in, it would be read by nothing and the run would go on as configured."""
    if _runner_class(cfg) not in (Runner, FlexibleRunner):  # another Runner reads what it will
        return None
    for key in cfg_options or {}:
        first = key.split('.', 1)[0]
        if first not in cfg and first not in RUN_KEYS:
            return (f"--cfg-options {key}: the config has no '{first}', and the Runner reads no such setting: a "
                    f'typo?{_did_you_mean(first, set(cfg.keys()) | RUN_KEYS)}')
    return None


def _named(fn: Callable, skip: Collection[str] = ()) -> set:
    """The arguments ``fn`` takes by name, less ``skip``."""
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {'self', *skip}


def _keywords(fn: Callable, skip: Collection[str] = ()) -> Optional[set]:
    """The keyword arguments ``fn`` takes, less ``skip``; None when it takes any (``**kwargs``)."""
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        return None
    return _named(fn, skip)


def _unknown_setting(settings: Mapping, accepted: Optional[Collection[str]], where: str, owner: str,
                     extra: Collection[str] = ()) -> Optional[str]:
    if accepted is None:
        return None
    for key in settings:
        if key not in accepted and key not in extra and key not in ('type', '_scope_'):  # _scope_: of a base's
            return f"{where}.{key}: {owner} takes no '{key}'{_did_you_mean(key, accepted)}"
    return None


def _registered(registry, type_) -> Optional[type]:
    """The class a config's ``type`` names (a class itself in new-style configs), looked up as the Runner builds it
    (the default scope's registry first, e.g. mmseg's hooks, then mmengine's); None when not found."""
    if isinstance(type_, type):
        return type_
    if not isinstance(type_, str):
        return None
    try:
        with registry.switch_scope_and_registry(None) as scoped:
            found = scoped.get(type_)
    except Exception:  # noqa: BLE001 - a module that fails to import: the Runner will say so, not this check
        return None
    return found if isinstance(found, type) else None  # a registered function takes what it takes


def _runner_class(cfg: Config) -> type:
    """The class of the config's ``runner_type`` (mmengine's ``Runner`` without one, or when it is not found)."""
    return _registered(RUNNERS, cfg.get('runner_type', 'Runner')) or Runner


#: the loops the Runner builds from train_cfg / val_cfg / test_cfg without a ``type``, and the arguments it
#: gives them itself
DEFAULT_LOOPS = {'train_cfg': ('train', ('runner', 'dataloader')), 'val_cfg': ('val', ('runner', 'dataloader',
                 'evaluator')), 'test_cfg': ('test', ('runner', 'dataloader', 'evaluator'))}


def settings_problem(cfg: Config, phases: Sequence[str]) -> Optional[str]:
    """A setting that the class it configures does not take, named with the likely meant one: in the loops of
    ``phases`` (``train_cfg.max_iter``: a traceback once the Runner has started) and in the hooks
    (``default_hooks.checkpoint.intervl``: mmengine's CheckpointHook passes what it does not know on to
    ``Runner.save_checkpoint``, which fails at the first save, after the training up to it)."""
    init_toolbox_scope(config_scope(cfg))  # the toolbox's own loops and hooks, e.g. mmdet's visualisation hook
    runner_cls = _runner_class(cfg)
    for key, (phase, given) in DEFAULT_LOOPS.items():
        loop = cfg.get(key)
        builder = f'build_{phase}_loop'
        if (phase not in phases or not isinstance(loop, Mapping)
                or getattr(runner_cls, builder, None) not in (getattr(Runner, builder),
                                                              getattr(FlexibleRunner, builder))):
            continue  # a Runner of its own may read other loop settings
        if 'type' in loop:
            cls = _registered(LOOPS, loop['type'])
        elif key == 'train_cfg':
            cls = EpochBasedTrainLoop if loop.get('by_epoch') else IterBasedTrainLoop
        else:
            cls = ValLoop if key == 'val_cfg' else TestLoop
        if cls is not None:
            extra = ('by_epoch', ) if key == 'train_cfg' and 'type' not in loop else ()
            problem = _unknown_setting(loop, _keywords(cls.__init__, given), key, cls.__name__, extra)
            if problem:
                return problem
    default_hooks = cfg.get('default_hooks') or {}
    for name, hook in default_hooks.items():  # a misspelt name merges in a hook without a type (a traceback)
        if isinstance(hook, Mapping) and 'type' not in hook:
            known = [k for k, h in default_hooks.items() if isinstance(h, Mapping) and 'type' in h]
            return (f"default_hooks.{name} has no type: the config's default hooks are {', '.join(known)}"
                    f'{_did_you_mean(name, known)}')
    hooks = [(f'default_hooks.{name}', hook) for name, hook in default_hooks.items()]
    hooks += [(f'custom_hooks[{i}]', hook) for i, hook in enumerate(cfg.get('custom_hooks') or [])]
    for where, hook in hooks:
        cls = _registered(HOOKS, hook.get('type')) if isinstance(hook, Mapping) else None
        if cls is None:
            continue
        accepted = _keywords(cls.__init__)
        saving = accepted is None and issubclass(cls, CheckpointHook)  # its **kwargs go to save_checkpoint
        if saving and 'train' in phases:  # (a test or validation run never saves)
            passed = ('out_dir', 'filename', 'file_client_args', 'save_optimizer', 'save_param_scheduler', 'meta',
                      'by_epoch', 'backend_args')  # by the hook itself
            saves = _keywords(runner_cls.save_checkpoint, passed)
            # the arguments of CheckpointHook and of any subclass between it and cls (theirs reach it by **kwargs)
            own = set().union(*(_named(c.__init__) for c in cls.__mro__
                                if issubclass(c, CheckpointHook) and '__init__' in vars(c)))
            accepted = None if saves is None else own | saves
        problem = _unknown_setting(hook, accepted, where, cls.__name__, extra=('priority', ))  # popped by the Runner
        if problem:
            return problem + ('; mmengine would pass it on to Runner.save_checkpoint, which fails at the first save, '
                              'after the training up to it' if saving else '')
    return None


def _non_negative_int(v) -> bool:
    return is_int(v) and v >= 0


def _non_negative_number(v) -> bool:
    return is_finite_number(v) and v >= 0


#: run settings that mmengine / torch use deep inside the Runner (a value of the wrong type ends there in a
#: traceback, minutes in for a validation interval): (key, predicate, what it must be, phase that uses it)
RUN_VALUES = (
    ('train_cfg.max_iters', is_count, 'a positive integer', 'train'),
    ('train_cfg.max_epochs', is_count, 'a positive integer', 'train'),
    ('train_cfg.val_interval', is_count, 'a positive integer', 'train'),
    ('train_dataloader.batch_size', is_count, 'a positive integer', 'train'),
    ('train_dataloader.num_workers', _non_negative_int, 'an integer >= 0', 'train'),
    ('val_dataloader.batch_size', is_count, 'a positive integer', 'val'),
    ('val_dataloader.num_workers', _non_negative_int, 'an integer >= 0', 'val'),
    ('test_dataloader.batch_size', is_count, 'a positive integer', 'test'),
    ('test_dataloader.num_workers', _non_negative_int, 'an integer >= 0', 'test'),
    ('optim_wrapper.optimizer.lr', _non_negative_number, 'a number >= 0', 'train'),
    ('optim_wrapper.optimizer.weight_decay', _non_negative_number, 'a number >= 0', 'train'),
    ('default_hooks.checkpoint.interval', is_int, 'an integer (-1: never)', 'train'),
    ('default_hooks.logger.interval', is_count, 'a positive integer', 'train'),
    ('auto_scale_lr.base_batch_size', is_count, 'a positive integer', 'train'),
)


def launch_rank() -> int:
    """This process's rank in a run torchrun launched (``RANK``, set before any process group exists; torchrun stops
    every process when one fails), else 0 (also under slurm, whose other tasks would wait for a failed rank 0)."""
    value = os.environ.get('RANK', '')
    return int(value) if value.isdigit() else 0


def run_value_problem(cfg: Config, phases: Sequence[str]) -> Optional[str]:
    """The first setting of :data:`RUN_VALUES` used by ``phases`` that the config sets to a value of the wrong type
    or range (``--cfg-options train_cfg.max_iters=ten``), named with its value; None when all are fine (a setting
    the config does not have is not checked: mmengine's defaults apply)."""
    for key, valid, what, phase in RUN_VALUES:
        if phase not in phases:
            continue
        node = cfg
        for part in key.split('.'):
            node = node.get(part) if isinstance(node, (Config, Mapping)) else None
            if node is None:
                break
        if node is not None and not valid(node):
            return f'{key} must be {what}, got {node!r}'
    return None


def check_inputs(tool: str, cfg: Config, phases: Sequence[str], checkpoint: Optional[str] = None,
                 strict: Optional[bool] = None, resume: bool = False) -> None:
    """Fail early, in one line, on a model the config cannot build (a value its constructor refuses, an unknown
    type), on missing / malformed annotation files, image directories and label maps of the given phases, and on a
    checkpoint that cannot be read or does not fit the config's model (mmengine would only log the misfits and go
    on with random tensors): strictly for evaluation and resuming (``strict``, default ``test.py``: every tensor,
    nothing else), loosely for fine-tuning (``train.py``: see :func:`check_checkpoint_for_config`). For training,
    also the file of an STViTR backbone's ``init_cfg=Pretrained`` (:func:`check_backbone_init_checkpoint`); with
    ``resume``, that the checkpoint is one of a training run. First, the run settings of :data:`RUN_VALUES`
    (:func:`run_value_problem`), settings the loops and hooks do not take (:func:`settings_problem`) and an
    MMPretrain config's class counts (:func:`classifier_config_problem`)."""
    problem = run_value_problem(cfg, phases) or settings_problem(cfg, phases) or classifier_config_problem(cfg, phases)
    if problem:
        raise SystemExit(f'{tool}: error: {problem}')
    try:
        shapes = model_tensor_shapes(cfg)  # built once, on the meta device
    except (ValueError, TypeError, KeyError, AssertionError) as e:
        raise SystemExit(f'{tool}: error: the config\'s model cannot be built: {first_line(e)}') from None
    try:
        if 'train' in phases:  # first: a COCO config without its ImageNet weights says so before the data
            check_backbone_init_checkpoint(cfg)
        if launch_rank() == 0:  # torchrun's other processes leave the data to rank 0: a problem stops it, and
            check_dataset_cfgs(cfg, phases=phases)  # torchrun the rest (one message; the files read once, not once
            check_seg_dataset_cfgs(cfg, phases=phases)  # per GPU)
            check_cls_dataset_cfgs(cfg, phases=phases)
        if checkpoint and not is_storage_path(checkpoint):  # s3:// and the like: mmengine reads it, we cannot
            report = check_checkpoint_for_config(cfg, checkpoint, strict=tool == 'test.py' if strict is None else
                                                 strict, shapes=shapes, resume=resume)
            if report.get('not_resumed'):  # mmengine starts these afresh without a word (save_optimizer=False)
                print(f"{tool}: warning: {checkpoint} has no {' and no '.join(report['not_resumed'])} state: the run "
                      'continues from its weights and iteration with these started afresh (AdamW moments from '
                      'zero), not exactly where it stopped', flush=True)
    except (DatasetCheckError, CheckpointError) as e:
        raise SystemExit(f'{tool}: error: {e}') from None


def check_output_file(tool: str, path: Optional[str], inputs: Optional[Mapping[str, Optional[str]]] = None) -> None:
    """One line for an output file that cannot be written, or is the same file as one of the tool's ``inputs``
    (``{'checkpoint': CKPT, ...}``: the output would replace it), before the work that fills it."""
    reason = unwritable_reason(path, inputs) if path else None
    if reason:
        raise SystemExit(f'{tool}: error: cannot write {path}: {reason}')


def check_device(tool: str, device: str) -> None:
    """One line for a ``--device`` that torch does not know (``tpu``) or this machine lacks (``cuda`` without a
    CUDA device, ``cuda:3`` of two), instead of a traceback from the first tensor moved there."""
    try:
        parsed = torch.device(device)
    except RuntimeError:  # torch lists its 20 device types
        raise SystemExit(f'{tool}: error: --device {device}: not a device name; use cpu or cuda[:N]') from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit(f'{tool}: error: --device {device}: no CUDA device available (use cpu)')
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise SystemExit(f'{tool}: error: --device {device}: there are {torch.cuda.device_count()} CUDA devices')
    elif parsed.type != 'cpu':
        raise SystemExit(f'{tool}: error: --device {device}: this tool runs on cpu or cuda[:N]')


def build_runner(cfg: Config) -> Runner:
    """The default Runner, or the config's ``runner_type`` from the registry."""
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
