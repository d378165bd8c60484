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

source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
stvit_torchrun 'bash tools/dist_train.sh CONFIG NUM_PROCS [train.py options]' "$2" train.py \
    "$1" --launcher pytorch "${@:3}"
