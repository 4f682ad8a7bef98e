"""Reduce beamtime data on-site from a script at home: only the result travels.

    from analysis_lib import remote
    client = remote.connect("https://hub.facility.eu")      # token from the environment or a 0600 file
    result = remote.reduce(client, "mean_frame", "bt-1001/raw/scan_0001.nxs")

The token is a hub API token that carries only the Dask gateway's scope
(``access:services!service=dask-gateway``): it can run Dask work on the user's
on-site cluster and nothing else — not the hub's API, not the notebook server.
It is read from ``BEAMSIDE_TOKEN`` (or ``JUPYTERHUB_API_TOKEN``), else from
``~/.config/beamside/token``, which must be private (mode 0600). It is never
taken from the command line and never printed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlparse

from ._provenance import REF
from ._reductions import check
from .contract import DETACHED, GATEWAY_PREFIX, GATEWAY_SCOPE

TOKEN_FILE = Path("~/.config/beamside/token")


def read_token() -> str:
    """The hub API token from the environment or the private token file."""
    for var in ("BEAMSIDE_TOKEN", "JUPYTERHUB_API_TOKEN"):
        if os.environ.get(var):
            return os.environ[var].strip()
    path = TOKEN_FILE.expanduser()
    if not path.exists():
        raise PermissionError(
            f"no hub token: set BEAMSIDE_TOKEN or write it to {path} (mode 0600). "
            f"Create one on the hub's token page (/hub/token) with the scope {GATEWAY_SCOPE}"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return path.read_text().strip()


def gateway(hub_url: str, token: str | None = None, *, proxy_address: str | None = None):
    """A ``dask_gateway.Gateway`` behind the hub at ``hub_url`` (scheduler traffic on port 8786 by default)."""
    from dask_gateway import Gateway, JupyterHubAuth

    host = urlparse(hub_url).hostname
    return Gateway(
        address=hub_url.rstrip("/") + GATEWAY_PREFIX,
        proxy_address=proxy_address or f"gateway://{host}:8786",
        auth=JupyterHubAuth(api_token=token or read_token()),
    )


def connect(hub_url: str, token: str | None = None, *, proxy_address: str | None = None, workers: int = 2,
            keep: bool = False):
    """A ``distributed.Client`` on the user's on-site cluster: reuse a running one, else start one.

    A cluster started here is *detached* from the user's notebook server (it
    does not end when the server stops). It ends when this script's client
    closes, unless ``keep=True``: then it runs on until ``cluster.shutdown()``
    or the gateway's idle timeout, and the next ``connect`` reuses it.
    """
    gw = gateway(hub_url, token, proxy_address=proxy_address)
    running = gw.list_clusters()
    if running:
        cluster = gw.connect(running[0].name)
    else:
        options = gw.cluster_options()
        setattr(options, DETACHED, True)
        cluster = gw.new_cluster(options, shutdown_on_close=not keep)
    cluster.scale(workers)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=120)
    return client


def _reduce_on_site(op: str, ref: str, signal: str | None, params: dict):
    """Runs on a worker, inside the user's sandbox: open, reduce across the cluster, return the result."""
    from distributed import worker_client

    import analysis_lib as al

    if "poni" in params and not os.path.isabs(params["poni"]):
        params = {**params, "poni": str(al.resolve(params["poni"]))}
    frames = al.open(ref, signal=signal)
    frames = frames[next(iter(frames.data_vars))]
    result = getattr(al.ops, op)(frames, **params)
    with worker_client() as client:
        computed = client.compute(result).result()
    computed.attrs[REF] = ref
    return computed


def reduce(client, op: str, ref: str, *, signal: str | None = None, **params):
    """Run ``al.ops.<op>`` on ``ref`` on-site and return the (small) computed result."""
    check(op)
    return client.submit(_reduce_on_site, op, ref, signal, params, pure=False).result()
