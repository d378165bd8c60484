#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (the shape of MMDetection 3.3's tools/dist_train.sh).
#
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py options, e.g. --amp --resume --cfg-options k=v ...]
#
# One process per GPU. Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
# PYTHON (default: the environment of tools/install.sh, $STVIT_VENV or .venv, when it exists, else python).
# Two nodes of 8 GPUs:
#   node 0: NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash tools/dist_train.sh CONFIG 8
#   node 1: NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash tools/dist_train.sh CONFIG 8

CONFIG=$1
GPUS=$2
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
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
