"""Kubernetes: a user's pods see only that user's beamtimes, read-only — notebook server and Dask alike.

The Helm chart's hub runs the same ``jupyterhub_config.py`` as ``beamside up``;
with ``platform: kubernetes`` in the runtime, :func:`beamside_hub.configure.configure_hub`
picks :class:`BeamsideKubeSpawner` and :func:`beamside_hub.configure.configure_gateway`
picks the classes below. What a user's pod mounts and as whom it runs is one
pure function, :func:`user_pod`, of the catalog (the library's own code) and
the chart's values; the notebook pod and the Dask scheduler and worker pods
are all built from it, so they cannot drift apart.

dask-gateway's Kubernetes backend normally routes clusters through traefik
(IngressRoute objects). Here the gateway's own proxy (``dask-gateway-server
proxy``, no third-party CRDs) does it: the API server publishes a route per
running cluster, exactly as dask-gateway's local backend does.

A NetworkPolicy cannot say "pods with the same label value as mine", so the
chart's static policy lets Dask pods reach only the gateway and DNS, and the
controller adds one policy per cluster (:func:`cluster_network_policy`) that
opens the cluster's pods to each other - and to nobody else's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml
from dask_gateway_server.backends.kubernetes.backend import KubeBackend
from dask_gateway_server.backends.kubernetes.controller import KubeController
from dask_gateway_server.backends.kubernetes.utils import RateLimitedClient
from dask_gateway_server.proxy import Proxy
from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.slugs import safe_slug
from traitlets import Bool, Instance, Unicode

from analysis_lib.catalog import Catalog, load_catalog
from analysis_lib.contract import CATALOG_ENV, USER_ENV

from .platform import USER_CATALOG
from .settings import Settings, Singleuser, Volume

FACILITY_VOLUME = "beamtimes"
HOME_VOLUME = "home"
CATALOG_VOLUME = "beamside-catalog"
CATALOG_ANNOTATION = "beamside.org/catalog"
HOME = "/home/user"


@dataclass
class UserPod:
    """What every pod of one user mounts, which env it gets, and as whom it runs."""

    volumes: list[dict] = field(default_factory=list)
    mounts: list[dict] = field(default_factory=list)
    annotations: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    pod_security: dict = field(default_factory=dict)
    container_security: dict = field(default_factory=dict)


def facility_volume(volume: Volume) -> dict:
    """The facility's data volume, read-only at the source.

    Read-only at the source (not only per mount) also keeps the kubelet from
    applying ``fsGroup`` to it: a recursive chown of a facility's storage
    would take hours and change ownership of every beamtime.
    """
    kind = volume.type
    if kind == "pvc":
        return {"name": FACILITY_VOLUME, "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True}}
    if kind == "nfs":
        return {"name": FACILITY_VOLUME, "nfs": {"server": volume.nfs.server, "path": volume.nfs.path, "readOnly": True}}
    if kind == "hostPath":
        return {"name": FACILITY_VOLUME, "hostPath": {"path": volume.host_path, "type": "Directory"}}
    raise ValueError(f"data.volume.type must be pvc, nfs or hostPath, got {kind!r}")


def security_contexts(single: Singleuser) -> tuple[dict, dict]:
    """Pod and container securityContext: the user's uid/gid, nothing that could undo isolation.

    ``fsGroup`` is only set when ``singleuser.fs_gid`` is (a per-user home PVC
    needs it to be writable); ``OnRootMismatch`` keeps the kubelet from
    walking the whole home on every start.
    """
    ids = {"runAsNonRoot": True, "runAsUser": single.uid, "runAsGroup": single.gid,
           "seccompProfile": {"type": "RuntimeDefault"}}
    pod = dict(ids)
    if single.supplemental_gids:
        pod["supplementalGroups"] = list(single.supplemental_gids)
    if single.fs_gid is not None:
        pod.update(fsGroup=single.fs_gid, fsGroupChangePolicy="OnRootMismatch")
    container = {**ids, "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def user_pod(catalog: Catalog, user: str, settings: Settings, home: dict | None) -> UserPod:
    """The beamtimes (one read-only subPath each), the user's filtered catalog, the home, the ids.

    The filtered catalog travels as a pod annotation projected into a file
    (downward API): the pod never holds the facility catalog, so confidential
    beamtimes of others never reach it. ``home`` is the home volume, or None
    for pods that get no home (Dask pods when homes are per-user PVCs,
    which only one node can mount). ``JUPYTERHUB_USER`` is not among the env:
    KubeSpawner sets it on the notebook pod, :func:`dask_pod_config` on Dask pods.
    """
    mine = catalog.view_for(user)
    pod = UserPod(
        volumes=[facility_volume(settings.data.volume),
                 {"name": CATALOG_VOLUME, "downwardAPI": {"items": [
                     {"path": os.path.basename(USER_CATALOG),
                      "fieldRef": {"fieldPath": f"metadata.annotations['{CATALOG_ANNOTATION}']"}}]}}],
        mounts=[{"name": FACILITY_VOLUME, "mountPath": os.path.join(mine["data_root"], bt["path"]),
                 "subPath": bt["path"], "readOnly": True} for bt in mine["beamtimes"]]
        + [{"name": CATALOG_VOLUME, "mountPath": os.path.dirname(USER_CATALOG), "readOnly": True}],
        annotations={CATALOG_ANNOTATION: yaml.safe_dump(mine, sort_keys=False)},
        env={CATALOG_ENV: USER_CATALOG},
    )
    if home is not None:
        pod.volumes.append(home)
        pod.mounts.append({"name": HOME_VOLUME, "mountPath": HOME,
                           **({"subPath": safe_slug(user)} if "nfs" in home else {})})
        pod.env["HOME"] = HOME
    pod.pod_security, pod.container_security = security_contexts(settings.singleuser)
    return pod


def nfs_home(settings: Settings) -> dict | None:
    """The shared NFS home volume (one subPath per user), or None when homes are per-user PVCs."""
    home = settings.singleuser.home
    return {"name": HOME_VOLUME, "nfs": {"server": home.nfs.server, "path": home.nfs.path}} if home.type == "nfs" else None


class BeamsideKubeSpawner(KubeSpawner):
    """KubeSpawner whose pod holds exactly the user's beamtimes, read-only, from the catalog at spawn time."""

    catalog = Unicode(config=True, help="The facility's beamtime catalog (YAML), the one source of truth for access.")
    settings = Instance(Settings, config=True, help="The deployment's settings (data volume, homes, ids).")

    def _home_volume(self) -> dict:
        if self.settings.singleuser.home.type == "pvc":
            return {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": self.pvc_name}}
        return nfs_home(self.settings)

    async def get_pod_manifest(self):
        """KubeSpawner's pod plus the user's beamtimes, catalog, home and securityContext.

        Added to the built pod rather than through KubeSpawner's templated
        traits: catalog text and beamtime paths are data, never templates, and
        a securityContext set here cannot lose ``fsGroup`` to a later merge.
        """
        pod = await super().get_pod_manifest()
        parts = user_pod(load_catalog(self.catalog), self.user.name, self.settings, self._home_volume())
        container = pod.spec.containers[0]
        pod.spec.volumes = [*(pod.spec.volumes or []), *parts.volumes]
        container.volume_mounts = [*(container.volume_mounts or []), *parts.mounts]
        container.env = [*(container.env or []), *({"name": k, "value": v} for k, v in parts.env.items())]
        pod.metadata.annotations = {**(pod.metadata.annotations or {}), **parts.annotations}
        pod.spec.security_context = parts.pod_security
        container.security_context = parts.container_security
        return pod


def dask_pod_config(catalog: Catalog, user: str, settings: Settings, environment: dict) -> dict:
    """dask-gateway cluster config giving the scheduler and workers the user's notebook-pod picture.

    Returned by the gateway's options handler, so it is stored in the
    DaskCluster object and the controller builds both pods from it.
    """
    parts = user_pod(catalog, user, settings, nfs_home(settings))
    out = {"environment": {**environment, **parts.env, USER_ENV: user}}
    for role in ("scheduler", "worker"):
        out[f"{role}_extra_pod_config"] = {"volumes": parts.volumes, "securityContext": parts.pod_security}
        out[f"{role}_extra_container_config"] = {"volumeMounts": parts.mounts,
                                                 "securityContext": parts.container_security}
        out[f"{role}_extra_pod_annotations"] = parts.annotations
    return out


class BeamsideKubeBackend(KubeBackend):
    """KubeBackend that routes running clusters through dask-gateway's own proxy instead of traefik."""

    async def setup(self, app):
        await super().setup(app)
        # The proxy runs in its own pod and polls this server for routes.
        self.proxy = Proxy(parent=self, log=self.log, externally_managed=True)
        await self.proxy.setup(app)
        self.routed: set[str] = set()

    async def cleanup(self):
        if hasattr(self, "proxy"):
            await self.proxy.cleanup()
        await super().cleanup()

    async def sync_cluster(self, cluster_name):
        """Keep the proxy's routes in step with the cluster (the local backend's routes, same shape)."""
        await super().sync_cluster(cluster_name)
        cluster = self.clusters.get(cluster_name)
        running = cluster is not None and bool(cluster.scheduler_address)
        if running and cluster_name not in self.routed:
            await self.proxy.add_route(kind="PATH", path=f"/clusters/{cluster_name}", target=cluster.dashboard_address)
            await self.proxy.add_route(kind="SNI", sni=cluster_name, target=cluster.scheduler_address)
            self.routed.add(cluster_name)
        elif not running and cluster_name in self.routed:
            await self.proxy.remove_route(kind="PATH", path=f"/clusters/{cluster_name}")
            await self.proxy.remove_route(kind="SNI", sni=cluster_name)
            self.routed.discard(cluster_name)


def cluster_network_policy(cluster: dict, gateway_instance: str) -> dict:
    """The NetworkPolicy letting one Dask cluster's scheduler and workers reach each other, on any port.

    Selected by the labels dask-gateway's controller puts on every pod of the
    cluster (``gateway.dask.org/instance`` and ``/cluster``); NetworkPolicies
    add up, so with the chart's static policy (the gateway and DNS only) a
    cluster's pods talk to their own cluster and never to another user's.
    Owned by the DaskCluster object: Kubernetes deletes it with the cluster.
    """
    meta = cluster["metadata"]
    own = {"gateway.dask.org/instance": gateway_instance, "gateway.dask.org/cluster": meta["name"]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"dask-{meta['name']}",
            "labels": {**own, "app.kubernetes.io/component": "dask-network-policy"},
            "ownerReferences": [{"apiVersion": cluster["apiVersion"], "kind": cluster["kind"],
                                 "name": meta["name"], "uid": meta["uid"]}],
        },
        "spec": {
            "podSelector": {"matchLabels": own},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": own}}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": own}}]}],
        },
    }


class BeamsideKubeController(KubeController):
    """KubeController without traefik objects, and with a NetworkPolicy per cluster.

    Routes are the API server's job (see BeamsideKubeBackend).
    """

    network_policy = Bool(
        False,
        config=True,
        help="""Create a NetworkPolicy per cluster letting its pods reach each other (the chart's
        network_policy.enabled). Needed when the chart's policies are on: they let Dask pods reach
        the gateway and DNS only; without them a cluster's workers could not reach its scheduler.""",
    )

    async def setup(self):
        await super().setup()
        self.networking_client = RateLimitedClient(
            kube_client.NetworkingV1Api(api_client=self.api_client), self.rate_limiter
        )

    async def create_secret_if_not_exists(self, cluster):
        """The cluster's first object: its NetworkPolicy goes first, before any of its pods exists."""
        if self.network_policy:
            policy = cluster_network_policy(cluster, self.gateway_instance)
            try:
                await self.networking_client.create_namespaced_network_policy(cluster["metadata"]["namespace"], policy)
            except ApiException as exc:
                if exc.status != 409:  # already there: an earlier attempt got this far
                    raise
        return await super().create_secret_if_not_exists(cluster)

    async def create_ingressroute_if_not_exists(self, cluster, sched_pod):
        return "gateway-proxy"

    async def create_ingressroutetcp_if_not_exists(self, cluster, sched_pod):
        return "gateway-proxy"


if __name__ == "__main__":  # the chart's controller Deployment: `python -m beamside_hub.kube -f dask_gateway_config.py`
    BeamsideKubeController.launch_instance()
