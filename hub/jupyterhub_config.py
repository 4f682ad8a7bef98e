"""The one JupyterHub configuration of beamside.

``jupyterhub -f .../beamside_hub/jupyterhub_config.py`` with ``BEAMSIDE_RUNTIME``
naming the runtime file that ``beamside up`` writes, or (the Helm chart's hub
pod) ``BEAMSIDE_HELM_VALUES`` naming the chart's values as the chart mounted
them. Every option comes from :mod:`beamside_hub.configure`; nothing here is
specific to one machine.
"""

# ruff: noqa: F821  (`c` is provided by JupyterHub)
from __future__ import annotations

import sys

from beamside_hub.configure import configure_hub, runtime_from_environment

configure_hub(get_config(), runtime_from_environment(), python=sys.executable)
