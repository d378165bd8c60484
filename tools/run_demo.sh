#!/usr/bin/env bash
# README command 1 (the main job): install everything if needed, build the embedded nuclei dataset, train an
# STViT-R Mask R-CNN on it with tools/train.py and evaluate COCO bbox / segm mAP on the held-out quadrant with
# tools/test.py.
#   bash tools/run_demo.sh [WORK_DIR]        (default work_dirs/demo)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/install.sh
py=${STVIT_VENV:-$root/.venv}/bin/python
config=configs/stvit-r/mask-rcnn_stvit-r-demo_fpn_nuclei.py
work_dir=${1:-work_dirs/demo}
start=$(date +%s)
"$py" tools/make_demo_dataset.py
"$py" tools/train.py "$config" --work-dir "$work_dir"
ckpt=$(cat "$work_dir/last_checkpoint")
"$py" tools/test.py "$config" "$ckpt" --work-dir "$work_dir/test"
echo "[demo] done in $(( $(date +%s) - start )) s (after set-up); checkpoint: $ckpt"
