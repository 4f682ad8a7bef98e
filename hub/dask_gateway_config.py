"""The Dask gateway's configuration (a hub-managed service); see :func:`beamside_hub.runtime.configure_gateway`."""

# ruff: noqa: F821  (`c` is provided by dask-gateway-server)
import os

from beamside_hub.runtime import configure_gateway, load_runtime

configure_gateway(get_config(), load_runtime(os.environ["BEAMSIDE_RUNTIME"]))
