"""Settings -> traitlets: the hub's and the Dask gateway's configuration, built by pure functions.

``runtime`` is what ``beamside up`` (or the Helm chart's hub pod) resolves
from the settings: the settings themselves, the paths on this machine and the
secrets. :func:`configure_hub` and :func:`configure_gateway` only copy it onto
a traitlets ``Config``, so both can be tested without starting anything.
"""

from __future__ import annotations

import os

SUPERVISOR = "beamside-supervisor"
GATEWAY_SCOPE = "access:services!service=dask-gateway"


def public_url(runtime: dict) -> str:
    """Where users reach the hub: ``hub.public_url``, else the proxy's own address."""
    hub = runtime["settings"]["hub"]
    return (hub.get("public_url") or f"http://{hub['ip']}:{hub['port']}").rstrip("/")


def gateway_client_env(runtime: dict) -> dict:
    """dask-gateway client config for user servers: ``al.cluster()`` then needs no arguments.

    User servers reach the gateway on the loopback proxy address, not the public one.
    """
    s = runtime["settings"]
    local = f"http://127.0.0.1:{s['hub']['port']}"
    return {
        "DASK_GATEWAY__ADDRESS": f"{local}/services/dask-gateway",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://127.0.0.1:{s['dask']['scheduler_port']}",
        "DASK_GATEWAY__PUBLIC_ADDRESS": "/services/dask-gateway/",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


def configure_hub(c, runtime: dict, python: str) -> None:
    s, paths, secrets = runtime["settings"], runtime["paths"], runtime["secrets"]
    hub, auth, single, dask = s["hub"], s["auth"], s["singleuser"], s["dask"]
    venv_bin = os.path.join(paths["venv"], "bin")
    state = paths["state"]

    c.JupyterHub.bind_url = f"http://{hub['ip']}:{hub['port']}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub['hub_port']}"
    c.JupyterHub.db_url = hub["db_url"] or f"sqlite:///{state}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
    c.JupyterHub.pid_file = f"{state}/jupyterhub.pid"
    c.JupyterHub.concurrent_spawn_limit = hub["concurrent_spawn_limit"]
    # A hub restart (upgrade, crash) must not take users' servers and routes down.
    c.JupyterHub.cleanup_servers = False
    # The proxy is started beside the hub (by `beamside up`, or its own pod), never by it.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub['proxy_api_port']}"
    c.ConfigurableHTTPProxy.auth_token = secrets["proxy_token"]

    # -- login
    admins = auth["admin_users"]
    if admins is None:  # passwords: the demo "admin"; OIDC: only admin_groups, never a bare name
        admins = ["admin"] if auth["type"] == "passwords" else []
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
        if oidc["allowed_groups"]:
            g.allowed_groups = set(oidc["allowed_groups"])
        else:
            g.allow_all = True
        if oidc["admin_groups"]:
            g.admin_groups = set(oidc["admin_groups"])
        c.Authenticator.enable_auth_state = True
        if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
            os.environ["JUPYTERHUB_CRYPT_KEY"] = secrets["crypt_key"]
    else:
        c.JupyterHub.authenticator_class = "beamside_hub.auth.PasswordFileAuthenticator"
        c.PasswordFileAuthenticator.passwords_file = paths["passwords_file"]
        c.Authenticator.allow_all = True  # whoever has a password in the file

    # -- user servers
    c.JupyterHub.spawner_class = "beamside_hub.spawner.BeamsideSpawner"
    sp = c.BeamsideSpawner
    sp.catalog = paths["catalog"]
    sp.homes_dir = paths["homes"]
    sp.sandboxes_dir = paths["sandboxes"]
    sp.isolate = runtime["isolate"]
    sp.software_paths = paths["software"]
    sp.examples_dir = paths.get("examples", "")
    sp.audit_socket = paths["audit_socket"] if s["audit"]["enabled"] else ""
    sp.gateway_api_url = f"http://127.0.0.1:{dask['port']}/services/dask-gateway/api" if dask["enabled"] else ""
    c.Spawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
    # ipc kernels: no TCP port races between kernels started in the same second, and the
    # kernel sockets live inside the user's sandbox (where nobody else can reach them).
    c.Spawner.args = ["--KernelManager.transport=ipc"] if runtime["isolate"] else []
    c.Spawner.default_url = single["default_url"]
    c.Spawner.start_timeout = single["start_timeout"]
    c.Spawner.http_timeout = single["start_timeout"]
    if single["mem_limit"]:
        c.Spawner.mem_limit = single["mem_limit"]
    if single["cpu_limit"]:
        c.Spawner.cpu_limit = single["cpu_limit"]
    env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
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
        services.append(
            {
                "name": "dask-gateway",
                "url": f"http://127.0.0.1:{dask['port']}",
                "api_token": secrets["gateway_token"],
                "command": [os.path.join(venv_bin, "dask-gateway-server"), "-f", paths["gateway_config"]],
                "cwd": paths["gateway_dir"],
                "environment": {"BEAMSIDE_RUNTIME": os.environ.get("BEAMSIDE_RUNTIME", ""),
                                "PATH": f"{venv_bin}:/usr/bin:/bin"},
                "display": False,
            }
        )
    if s["culler"]["enabled"]:
        services.append(
            {
                "name": "idle-culler",
                "command": [python, "-m", "jupyterhub_idle_culler",
                            f"--timeout={s['culler']['timeout']}", f"--cull-every={s['culler']['every']}"],
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


def configure_gateway(c, runtime: dict) -> None:
    from dask_gateway_server.options import Bool, Float, Integer, Options

    s, paths, secrets = runtime["settings"], runtime["paths"], runtime["secrets"]
    dask, hub = s["dask"], s["hub"]
    venv_bin = os.path.join(paths["venv"], "bin")
    c.DaskGateway.address = f"127.0.0.1:{dask['api_port']}"
    c.Proxy.address = f"127.0.0.1:{dask['port']}"
    c.Proxy.tcp_address = f"{hub['ip']}:{dask['scheduler_port']}"
    c.Proxy.prefix = "/services/dask-gateway"
    c.DaskGateway.backend_class = "beamside_hub.gateway.BeamsideBackend"
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = f"http://127.0.0.1:{hub['hub_port']}/hub/api"
    b = c.BeamsideBackend
    b.clusters_directory = os.path.join(paths["gateway_dir"], "clusters")
    b.api_url = f"http://127.0.0.1:{dask['port']}/services/dask-gateway/api"
    b.catalog = paths["catalog"]
    b.homes_dir = paths["homes"]
    b.sandboxes_dir = paths["sandboxes"]
    b.isolate = runtime["isolate"]
    b.software_paths = paths["software"]
    b.audit_socket = paths["audit_socket"] if s["audit"]["enabled"] else ""
    b.max_clusters_per_user = dask["max_clusters_per_user"]
    b.db_url = f"sqlite:///{paths['gateway_dir']}/db/gateway.sqlite"
    b.db_encrypt_keys = [secrets["gateway_db_key"]]
    cc = c.ClusterConfig
    cc.scheduler_cmd = [os.path.join(venv_bin, "dask"), "scheduler"]
    cc.worker_cmd = [os.path.join(venv_bin, "dask"), "worker"]
    cc.worker_cores = dask["worker_cores"]
    cc.worker_memory = dask["worker_memory"]
    cc.cluster_max_workers = dask["max_workers"]
    cc.cluster_max_cores = dask["max_cores"]
    cc.cluster_max_memory = dask["max_memory"]
    cc.idle_timeout = dask["idle_timeout"]
    cc.environment = {"PATH": f"{venv_bin}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}

    def options_handler(options):
        return {"worker_cores": options.worker_cores, "worker_memory": int(options.worker_memory * 2**30)}

    from dask.utils import parse_bytes

    max_mem = parse_bytes(str(dask["max_memory"])) / 2**30
    c.Backend.cluster_options = Options(
        Integer("worker_cores", default=dask["worker_cores"], min=1, max=dask["max_cores"], label="Cores per worker"),
        Float("worker_memory", default=parse_bytes(str(dask["worker_memory"])) / 2**30, min=0.25, max=max_mem,
              label="Memory per worker (GiB)"),
        Bool("detached", default=False, label="Keep running after my notebook server stops (for scripts)"),
        handler=options_handler,
    )
