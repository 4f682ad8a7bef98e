#!/usr/bin/env bash
# All set-up for a fresh machine: the virtual environment with beamside and its
# test tools. Called by `make setup` (and so by `make up` and `make test`).
set -euo pipefail
PYTHON_SYS=${PYTHON_SYS:-/usr/bin/python3.11}
VENV=${VENV:-.venv}
quiet_pip() {  # this machine's pip config names local indexes that may not exist: hide that noise only
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}
[ -x "$VENV/bin/python" ] || "$PYTHON_SYS" -m venv "$VENV"
quiet_pip install -q -U pip
quiet_pip install -q -e '.[dev]'
"$VENV/bin/python" -c 'import analysis_lib, h5py, hdf5plugin, pyFAI, dask.distributed'
