# Sourced by tools/_torchrun.sh (for dist_train.sh, dist_test.sh) and tools/_srun.sh (slurm_train.sh, slurm_test.sh):
# unless PYTHON names an interpreter, use the environment tools/install.sh made ($STVIT_VENV, else the repository's
# .venv) when it exists, else `python`.
if [ -z "${PYTHON:-}" ]; then
    _stvit_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    _stvit_venv=${STVIT_VENV:-$_stvit_root/.venv}
    if [ -x "$_stvit_venv/bin/python" ]; then PYTHON="$_stvit_venv/bin/python"; else PYTHON=python; fi
fi
