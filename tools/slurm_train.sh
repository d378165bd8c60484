#!/usr/bin/env bash
# Training on a Slurm cluster with srun, one task per GPU (the shape of MMDetection 3.3's tools/slurm_train.sh;
# detection, segmentation and classification configs alike: WORK_DIR comes fourth, as in mmdet's and mmpretrain's).
#
#   [GPUS=16] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options ...]
#
# Environment: GPUS (8, tasks in total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun options),
# PORT (MASTER_PORT, default 29500), PYTHON (see tools/_srun.sh).
source "$(dirname "${BASH_SOURCE[0]}")/_srun.sh"
stvit_positional 'PARTITION JOB_NAME CONFIG WORK_DIR' \
    'bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]' "$@"
stvit_srun "$1" "$2" train.py "$3" --work-dir="$4" --launcher=slurm "${@:5}"
