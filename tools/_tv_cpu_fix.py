"""Start-up hook installed by ``tools/install.sh`` into the virtual environment (not part of stvit_det).

The only torchvision wheel on the package index is a CUDA build. Against the CPU build of torch its compiled
extension (``torchvision/_C.so``) fails to load; torchvision then still registers fake (meta) kernels for
``torchvision::nms`` and ``torchvision::qnms`` with ``torch.library.register_fake``, which raises
``RuntimeError: operator torchvision::nms does not exist`` and makes ``import torchvision`` (and so timm and
mmengine's Runner) fail.

This hook waits for the first ``import torchvision``, tries to load the extension exactly as torchvision would,
and ONLY if that fails defines the two operator schemas (without any kernel), so the import succeeds. Pure-Python
torchvision (transforms, models) then works; calling ``torchvision.ops.nms`` raises torchvision's own
"Couldn't load custom C++ ops" error. With a working torchvision the hook does nothing. It imports nothing at
interpreter start-up besides ``sys`` and ``importlib``.
"""
import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = (
    'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
)


def _define_missing_schemas(package_dir):
    import glob

    import torch

    for lib in glob.glob(os.path.join(package_dir, '_C*.so')):
        try:
            torch.ops.load_library(lib)
            return  # the extension works: nothing to do
        except (ImportError, OSError):
            pass
    global _LIB
    _LIB = torch.library.Library('torchvision', 'FRAGMENT')  # kept alive for the process lifetime
    for schema in _SCHEMAS:
        try:
            _LIB.define(schema)
        except RuntimeError:  # already defined
            pass


class _Finder(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path=None, target=None):
        if name != 'torchvision':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):
            _define_missing_schemas(list(spec.submodule_search_locations)[0])
            original_exec(module)

        spec.loader.exec_module = exec_module
        return spec


if 'torchvision' not in sys.modules:
    sys.meta_path.insert(0, _Finder())
