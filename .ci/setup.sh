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

# The reference configurable-http-proxy (node), into an ignored tooling folder.
if [ ! -x .tooling/chp/node_modules/.bin/configurable-http-proxy ]; then
  mkdir -p .tooling/chp
  npm install --silent --no-audit --no-fund --prefix .tooling/chp configurable-http-proxy@5 >/dev/null
fi
# bubblewrap isolates each user's processes (only installable, and only needed, as root).
if [ "$(id -u)" = 0 ] && ! command -v bwrap >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null
fi
