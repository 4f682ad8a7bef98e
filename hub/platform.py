"""Where user servers and Dask clusters run: the platform contract and its two implementations.

A :class:`Platform` answers, for one kind of machine, the four questions that
differ between an embedded deployment and a cluster; everything else (login,
roles, services, the culler, the gateway's options) is the same code for all
of them, in :mod:`beamside_hub.configure`:

1. **where user servers run**: the spawner class and its options
   (:meth:`Platform.configure_servers`);
2. **where Dask clusters run**: the gateway's backend, the ``dask`` command
   and the base environment of scheduler and workers
   (:meth:`Platform.configure_gateway`), and what each cluster adds from the
   user's catalog entry (:meth:`Platform.cluster_config`);
3. **how the parts reach each other**: the addresses, derived once when the
   runtime is made (:meth:`LocalPlatform.derive_addresses` for ``beamside up``,
   :meth:`KubernetesPlatform.runtime` from the chart's values) and read from
   it afterwards (:class:`beamside_hub.runtime.Addresses`);
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

import yaml
from dask.utils import parse_bytes

from analysis_lib.contract import GATEWAY_PREFIX, WORKER_ENV

from .runtime import Addresses, KubeRuntime, Paths, Runtime
from .settings import Settings
from .start_queue import default_slots, queue_file

# Where a user's server and Dask processes find their own view of the catalog, on every platform
# (a folder: a catalog replaced on the host shows in running sandboxes)
USER_CATALOG_DIR = "/run/beamside/catalog"
USER_CATALOG = f"{USER_CATALOG_DIR}/catalog.yaml"


class Platform:
    """The contract; subclasses implement every method but :meth:`cluster_config`."""

    name = ""
    runs_gateway_service = True  # the hub starts dask-gateway as a managed service
    queues_starts = False  # True: the spawner queues starts (JupyterHub's concurrent_spawn_limit is off)

    def configure_servers(self, c, runtime: Runtime, env: dict) -> None:
        """Set the spawner class and its traits on ``c``; add to ``env`` what user servers need."""
        raise NotImplementedError

    def configure_gateway(self, c, runtime: Runtime) -> tuple[list[str], dict]:
        """Set the gateway's backend on ``c``; return the ``dask`` command and the processes' base env."""
        raise NotImplementedError

    def gateway_service(self, runtime: Runtime) -> dict:
        """How the hub starts the gateway as a managed service (when :attr:`runs_gateway_service`)."""
        raise NotImplementedError

    def cluster_config(self, runtime: Runtime, user: str, environment: dict) -> dict:
        """What one cluster of ``user`` adds to its config when it starts (nothing by default)."""
        return {}


class LocalPlatform(Platform):
    """The embedded mode: servers and Dask processes as local processes of per-user accounts, in
    bubblewrap sandboxes (:mod:`beamside_hub.sandbox`), each user in a network namespace of their own
    when ``network`` is ``private`` (:mod:`beamside_hub.network`)."""

    name = "local"
    spawner_class = "beamside_hub.spawner.BeamsideSpawner"
    backend_class = "beamside_hub.gateway.BeamsideBackend"
    can_have_private_network = True  # users' processes in network namespaces of their own (needs root where they run)
    queues_starts = True  # starts beyond hub.concurrent_spawn_limit wait in the spawner's queue (beamside_hub.start_queue)

    @classmethod
    def internal_ip(cls, settings: Settings, private_network: bool) -> str:
        """The address users' processes reach the hub's API and the gateway on."""
        from .network import INTERNAL_IP

        return INTERNAL_IP if private_network else "127.0.0.1"

    @classmethod
    def derive_addresses(cls, settings: Settings, private_network: bool) -> Addresses:
        """The addresses on one machine (what ``beamside up`` writes into the runtime file).

        With a private network per user, what users' processes must reach (the hub's API, the
        gateway's proxy and its scheduler traffic) is on the internal address, the only host address
        their namespaces have a route to; the rest stays on loopback.
        """
        hub, dask = settings.hub, settings.dask
        internal = cls.internal_ip(settings, private_network)
        return Addresses(
            public_bind_url=f"http://{hub.ip}:{hub.port}",
            hub_bind_url=f"http://{internal}:{hub.hub_port}",
            hub_api_url=f"http://{internal}:{hub.hub_port}/hub/api",
            proxy_api_url=f"http://127.0.0.1:{hub.proxy_api_port}",
            gateway_url=f"http://{internal}:{dask.port}",  # the gateway's own proxy (HTTP)
            gateway_tcp=f"{internal}:{dask.scheduler_port}",  # ... and its scheduler traffic
        )

    def configure_servers(self, c, runtime: Runtime, env: dict) -> None:
        paths, a = runtime.paths, runtime.addresses
        venv_bin = os.path.join(paths.venv, "bin")
        c.JupyterHub.spawner_class = self.spawner_class
        sp = getattr(c, self.spawner_class.rsplit(".", 1)[1])
        self.sandboxes(sp, runtime)
        sp.examples_dir = paths.examples
        if self.queues_starts:
            slots = runtime.settings.hub.concurrent_spawn_limit
            sp.start_slots = default_slots() if slots is None else slots
            sp.start_queue_file = queue_file(paths.state)
        sp.logs_dir = os.path.join(paths.state, "logs", "users")
        sp.gateway_api_url = f"{a.gateway_url}{GATEWAY_PREFIX}/api" if runtime.settings.dask.enabled else ""
        c.Spawner.cmd = [os.path.join(venv_bin, "beamside-singleuser")]  # beamside_hub.user_server
        # ipc kernels: no TCP port races between kernels started in the same second, and the
        # kernel sockets live inside the user's sandbox (where nobody else can reach them).
        c.Spawner.args = ["--KernelManager.transport=ipc"] if runtime.isolate else []
        env["PATH"] = f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"
        if runtime.private_network and runtime.settings.auth.type == "passwords":
            from .network import (
                INTERNAL_IP,  # the proxy reaches the hub from the internal address
            )

            c.PasswordFileAuthenticator.trusted_proxies = ["127.0.0.1", "::1", INTERNAL_IP]

    def gateway_service(self, runtime: Runtime) -> dict:
        """How the hub starts the gateway here: a managed service in the gateway's folder."""
        paths = runtime.paths
        venv_bin = os.path.join(paths.venv, "bin")
        return {
            "command": [os.path.join(venv_bin, "dask-gateway-server"), "-f", paths.gateway_config],
            "cwd": paths.gateway_dir,
            "environment": {RUNTIME_ENV: runtime.file or os.environ.get(RUNTIME_ENV, ""),
                            "PATH": f"{venv_bin}:/usr/bin:/bin"},
        }

    def configure_gateway(self, c, runtime: Runtime) -> tuple[list[str], dict]:
        """dask-gateway's local backend in per-user sandboxes (:mod:`beamside_hub.gateway`)."""
        s, paths, a = runtime.settings, runtime.paths, runtime.addresses
        dask = s.dask
        venv_bin = os.path.join(paths.venv, "bin")
        c.DaskGateway.address = f"127.0.0.1:{dask.api_port}"
        c.Proxy.address = a.gateway_url.split("//", 1)[1]
        c.Proxy.tcp_address = f"{s.hub.ip}:{dask.scheduler_port}"
        c.DaskGateway.backend_class = self.backend_class
        b = getattr(c, self.backend_class.rsplit(".", 1)[1])
        self.sandboxes(b, runtime)
        b.clusters_directory = os.path.join(paths.gateway_dir, "clusters")
        b.api_url = f"{a.gateway_url}{GATEWAY_PREFIX}/api"
        b.max_clusters_per_user = dask.max_clusters_per_user
        b.max_cluster_age = dask.max_age
        b.reconcile_period = s.singleuser.access_check_every
        b.db_url = dask.db_url or f"sqlite:///{paths.gateway_dir}/db/gateway.sqlite"
        b.stopping_marker = stopping_marker(paths)
        b.cluster_memory_limit = parse_bytes(str(dask.max_memory)) + parse_bytes(str(dask.worker_memory))
        b.db_encrypt_keys = [runtime.secrets["gateway_db_key"]]
        return [os.path.join(venv_bin, "dask")], {"PATH": f"{venv_bin}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}

    @staticmethod
    def sandboxes(section, runtime: Runtime) -> None:
        """The same sandbox settings for the spawner and the gateway (:class:`beamside_hub.sandbox.Sandboxed`)."""
        paths = runtime.paths
        section.catalog = paths.catalog
        section.homes_dir = paths.homes
        section.sandboxes_dir = paths.sandboxes
        section.isolate = runtime.isolate
        section.software_paths = list(paths.software)
        section.audit_socket = paths.audit_socket if runtime.settings.audit.enabled else ""
        section.private_network = runtime.private_network
        from .limits import top_for

        section.cgroup_top = top_for(paths.state)
        limits = runtime.settings.limits
        section.user_memory_limit = parse_bytes(str(limits.memory)) if limits.memory is not None else 0
        section.user_cpu_limit = float(limits.cpu or 0)
        section.user_process_limit = (limits.processes or 0) if runtime.platform == LocalPlatform.name else 0


def stopping_marker(paths) -> str:
    """The file whose presence tells the gateway that beamside itself is stopping (so must its
    clusters), not just the hub restarting (:meth:`beamside_hub.gateway.BeamsideClusters.cleanup`)."""
    return os.path.join(paths.gateway_dir, "db", "stopping")


class SlurmPlatform(LocalPlatform):
    """The facility's HPC cluster: each user server is a SLURM job of the user's account
    (:mod:`beamside_hub.slurm`), and so are the scheduler and each worker of a Dask cluster
    (:mod:`beamside_hub.slurm_gateway`), all in the same bubblewrap sandbox as on one machine. The
    hub, the proxy and the gateway run on the hub's host as in the embedded mode; jobs reach them on
    ``slurm.hub_ip``.
    Users' processes share their node's network (per-user namespaces need root on every node)."""

    name = "slurm"
    spawner_class = "beamside_hub.slurm.BeamsideSlurmSpawner"
    backend_class = "beamside_hub.slurm_gateway.BeamsideSlurmBackend"
    can_have_private_network = False
    queues_starts = False  # a server's start is a job in SLURM's own queue (shown on the spawn page)

    @classmethod
    def internal_ip(cls, settings: Settings, private_network: bool) -> str:
        return settings.slurm.hub_ip

    def configure_servers(self, c, runtime: Runtime, env: dict) -> None:
        super().configure_servers(c, runtime, env)
        slurm = runtime.settings.slurm
        sp = c.BeamsideSlurmSpawner
        sp.ip = slurm.server_ip
        sp.req_partition = slurm.partition
        sp.req_account = slurm.account
        sp.slurm_bin_dir = slurm.bin_dir
        sp.slurm_env = {"SLURM_CONF": slurm.conf} if slurm.conf else {}
        sp.startup_poll_interval = slurm.poll_every
        sp.defaults = {"cores": slurm.cores, "memory": slurm.memory, "walltime": slurm.walltime, "partition": slurm.partition}
        sp.limits = {"cores": slurm.max_cores, "memory": slurm.max_memory, "walltime": slurm.max_walltime,
                     "partitions": [slurm.partition, *(p for p in slurm.partitions if p != slurm.partition)]}
        # (importing the spawner class registers batchspawner's API handler, /hub/api/batchspawner,
        # where each job's server reports the port it picked on its node)

    def configure_gateway(self, c, runtime: Runtime) -> tuple[list[str], dict]:
        """The gateway as in the embedded mode, its schedulers and workers as SLURM jobs of the
        user's account (:mod:`beamside_hub.slurm_gateway`), listening on ``slurm.server_ip``."""
        dask_cmd, environment = super().configure_gateway(c, runtime)
        slurm, dask = runtime.settings.slurm, runtime.settings.dask
        b = c.BeamsideSlurmBackend
        b.default_host = slurm.server_ip
        b.slurm_env = {"SLURM_CONF": slurm.conf} if slurm.conf else {}
        b.submit_command = os.path.join(slurm.bin_dir, "sbatch")
        b.cancel_command = os.path.join(slurm.bin_dir, "scancel")
        b.status_command = os.path.join(slurm.bin_dir, "squeue")
        b.cluster_status_period = b.worker_status_period = slurm.poll_every
        cc = c.SlurmClusterConfig
        cc.partition = slurm.partition
        cc.account = slurm.account
        cc.scheduler_cores = dask.scheduler_cores
        cc.scheduler_memory = dask.scheduler_memory
        return dask_cmd, environment


class KubernetesPlatform(Platform):
    """The Helm chart: servers as KubeSpawner pods, clusters from dask-gateway's Kubernetes backend
    (:mod:`beamside_hub.kube`), addresses the chart's Services; the gateway has its own Deployments.

    The chart ships its values to the hub and gateway pods as they are (``values.yaml`` in the
    hub's ConfigMap, with the release's name and namespace added); :meth:`runtime` turns them into
    the runtime, here and nowhere else (the templates translate nothing).
    """

    name = "kubernetes"
    runs_gateway_service = False
    # Where the chart mounts its files in the hub and gateway containers (one folder, see
    # beamside.configMounts): runtime/values.yaml, catalog/, secrets/, passwords/.
    ETC = "/etc/beamside"
    STATE = "/srv/jupyterhub"

    @classmethod
    def runtime(cls, values: dict, etc: str = ETC) -> Runtime:
        """The runtime of one pod, from the chart's values and the files the chart mounted under ``etc``."""
        release = values.get("Release") or {}
        name, ns = release.get("Name"), release.get("Namespace")
        if not name or not ns:
            raise ValueError("the chart's values.yaml lacks Release.Name / Release.Namespace (render it with the chart)")
        settings = Settings.from_helm_values(values, catalog=f"{etc}/catalog/catalog.yaml",
                                             passwords_file=f"{etc}/passwords/passwords.yaml")
        # The chart's names: "<fullname>-<component>" (beamside.fullname / beamside.name in _helpers.tpl)
        fullname = (values.get("fullnameOverride") or name)[:40].rstrip("-")

        def svc(component: str) -> str:
            return f"{fullname}-{component}.{ns}"

        proxy_port = int(values["proxy"]["service"]["port"])
        addresses = Addresses(
            public_bind_url="http://:8000",
            hub_bind_url="http://:8081",
            hub_connect_url=f"http://{svc('hub')}:8081",
            hub_api_url=f"http://{svc('hub')}:8081/hub/api",
            proxy_api_url=f"http://{svc('proxy-api')}:8001",
            proxy_url=f"http://{svc('proxy-public')}:{proxy_port}",
            gateway_url=f"http://{svc('gateway')}:8000",
            gateway_tcp=f"{svc('gateway')}:8786",
            gateway_api_url=f"http://{svc('gateway-api')}:8000",
        )
        kube = KubeRuntime(
            namespace=ns,
            gateway_instance=f"{fullname}-gateway",
            singleuser_image=str(settings.singleuser.image),
            image_pull_policy=values["hub"]["image"]["pull_policy"],
            network_policy=bool(values["network_policy"]["enabled"]),
            # beamside.selector for user pods: labels KubeSpawner leaves alone
            singleuser_labels={"beamside.org/instance": name, "beamside.org/component": "singleuser"},
        )
        runtime = Runtime(settings=settings, paths=Paths(state=cls.STATE, catalog=settings.data.catalog,
                                                         passwords_file=settings.auth.passwords_file),
                          addresses=addresses, platform=cls.name, kube=kube)
        return runtime.with_secrets_from(f"{etc}/secrets")

    def configure_servers(self, c, runtime: Runtime, env: dict) -> None:
        s, k = runtime.settings, runtime.kube
        single = s.singleuser
        c.JupyterHub.spawner_class = "beamside_hub.kube.BeamsideKubeSpawner"
        c.JupyterHub.hub_connect_url = runtime.addresses.hub_connect_url
        c.JupyterHub.cookie_secret_file = os.path.join(runtime.secrets_dir, "cookie_secret")
        if s.hub.public_url:
            c.JupyterHub.public_url = s.hub.public_url
        sp = c.BeamsideKubeSpawner
        sp.catalog = runtime.paths.catalog
        sp.settings = s
        sp.namespace = k.namespace
        sp.image = k.singleuser_image
        sp.image_pull_policy = k.image_pull_policy
        sp.cmd = ["beamside-singleuser"]
        sp.working_dir = "/home/user"
        sp.automount_service_account_token = False
        sp.extra_labels = dict(k.singleuser_labels)
        sp.node_selector = dict(single.node_selector)
        sp.profile_list = list(single.profiles)
        if single.mem_guarantee:
            sp.mem_guarantee = single.mem_guarantee
        if single.cpu_guarantee:
            sp.cpu_guarantee = single.cpu_guarantee
        home = single.home
        sp.storage_pvc_ensure = home.type == "pvc"
        if home.type == "pvc":
            sp.storage_capacity = home.size
            sp.storage_class = home.storage_class or ""
            sp.pvc_name_template = "home-{username}"

    def configure_gateway(self, c, runtime: Runtime) -> tuple[list[str], dict]:
        """dask-gateway's Kubernetes backend (API server, controller, proxy: one config)."""
        k, a, dask = runtime.kube, runtime.addresses, runtime.settings.dask
        c.DaskGateway.address = ":8000"
        c.DaskGateway.backend_class = "beamside_hub.kube.BeamsideKubeBackend"
        # Three pods read this config, each holding only its own tokens: the API server both,
        # the proxy gateway_proxy_token, the controller none.
        secrets = runtime.secrets
        if "gateway_token" in secrets:
            c.JupyterHubAuthenticator.jupyterhub_api_token = secrets["gateway_token"]
        c.Proxy.address = ":8000"
        c.Proxy.tcp_address = ":8786"
        c.Proxy.gateway_url = a.gateway_api_url
        if "gateway_proxy_token" in secrets:
            c.Proxy.api_token = secrets["gateway_proxy_token"]
        for cls in (c.KubeBackend, c.KubeController):
            cls.gateway_instance = k.gateway_instance
        c.BeamsideKubeController.network_policy = k.network_policy
        c.KubeController.api_url = f"{a.gateway_api_url}/api"
        kc = c.KubeClusterConfig
        kc.namespace = k.namespace
        kc.image = k.singleuser_image
        kc.image_pull_policy = k.image_pull_policy
        kc.scheduler_cores = dask.scheduler_cores
        kc.scheduler_memory = dask.scheduler_memory
        return ["dask"], {"PYTHONNOUSERSITE": "1", **WORKER_ENV}

    def cluster_config(self, runtime: Runtime, user: str, environment: dict) -> dict:
        """The user's own mounts and ids, from the catalog at the time the cluster starts."""
        from analysis_lib.catalog import load_catalog

        from .kube import dask_pod_config

        return dask_pod_config(load_catalog(runtime.paths.catalog), user, runtime.settings, environment)


PLATFORMS = {"local": LocalPlatform, "slurm": SlurmPlatform, "kubernetes": KubernetesPlatform}
RUNTIME_ENV = "BEAMSIDE_RUNTIME"  # the runtime file `beamside up` wrote
HELM_VALUES_ENV = "BEAMSIDE_HELM_VALUES"  # the chart's values.yaml, as the chart mounted it


def platform_named(name: str) -> type[Platform]:
    """The platform class a name stands for: a key of :data:`PLATFORMS` or a class's import path."""
    if name in PLATFORMS:
        return PLATFORMS[name]
    module, _, cls = name.rpartition(".")
    if not module:
        raise ValueError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}, or a class's import path")
    platform = getattr(importlib.import_module(module), cls)
    if not (isinstance(platform, type) and issubclass(platform, Platform)):
        raise TypeError(f"{name} is not a beamside_hub.platform.Platform")
    return platform


def platform_for(runtime: Runtime) -> Platform:
    """The platform the runtime names (``local`` when it names none)."""
    return platform_named(runtime.platform or "local")()


def runtime_from_environment() -> Runtime:
    """The runtime of this process: the file ``beamside up`` wrote, or the chart's values.

    The chart mounts ``values.yaml`` at ``<etc>/runtime/values.yaml`` and its other files beside it
    under ``<etc>`` (the catalog, the Secret's keys, the passwords).
    """
    if os.environ.get(HELM_VALUES_ENV):
        path = os.environ[HELM_VALUES_ENV]
        with open(path) as f:
            values = yaml.safe_load(f)
        return KubernetesPlatform.runtime(values, etc=os.path.dirname(os.path.dirname(path)))
    if not os.environ.get(RUNTIME_ENV):
        raise SystemExit(f"neither {RUNTIME_ENV} (beamside up) nor {HELM_VALUES_ENV} (the Helm chart) is set")
    return Runtime.load(os.environ[RUNTIME_ENV])
