"""The Helm chart, offline: lint, render, validate every object, and build real pods from the rendered config.

The chart's hub runs the same ``jupyterhub_config.py`` as ``beamside up``; here
that file is loaded with traitlets from the values and catalog the chart
mounts, and KubeSpawner and dask-gateway's controller build the pods they
would create - for users of different beamtimes - which are then validated
against the Kubernetes schema. Needs the helm binary from ``make setup``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "beamside"
HELM = REPO / ".tooling" / "helm" / "helm" / "helm"
K8S = "1.34.0"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
NAMESPACE = "jhub"


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"helm is missing at {HELM}: run `make setup` (it fetches helm into .tooling/)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check)


def render(*values: Path, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", "t", str(CHART), "-n", NAMESPACE]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(_helm(*args).stdout) if d]


def pod_templates(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def assert_hardened(name: str, spec: dict, user_pod: bool = False) -> None:
    """What every pod of the deployment must hold: nothing that could undo isolation."""
    assert spec["securityContext"]["runAsNonRoot"] is True, name
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
        assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
        assert sc.get("privileged") is not True, (name, c["name"])
        assert sc.get("runAsUser", spec["securityContext"].get("runAsUser", 0)) != 0, (name, c["name"])
    if user_pod:
        assert spec["automountServiceAccountToken"] is False, name


def validate(obj: dict) -> None:
    obj = json.loads(json.dumps(obj))
    if "name" not in obj["metadata"]:  # generateName: the API server fills it in
        obj["metadata"]["name"] = obj["metadata"]["generateName"] + "x1y2z"
    kubernetes_validate.validate(obj, K8S, strict=True)


# -- lint, render, validate ------------------------------------------------------------

@pytest.mark.parametrize("values", [None, *EXAMPLES], ids=lambda v: v.stem if v else "defaults")
def test_lint_render_validate(values):
    lint = _helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(*([values] if values else []))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding",
            "NetworkPolicy", "CustomResourceDefinition"} <= kinds
    for d in docs:
        validate(d)
    for name, spec in pod_templates(docs):
        assert_hardened(name, spec)
        if not name.endswith(("-hub", "-gateway-api", "-gateway-controller")):  # only these talk to the API
            assert spec["automountServiceAccountToken"] is False, name
    services = {d["metadata"]["name"]: d["spec"]["type"] for d in docs if d["kind"] == "Service"}
    assert services["t-proxy-api"] == services["t-hub"] == services["t-gateway-api"] == "ClusterIP"


def test_network_policies_keep_user_pods_in():
    docs = render(CHART / "examples" / "hostpath-lab.yaml")
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    for name in ("t-singleuser", "t-dask"):
        spec = policies[name]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        text = json.dumps(spec["egress"])
        # no ipBlock at all: the Kubernetes API, cloud metadata (169.254.169.254) and the internet are denied
        assert "ipBlock" not in text and "169.254" not in text
        for rule in spec["egress"]:
            for peer in rule["to"]:  # every egress peer names pods: never "all pods" (other users)
                assert peer["podSelector"].get("matchLabels"), (name, rule)
    user_peers = json.dumps(policies["t-singleuser"]["egress"])
    for component in ("hub", "proxy", "gateway"):
        assert f'"app.kubernetes.io/component": "{component}"' in user_peers
    assert '"k8s-app": "kube-dns"' in user_peers


def test_hub_role_is_minimal():
    docs = render()
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "t-hub")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "persistentvolumeclaims", "events"}
    assert all("*" not in rule["verbs"] for rule in role["rules"])


@pytest.mark.parametrize(
    "sets, message",
    [
        (["singleuser.uid=0"], "at '/singleuser/uid': minimum: got 0, want 1"),
        (["auth.type=ldap"], "at '/auth/type'"),
        (["auth.type=oidc"], "at '/auth/oidc/authorize_url': got null, want string"),
        (["auth.type=oidc", "auth.oidc.authorize_url=https://idp/a", "auth.oidc.token_url=https://idp/t",
          "auth.oidc.userdata_url=https://idp/u", "auth.oidc.existing_secret=s", "hub.public_url=https://hub.example.org"],
         "at '/auth/oidc/allowed_groups': minItems: got 0, want 1"),  # an empty allow-list admits nobody, not all
        (["data.volume.type=nfs"], "at '/data/volume/nfs/server': minLength"),
        (["data.volume.type=hostPath", "data.volume.host_path=relative"], "at '/data/volume/host_path'"),
        (["singleuser.storage.type=pvc"], "additional properties 'storage' not allowed"),
        (["singleuser.image.tag=latest"], "at '/singleuser/image/tag'"),
        (["proxy.service.type=NodePort"], "at '/proxy/service/type'"),
    ],
)
def test_schema_rejects_bad_values(sets, message):
    args = ["template", "t", str(CHART)]
    for s in sets:
        args += ["--set", s]
    result = _helm(*args, check=False)
    assert result.returncode != 0, f"{sets} was accepted"
    assert message in result.stderr, result.stderr


# -- the real thing: the rendered hub config builds the pods ----------------------------

def _merged(base: dict, override: dict) -> dict:
    """Values as helm merges them: an admin's ``null`` removes the chart's key."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("values", [None, *EXAMPLES], ids=lambda v: v.stem if v else "defaults")
def test_values_reach_the_hub_as_they_are(values, tmp_path):
    """The hub's ConfigMap holds the admin's values untranslated, and every value the hub uses lands,
    equal, in its typed settings (the chart and the embedded mode share one schema)."""
    import dataclasses

    from beamside_hub.platform import KubernetesPlatform
    from beamside_hub.settings import CHART_ONLY

    docs = render(*([values] if values else []))
    shipped = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "t-hub")
                             ["data"]["values.yaml"])
    given = _merged(yaml.safe_load((CHART / "values.yaml").read_text()),
                    yaml.safe_load(values.read_text()) if values else {})
    given = json.loads(json.dumps(given, default=str))  # helm keeps an `until: 2027-01-31` a string
    assert shipped == {**given, "Release": {"Name": "t", "Namespace": NAMESPACE}}
    runtime = KubernetesPlatform.runtime(shipped, etc=str(tmp_path))

    def same(obj, doc: dict, where: str) -> int:
        compared = 0
        for key, value in doc.items():
            attr = getattr(obj, key)
            if dataclasses.is_dataclass(attr):
                compared += same(attr, value, f"{where}{key}.")
            else:
                assert attr == value, f"{where}{key}: values say {value!r}, the hub's settings {attr!r}"
                compared += 1
        return compared

    compared = 0
    for section, doc in shipped.items():
        if CHART_ONLY.get(section, ()) is None:
            continue
        compared += same(getattr(runtime.settings, section), {k: v for k, v in doc.items()
                                                              if k not in (CHART_ONLY.get(section) or ())}, f"{section}.")
    assert compared >= 55  # every section's keys (58 in the defaults), not a vacuous walk
    assert runtime.kube.singleuser_image == "{name}:{tag}".format(**shipped["singleuser"]["image"])
    assert runtime.addresses.hub_api_url == f"http://t-hub.{NAMESPACE}:8081/hub/api"


def secret_keys_seen(spec: dict, secret: str, all_keys: set[str]) -> set[str]:
    """The keys of Secret ``secret`` a pod can read: volumes (plain or projected, whole or by items) and env."""
    seen: set[str] = set()

    def source(name: str, items) -> None:
        if name == secret:
            seen.update({i["key"] for i in items} if items else all_keys)

    for volume in spec.get("volumes", []):
        if "secret" in volume:
            source(volume["secret"]["secretName"], volume["secret"].get("items"))
        for projected in volume.get("projected", {}).get("sources", []):
            if "secret" in projected:
                source(projected["secret"]["name"], projected["secret"].get("items"))
    for container in spec["containers"] + spec.get("initContainers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                source(ref["name"], [ref])
        for env_from in container.get("envFrom", []):
            if "secretRef" in env_from:
                source(env_from["secretRef"]["name"], None)
    return seen


HUB_KEYS = {"proxy_token", "gateway_token", "gateway_proxy_token", "supervisor_token", "crypt_key", "cookie_secret"}
KEYS_PER_POD = {  # what each process uses (beamside_hub.configure), and nothing more
    "t-hub": {"proxy_token", "gateway_token", "supervisor_token", "crypt_key", "cookie_secret"},
    "t-proxy": {"proxy_token"},
    "t-gateway-api": {"gateway_token", "gateway_proxy_token"},  # checks users' tokens at the hub; serves the proxy its routes
    "t-gateway": {"gateway_proxy_token"},  # the gateway's proxy: asks the API server for routes
    "t-gateway-controller": set(),  # talks to the Kubernetes API only
}


def test_each_pod_sees_only_the_secret_keys_it_uses():
    docs = render(CHART / "examples" / "oidc.yaml")
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "t-hub")
    assert set(secret["data"]) == HUB_KEYS
    seen = {name: secret_keys_seen(spec, "t-hub", HUB_KEYS) for name, spec in pod_templates(docs)}
    assert seen == KEYS_PER_POD
    oidc = {name for name, spec in pod_templates(docs) if secret_keys_seen(spec, "beamside-oidc", {"client-secret"})}
    assert oidc == {"t-hub"}  # the login's client secret too


def test_generated_secrets_are_kept_and_an_admin_managed_one_replaces_them():
    """helm install: generated once (lookup keeps them on upgrade), kept on uninstall. GitOps: the admin's Secret."""
    generated = render()
    secret = next(d for d in generated if d["kind"] == "Secret" and d["metadata"]["name"] == "t-hub")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    lint = _helm("lint", "--strict", str(CHART), "--set", "hub.existing_secret=facility-hub-tokens", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    managed = render(sets=("hub.existing_secret=facility-hub-tokens",))
    assert not [d for d in managed if d["kind"] == "Secret"]  # nothing random left to change between renders
    assert render(sets=("hub.existing_secret=facility-hub-tokens",)) == managed
    for name, spec in pod_templates(managed):
        assert secret_keys_seen(spec, "facility-hub-tokens", HUB_KEYS) == KEYS_PER_POD[name], name
        assert not secret_keys_seen(spec, "t-hub", HUB_KEYS), name
    for d in managed:
        validate(d)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Each pod's mounted files written where its container sees them (/etc/beamside -> a temp dir per pod).

    The secrets folder holds only the keys that pod's Deployment projects into it.
    """
    root = tmp_path_factory.mktemp("hub-pod")
    docs = render(CHART / "examples" / "hostpath-lab.yaml")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    secrets = {k: base64.b64decode(v).decode() for k, v in by_name[("Secret", "t-hub")]["data"].items()}
    runtime_files = {}
    for pod in ("t-hub", "t-gateway-api", "t-gateway-controller"):
        spec = by_name[("Deployment", pod)]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        etc = root / pod / "etc-beamside"

        def where(path: str) -> Path:
            return etc / Path(path).relative_to("/etc/beamside")

        values = where(env["BEAMSIDE_HELM_VALUES"])
        values.parent.mkdir(parents=True)
        values.write_text(by_name[("ConfigMap", "t-hub")]["data"]["values.yaml"])
        (etc / "catalog").mkdir()
        (etc / "catalog" / "catalog.yaml").write_text(by_name[("ConfigMap", "t-catalog")]["data"]["catalog.yaml"])
        if any(m["name"] == "secrets" for m in container["volumeMounts"]):
            (etc / "secrets").mkdir()
            for key in secret_keys_seen(spec, "t-hub", HUB_KEYS):
                (etc / "secrets" / key).write_text(secrets[key])
                os.chmod(etc / "secrets" / key, 0o440)
        runtime_files[pod] = values
    kubeconfig = root / "kubeconfig.yaml"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
    }))
    return {"runtime_files": runtime_files, "kubeconfig": kubeconfig, "secrets": secrets}


def load_config(path: Path, deployed, monkeypatch, pod: str = "t-hub"):
    """The config file as ``pod`` loads it, from that pod's mounted files."""
    from traitlets.config.loader import PyFileConfigLoader

    monkeypatch.delenv("BEAMSIDE_RUNTIME", raising=False)
    monkeypatch.setenv("BEAMSIDE_HELM_VALUES", str(deployed["runtime_files"][pod]))
    monkeypatch.setenv("KUBECONFIG", str(deployed["kubeconfig"]))
    # kubernetes_asyncio reads KUBECONFIG once, when first imported (maybe before this test set it)
    monkeypatch.setattr("kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(deployed["kubeconfig"]))
    return PyFileConfigLoader(path.name, str(path.parent)).load_config()


def notebook_pod(cfg, name: str) -> dict:
    from kubernetes_asyncio.client import ApiClient
    from traitlets.config import Config

    from beamside_hub.kube import BeamsideKubeSpawner

    class User:
        id = 1
        url = f"/user/{name}/"
        escaped_name = name
        spawners: dict = {}
        groups: list = []

    User.name = name

    class Hub:
        public_host = ""
        url = "http://t-hub.jhub:8081/hub/"
        base_url = "/hub/"
        api_url = "http://t-hub.jhub:8081/hub/api"

    async def build():
        spawner = BeamsideKubeSpawner(config=Config(cfg), user=User(), hub=Hub())
        spawner.api_token = "x"
        return ApiClient().sanitize_for_serialization(await spawner.get_pod_manifest())

    return asyncio.run(build())


def beamtime_mounts(spec: dict) -> list[dict]:
    return [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == "beamtimes"]


def test_hub_config_builds_notebook_pods_with_only_own_beamtimes(deployed, monkeypatch):
    cfg = load_config(REPO / "hub" / "jupyterhub_config.py", deployed, monkeypatch)
    assert cfg.JupyterHub.spawner_class == "beamside_hub.kube.BeamsideKubeSpawner"
    assert cfg.JupyterHub.hub_connect_url == "http://t-hub.jhub:8081"
    services = {s["name"]: s for s in cfg.JupyterHub.services}
    assert services["dask-gateway"]["url"] == "http://t-gateway.jhub:8000" and "command" not in services["dask-gateway"]
    assert "idle-culler" in services and "audit" not in services
    culler_role = next(r for r in cfg.JupyterHub.load_roles if r["name"] == "idle-culler")
    assert set(culler_role["scopes"]) == {"list:users", "read:users:activity", "read:servers", "delete:servers"}

    pods = {user: notebook_pod(cfg, user) for user in ("alice", "bob", "carol")}
    expected = {
        "alice": {"/data/bt-1001": "bt-1001"},
        "bob": {"/data/proposals/bt-2002": "proposals/bt-2002", "/data/industry/ind-3003": "industry/ind-3003"},
        "carol": {"/data/proposals/bt-2002": "proposals/bt-2002"},
    }
    for user, pod in pods.items():
        spec = pod["spec"]
        mounts = beamtime_mounts(spec)
        assert {m["mountPath"]: m["subPath"] for m in mounts} == expected[user], user
        assert all(m["readOnly"] is True for m in mounts), user
        facility = next(v for v in spec["volumes"] if v["name"] == "beamtimes")
        assert facility == {"name": "beamtimes", "hostPath": {"path": "/srv/beamtimes", "type": "Directory"}}
        catalog = yaml.safe_load(pod["metadata"]["annotations"]["beamside.org/catalog"])
        assert [bt["path"] for bt in catalog["beamtimes"]] == list(expected[user].values())
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["BEAMSIDE_CATALOG"] == "/run/beamside/catalog/catalog.yaml"
        assert env["DASK_GATEWAY__ADDRESS"] == "http://t-proxy-public.jhub:80/services/dask-gateway"
        assert_hardened(user, spec, user_pod=True)
        # the fsGroup trap: the pod securityContext keeps fsGroup (home PVC) next to seccomp
        assert spec["securityContext"]["fsGroup"] == 100 and spec["securityContext"]["runAsUser"] == 1000
        home = next(v for v in spec["volumes"] if v["name"] == "home")
        assert home["persistentVolumeClaim"]["claimName"] == f"home-{user}"
        assert spec["containers"][0]["image"] == "ghcr.io/beamside/singleuser:0.1.0"
        validate(pod)
    # confidential beamtimes (and other users' ones) never reach another user's pod, not even by name
    for user, other in (("alice", "ind-3003"), ("alice", "bt-2002"), ("carol", "ind-3003"), ("carol", "bt-1001")):
        assert other not in json.dumps(pods[user]), (user, other)


def test_gateway_config_builds_dask_pods_like_the_notebook_pod(deployed, monkeypatch):
    from dask_gateway_server.utils import FrozenAttrDict
    from dask_gateway_server.models import User

    from beamside_hub.kube import BeamsideKubeBackend, BeamsideKubeController

    hub_cfg = load_config(REPO / "hub" / "jupyterhub_config.py", deployed, monkeypatch)
    notebook = notebook_pod(hub_cfg, "alice")["spec"]
    cfg = load_config(REPO / "hub" / "dask_gateway_config.py", deployed, monkeypatch, pod="t-gateway-api")
    assert cfg.DaskGateway.backend_class == "beamside_hub.kube.BeamsideKubeBackend"
    assert cfg.JupyterHubAuthenticator.jupyterhub_api_token == deployed["secrets"]["gateway_token"]
    assert cfg.Proxy.api_token == deployed["secrets"]["gateway_proxy_token"]
    backend = BeamsideKubeBackend(config=cfg)
    options, config = asyncio.run(backend.process_cluster_options(User("alice", set(), False), {}))
    # stored in the DaskCluster object (JSON), rebuilt by the controller exactly as it does
    cluster = json.loads(json.dumps(backend.make_cluster_object("alice", options, config)))
    # the controller's own pod: the same config file, no secrets at all
    controller = BeamsideKubeController(config=load_config(REPO / "hub" / "dask_gateway_config.py", deployed,
                                                           monkeypatch, pod="t-gateway-controller"))
    name = cluster["metadata"]["name"]
    for is_worker in (False, True):
        pod = controller.make_pod(NAMESPACE, name, FrozenAttrDict(cluster["spec"]["config"]), is_worker=is_worker)
        spec = pod["spec"]
        container = spec["containers"][0]
        assert container["args"][:2] == ["dask", "worker" if is_worker else "scheduler"]
        assert container["image"] == "ghcr.io/beamside/singleuser:0.1.0"
        assert beamtime_mounts(spec) == beamtime_mounts(notebook)
        assert "bt-2002" not in json.dumps(pod) and "ind-3003" not in json.dumps(pod)
        assert spec["securityContext"] == notebook["securityContext"]
        assert container["securityContext"] == notebook["containers"][0]["securityContext"]
        assert "home" not in {v["name"] for v in spec["volumes"]}  # per-user PVC homes stay with the notebook
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["BEAMSIDE_CATALOG"] == "/run/beamside/catalog/catalog.yaml" and env["JUPYTERHUB_USER"] == "alice"
        assert "--dg-idle-timeout" in container["args"] or is_worker
        assert container["resources"]["limits"]["memory"]
        assert_hardened(pod["metadata"].get("name", "worker"), spec, user_pod=True)
        validate(pod)


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present = e["key"] in labels
        if e["operator"] == "In" and not (present and labels[e["key"]] in e["values"]):
            return False
        if e["operator"] == "NotIn" and present and labels[e["key"]] in e["values"]:
            return False
        if e["operator"] == "Exists" and not present:
            return False
        if e["operator"] == "DoesNotExist" and present:
            return False
    return True


def connects(policies: list[dict], src: dict, dst: dict, port: int) -> bool:
    """Whether NetworkPolicies (all in one namespace) let a pod labelled ``src`` open ``dst``:``port``.

    The API's rules: a pod selected by no policy of a direction is open in it; else
    some rule of a selecting policy must match the peer (podSelector; peers in other
    namespaces never match here) and the port (no ports: all).
    """
    def allowed(direction: str, peers: str, me: dict, other: dict) -> bool:
        mine = [p for p in policies if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], me)]
        return not mine or any(
            ("ports" not in rule or any(x["port"] == port for x in rule["ports"]))
            and ("from" not in rule and "to" not in rule
                 or any("namespaceSelector" not in peer and selects(peer["podSelector"], other)
                        for peer in rule.get(peers, [])))
            for p in mine for rule in p["spec"].get(direction.lower(), []))

    return allowed("Egress", "to", src, dst) and allowed("Ingress", "from", dst, src)


def test_dask_pods_reach_their_own_cluster_and_no_other_users(deployed, monkeypatch):
    """Real pods and policies: the chart's, and those the controller makes for alice's and bob's clusters."""
    from dask_gateway_server.models import User
    from dask_gateway_server.utils import FrozenAttrDict

    from beamside_hub.kube import BeamsideKubeBackend, BeamsideKubeController, cluster_network_policy

    backend = BeamsideKubeBackend(config=load_config(REPO / "hub" / "dask_gateway_config.py", deployed, monkeypatch,
                                                     pod="t-gateway-api"))
    controller_cfg = load_config(REPO / "hub" / "dask_gateway_config.py", deployed, monkeypatch, pod="t-gateway-controller")
    assert controller_cfg.BeamsideKubeController.network_policy is True
    controller = BeamsideKubeController(config=controller_cfg)
    docs = render(CHART / "examples" / "hostpath-lab.yaml")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {name: spec for name, spec in ((d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"])
                                          for d in docs if d["kind"] == "Deployment")}
    for user in ("alice", "bob"):
        options, config = asyncio.run(backend.process_cluster_options(User(user, set(), False), {}))
        cluster = json.loads(json.dumps(backend.make_cluster_object(user, options, config)))
        cluster["metadata"].update(namespace=NAMESPACE, uid=f"uid-of-{user}s-cluster")  # as the API server fills in
        policy = cluster_network_policy(cluster, controller.gateway_instance)
        validate(policy)
        assert policy["metadata"]["ownerReferences"][0]["uid"] == f"uid-of-{user}s-cluster"
        policies.append(policy)
        spec = FrozenAttrDict(cluster["spec"]["config"])
        name = cluster["metadata"]["name"]
        pods[f"{user}-scheduler"] = controller.make_pod(NAMESPACE, name, spec)["metadata"]["labels"]
        pods[f"{user}-worker"] = controller.make_pod(NAMESPACE, name, spec, is_worker=True)["metadata"]["labels"]
    pods["alice-notebook"] = notebook_pod(load_config(REPO / "hub" / "jupyterhub_config.py", deployed, monkeypatch),
                                          "alice")["metadata"]["labels"]

    def ok(src, dst, port):
        return connects(policies, pods[src], pods[dst], port)

    for user in ("alice", "bob"):
        assert ok(f"{user}-worker", f"{user}-scheduler", 8786) and ok(f"{user}-scheduler", f"{user}-worker", 40123)
        assert ok("t-gateway", f"{user}-scheduler", 8786) and ok("t-gateway", f"{user}-scheduler", 8787)
        assert ok("t-gateway-api", f"{user}-scheduler", 8788) and ok(f"{user}-scheduler", "t-gateway-api", 8000)
    # a real notebook pod (KubeSpawner's labels) is what the policies for user pods select
    assert ok("t-proxy", "alice-notebook", 8888) and ok("t-hub", "alice-notebook", 8888)
    assert ok("alice-notebook", "t-hub", 8081) and ok("alice-notebook", "t-gateway", 8786)
    assert not ok("alice-notebook", "t-hub", 8001) and not ok("t-gateway", "alice-notebook", 8888)
    for src, dst in (("alice-worker", "bob-scheduler"), ("alice-worker", "bob-worker"), ("bob-scheduler", "alice-worker"),
                     ("alice-notebook", "bob-scheduler"), ("alice-notebook", "alice-worker")):
        for port in (8786, 8787, 8788, 40123):
            assert not ok(src, dst, port), (src, dst, port)


def test_every_value_is_documented():
    """values.yaml comments each key; README's table (from the schema) names each one."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()

    def keys(node: dict, path: str = ""):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"values.schema.json: {path}{key} has no description"
            yield f"{path}{key}"
            if key != "inline":  # the catalog document has its own format (analysis_lib.catalog)
                yield from keys(sub, f"{path}{key}.")

    missing = [k for k in keys(schema) if f"`{k}`" not in readme]
    assert not missing, f"helm/beamside/README.md does not describe: {', '.join(missing)}"
    lines = (CHART / "values.yaml").read_text().splitlines()
    bare = [line for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith(("#", "-"))
            and "#" not in line and not lines[i - 1].lstrip().startswith("#")]
    assert not bare, f"helm/beamside/values.yaml keys without a comment: {bare}"


# -- whole objects: the notebook pod, literally ------------------------------------------------

def normalised(pod: dict) -> dict:
    """``pod`` with what changes between releases or spawns replaced by placeholders, env as (name, value) pairs."""
    pod = json.loads(json.dumps(pod))
    for key in pod["metadata"]["annotations"]:
        if key.endswith("-version"):
            pod["metadata"]["annotations"][key] = "<version>"
    for c in pod["spec"]["containers"]:
        c["env"] = [(e["name"], "<token>" if e["name"].endswith("API_TOKEN") else e.get("value", e.get("valueFrom")))
                    for e in c["env"]]
    return pod


# alice's own view of the demo-like catalog, as both her pods carry it (and only it)
ALICE_CATALOG = ("data_root: /data\nbeamtimes:\n- id: bt-1001\n  title: In-situ XRD of battery cathodes\n"
                 "  path: bt-1001\n  confidential: false\n  members:\n  - user: alice\n    role: pi\n")

ALICE_NOTEBOOK_POD = {'apiVersion': 'v1',
     'kind': 'Pod',
     'metadata': {'annotations': {'beamside.org/catalog': ALICE_CATALOG,
                                  'hub.jupyter.org/jupyterhub-version': '<version>',
                                  'hub.jupyter.org/kubespawner-version': '<version>',
                                  'hub.jupyter.org/username': 'alice'},
                  'labels': {'app': 'jupyterhub',
                             'app.kubernetes.io/component': 'singleuser-server',
                             'app.kubernetes.io/managed-by': 'kubespawner',
                             'app.kubernetes.io/name': 'jupyterhub',
                             'beamside.org/component': 'singleuser',
                             'beamside.org/instance': 't',
                             'component': 'singleuser-server',
                             'heritage': 'jupyterhub',
                             'hub.jupyter.org/servername': '',
                             'hub.jupyter.org/username': 'alice'},
                  'name': 'jupyter-alice'},
     'spec': {'automountServiceAccountToken': False,
              'containers': [{'args': ['beamside-singleuser'],
                              'env': [('CPU_GUARANTEE', '0.1'),
                                      ('CPU_LIMIT', '4.0'),
                                      ('DASK_GATEWAY__ADDRESS',
                                       'http://t-proxy-public.jhub:80/services/dask-gateway'),
                                      ('DASK_GATEWAY__AUTH__TYPE', 'jupyterhub'),
                                      ('DASK_GATEWAY__PROXY_ADDRESS', 'gateway://t-gateway.jhub:8786'),
                                      ('DASK_GATEWAY__PUBLIC_ADDRESS', '/services/dask-gateway/'),
                                      ('DASK_LABEXTENSION__DEFAULT__WORKERS', '2'),
                                      ('DASK_LABEXTENSION__FACTORY__CLASS', 'GatewayCluster'),
                                      ('DASK_LABEXTENSION__FACTORY__MODULE', 'dask_gateway'),
                                      ('JPY_API_TOKEN', '<token>'),
                                      ('JUPYTERHUB_ACTIVITY_URL',
                                       'http://t-hub.jhub:8081/hub/api/users/alice/activity'),
                                      ('JUPYTERHUB_API_TOKEN', '<token>'),
                                      ('JUPYTERHUB_API_URL', 'http://t-hub.jhub:8081/hub/api'),
                                      ('JUPYTERHUB_BASE_URL', '/'),
                                      ('JUPYTERHUB_CLIENT_ID', ''),
                                      ('JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED', '0'),
                                      ('JUPYTERHUB_DEFAULT_URL', '/lab'),
                                      ('JUPYTERHUB_HOST', ''),
                                      ('JUPYTERHUB_OAUTH_ACCESS_SCOPES',
                                       '["access:servers!server=alice/", "access:servers!user=alice"]'),
                                      ('JUPYTERHUB_OAUTH_CALLBACK_URL', '/user/alice/oauth_callback'),
                                      ('JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES', '[]'),
                                      ('JUPYTERHUB_OAUTH_SCOPES',
                                       '["access:servers!server=alice/", "access:servers!user=alice"]'),
                                      ('JUPYTERHUB_PUBLIC_HUB_URL', ''),
                                      ('JUPYTERHUB_PUBLIC_URL', ''),
                                      ('JUPYTERHUB_SERVER_NAME', ''),
                                      ('JUPYTERHUB_SERVICE_URL', 'http://0.0.0.0:8888/'),
                                      ('JUPYTERHUB_USER', 'alice'),
                                      ('JUPYTER_IMAGE', 'ghcr.io/beamside/singleuser:0.1.0'),
                                      ('JUPYTER_IMAGE_SPEC', 'ghcr.io/beamside/singleuser:0.1.0'),
                                      ('MEM_GUARANTEE', '536870912'),
                                      ('MEM_LIMIT', '2147483648'),
                                      ('PYTHONNOUSERSITE', '1'),
                                      ('SILX_OPENCL', '0'),
                                      ('BEAMSIDE_CATALOG', '/run/beamside/catalog/catalog.yaml'),
                                      ('HOME', '/home/user')],
                              'image': 'ghcr.io/beamside/singleuser:0.1.0',
                              'imagePullPolicy': 'IfNotPresent',
                              'lifecycle': {},
                              'name': 'notebook',
                              'ports': [{'containerPort': 8888, 'name': 'notebook-port'}],
                              'resources': {'limits': {'cpu': 4.0, 'memory': 2147483648},
                                            'requests': {'cpu': 0.1, 'memory': 536870912}},
                              'securityContext': {'allowPrivilegeEscalation': False,
                                                  'capabilities': {'drop': ['ALL']},
                                                  'privileged': False,
                                                  'runAsGroup': 100,
                                                  'runAsNonRoot': True,
                                                  'runAsUser': 1000,
                                                  'seccompProfile': {'type': 'RuntimeDefault'}},
                              'volumeMounts': [{'mountPath': '/data/bt-1001',
                                                'name': 'beamtimes',
                                                'readOnly': True,
                                                'subPath': 'bt-1001'},
                                               {'mountPath': '/run/beamside/catalog',
                                                'name': 'beamside-catalog',
                                                'readOnly': True},
                                               {'mountPath': '/home/user', 'name': 'home'}],
                              'workingDir': '/home/user'}],
              'imagePullSecrets': [],
              'restartPolicy': 'OnFailure',
              'securityContext': {'fsGroup': 100,
                                  'fsGroupChangePolicy': 'OnRootMismatch',
                                  'runAsGroup': 100,
                                  'runAsNonRoot': True,
                                  'runAsUser': 1000,
                                  'seccompProfile': {'type': 'RuntimeDefault'}},
              'volumes': [{'hostPath': {'path': '/srv/beamtimes', 'type': 'Directory'}, 'name': 'beamtimes'},
                          {'downwardAPI': {'items': [{'fieldRef': {'fieldPath': "metadata.annotations['beamside.org/catalog']"},
                                                      'path': 'catalog.yaml'}]},
                           'name': 'beamside-catalog'},
                          {'name': 'home', 'persistentVolumeClaim': {'claimName': 'home-alice'}}]}}


def test_notebook_pod_for_one_user_is_exactly_this(deployed, monkeypatch):
    """The whole pod KubeSpawner would create for alice (bt-1001 only), compared with a literal: a field
    added, dropped or changed anywhere - a mount, a capability, an env key, a label a policy selects on - fails."""
    cfg = load_config(REPO / "hub" / "jupyterhub_config.py", deployed, monkeypatch)
    pod = normalised(notebook_pod(cfg, "alice"))
    # compared piece by piece first, so a failure names the part that differs
    container, = pod["spec"]["containers"]
    expected_container, = ALICE_NOTEBOOK_POD["spec"]["containers"]
    assert container["securityContext"] == expected_container["securityContext"]
    assert container["volumeMounts"] == expected_container["volumeMounts"]
    assert pod["spec"]["volumes"] == ALICE_NOTEBOOK_POD["spec"]["volumes"]
    assert [name for name, _ in container["env"]] == [name for name, _ in expected_container["env"]]
    assert pod["metadata"] == ALICE_NOTEBOOK_POD["metadata"]
    assert pod == ALICE_NOTEBOOK_POD


ALICE_DASK_WORKER_POD = {'apiVersion': 'v1',
     'kind': 'Pod',
     'metadata': {'labels': {'app.kubernetes.io/name': 'dask-gateway',
                             'app.kubernetes.io/version': '<version>',
                             'gateway.dask.org/instance': 't-gateway',
                             'gateway.dask.org/cluster': '<cluster>',
                             'app.kubernetes.io/component': 'dask-worker'},
                  'annotations': {'beamside.org/catalog': ALICE_CATALOG},
                  'generateName': 'dask-worker-<cluster>-'},
     'spec': {'containers': [{'name': 'dask-worker',
                              'image': 'ghcr.io/beamside/singleuser:0.1.0',
                              'args': ['dask',
                                       'worker',
                                       'tls://dask-<cluster>.jhub:8786',
                                       '--dashboard-address',
                                       ':8787',
                                       '--name',
                                       '$(DASK_GATEWAY_WORKER_NAME)',
                                       '--nthreads',
                                       '1',
                                       '--memory-limit',
                                       '1000000000'],
                              'env': [('SILX_OPENCL', '0'),  # no pyOpenCL warning under reductions
                                      ('PYTHONNOUSERSITE', '1'),
                                      ('DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON',
                                       "{'MALLOC_TRIM_THRESHOLD_': None}"),
                                      ('DASK_DISTRIBUTED__WORKER__PRELOAD', "['analysis_lib.ops']"),
                                      ('BEAMSIDE_CATALOG', '/run/beamside/catalog/catalog.yaml'),
                                      ('JUPYTERHUB_USER', 'alice'),
                                      ('DASK_GATEWAY_API_URL', 'http://t-gateway-api.jhub:8000/api'),
                                      ('DASK_GATEWAY_CLUSTER_NAME', 'jhub.<cluster>'),
                                      ('DASK_GATEWAY_API_TOKEN', '/etc/dask-credentials/api-token'),
                                      ('DASK_DISTRIBUTED__COMM__TLS__CA_FILE', '/etc/dask-credentials/dask.crt'),
                                      ('DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT',
                                       '/etc/dask-credentials/dask.crt'),
                                      ('DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY',
                                       '/etc/dask-credentials/dask.pem'),
                                      ('DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT',
                                       '/etc/dask-credentials/dask.crt'),
                                      ('DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY',
                                       '/etc/dask-credentials/dask.pem'),
                                      ('DASK_GATEWAY_WORKER_NAME', {'fieldRef': {'fieldPath': 'metadata.name'}})],
                              'resources': {'requests': {'cpu': '1.000', 'memory': '1000000000'},
                                            'limits': {'cpu': '1.000', 'memory': '1000000000'}},
                              'volumeMounts': [{'name': 'dask-credentials',
                                                'mountPath': '/etc/dask-credentials/',
                                                'readOnly': True},
                                               {'name': 'beamtimes',
                                                'mountPath': '/data/bt-1001',
                                                'subPath': 'bt-1001',
                                                'readOnly': True},
                                               {'name': 'beamside-catalog',
                                                'mountPath': '/run/beamside/catalog',
                                                'readOnly': True}],
                              'ports': [{'name': 'scheduler', 'containerPort': 8786},
                                        {'name': 'dashboard', 'containerPort': 8787},
                                        {'name': 'api', 'containerPort': 8788}],
                              'imagePullPolicy': 'IfNotPresent',
                              'securityContext': {'runAsNonRoot': True,
                                                  'runAsUser': 1000,
                                                  'runAsGroup': 100,
                                                  'seccompProfile': {'type': 'RuntimeDefault'},
                                                  'allowPrivilegeEscalation': False,
                                                  'privileged': False,
                                                  'capabilities': {'drop': ['ALL']}}}],
              'volumes': [{'name': 'dask-credentials', 'secret': {'secretName': 'dask-credentials-<cluster>'}},
                          {'name': 'beamtimes', 'hostPath': {'path': '/srv/beamtimes', 'type': 'Directory'}},
                          {'name': 'beamside-catalog',
                           'downwardAPI': {'items': [{'path': 'catalog.yaml',
                                                      'fieldRef': {'fieldPath': "metadata.annotations['beamside.org/catalog']"}}]}}],
              'restartPolicy': 'OnFailure',
              'automountServiceAccountToken': False,
              'securityContext': {'runAsNonRoot': True,
                                  'runAsUser': 1000,
                                  'runAsGroup': 100,
                                  'seccompProfile': {'type': 'RuntimeDefault'},
                                  'fsGroup': 100,
                                  'fsGroupChangePolicy': 'OnRootMismatch'}}}


def test_dask_worker_pod_for_one_user_is_exactly_this(deployed, monkeypatch):
    """The whole worker pod the gateway's controller would create for alice's cluster, compared with a
    literal (the random cluster name and dask-gateway's version normalised)."""
    from dask_gateway_server.models import User
    from dask_gateway_server.utils import FrozenAttrDict

    from beamside_hub.kube import BeamsideKubeBackend, BeamsideKubeController

    cfg = load_config(REPO / "hub" / "dask_gateway_config.py", deployed, monkeypatch, pod="t-gateway-api")
    backend = BeamsideKubeBackend(config=cfg)
    options, config = asyncio.run(backend.process_cluster_options(User("alice", set(), False), {}))
    cluster = json.loads(json.dumps(backend.make_cluster_object("alice", options, config)))
    controller = BeamsideKubeController(config=load_config(REPO / "hub" / "dask_gateway_config.py", deployed,
                                                           monkeypatch, pod="t-gateway-controller"))
    name = cluster["metadata"]["name"]
    pod = controller.make_pod(NAMESPACE, name, FrozenAttrDict(cluster["spec"]["config"]), is_worker=True)
    pod = json.loads(json.dumps(pod).replace(name, "<cluster>"))
    pod["metadata"]["labels"]["app.kubernetes.io/version"] = "<version>"
    for c in pod["spec"]["containers"]:
        c["env"] = [(e["name"], e.get("value", e.get("valueFrom"))) for e in c["env"]]
    container, = pod["spec"]["containers"]
    expected_container, = ALICE_DASK_WORKER_POD["spec"]["containers"]
    assert container["securityContext"] == expected_container["securityContext"]
    assert container["volumeMounts"] == expected_container["volumeMounts"]
    assert pod["spec"]["volumes"] == ALICE_DASK_WORKER_POD["spec"]["volumes"]
    assert [name for name, _ in container["env"]] == [name for name, _ in expected_container["env"]]
    assert pod == ALICE_DASK_WORKER_POD
