#!/usr/bin/env bash
# Distributed testing with torchrun (the shape of MMDetection 3.3's tools/dist_test.sh).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py options, e.g. --out results.pkl --cfg-options k=v]
#
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (default: the
# environment of tools/install.sh, $STVIT_VENV or .venv, when it exists, else python).

source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
stvit_torchrun 'bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py options]' "$3" test.py \
    "$1" "$2" --launcher pytorch "${@:4}"
