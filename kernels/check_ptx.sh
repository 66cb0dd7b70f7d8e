#!/bin/sh
# Checks that kernels/ptx/*.ptx is what NVRTC 12.2 builds from kernels/cuda/*.cu
# and that ptxas accepts it for every target architecture (see build_ptx.py).
#
# Installs the two pinned NVIDIA wheels (NVRTC and ptxas, no GPU or CUDA toolkit
# needed) into a venv that is created once and reused:
#   RIGD_PTX_VENV  venv directory (default: ${XDG_CACHE_HOME:-$HOME/.cache}/rigd-ptx-venv)
#   PYTHON         interpreter that creates it (default: python3, 3.11 or newer)
# Rebuild the PTX after editing a .cu file with "$RIGD_PTX_VENV/bin/python
# kernels/build_ptx.py" once this script has created the venv.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv=${RIGD_PTX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rigd-ptx-venv}
python=${PYTHON:-python3}
wheels="nvidia-cuda-nvrtc-cu12==12.2.140 nvidia-cuda-nvcc-cu12==12.2.140"
stamp="$venv/rigd-wheels"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wheels" ]; then
    echo "check_ptx: installing $wheels into $venv" >&2
    rm -f "$stamp"
    "$python" -m venv "$venv"
    # shellcheck disable=SC2086 # word splitting of the pinned list is intended
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --only-binary=:all: $wheels
    echo "$wheels" >"$stamp"
fi

exec "$venv/bin/python" "$here/build_ptx.py" --check
