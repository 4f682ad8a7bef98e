"""The Dask gateway's configuration (a hub-managed service); see :func:`beamside_hub.configure.configure_gateway`."""

# ruff: noqa: F821  (`c` is provided by dask-gateway-server)
from beamside_hub.configure import configure_gateway, runtime_from_environment

configure_gateway(get_config(), runtime_from_environment())
