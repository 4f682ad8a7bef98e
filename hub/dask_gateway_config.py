"""The Dask gateway's configuration (a hub-managed service); see :func:`beamside_hub.runtime.configure_gateway`."""

# ruff: noqa: F821  (`c` is provided by dask-gateway-server)
import json
import os

from beamside_hub.runtime import configure_gateway

with open(os.environ["BEAMSIDE_RUNTIME"]) as _f:
    configure_gateway(get_config(), json.load(_f))
