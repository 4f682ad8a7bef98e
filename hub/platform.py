"""Where user servers and Dask clusters run: the platform contract and its two implementations.

A :class:`Platform` answers, for one kind of machine, the four questions that
differ between an embedded deployment and a cluster; everything else (login,
roles, services, the culler, the gateway's options) is the same code for all
of them, in :mod:`beamside_hub.runtime`:

1. **where user servers run**: the spawner class and its options
   (:meth:`Platform.configure_servers`);
2. **where Dask clusters run**: the gateway's backend, the ``dask`` command
   and the base environment of scheduler and workers
   (:meth:`Platform.configure_gateway`), and what each cluster adds from the
   user's catalog entry (:meth:`Platform.cluster_config`);
3. **how the parts reach each other**: the addresses, derived once by whoever
   writes the runtime file (``beamside up``, or the chart) and read here
   (:meth:`Platform.addresses`);
4. **how a user's data view is mounted**: a bubblewrap sandbox with bind mounts
   (local) or read-only ``subPath`` volume mounts (Kubernetes) — each
   implementation's spawner and backend own it.

The runtime's ``platform`` names the implementation, as dask-gateway's
``backend_class`` does: a short name from :data:`PLATFORMS` or the import path
of a subclass. A new place where servers run (a SLURM cluster, another
facility) is one more subclass here; no other module tests which platform it
is on.
"""

from __future__ import annotations

import importlib
import os

from analysis_lib.contract import GATEWAY_PREFIX, NO_MALLOC_TRIM_ENV

# Where a user's server and Dask processes find their own view of the catalog, on every platform
# (a folder: a catalog replaced on the host shows in running sandboxes)
USER_CATALOG_DIR = "/run/beamside/catalog"
USER_CATALOG = f"{USER_CATALOG_DIR}/catalog.yaml"


class Platform:
    """The contract; subclasses implement every method (the base only reads the addresses)."""

    name = ""
    runs_gateway_service = True  # the hub starts dask-gateway as a managed service

    def addresses(self, runtime: dict) -> dict:
        """``public_bind_url``, ``hub_bind_url``, ``hub_api_url``, ``proxy_api_url``, ``gateway_url``
        (HTTP), ``gateway_tcp`` (scheduler traffic) and, where user servers go through the proxy to
        reach the gateway, ``proxy_url``: as the runtime file holds them."""
        return runtime["addresses"]

    def configure_servers(self, c, runtime: dict, env: dict) -> None:
        """Set the spawner class and its traits on ``c``; add to ``env`` what user servers need."""
        raise NotImplementedError

    def configure_gateway(self, c, runtime: dict) -> tuple[list[str], dict]:
        """Set the gateway's backend on ``c``; return the ``dask`` command and the processes' base env."""
        raise NotImplementedError

    def cluster_config(self, runtime: dict, user: str, environment: dict) -> dict:
        """What one cluster of ``user`` adds to its config when it starts (nothing by default)."""
        return {}


class LocalPlatform(Platform):
    """The embedded mode: servers and Dask processes as local processes of per-user accounts, in
    bubblewrap sandboxes (:mod:`beamside_hub.sandbox`), each user in a network namespace of their own
    when ``network`` is ``private`` (:mod:`beamside_hub.network`)."""

    name = "local"

    @staticmethod
    def derive_addresses(settings: dict, private_network: bool) -> dict:
        """The addresses on one machine (what ``beamside up`` writes into the runtime file).

        With a private network per user, what users' processes must reach (the hub's API, the
        gateway's proxy and its scheduler traffic) is on the internal address, the only host address
        their namespaces have a route to; the rest stays on loopback.
        """
        from .network import INTERNAL_IP

        hub, dask = settings["hub"], settings["dask"]
        internal = INTERNAL_IP if private_network else "127.0.0.1"
        return {
            "public_bind_url": f"http://{hub['ip']}:{hub['port']}",
            "hub_bind_url": f"http://{internal}:{hub['hub_port']}",
            "hub_api_url": f"http://{internal}:{hub['hub_port']}/hub/api",
            "proxy_api_url": f"http://127.0.0.1:{hub['proxy_api_port']}",
            "gateway_url": f"http://{internal}:{dask['port']}",  # the gateway's own proxy (HTTP)
            "gateway_tcp": f"{internal}:{dask['scheduler_port']}",  # ... and its scheduler traffic
        }

    def addresses(self, runtime: dict) -> dict:
        if "addresses" in runtime:
            return runtime["addresses"]
        return self.derive_addresses(runtime["settings"], private_network(runtime))

    def configure_servers(self, c, runtime: dict, env: dict) -> None:
        paths, dask = runtime["paths"], runtime["settings"]["dask"]
        a = self.addresses(runtime)
        venv_bin = os.path.join(paths["venv"], "bin")
        c.JupyterHub.spawner_class = "beamside_hub.spawner.BeamsideSpawner"
        sp = c.BeamsideSpawner
        self.sandboxes(sp, runtime)
        sp.examples_dir = paths.get("examples", "")
        sp.logs_dir = os.path.join(paths["state"], "logs", "users")
        sp.gateway_api_url = f"{a['gateway_url']}{GATEWAY_PREFIX}/api" if dask["enabled"] else ""
        c.Spawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
        # ipc kernels: no TCP port races between kernels started in the same second, and the
        # kernel sockets live inside the user's sandbox (where nobody else can reach them).
        c.Spawner.args = ["--KernelManager.transport=ipc"] if runtime["isolate"] else []
        env["PATH"] = f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"
        if private_network(runtime) and runtime["settings"]["auth"]["type"] == "passwords":
            from .network import INTERNAL_IP  # the proxy reaches the hub from the internal address

            c.PasswordFileAuthenticator.trusted_proxies = ["127.0.0.1", "::1", INTERNAL_IP]

    def gateway_service(self, runtime: dict) -> dict:
        """How the hub starts the gateway here: a managed service in the gateway's folder."""
        paths = runtime["paths"]
        venv_bin = os.path.join(paths["venv"], "bin")
        return {
            "command": [os.path.join(venv_bin, "dask-gateway-server"), "-f", paths["gateway_config"]],
            "cwd": paths["gateway_dir"],
            "environment": {"BEAMSIDE_RUNTIME": os.environ.get("BEAMSIDE_RUNTIME", ""),
                            "PATH": f"{venv_bin}:/usr/bin:/bin"},
        }

    def configure_gateway(self, c, runtime: dict) -> tuple[list[str], dict]:
        """dask-gateway's local backend in per-user sandboxes (:mod:`beamside_hub.gateway`)."""
        s, paths, secrets = runtime["settings"], runtime["paths"], runtime["secrets"]
        dask, hub = s["dask"], s["hub"]
        a = self.addresses(runtime)
        venv_bin = os.path.join(paths["venv"], "bin")
        c.DaskGateway.address = f"127.0.0.1:{dask['api_port']}"
        c.Proxy.address = a["gateway_url"].split("//", 1)[1]
        c.Proxy.tcp_address = f"{hub['ip']}:{dask['scheduler_port']}"
        c.DaskGateway.backend_class = "beamside_hub.gateway.BeamsideBackend"
        b = c.BeamsideBackend
        self.sandboxes(b, runtime)
        b.clusters_directory = os.path.join(paths["gateway_dir"], "clusters")
        b.api_url = f"{a['gateway_url']}{GATEWAY_PREFIX}/api"
        b.max_clusters_per_user = dask["max_clusters_per_user"]
        b.max_cluster_age = dask["max_age"]
        b.reconcile_period = s["singleuser"]["access_check_every"]
        b.db_url = f"sqlite:///{paths['gateway_dir']}/db/gateway.sqlite"
        b.db_encrypt_keys = [secrets["gateway_db_key"]]
        return [os.path.join(venv_bin, "dask")], {"PATH": f"{venv_bin}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}

    @staticmethod
    def sandboxes(section, runtime: dict) -> None:
        """The same sandbox settings for the spawner and the gateway (:class:`beamside_hub.sandbox.Sandboxed`)."""
        paths = runtime["paths"]
        section.catalog = paths["catalog"]
        section.homes_dir = paths["homes"]
        section.sandboxes_dir = paths["sandboxes"]
        section.isolate = runtime["isolate"]
        section.software_paths = paths["software"]
        section.audit_socket = paths["audit_socket"] if runtime["settings"]["audit"]["enabled"] else ""
        section.private_network = private_network(runtime)


class KubernetesPlatform(Platform):
    """The Helm chart: servers as KubeSpawner pods, clusters from dask-gateway's Kubernetes backend
    (:mod:`beamside_hub.kube`), addresses the chart's Services; the gateway has its own Deployments."""

    name = "kubernetes"
    runs_gateway_service = False

    def configure_servers(self, c, runtime: dict, env: dict) -> None:
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

    def configure_gateway(self, c, runtime: dict) -> tuple[list[str], dict]:
        """dask-gateway's Kubernetes backend (API server, controller, proxy: one config)."""
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
        return ["dask"], {"PYTHONNOUSERSITE": "1", **NO_MALLOC_TRIM_ENV}

    def cluster_config(self, runtime: dict, user: str, environment: dict) -> dict:
        """The user's own mounts and ids, from the catalog at the time the cluster starts."""
        from analysis_lib.catalog import load_catalog

        from .kube import dask_pod_config

        return dask_pod_config(load_catalog(runtime["paths"]["catalog"]), user, runtime["settings"], environment)


PLATFORMS = {"local": LocalPlatform, "kubernetes": KubernetesPlatform}


def platform_for(runtime: dict) -> Platform:
    """The platform the runtime names (``local`` when it names none)."""
    name = runtime.get("platform") or "local"
    if name in PLATFORMS:
        return PLATFORMS[name]()
    module, _, cls = name.rpartition(".")
    if not module:
        raise ValueError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}, or a class's import path")
    platform = getattr(importlib.import_module(module), cls)()
    if not isinstance(platform, Platform):
        raise TypeError(f"{name} is not a beamside_hub.platform.Platform")
    return platform


def private_network(runtime: dict) -> bool:
    """Whether users' processes run in network namespaces of their own (:mod:`beamside_hub.network`)."""
    return runtime.get("network") == "private"
