"""The names the library and the hub share: environment variables, gateway options, URLs.

The hub sets up a user's server and Dask processes; the library, running
inside them, finds its way by these names. Both sides import them from here
(``beamside_hub`` imports ``analysis_lib``, never the other way round), so a
rename is one edit. No imports: the guarded probe process reads this too.
"""

from __future__ import annotations

# -- environment of a user's server and Dask processes -----------------------
CATALOG_ENV = "BEAMSIDE_CATALOG"  # the beamtime catalog file (analysis_lib.catalog)
AUDIT_SOCKET_ENV = "BEAMSIDE_AUDIT_SOCKET"  # the hub's audit socket, where file opens are reported
USER_ENV = "JUPYTERHUB_USER"  # who is asking, when no user is given
# Inside a server's sandbox: its memory cgroup, read-only (usage, limit, how many processes the
# kernel stopped for going over it); JupyterHub's MEM_LIMIT holds the limit in bytes.
MEMORY_GROUP_DIR = "/run/beamside/memory"
MEMORY_LIMIT_ENV = "MEM_LIMIT"

# -- the hub's Dask gateway -------------------------------------------------
GATEWAY_SERVICE = "dask-gateway"  # the gateway's name as a JupyterHub service
GATEWAY_PREFIX = f"/services/{GATEWAY_SERVICE}"  # its path behind the hub's proxy
# The only scope a token for remote work needs: Dask work on the user's own cluster.
GATEWAY_SCOPE = f"access:services!service={GATEWAY_SERVICE}"

# Cluster options the gateway offers and the library sets.
DETACHED = "detached"  # keep the cluster running after the user's server stops
WORKER_CORES = "worker_cores"  # threads (cores) per worker
WORKER_MEMORY = "worker_memory"  # memory per worker, in WORKER_MEMORY_UNIT
WORKER_MEMORY_UNIT = 2**30  # bytes in one unit of WORKER_MEMORY: GiB

# -- Dask workers ------------------------------------------------------------
# The same worker settings for a local cluster (as Dask config) and a gateway
# cluster on any platform (as the environment Dask reads its config from):
# - the nanny's default MALLOC_TRIM_THRESHOLD_ makes glibc hand decode buffers
#   back to the OS after every chunk: measured 2.7x slower frame reads. Unset it.
# - the reductions are imported while the worker starts (a preload), not on its
#   first task: importing them (xarray, the decoders) takes 0.8 s, and a worker
#   that pays it mid-computation stalls every task waiting on a key it holds —
#   measured as the first 2-worker mean_frame of a session 15-25 % slower.
_PRELOAD = ["analysis_lib.ops"]
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None, "distributed.worker.preload": _PRELOAD}
# In the environment a whole mapping is given (Dask merges it into its
# defaults): a key path ending in MALLOC_TRIM_THRESHOLD_ would be lower-cased
# on the way in and leave the nanny's default in force.
WORKER_ENV = {
    "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": repr({"MALLOC_TRIM_THRESHOLD_": None}),
    "DASK_DISTRIBUTED__WORKER__PRELOAD": repr(_PRELOAD),
}
