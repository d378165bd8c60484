"""Which OpenMMLab toolbox a config belongs to, and a clear error when that toolbox is not installed.

A config says its toolbox through ``default_scope`` (``'mmdet'``, ``'mmseg'``, ``'mmpretrain'``) and usually
inherits the toolbox's own configs (``_base_ = 'mmseg::...'``). The tools (``tools/train.py``, ``tools/test.py``,
``tools/analysis``) load every config through :func:`load_config`, so a segmentation config used where
MMSegmentation is missing stops with one line naming the config, the toolbox and how to install it, instead of
mmengine's "mmsegmentation is not installed" from inside its base resolution, or a registry miss later on. The
other ways a config cannot be used end the same way, as a :class:`ConfigError` the tools print in one line: a file
that does not execute (a syntax error), no ``model`` where a tool needs one, ``--cfg-options`` that cannot be parsed
(:class:`CfgOptionsAction`, at the command line) or merged (:func:`apply_cfg_options`).
"""
import argparse
import contextlib
import copy
import importlib
import importlib.util
import os.path as osp
from typing import Any, Optional, Tuple

from mmengine.config import Config, DictAction

from ..utils.errors import error_summary, first_line

#: scope -> (import name, distribution, toolbox name, requirement file that installs it)
TOOLBOX_PACKAGES = {
    'mmdet': ('mmdet', 'mmdet', 'MMDetection', 'requirements/runtime.txt'),
    'mmseg': ('mmseg', 'mmsegmentation', 'MMSegmentation', 'requirements/seg.txt'),
    'mmpretrain': ('mmpretrain', 'mmpretrain', 'MMPretrain', 'requirements/mmpretrain.txt'),
}
DEFAULT_SCOPE = 'mmdet'


class ConfigError(RuntimeError):
    """A config that cannot be used; the message names the file or the options and the reason, in one line."""


class ToolboxMissingError(ConfigError):
    """A config needs an OpenMMLab toolbox that is not installed (or cannot be imported)."""


def toolbox_installed(scope: str) -> bool:
    """Whether the toolbox of ``scope`` can be found (without importing it)."""
    module = TOOLBOX_PACKAGES.get(scope, (scope, ))[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing(path: str, scope: str, how: str) -> ToolboxMissingError:
    module, dist, name, req = TOOLBOX_PACKAGES.get(scope, (scope, scope, scope, None))
    install = (f'`bash tools/install.sh` installs it ({req})' if req else f'install `{dist}`')
    return ToolboxMissingError(f'{path} {how}, but {name} (`{module}`) is not installed; {install}')


def import_toolbox(scope: str, path: str, how: str):
    """The toolbox module of ``scope``, imported.

    Raises:
        ToolboxMissingError: naming ``path`` (``how`` it needs the toolbox) when the toolbox is not installed, or is
            installed but fails to import (e.g. mmseg's own assertion on the mmcv version).
    """
    if not toolbox_installed(scope):
        raise _missing(path, scope, how)
    module, _, name, req = TOOLBOX_PACKAGES.get(scope, (scope, scope, scope, None))
    try:
        return importlib.import_module(module)
    except (ImportError, AssertionError) as e:  # OpenMMLab packages assert their mmcv / mmengine versions
        fix = f'; `bash tools/install.sh` installs the versions that work together ({req})' if req else ''
        raise ToolboxMissingError(f'{path} {how}, but {name} (`{module}`) is installed and fails to import: '
                                  f'{error_summary(e)}{fix}') from None


def resolve_config_path(path: str) -> str:
    """``'mmseg::swin/x.py'`` -> that config inside the installed toolbox (``.mim/configs``); other paths unchanged.

    Raises:
        ToolboxMissingError: when the toolbox is not installed.
        ConfigError: for a prefix that names no toolbox (``mmdett::``), known or installed.
    """
    if '::' not in path:
        return path
    scope, rel = path.split('::', 1)
    if scope not in TOOLBOX_PACKAGES and not toolbox_installed(scope):
        raise ConfigError(f"{path}: '{scope}::' names no toolbox; the prefixes are "
                          f"{', '.join(f'{s}::' for s in TOOLBOX_PACKAGES)} (a config shipped with that toolbox)")
    toolbox = import_toolbox(scope, path, 'is a config of that toolbox')
    return osp.join(osp.dirname(toolbox.__file__), '.mim', 'configs', rel)


def load_config(path: str, cfg_options: Optional[dict] = None, need_model: bool = False) -> Config:
    """``Config.fromfile(path)`` plus ``cfg_options``, with a clear error when the config's toolbox is missing.
    ``path`` may also name a toolbox's own config, e.g. ``'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'``.

    Raises:
        ToolboxMissingError: when ``path`` inherits ``<scope>::`` configs of a toolbox that is not installed (or
            fails to import), or its ``default_scope`` names one.
        ConfigError: naming ``path`` when executing it fails (a syntax error, a name it does not define, a missing
            ``_base_`` file), when it defines no ``model`` and ``need_model``, or naming the ``cfg_options`` that
            cannot be merged into it.
    """
    full = resolve_config_path(path)
    try:
        cfg = Config.fromfile(full)
    except Exception as e:  # noqa: BLE001 - executing a config raises anything: SyntaxError, NameError, ImportError
        # mmengine wraps a failing custom_imports in "Failed to import custom modules from {...}": the cause is inside
        custom = isinstance(e, ImportError) and 'custom modules' in str(e)
        cause = e
        while custom and (cause.__cause__ or cause.__context__) is not None:  # mmengine re-raises twice, the real
            cause = cause.__cause__ or cause.__context__  # error ("No module named ...") innermost
        if isinstance(cause, ModuleNotFoundError):  # mmengine: "mmsegmentation is not installed, please install ..."
            for scope, (module, dist, _, _) in TOOLBOX_PACKAGES.items():
                if f'{dist} is not installed' in str(cause) or getattr(cause, 'name', None) == module:
                    raise _missing(path, scope, f'inherits `{scope}::` configs') from None
        if isinstance(cause, SyntaxError) and cause.lineno:
            why = f'SyntaxError: {cause.msg} (line {cause.lineno})'
        else:
            why = error_summary(cause)
        what = 'its custom_imports fail' if custom else 'not a readable config'
        raise ConfigError(f'{path}: {what}: {why}') from None
    apply_cfg_options(cfg, cfg_options)
    if need_model and 'model' not in cfg:
        raise ConfigError(f'{path} defines no `model` (a _base_ fragment?)')
    scope = config_scope(cfg)
    import_toolbox(scope, path, f"has default_scope='{scope}'")
    return cfg


def apply_cfg_options(cfg: Config, cfg_options: Optional[dict], source: str = '--cfg-options') -> None:
    """Merge ``cfg_options`` (given as ``source``: ``--cfg-options``, or a tool's ``@key=value`` overrides) into
    ``cfg`` (in place).

    Raises:
        ConfigError: naming the options when they cannot be merged (a key under a None, an index into a tuple).
    """
    if not cfg_options:
        return
    try:
        cfg.merge_from_dict(cfg_options)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
        shown = ' '.join(f'{k}={v}' for k, v in cfg_options.items())
        raise ConfigError(f'{source} {shown} cannot be applied to this config: {first_line(e)}') from None


def parse_cfg_option(item: str) -> Tuple[str, Any]:
    """``'a.b=[1,2]'`` -> ``('a.b', [1, 2])``, the value parsed as mmengine's ``DictAction`` parses it.

    Raises:
        ValueError: naming ``item`` when it is not ``key=value`` or its brackets do not balance (where mmengine
            raises a bare ValueError or AssertionError).
    """
    key, sep, value = item.partition('=')
    if not sep or not key:
        raise ValueError(f"must be key=value, got '{item}'")
    dict_value = ValueError(f"cannot parse '{item}': a dict(...) value is not parsed (it would stay a string): give "
                            f'dict keys one by one ({key}.a=1 {key}.b=2; a list item: {key}.0.a=1)')
    if _holds_dict_text(value):  # mmengine keeps 'dict(a=1)' a string, recurses for ever on 'dict(a=1,b=2)'
        raise dict_value
    try:
        parsed = DictAction._parse_iterable(value)
    except (AssertionError, ValueError) as e:  # mmengine asserts balanced brackets
        raise ValueError(f"cannot parse '{item}': {first_line(e)}") from None
    except RecursionError:  # mmengine recurses for ever on dict(a=1,b=2) or [1,2],[3,4]
        raise ValueError(f"cannot parse '{item}' (mmengine's parser recursed without end): give dict keys one by one "
                         '(a.b=1 a.c=2), and nested values outer brackets (a=[[1,2],[3,4]])') from None
    if _holds_dict_text(parsed):  # [dict(type=EMAHook)]: a list of strings
        raise dict_value
    return key, parsed


def _holds_dict_text(value: Any) -> bool:
    """Whether a parsed --cfg-options value holds a ``dict(...)`` left as text (inside a list or tuple)."""
    if isinstance(value, str):
        return value.replace(' ', '').startswith('dict(')
    return isinstance(value, (list, tuple)) and any(_holds_dict_text(v) for v in value)


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``--cfg-options k=v ...``) whose malformed items end as the parser's one-line
    ``error: argument --cfg-options: ...`` instead of a traceback from inside argparse."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = copy.copy(getattr(namespace, self.dest, None) or {})
        for item in values or ():
            try:
                key, value = parse_cfg_option(item)
            except ValueError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            options[key] = value
        setattr(namespace, self.dest, options)


def config_scope(cfg: Config) -> str:
    """The toolbox scope of a loaded config (``default_scope``; mmdet when unset, as for the detection configs)."""
    return cfg.get('default_scope') or DEFAULT_SCOPE


def init_toolbox_scope(scope: str) -> None:
    """Make ``scope`` the default registry scope and register all modules of its toolbox (what the Runner does),
    so that ``mmengine.registry.MODELS.build`` finds e.g. ``EncoderDecoder`` and ``STViTR`` for ``'mmseg'``."""
    from mmengine.registry import init_default_scope

    init_default_scope(scope)
    utils = importlib.import_module(f'{scope}.utils')
    utils.register_all_modules(init_default_scope=False)


def drop_init_cfgs(node) -> None:
    """Set every ``init_cfg`` of a (nested) model config to None, in place: no pretrained file, no URL (mmdet's Swin
    configs point at one). Used by the tools that build models only to measure, convert or export them."""
    if isinstance(node, dict):
        for key in node:
            if key == 'init_cfg':
                node[key] = None
            else:
                drop_init_cfgs(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            drop_init_cfgs(item)


def build_bare_model(cfg: Config, model_cfg: Optional[dict] = None, meta: bool = False, check_fit: bool = True):
    """Build ``cfg.model`` (or ``model_cfg``, an edited copy of it) through the registry of the config's toolbox with
    every ``init_cfg`` dropped: random weights, no file read, nothing downloaded. With ``meta``, on the meta device
    (no memory, no initialisation; models that read tensor values while they are built raise there).

    Used by the tools that build models only to measure, convert, check or export them.

    Raises:
        ValueError: also, with ``check_fit`` (off for callers that use the backbone alone), for a neck or head that
            cannot read the maps of an STViTR backbone
            (:func:`~stvit_det.toolboxes.feature_fit.feature_fit_problem`), which the model would only meet in its
            first forward.
    """
    import torch
    from mmengine.registry import MODELS

    from .feature_fit import feature_fit_problem

    init_toolbox_scope(config_scope(cfg))  # the registry of the config's toolbox, as the Runner uses
    model_cfg = copy.deepcopy(cfg.model if model_cfg is None else model_cfg)
    drop_init_cfgs(model_cfg)
    with torch.device('meta') if meta else contextlib.nullcontext():
        model = MODELS.build(model_cfg)
    problem = feature_fit_problem(model) if check_fit else None
    if problem:
        raise ValueError(problem)
    return model
