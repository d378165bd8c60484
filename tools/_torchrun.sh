# Sourced by tools/dist_train.sh and tools/dist_test.sh (the shape of MMDetection 3.3's scripts of those names).
#
#   stvit_torchrun USAGE NUM_PROCS SCRIPT [SCRIPT's arguments ...]
#
# runs tools/SCRIPT under torchrun with NUM_PROCS processes per node, on the interpreter tools/_python.sh chooses.
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500). NUM_PROCS is a positive integer
# or one of torchrun's words (auto, cpu, gpu, xpu); anything else (a missing one, the checkpoint path in its place)
# ends with USAGE before torchrun starts.
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # PYTHON: the environment of tools/install.sh by default

stvit_torchrun() {
    local usage=$1 nproc=$2 script=$3
    shift 3
    if ! [[ "$nproc" =~ ^([1-9][0-9]*|auto|cpu|gpu|xpu)$ ]]; then
        echo "error: NUM_PROCS must be a positive integer (or auto, cpu, gpu, xpu), not '$nproc'; usage: $usage" >&2
        exit 2
    fi
    local tools
    tools=$(dirname "${BASH_SOURCE[0]}")
    PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m torch.distributed.run \
        --nnodes="${NNODES:-1}" \
        --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --nproc_per_node="$nproc" \
        --master_port="${PORT:-29500}" \
        "$tools/$script" "$@"
}
