"""The one JupyterHub configuration of beamside.

``jupyterhub -f .../beamside_hub/jupyterhub_config.py`` with ``BEAMSIDE_RUNTIME``
naming the runtime file that ``beamside up`` writes (settings, paths,
secrets). Every option comes from :mod:`beamside_hub.settings`; nothing here
is specific to one machine.
"""

# ruff: noqa: F821  (`c` is provided by JupyterHub)
from __future__ import annotations

import json
import os
import sys

from beamside_hub.runtime import configure_hub

with open(os.environ["BEAMSIDE_RUNTIME"]) as _f:
    _runtime = json.load(_f)

configure_hub(get_config(), _runtime, python=sys.executable)
