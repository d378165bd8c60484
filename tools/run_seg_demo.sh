#!/usr/bin/env bash
# The segmentation demo beside tools/run_demo.sh: install everything if needed, build the embedded nuclei dataset
# with semantic label maps (background / nucleus), train UperNet + a small STViT-R from scratch on it with
# tools/train.py, evaluate mIoU on the held-out quadrant with tools/test.py and paint the prediction over the image
# (mmseg's SegLocalVisualizer: ground truth left, prediction right).
#   bash tools/run_seg_demo.sh [WORK_DIR]        (default work_dirs/seg_demo)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/install.sh
py=${STVIT_VENV:-$root/.venv}/bin/python
config=configs/stvit-r-seg/stvit-r-demo_upernet_1xb4-400_nuclei-224x224.py
work_dir=${1:-work_dirs/seg_demo}
start=$(date +%s)
"$py" tools/make_demo_dataset.py --semantic
"$py" tools/train.py "$config" --work-dir "$work_dir"
ckpt=$(cat "$work_dir/last_checkpoint")
"$py" tools/test.py "$config" "$ckpt" --work-dir "$work_dir/test" --show-dir "$work_dir/vis" 2>&1 | tee "$work_dir/test.log"
png=$(find "$work_dir/vis" -name '*nuclei_val_000*.png' | head -n1)
miou=$(grep -o 'mIoU: [0-9.]*' "$work_dir/test.log" | tail -n1)
echo "[seg demo] done in $(( $(date +%s) - start )) s (after set-up); held-out quadrant ${miou:-mIoU: ?}; checkpoint: $ckpt; picture: $png"
