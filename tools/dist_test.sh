#!/usr/bin/env bash
# Distributed testing with torchrun (the shape of MMDetection 3.3's tools/dist_test.sh).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py options, e.g. --out results.pkl --cfg-options k=v]
#
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (default: the
# environment of tools/install.sh, $STVIT_VENV or .venv, when it exists, else python).

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # PYTHON: the environment of tools/install.sh by default

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
