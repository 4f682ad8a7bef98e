"""Runtime -> traitlets: the hub's and the Dask gateway's configuration, built by pure functions.

:func:`configure_hub` and :func:`configure_gateway` only copy a
:class:`~beamside_hub.runtime.Runtime` onto a traitlets ``Config``, so both
can be tested without starting anything. Login, roles, services and the
culler are the same code for every platform; what differs (where servers and
clusters run) is asked of the runtime's :mod:`beamside_hub.platform`.
"""

from __future__ import annotations

import importlib.util
import os

from analysis_lib.contract import (
    DETACHED,
    GATEWAY_PREFIX,
    GATEWAY_SCOPE,
    GATEWAY_SERVICE,
    WORKER_CORES,
    WORKER_MEMORY,
    WORKER_MEMORY_UNIT,
)

from .platform import platform_for, runtime_from_environment
from .runtime import Runtime

SUPERVISOR = "beamside-supervisor"

__all__ = ["SUPERVISOR", "configure_gateway", "configure_hub", "runtime_from_environment"]


def public_url(runtime: Runtime) -> str:
    """Where users reach the hub: ``hub.public_url``, else the proxy's own address."""
    hub = runtime.settings.hub
    return (hub.public_url or f"http://{hub.ip}:{hub.port}").rstrip("/")


def gateway_client_env(runtime: Runtime) -> dict:
    """dask-gateway client config for user servers: ``al.cluster()`` then needs no arguments.

    User servers reach the gateway on an internal address, not the public one: on Kubernetes through
    the proxy's Service, on one machine straight at the gateway's own proxy. JupyterLab's Dask panel
    (dask-labextension) makes its clusters on the same gateway: its "New" button is ``al.cluster()``'s
    cluster (two workers), next to the data, with the user's limits (and it lists the clusters it made).
    """
    a = runtime.addresses
    return {
        "DASK_GATEWAY__ADDRESS": f"{a.proxy_url or a.gateway_url}{GATEWAY_PREFIX}",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{a.gateway_tcp}",
        "DASK_GATEWAY__PUBLIC_ADDRESS": f"{GATEWAY_PREFIX}/",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_LABEXTENSION__FACTORY__MODULE": "dask_gateway",
        "DASK_LABEXTENSION__FACTORY__CLASS": "GatewayCluster",
        "DASK_LABEXTENSION__DEFAULT__WORKERS": "2",  # as al.cluster()'s
    }


def configure_hub(c, runtime: Runtime, python: str) -> None:
    """Login, then the user servers of the runtime's platform, then the services and their roles."""
    s, paths, secrets, a = runtime.settings, runtime.paths, runtime.secrets, runtime.addresses
    hub, auth, single, dask = s.hub, s.auth, s.singleuser, s.dask
    platform = platform_for(runtime)

    c.JupyterHub.bind_url = a.public_bind_url
    c.JupyterHub.hub_bind_url = a.hub_bind_url
    c.JupyterHub.db_url = hub.db_url or f"sqlite:///{paths.state}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{paths.state}/jupyterhub_cookie_secret"
    c.JupyterHub.pid_file = f"{paths.state}/jupyterhub.pid"
    c.JupyterHub.concurrent_spawn_limit = 0 if platform.queues_starts else (20 if hub.concurrent_spawn_limit is None else hub.concurrent_spawn_limit)
    # A hub restart (upgrade, crash) must not take users' servers and routes down.
    c.JupyterHub.cleanup_servers = False
    # The proxy is started beside the hub (by `beamside up`, or its own pod), never by it.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = a.proxy_api_url
    c.ConfigurableHTTPProxy.auth_token = secrets["proxy_token"]

    # -- login
    admins = auth.admin_users
    if admins is None:  # the demo's "admin" with demo data only; a facility names its admins
        admins = ["admin"] if auth.type == "passwords" and runtime.demo else []
    c.Authenticator.admin_users = set(admins)
    if auth.type == "oidc":
        oidc = auth.oidc
        c.JupyterHub.authenticator_class = "generic-oauth"
        g = c.GenericOAuthenticator
        for key in ("client_id", "client_secret", "authorize_url", "token_url", "userdata_url", "username_claim",
                    "login_service"):  # the settings' names are GenericOAuthenticator's
            setattr(g, key, getattr(oidc, key))
        g.scope = list(oidc.scope)
        g.oauth_callback_url = f"{public_url(runtime)}/hub/oauth_callback"
        g.manage_groups = True
        g.auth_state_groups_key = f"oauth_user.{oidc.groups_claim}"
        # Never allow_all by default: an empty allow-list admits nobody (issue 17, finding 11).
        g.allowed_groups = set(oidc.allowed_groups)
        g.allow_all = oidc.allow_all is True
        if oidc.admin_groups:
            g.admin_groups = set(oidc.admin_groups)
        c.Authenticator.enable_auth_state = True
        if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
            os.environ["JUPYTERHUB_CRYPT_KEY"] = secrets["crypt_key"]
    else:
        c.JupyterHub.authenticator_class = "beamside_hub.auth.PasswordFileAuthenticator"
        c.PasswordFileAuthenticator.passwords_file = paths.passwords_file
        c.Authenticator.allow_all = True  # whoever has a password in the file

    # -- user servers
    env = {"PYTHONNOUSERSITE": "1", **quiet_environment()}
    platform.configure_servers(c, runtime, env)
    c.Spawner.default_url = single.default_url
    c.Spawner.start_timeout = single.start_timeout
    c.Spawner.http_timeout = single.start_timeout
    # every poll also checks the server's beamtimes against the catalog (a revoked one stops it)
    c.Spawner.poll_interval = single.access_check_every
    if single.mem_limit:
        c.Spawner.mem_limit = single.mem_limit
    if single.cpu_limit:
        c.Spawner.cpu_limit = single.cpu_limit
    if dask.enabled:
        env.update(gateway_client_env(runtime))
    c.Spawner.environment = env

    # -- services and least-privilege roles
    services, roles = [], [
        {"name": "user", "scopes": ["self", GATEWAY_SCOPE]},
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", GATEWAY_SCOPE]},
        # Stops servers at shutdown; has a restarted proxy's routes restored (proxy); creates servers
        # and tokens for the admin's tooling. With OIDC no admin:users: that includes reading users'
        # identity-provider tokens (auth state).
        {"name": "beamside-supervisor", "services": [SUPERVISOR],
         "scopes": ["list:users", "users", "servers", "tokens", "proxy"]
         + (["admin:users"] if auth.type == "passwords" else [])},
    ]
    services.append({"name": SUPERVISOR, "api_token": secrets["supervisor_token"]})
    if dask.enabled:
        gateway = {"name": GATEWAY_SERVICE, "url": a.gateway_url, "api_token": secrets["gateway_token"],
                   "display": False}
        if platform.runs_gateway_service:
            gateway.update(platform.gateway_service(runtime))
        services.append(gateway)
    culler = s.culler
    if culler.enabled:
        services.append(
            {
                "name": "idle-culler",
                "command": [python, "-m", "jupyterhub_idle_culler", f"--timeout={culler.timeout}",
                            f"--cull-every={culler.every}", f"--max-age={culler.max_age}"],
            }
        )
        roles.append({"name": "idle-culler", "services": ["idle-culler"],
                      "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})
    if s.audit.enabled:
        services.append(
            {
                "name": "audit",
                "command": [python, "-m", "beamside_hub.audit", "--socket", paths.audit_socket,
                            "--log", paths.audit_log, "--catalog", paths.catalog],
            }
        )
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def quiet_environment() -> dict:
    """What every user process gets so that it does not print what a scientist can do nothing
    about. silx, imported by pyFAI, looks for OpenCL and without pyopencl prints a red "Unable to
    import pyOpenCl" warning under the first reduction of every session: its own SILX_OPENCL=0
    says there is none, unless pyopencl is installed (then OpenCL is used as before)."""
    return {} if importlib.util.find_spec("pyopencl") else {"SILX_OPENCL": "0"}


def configure_gateway(c, runtime: Runtime) -> None:
    """The platform's backend, then the cluster limits and options every platform shares."""
    from dask.utils import parse_bytes
    from dask_gateway_server.options import Bool, Float, Integer, Options

    dask = runtime.settings.dask
    platform = platform_for(runtime)
    dask_cmd, environment = platform.configure_gateway(c, runtime)
    c.Proxy.prefix = GATEWAY_PREFIX
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = runtime.addresses.hub_api_url
    cc = c.ClusterConfig
    cc.scheduler_cmd = [*dask_cmd, "scheduler"]
    cc.worker_cmd = [*dask_cmd, "worker"]
    cc.worker_cores = dask.worker_cores
    cc.worker_memory = dask.worker_memory
    cc.cluster_max_workers = dask.max_workers
    cc.cluster_max_cores = dask.max_cores
    cc.cluster_max_memory = dask.max_memory
    cc.idle_timeout = dask.idle_timeout
    environment = cc.environment = {**quiet_environment(), **environment}

    def options_handler(options, user):
        config = {WORKER_CORES: options.worker_cores, WORKER_MEMORY: int(options.worker_memory * WORKER_MEMORY_UNIT)}
        # a platform's per-cluster "environment" replaces cc.environment (Kubernetes: the pods'), so it is built on it
        config.update(platform.cluster_config(runtime, user.name, environment))
        return config

    max_mem = parse_bytes(str(dask.max_memory)) / WORKER_MEMORY_UNIT
    c.Backend.cluster_options = Options(
        Integer(WORKER_CORES, default=dask.worker_cores, min=1, max=dask.max_cores, label="Cores per worker"),
        Float(WORKER_MEMORY, default=parse_bytes(str(dask.worker_memory)) / WORKER_MEMORY_UNIT, min=0.25, max=max_mem,
              label="Memory per worker (GiB)"),
        Bool(DETACHED, default=False, label="Keep running after my notebook server stops (for scripts)"),
        handler=options_handler,
    )
