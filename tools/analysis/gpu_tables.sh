#!/usr/bin/env bash
# The GPU checks of the speed work in one run (for a session that has a CUDA device; nothing here runs on CI):
#   1. the CUDA tests: FlexAttention's forward and backward against the oracle (tests/test_flex_attention.py) and
#      every other attention path on the device (tests/test_fast_paths.py -k cuda);
#   2. the GPU tables: STViT-R-T / -S against mmdet's Swin-T / -S, backbone, bf16, batch 8, inference eager and
#      compiled, then a training step; STViT-R with its default attention ('auto') and with attn_impl='flex'.
# Usage: bash tools/analysis/gpu_tables.sh [SHAPE_H SHAPE_W]   (default 800 1216; 1344 2016 is measured too)
# Needs the package's environment with a CUDA build of torch (the python on PATH).
set -uo pipefail
cd "$(dirname "$0")/../.."

H=${1:-800}
W=${2:-1216}
SWT=mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py
SWS=mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py
T=configs/stvit-r/mask-rcnn_stvit-r-t_fpn_1x_coco.py
S=configs/stvit-r/mask-rcnn_stvit-r-s_fpn_1x_coco.py
FLEX=@model.backbone.attn_impl=flex
B="python tools/analysis/benchmark.py --device cuda --batch-size 8 --dtype bf16 --mode backbone --warmup 3 --repeats 10"
status=0

python - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), 'no CUDA device: these are the GPU checks'
print(torch.__version__, torch.cuda.get_device_name())
EOF

echo "== CUDA tests"
python -m pytest -q -p no:cacheprovider tests/test_flex_attention.py || status=1
python -m pytest -q -p no:cacheprovider tests/test_fast_paths.py -k cuda || status=1

for pair in "$SWT $T" "$SWS $S"; do
    set -- $pair
    echo "== inference, eager: $1 vs $2 (auto, flex)"
    $B "$1" "$2" "$2$FLEX" --shape "$H" "$W" --shape 1344 2016 || status=1
    echo "== inference, torch.compile"
    $B "$1" "$2" "$2$FLEX" --shape "$H" "$W" --compile || status=1
    echo "== training step, eager"
    $B "$1" "$2" "$2$FLEX" --shape "$H" "$W" --train || status=1
done
exit $status
