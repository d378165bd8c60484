"""Which OpenMMLab toolbox a config belongs to, and a clear error when that toolbox is not installed.

A config says its toolbox through ``default_scope`` (``'mmdet'``, ``'mmseg'``, ``'mmpretrain'``) and usually
inherits the toolbox's own configs (``_base_ = 'mmseg::...'``). The tools (``tools/train.py``, ``tools/test.py``,
``tools/analysis``) load every config through :func:`load_config`, so a segmentation config used where
MMSegmentation is missing stops with one line naming the config, the toolbox and how to install it, instead of
mmengine's "mmsegmentation is not installed" from inside its base resolution, or a registry miss later on.
"""
import contextlib
import copy
import importlib
import importlib.util
import os.path as osp
from typing import Optional

from mmengine.config import Config

#: scope -> (import name, distribution, toolbox name, requirement file that installs it)
TOOLBOX_PACKAGES = {
    'mmdet': ('mmdet', 'mmdet', 'MMDetection', 'requirements/runtime.txt'),
    'mmseg': ('mmseg', 'mmsegmentation', 'MMSegmentation', 'requirements/seg.txt'),
    'mmpretrain': ('mmpretrain', 'mmpretrain', 'MMPretrain', 'requirements/mmpretrain.txt'),
}
DEFAULT_SCOPE = 'mmdet'


class ToolboxMissingError(RuntimeError):
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        fix = f'; `bash tools/install.sh` installs the versions that work together ({req})' if req else ''
        raise ToolboxMissingError(f'{path} {how}, but {name} (`{module}`) is installed and fails to import: '
                                  f'{type(e).__name__}: {first}{fix}') from None


def resolve_config_path(path: str) -> str:
    """``'mmseg::swin/x.py'`` -> that config inside the installed toolbox (``.mim/configs``); other paths unchanged.

    Raises:
        ToolboxMissingError: when the toolbox is not installed.
    """
    if '::' not in path:
        return path
    scope, rel = path.split('::', 1)
    toolbox = import_toolbox(scope, path, 'is a config of that toolbox')
    return osp.join(osp.dirname(toolbox.__file__), '.mim', 'configs', rel)


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """``Config.fromfile(path)`` plus ``cfg_options``, with a clear error when the config's toolbox is missing.
    ``path`` may also name a toolbox's own config, e.g. ``'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'``.

    Raises:
        ToolboxMissingError: when ``path`` inherits ``<scope>::`` configs of a toolbox that is not installed (or
            fails to import), or its ``default_scope`` names one.
    """
    try:
        cfg = Config.fromfile(resolve_config_path(path))
    except ModuleNotFoundError as e:  # mmengine: "mmsegmentation is not installed, please install ..."
        for scope, (module, dist, _, _) in TOOLBOX_PACKAGES.items():
            if f'{dist} is not installed' in str(e) or getattr(e, 'name', None) == module:
                raise _missing(path, scope, f'inherits `{scope}::` configs') from None
        raise
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = config_scope(cfg)
    import_toolbox(scope, path, f"has default_scope='{scope}'")
    return cfg


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


def build_bare_model(cfg: Config, model_cfg: Optional[dict] = None, meta: bool = False):
    """Build ``cfg.model`` (or ``model_cfg``, an edited copy of it) through the registry of the config's toolbox with
    every ``init_cfg`` dropped: random weights, no file read, nothing downloaded. With ``meta``, on the meta device
    (no memory, no initialisation; models that read tensor values while they are built raise there).

    Used by the tools that build models only to measure, convert, check or export them.
    """
    import torch
    from mmengine.registry import MODELS

    init_toolbox_scope(config_scope(cfg))  # the registry of the config's toolbox, as the Runner uses
    model_cfg = copy.deepcopy(cfg.model if model_cfg is None else model_cfg)
    drop_init_cfgs(model_cfg)
    with torch.device('meta') if meta else contextlib.nullcontext():
        return MODELS.build(model_cfg)
