"""``al.cluster()``: one call gives a Dask client, wherever the notebook runs.

On the hub, user servers get dask-gateway's config (``gateway.address``), and
the cluster's scheduler and workers run beside the data with the user's own
beamtime access. Anywhere else (a laptop, a test, a CLI run) it is a
LocalCluster of worker processes sized to the machine.
"""

from __future__ import annotations

import os

import dask
import dask.config

from .contract import WORKER_CONFIG, WORKER_CORES, WORKER_MEMORY, WORKER_MEMORY_UNIT

__all__ = ["cluster", "compute"]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cluster(*, workers: int | None = None, cores: int | None = None, memory: str | None = None, **options):
    """A ``distributed.Client`` on the user's cluster: dask-gateway when configured, else local.

    ``workers`` is how many worker processes, ``cores`` the threads (cores) per
    worker and ``memory`` each worker's memory (``"4 GiB"``). Other keyword
    arguments go to the gateway's cluster options. Close the client (or use
    ``with``) to end a local cluster; a gateway cluster ends with
    ``client.cluster.shutdown()`` or when the user's server stops.
    """
    if dask.config.get("gateway.address", None):
        return _gateway_client(workers, cores, memory, options)
    return _local_client(workers, cores, memory)


def _gateway_client(workers, cores, memory, options):
    from dask_gateway import Gateway

    gateway = Gateway()
    cluster_options = gateway.cluster_options()
    wanted = dict(options)
    if cores is not None:
        wanted[WORKER_CORES] = cores
    if memory is not None:
        from dask.utils import parse_bytes

        wanted[WORKER_MEMORY] = parse_bytes(memory) / WORKER_MEMORY_UNIT if isinstance(memory, str) else memory
    for key, value in wanted.items():
        if key not in cluster_options:
            raise ValueError(f"the gateway has no cluster option {key!r}; it offers {sorted(cluster_options)}")
        setattr(cluster_options, key, value)
    gw_cluster = gateway.new_cluster(cluster_options)
    gw_cluster.scale(workers or 2)
    return gw_cluster.get_client()


def _local_client(workers, cores, memory):
    from distributed import Client, LocalCluster

    n = workers or max(1, _cores())
    with dask.config.set(WORKER_CONFIG):  # glibc's trim threshold, the preload: see analysis_lib.contract
        local = LocalCluster(
            n_workers=n,
            threads_per_worker=cores or 1,
            memory_limit=memory or "auto",
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
    return Client(local, set_as_default=True)


def _on_cluster(client, objs, progress: bool):
    """``objs`` computed on ``client``'s cluster; a cluster lost meanwhile is a :class:`ClusterLost`
    saying so (Dask itself says "cancelled for reason: unknown", half a minute later)."""
    from distributed import progress as show
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    from ._errors import ClusterLost

    futures = client.compute(list(objs))
    if progress:
        show(futures, notebook=None)
    try:
        return client.gather(futures)
    except (FutureCancelledError, CommClosedError, OSError) as exc:
        if client.status == "running" and _scheduler_answers(client):
            raise
        raise ClusterLost(
            f"the Dask cluster this ran on is gone (its scheduler {client.scheduler.address} stopped or cannot be "
            "reached), and its results with it: start a new cluster with al.cluster() and run this again"
        ) from exc


def _scheduler_answers(client) -> bool:
    try:
        client.scheduler_info()  # asks the scheduler (a dead one: the comm error)
        return True
    except Exception:  # noqa: BLE001 - any failure to answer means the cluster is gone
        return False


def compute(*objs, progress: bool = True):
    """Compute lazy results, showing progress: a widget in notebooks, a bar in terminals.

    Uses the current distributed client if there is one (its progress bar),
    else Dask's threaded scheduler with a tqdm bar.
    """
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        results = _on_cluster(client, objs, progress)
    elif progress:
        from tqdm.auto import tqdm
        from tqdm.dask import TqdmCallback

        with TqdmCallback(tqdm_class=tqdm, desc="reducing", unit="task", leave=True):
            results = dask.compute(*objs)
    else:
        results = dask.compute(*objs)
    return results[0] if len(objs) == 1 else tuple(results)
