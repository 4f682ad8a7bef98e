"""Settings -> traitlets: the hub's and the Dask gateway's configuration, built by pure functions.

``runtime`` is what ``beamside up`` (or the Helm chart's hub pod) resolves
from the settings: the settings themselves, the paths on this machine and the
secrets. :func:`configure_hub` and :func:`configure_gateway` only copy it onto
a traitlets ``Config``, so both can be tested without starting anything.

On Kubernetes the chart renders the runtime file from its values
(``platform: kubernetes``, the Services' ``addresses``, the ``kube`` section)
and mounts the secrets as files; login, roles, services and the culler stay
the same code for both platforms, only where servers run differs.
"""

from __future__ import annotations

import json
import os

from analysis_lib.contract import (
    DETACHED,
    GATEWAY_PREFIX,
    GATEWAY_SCOPE,
    GATEWAY_SERVICE,
    NO_MALLOC_TRIM_ENV,
    WORKER_CORES,
    WORKER_MEMORY,
    WORKER_MEMORY_UNIT,
)

SUPERVISOR = "beamside-supervisor"


def load_runtime(path: str) -> dict:
    """The runtime file; on Kubernetes its secrets are the files of a mounted Secret, never in the file.

    Each pod gets only the keys its process uses (the chart's ``beamside.secretKeys``); the
    gateway's controller uses none, and has no secrets folder at all.
    """
    with open(path) as f:
        runtime = json.load(f)
    folder = runtime.get("secrets_dir")
    if folder and not os.path.isdir(folder):
        runtime["secrets"] = {}
    elif folder:
        runtime["secrets"] = {name: open(os.path.join(folder, name)).read().strip()
                              for name in os.listdir(folder) if not name.startswith(".")}
        if "oidc_client_secret" in runtime["secrets"]:
            runtime["settings"]["auth"]["oidc"]["client_secret"] = runtime["secrets"]["oidc_client_secret"]
    return runtime


def on_kubernetes(runtime: dict) -> bool:
    return runtime.get("platform") == "kubernetes"


def private_network(runtime: dict) -> bool:
    """Whether users' processes run in network namespaces of their own (:mod:`beamside_hub.network`)."""
    return runtime.get("network") == "private"


def addresses(runtime: dict) -> dict:
    """Where the parts reach each other: loopback ports on one machine, the chart's Services on Kubernetes.

    With a private network per user, what users' processes must reach (the hub's API, the gateway's
    proxy and its scheduler traffic) is on the internal address, the only host address their
    namespaces have a route to; the rest stays on loopback.
    """
    if on_kubernetes(runtime):
        return runtime["addresses"]
    hub, dask = runtime["settings"]["hub"], runtime["settings"]["dask"]
    internal = "127.0.0.1"
    if private_network(runtime):
        from .network import INTERNAL_IP as internal
    return {
        "public_bind_url": f"http://{hub['ip']}:{hub['port']}",
        "hub_bind_url": f"http://{internal}:{hub['hub_port']}",
        "hub_api_url": f"http://{internal}:{hub['hub_port']}/hub/api",
        "proxy_api_url": f"http://127.0.0.1:{hub['proxy_api_port']}",
        "gateway_url": f"http://{internal}:{dask['port']}",  # the gateway's own proxy (HTTP)
        "gateway_tcp": f"{internal}:{dask['scheduler_port']}",  # ... and its scheduler traffic
    }


def public_url(runtime: dict) -> str:
    """Where users reach the hub: ``hub.public_url``, else the proxy's own address."""
    hub = runtime["settings"]["hub"]
    return (hub.get("public_url") or f"http://{hub['ip']}:{hub['port']}").rstrip("/")


def gateway_client_env(runtime: dict) -> dict:
    """dask-gateway client config for user servers: ``al.cluster()`` then needs no arguments.

    User servers reach the gateway on an internal address, not the public one: on Kubernetes through
    the proxy's Service, on one machine straight at the gateway's own proxy.
    """
    a = addresses(runtime)
    return {
        "DASK_GATEWAY__ADDRESS": f"{a.get('proxy_url', a['gateway_url'])}{GATEWAY_PREFIX}",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{a['gateway_tcp']}",
        "DASK_GATEWAY__PUBLIC_ADDRESS": f"{GATEWAY_PREFIX}/",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


def configure_hub(c, runtime: dict, python: str) -> None:
    s, paths, secrets = runtime["settings"], runtime["paths"], runtime["secrets"]
    hub, auth, single, dask = s["hub"], s["auth"], s["singleuser"], s["dask"]
    a = addresses(runtime)
    state = paths["state"]

    c.JupyterHub.bind_url = a["public_bind_url"]
    c.JupyterHub.hub_bind_url = a["hub_bind_url"]
    c.JupyterHub.db_url = hub["db_url"] or f"sqlite:///{state}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
    c.JupyterHub.pid_file = f"{state}/jupyterhub.pid"
    c.JupyterHub.concurrent_spawn_limit = hub["concurrent_spawn_limit"]
    # A hub restart (upgrade, crash) must not take users' servers and routes down.
    c.JupyterHub.cleanup_servers = False
    # The proxy is started beside the hub (by `beamside up`, or its own pod), never by it.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = a["proxy_api_url"]
    c.ConfigurableHTTPProxy.auth_token = secrets["proxy_token"]

    # -- login
    admins = auth["admin_users"]
    if admins is None:  # the demo's "admin" with demo data only; a facility names its admins
        admins = ["admin"] if auth["type"] == "passwords" and runtime.get("demo") else []
    c.Authenticator.admin_users = set(admins)
    if auth["type"] == "oidc":
        oidc = auth["oidc"]
        c.JupyterHub.authenticator_class = "generic-oauth"
        g = c.GenericOAuthenticator
        g.client_id = oidc["client_id"]
        g.client_secret = oidc["client_secret"]
        g.authorize_url = oidc["authorize_url"]
        g.token_url = oidc["token_url"]
        g.userdata_url = oidc["userdata_url"]
        g.scope = list(oidc["scope"])
        g.username_claim = oidc["username_claim"]
        g.login_service = oidc["login_service"]
        g.oauth_callback_url = f"{public_url(runtime)}/hub/oauth_callback"
        g.manage_groups = True
        g.auth_state_groups_key = f"oauth_user.{oidc['groups_claim']}"
        # Never allow_all by default: an empty allow-list admits nobody (issue 17, finding 11).
        g.allowed_groups = set(oidc["allowed_groups"])
        g.allow_all = oidc.get("allow_all") is True  # the Helm chart's runtime has no such key
        if oidc["admin_groups"]:
            g.admin_groups = set(oidc["admin_groups"])
        c.Authenticator.enable_auth_state = True
        if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
            os.environ["JUPYTERHUB_CRYPT_KEY"] = secrets["crypt_key"]
    else:
        c.JupyterHub.authenticator_class = "beamside_hub.auth.PasswordFileAuthenticator"
        c.PasswordFileAuthenticator.passwords_file = paths["passwords_file"]
        if private_network(runtime):  # the proxy reaches the hub from the internal address
            from .network import INTERNAL_IP

            c.PasswordFileAuthenticator.trusted_proxies = ["127.0.0.1", "::1", INTERNAL_IP]
        c.Authenticator.allow_all = True  # whoever has a password in the file

    # -- user servers
    env = {"PYTHONNOUSERSITE": "1"}
    if on_kubernetes(runtime):
        _kube_servers(c, runtime)
    else:
        venv_bin = os.path.join(paths["venv"], "bin")
        c.JupyterHub.spawner_class = "beamside_hub.spawner.BeamsideSpawner"
        sp = c.BeamsideSpawner
        _sandboxes(sp, runtime)
        sp.examples_dir = paths.get("examples", "")
        sp.logs_dir = os.path.join(state, "logs", "users")
        sp.gateway_api_url = f"{a['gateway_url']}{GATEWAY_PREFIX}/api" if dask["enabled"] else ""
        c.Spawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
        # ipc kernels: no TCP port races between kernels started in the same second, and the
        # kernel sockets live inside the user's sandbox (where nobody else can reach them).
        c.Spawner.args = ["--KernelManager.transport=ipc"] if runtime["isolate"] else []
        env["PATH"] = f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"
    c.Spawner.default_url = single["default_url"]
    c.Spawner.start_timeout = single["start_timeout"]
    c.Spawner.http_timeout = single["start_timeout"]
    # every poll also checks the server's beamtimes against the catalog (a revoked one stops it)
    c.Spawner.poll_interval = single["access_check_every"]
    if single["mem_limit"]:
        c.Spawner.mem_limit = single["mem_limit"]
    if single["cpu_limit"]:
        c.Spawner.cpu_limit = single["cpu_limit"]
    if dask["enabled"]:
        env.update(gateway_client_env(runtime))
    c.Spawner.environment = env

    # -- services and least-privilege roles
    services, roles = [], [
        {"name": "user", "scopes": ["self", GATEWAY_SCOPE]},
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", GATEWAY_SCOPE]},
        # Stops servers at shutdown; creates servers and tokens for the admin's tooling. With
        # OIDC no admin:users: that includes reading users' identity-provider tokens (auth state).
        {"name": "beamside-supervisor", "services": [SUPERVISOR],
         "scopes": ["list:users", "users", "servers", "tokens"] + (["admin:users"] if auth["type"] == "passwords" else [])},
    ]
    services.append({"name": SUPERVISOR, "api_token": secrets["supervisor_token"]})
    if dask["enabled"]:
        gateway = {"name": GATEWAY_SERVICE, "url": a["gateway_url"], "api_token": secrets["gateway_token"],
                   "display": False}
        if not on_kubernetes(runtime):  # on Kubernetes the gateway has its own Deployments
            gateway.update(
                command=[os.path.join(venv_bin, "dask-gateway-server"), "-f", paths["gateway_config"]],
                cwd=paths["gateway_dir"],
                environment={"BEAMSIDE_RUNTIME": os.environ.get("BEAMSIDE_RUNTIME", ""),
                             "PATH": f"{venv_bin}:/usr/bin:/bin"},
            )
        services.append(gateway)
    if s["culler"]["enabled"]:
        services.append(
            {
                "name": "idle-culler",
                "command": [python, "-m", "jupyterhub_idle_culler",
                            f"--timeout={s['culler']['timeout']}", f"--cull-every={s['culler']['every']}",
                            f"--max-age={s['culler']['max_age']}"],
            }
        )
        roles.append({"name": "idle-culler", "services": ["idle-culler"],
                      "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})
    if s["audit"]["enabled"]:
        services.append(
            {
                "name": "audit",
                "command": [python, "-m", "beamside_hub.audit", "--socket", paths["audit_socket"],
                            "--log", paths["audit_log"], "--catalog", paths["catalog"]],
            }
        )
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def _sandboxes(section, runtime: dict) -> None:
    """The same sandbox settings for the spawner and the gateway (:class:`beamside_hub.sandbox.Sandboxed`)."""
    paths = runtime["paths"]
    section.catalog = paths["catalog"]
    section.homes_dir = paths["homes"]
    section.sandboxes_dir = paths["sandboxes"]
    section.isolate = runtime["isolate"]
    section.software_paths = paths["software"]
    section.audit_socket = paths["audit_socket"] if runtime["settings"]["audit"]["enabled"] else ""
    section.private_network = private_network(runtime)


def _kube_servers(c, runtime: dict) -> None:
    """User servers as KubeSpawner pods (see :mod:`beamside_hub.kube`): only the spawner differs."""
    s, k = runtime["settings"], runtime["kube"]
    single = s["singleuser"]
    c.JupyterHub.spawner_class = "beamside_hub.kube.BeamsideKubeSpawner"
    c.JupyterHub.hub_connect_url = runtime["addresses"]["hub_connect_url"]
    c.JupyterHub.cookie_secret_file = os.path.join(runtime["secrets_dir"], "cookie_secret")
    if s["hub"]["public_url"]:
        c.JupyterHub.public_url = s["hub"]["public_url"]
    sp = c.BeamsideKubeSpawner
    sp.catalog = runtime["paths"]["catalog"]
    sp.values = {"data": s["data"], "singleuser": single}
    sp.namespace = k["namespace"]
    sp.image = k["singleuser_image"]
    sp.image_pull_policy = k["image_pull_policy"]
    sp.cmd = ["jupyterhub-singleuser"]
    sp.working_dir = "/home/user"
    sp.automount_service_account_token = False
    sp.extra_labels = k["singleuser_labels"]
    sp.node_selector = single["node_selector"]
    sp.profile_list = single["profiles"]
    if single["mem_guarantee"]:
        sp.mem_guarantee = single["mem_guarantee"]
    if single["cpu_guarantee"]:
        sp.cpu_guarantee = single["cpu_guarantee"]
    home = single["home"]
    sp.storage_pvc_ensure = home["type"] == "pvc"
    if home["type"] == "pvc":
        sp.storage_capacity = home["size"]
        sp.storage_class = home["storage_class"] or ""
        sp.pvc_name_template = "home-{username}"


def _kube_gateway(c, runtime: dict) -> tuple[list[str], dict]:
    """dask-gateway's Kubernetes backend (API server, controller, proxy: one config).

    Returns the ``dask`` command and the base environment of scheduler and worker pods.
    """
    k, a, s = runtime["kube"], runtime["addresses"], runtime["settings"]
    dask = s["dask"]
    c.DaskGateway.address = ":8000"
    c.DaskGateway.backend_class = "beamside_hub.kube.BeamsideKubeBackend"
    # Three pods read this config, each holding only its own tokens: the API server both,
    # the proxy gateway_proxy_token, the controller none.
    secrets = runtime["secrets"]
    if "gateway_token" in secrets:
        c.JupyterHubAuthenticator.jupyterhub_api_token = secrets["gateway_token"]
    c.Proxy.address = ":8000"
    c.Proxy.tcp_address = ":8786"
    c.Proxy.gateway_url = a["gateway_api_url"]
    if "gateway_proxy_token" in secrets:
        c.Proxy.api_token = secrets["gateway_proxy_token"]
    for cls in (c.KubeBackend, c.KubeController):
        cls.gateway_instance = k["gateway_instance"]
    c.BeamsideKubeController.network_policy = k["network_policy"]
    c.KubeController.api_url = f"{a['gateway_api_url']}/api"
    kc = c.KubeClusterConfig
    kc.namespace = k["namespace"]
    kc.image = k["singleuser_image"]
    kc.image_pull_policy = k["image_pull_policy"]
    kc.scheduler_cores = dask["scheduler_cores"]
    kc.scheduler_memory = dask["scheduler_memory"]
    # the nanny's default trim threshold makes glibc hand back every decode buffer
    return ["dask"], {"PYTHONNOUSERSITE": "1", **NO_MALLOC_TRIM_ENV}


def _local_gateway(c, runtime: dict) -> tuple[list[str], dict]:
    """dask-gateway's local backend in per-user sandboxes (see :mod:`beamside_hub.gateway`); as :func:`_kube_gateway`."""
    s, paths, secrets = runtime["settings"], runtime["paths"], runtime["secrets"]
    dask, hub = s["dask"], s["hub"]
    venv_bin = os.path.join(paths["venv"], "bin")
    c.DaskGateway.address = f"127.0.0.1:{dask['api_port']}"
    c.Proxy.address = addresses(runtime)["gateway_url"].split("//", 1)[1]
    c.Proxy.tcp_address = f"{hub['ip']}:{dask['scheduler_port']}"
    c.DaskGateway.backend_class = "beamside_hub.gateway.BeamsideBackend"
    b = c.BeamsideBackend
    _sandboxes(b, runtime)
    b.clusters_directory = os.path.join(paths["gateway_dir"], "clusters")
    b.api_url = f"{addresses(runtime)['gateway_url']}{GATEWAY_PREFIX}/api"
    b.max_clusters_per_user = dask["max_clusters_per_user"]
    b.max_cluster_age = dask["max_age"]
    b.reconcile_period = s["singleuser"]["access_check_every"]
    b.db_url = f"sqlite:///{paths['gateway_dir']}/db/gateway.sqlite"
    b.db_encrypt_keys = [secrets["gateway_db_key"]]
    return [os.path.join(venv_bin, "dask")], {"PATH": f"{venv_bin}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}


def configure_gateway(c, runtime: dict) -> None:
    from dask.utils import parse_bytes
    from dask_gateway_server.options import Bool, Float, Integer, Options

    s = runtime["settings"]
    dask = s["dask"]
    kube = on_kubernetes(runtime)
    dask_cmd, environment = (_kube_gateway if kube else _local_gateway)(c, runtime)
    c.Proxy.prefix = GATEWAY_PREFIX
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = addresses(runtime)["hub_api_url"]
    cc = c.ClusterConfig
    cc.scheduler_cmd = [*dask_cmd, "scheduler"]
    cc.worker_cmd = [*dask_cmd, "worker"]
    cc.worker_cores = dask["worker_cores"]
    cc.worker_memory = dask["worker_memory"]
    cc.cluster_max_workers = dask["max_workers"]
    cc.cluster_max_cores = dask["max_cores"]
    cc.cluster_max_memory = dask["max_memory"]
    cc.idle_timeout = dask["idle_timeout"]
    cc.environment = environment

    def options_handler(options, user):
        config = {WORKER_CORES: options.worker_cores, WORKER_MEMORY: int(options.worker_memory * WORKER_MEMORY_UNIT)}
        if kube:  # the user's own mounts and ids, from the catalog at the time the cluster starts
            from analysis_lib.catalog import load_catalog

            from .kube import dask_pod_config

            config.update(dask_pod_config(load_catalog(runtime["paths"]["catalog"]), user.name, s, environment))
        return config

    max_mem = parse_bytes(str(dask["max_memory"])) / WORKER_MEMORY_UNIT
    c.Backend.cluster_options = Options(
        Integer(WORKER_CORES, default=dask["worker_cores"], min=1, max=dask["max_cores"], label="Cores per worker"),
        Float(WORKER_MEMORY, default=parse_bytes(str(dask["worker_memory"])) / WORKER_MEMORY_UNIT, min=0.25, max=max_mem,
              label="Memory per worker (GiB)"),
        Bool(DETACHED, default=False, label="Keep running after my notebook server stops (for scripts)"),
        handler=options_handler,
    )
