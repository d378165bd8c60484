# Sourced by tools/slurm_train.sh and tools/slurm_test.sh (the shape of MMDetection 3.3's scripts of those names).
#
#   stvit_positional "NAME1 NAME2 ..." USAGE "$@"   the script's leading arguments: each one given and not an option,
#                                                  else one line with USAGE, exit 2 (before srun is called)
#   stvit_srun PARTITION JOB_NAME SCRIPT [SCRIPT's arguments ...]
#
# Environment: GPUS (8, tasks in total), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun options),
# PORT (MASTER_PORT; mmengine reads SLURM_PROCID / SLURM_NTASKS and takes the master address from the node list),
# PYTHON (default: the environment of tools/install.sh, $STVIT_VENV or .venv, when it exists, else python).
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # PYTHON: the environment of tools/install.sh by default

stvit_positional() {
    local names=($1) usage=$2 i arg
    shift 2
    for ((i = 0; i < ${#names[@]}; i++)); do
        arg=${1-}
        if [ -z "$arg" ]; then
            echo "error: ${names[$i]} is missing; usage: $usage" >&2
            exit 2
        elif [[ "$arg" == -* ]]; then  # an option in its place (mmseg's script has no WORK_DIR): refuse, not run
            echo "error: ${names[$i]} expected, got the option '$arg'; usage: $usage" >&2
            exit 2
        fi
        shift
    done
}

stvit_srun() {
    local partition=$1 job_name=$2 script=$3 tools
    shift 3
    tools=$(dirname "${BASH_SOURCE[0]}")
    if [ -n "${PORT:-}" ]; then
        export MASTER_PORT=$PORT
    fi
    set -x
    PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
    srun -p "$partition" \
        --job-name="$job_name" \
        --gres=gpu:"${GPUS_PER_NODE:-8}" \
        --ntasks="${GPUS:-8}" \
        --ntasks-per-node="${GPUS_PER_NODE:-8}" \
        --cpus-per-task="${CPUS_PER_TASK:-5}" \
        --kill-on-bad-exit=1 \
        ${SRUN_ARGS:-} \
        "$PYTHON" -u "$tools/$script" "$@"
}
