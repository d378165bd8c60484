#!/usr/bin/env bash
# Idempotent set-up of a virtual environment with everything stvit_det needs, on a bare CPU machine.
#
#   bash tools/install.sh            # creates ./.venv (or $STVIT_VENV): runtime, test and demo-data deps
#
# A second run checks a stamp file and returns in seconds. The compiled mmcv wheel is kept in
# $STVIT_CACHE (default ~/.cache/stvit_det/wheels), so a fresh clone re-installs without rebuilding it.
#
# Why each step is here:
#  1. torch==2.13.0+cpu first (the CPU build, named by its local label: the CI machines' wheel directory holds it;
#     public PyPI serves only CUDA builds, so elsewhere give PyTorch's CPU index:
#     STVIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash tools/install.sh); every later pip call passes
#     requirements/constraints.txt so that timm does not drag in a newer CUDA torch.
#  2. mmcv 2.1.0 (mmdet 3.3 refuses 2.2) has no wheel for this torch: it is compiled once with its C++
#     ops (RoIAlign / NMS, needed by Mask R-CNN), without debug info (5 min instead of 16 on 2 cores).
#  3. The only torchvision on the index is a CUDA build; its compiled ops fail to load against CPU torch
#     and `import torchvision` then dies registering fake kernels for `torchvision::nms` /
#     `torchvision::qnms` (schemas that never got defined). timm and mmengine's Runner import
#     torchvision, so we install a tiny start-up hook (a .pth file in the venv) that defines those two
#     operator schemas ONLY when torchvision's extension cannot be loaded. The package itself carries
#     no such workaround; with a working torchvision the hook does nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${STVIT_VENV:-$root/.venv}
cache=${STVIT_CACHE:-$HOME/.cache/stvit_det/wheels}
req=$root/requirements
stamp=$venv/.stvit_installed
want=$(cat "$req"/*.txt "$root/setup.cfg" "$root/tools/install.sh" | sha1sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import stvit_det" 2>/dev/null; then
  echo "[install] environment up to date: $venv"
  exit 0
fi

echo "[install] setting up $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py=$venv/bin/python
pip=("$py" -m pip install -q --disable-pip-version-check)
con=(-c "$req/constraints.txt")

torch_index=()
if [ -n "${STVIT_TORCH_INDEX:-}" ]; then
  torch_index=(--extra-index-url "$STVIT_TORCH_INDEX")
fi
"${pip[@]}" "${torch_index[@]}" torch==2.13.0+cpu
"${pip[@]}" "${con[@]}" -r "$req/build.txt" "numpy<2"

mkdir -p "$cache"
mmcv_whl=$(ls "$cache"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$mmcv_whl" ]; then
  echo "[install] compiling mmcv 2.1.0 with ops (about 5 minutes on 2 cores, once)"
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="-DNDEBUG -O3 -g0" CXXFLAGS="-DNDEBUG -O3 -g0" \
    "$py" -m pip wheel -q --no-deps --no-build-isolation "${con[@]}" -w "$cache" mmcv==2.1.0
  mmcv_whl=$(ls "$cache"/mmcv-2.1.0-*.whl | head -n1)
fi
"${pip[@]}" "${con[@]}" "$mmcv_whl"
"${pip[@]}" "${con[@]}" -r "$req/runtime.txt" -r "$req/tests.txt"
# demo data source: stardist ships the nuclei image + label mask; read by path, never imported (no TensorFlow)
"${pip[@]}" "${con[@]}" --no-deps -r "$req/demo.txt"

# --- MMPretrain (ImageNet classification with STViTR: configs/stvit-r-cls, stvit_det/toolboxes/mmpretrain_glue.py) ---
"${pip[@]}" "${con[@]}" -r "$req/mmpretrain.txt"
# --- end MMPretrain ---

# torchvision start-up hook (see 3. above)
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$root/tools/_tv_cpu_fix.py" "$site/_stvit_tv_cpu_fix.py"
echo "import _stvit_tv_cpu_fix" > "$site/_stvit_tv_cpu_fix.pth"
"$py" -c "import mmpretrain, mmpretrain.models; print('[install] mmpretrain', mmpretrain.__version__)"

# --- MMSegmentation (semantic segmentation with STViTR: configs/stvit-r-seg, stvit_det/toolboxes/mmseg_glue.py) ---
# mmseg 1.2.2 accepts mmcv 2.1.0; it imports ftfy / regex without declaring them (requirements/seg.txt). Checked
# here with its models, datasets and visualiser imported (after the torchvision hook above: mmseg.models needs it).
"${pip[@]}" "${con[@]}" -r "$req/seg.txt"
"$py" -c "import mmseg, mmseg.models, mmseg.datasets, mmseg.visualization; print('[install] mmseg', mmseg.__version__)"
# --- end MMSegmentation ---

# --- ONNX export (stvit_det/deployment, tools/deployment/export_onnx.py): onnx, onnxruntime, onnxscript ---
# Direct export, not MMDeploy: mmdeploy 1.3.1 pins protobuf<=3.20.2 (onnx 1.23 / onnxruntime 1.32 need newer), calls
# torch.onnx.export with torch 2.13's dynamo default and imports torch.onnx internals that are gone (see README).
"${pip[@]}" "${con[@]}" -r "$req/deploy.txt"
"$py" -c "import onnx, onnxruntime, onnxscript
print('[install] onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__, 'onnxscript', onnxscript.__version__)"
# --- end ONNX export ---

"${pip[@]}" "${con[@]}" --no-deps --no-build-isolation -e "$root"

"$py" - <<'PY'
import torch, torchvision, timm, mmcv, mmengine, mmdet
from mmcv.ops import RoIAlign, nms  # compiled ops present
import stvit_det
print(f'[install] torch {torch.__version__} torchvision {torchvision.__version__} timm {timm.__version__} '
      f'mmcv {mmcv.__version__} mmengine {mmengine.__version__} mmdet {mmdet.__version__}')
PY
echo "$want" > "$stamp"
