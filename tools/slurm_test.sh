#!/usr/bin/env bash
# Testing on a Slurm cluster with srun, one task per GPU (the shape of MMDetection 3.3's tools/slurm_test.sh).
#
#   [GPUS=16] bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options, e.g. --out r.pkl]
#
# Environment: GPUS (8, tasks in total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun options),
# PORT (MASTER_PORT, default 29500), PYTHON (see tools/_srun.sh).
source "$(dirname "${BASH_SOURCE[0]}")/_srun.sh"
stvit_positional 'PARTITION JOB_NAME CONFIG CHECKPOINT' \
    'bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]' "$@"
stvit_srun "$1" "$2" test.py "$3" "$4" --launcher=slurm "${@:5}"
