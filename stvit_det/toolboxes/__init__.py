"""Make the ONE ``STViTR`` class buildable from the configs of other OpenMMLab toolboxes.

``import stvit_det`` registers ``STViTR`` into ``mmdet.registry.MODELS`` (``models/backbones/stvit_r.py``). An
MMSegmentation or MMPretrain config builds its backbone from its own registry (scope ``mmseg`` / ``mmpretrain``),
which does not see mmdet's. Each submodule here registers the same class object (no copy, no subclass) into one
toolbox's ``MODELS`` registry, and is imported only when that toolbox is installed, so detection users need
neither.
"""
import importlib
import importlib.util
import warnings
from typing import List

#: toolbox package -> submodule of this package with a ``register()`` function
TOOLBOXES = {'mmseg': 'mmseg_glue', 'mmpretrain': 'mmpretrain_glue'}


def register_toolboxes() -> List[str]:
    """Register ``STViTR`` into every installed toolbox of :data:`TOOLBOXES`; returns the toolboxes reached.

    An installed but unusable toolbox (one that rejects the installed mmcv at import: mmseg's and mmpretrain's
    ``__init__`` assert the versions) only warns: ``import stvit_det`` must keep working for detection, and a config
    of that toolbox then stops with the import error (``toolboxes/scope.py``).
    """
    reached = []
    for package, module in TOOLBOXES.items():
        if importlib.util.find_spec(package) is None:
            continue
        if importlib.util.find_spec(f'{__name__}.{module}') is None:  # glue not written (yet) for this toolbox
            continue
        glue = importlib.import_module(f'{__name__}.{module}')
        if getattr(glue, 'register', None) is None:
            continue
        try:
            glue.register()
        except (ImportError, AssertionError) as e:
            warnings.warn(f'{package} is installed but cannot be imported ({type(e).__name__}: {e}); STViTR is not '
                          f'registered for its configs')
            continue
        reached.append(package)
    return reached
