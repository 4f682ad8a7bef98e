"""The one JupyterHub configuration of beamside.

``jupyterhub -f .../beamside_hub/jupyterhub_config.py`` with ``BEAMSIDE_RUNTIME``
naming the runtime file that ``beamside up`` writes, or that the Helm chart renders (settings, paths,
secrets). Every option comes from :mod:`beamside_hub.settings`; nothing here
is specific to one machine.
"""

# ruff: noqa: F821  (`c` is provided by JupyterHub)
from __future__ import annotations

import os
import sys

from beamside_hub.runtime import configure_hub, load_runtime

configure_hub(get_config(), load_runtime(os.environ["BEAMSIDE_RUNTIME"]), python=sys.executable)
