#!/usr/bin/env bash
# Training on a Slurm cluster with srun, one task per GPU (the shape of MMDetection 3.3's tools/slurm_train.sh).
#
#   [GPUS=16] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options ...]
#
# Environment: GPUS (8, tasks in total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun options),
# PYTHON (default: the environment of tools/install.sh, $STVIT_VENV or .venv, when it exists, else python).
# mmengine reads SLURM_PROCID / SLURM_NTASKS and takes the master address from the node list; PORT sets
# MASTER_PORT (default 29500).

set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # PYTHON: the environment of tools/install.sh by default
PY_ARGS=("${@:5}")  # an array: arguments with spaces stay whole

if [ -n "$PORT" ]; then
    export MASTER_PORT=$PORT
fi

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$(dirname "$0")/train.py" "${CONFIG}" --work-dir="${WORK_DIR}" --launcher="slurm" "${PY_ARGS[@]}"
