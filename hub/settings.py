"""The deployment's settings: one typed schema for the embedded settings file and the Helm values.

An admin who moves from one machine to a cluster keeps the same vocabulary:
the sections are ``hub``, ``data``, ``auth``, ``singleuser``, ``dask``,
``culler`` and ``audit`` in both, with the same key names. :class:`Settings`
is that schema as frozen dataclasses; two doors fill it:

- :meth:`Settings.from_yaml`: the embedded mode's settings file, on top of the
  defaults below, relative paths made absolute. A key that only means
  something on Kubernetes (``singleuser.uid``, ``data.volume`` …) is refused
  here with a message saying so, rather than silently ignored.
- :meth:`Settings.from_helm_values`: the chart's values exactly as the admin
  wrote them (the chart ships them to the hub unchanged, as
  zero-to-jupyterhub's ``get_config`` does); what the chart's templates alone
  use (images, resources, Ingress, the catalog's ConfigMap) is listed in
  :data:`CHART_ONLY` and not part of the settings.

Both run the same checks (:meth:`Settings.check`), so a setting that stops the
embedded mode also stops the hub pod.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

LOCAL, KUBERNETES = "local", "kubernetes"


def _only(platform: str, default=dataclasses.MISSING, *, factory=dataclasses.MISSING):
    """A setting that means something on one platform only (refused in the other's settings)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"only": platform})
    return field(default=default, metadata={"only": platform})


@dataclass(frozen=True)
class Hub:
    ip: str = _only(LOCAL, "127.0.0.1")  # where the public proxy listens
    public_url: str | None = None  # how users reach it (behind TLS termination); default http://ip:port
    port: int = _only(LOCAL, 8000)
    hub_port: int = _only(LOCAL, 8081)  # the hub's own API (internal)
    proxy_api_port: int = _only(LOCAL, 8001)
    state_dir: str = _only(LOCAL, ".beamside")  # sqlite db, secrets, homes, logs (relative: to the settings file)
    db_url: str | None = None  # default sqlite in state_dir; e.g. postgresql://user:password@host/beamside
    # Servers starting at once. Embedded: beyond it users wait in line and see their place (default
    # two per core: more at once only makes every start slower); SLURM: JupyterHub's limit (20). 0: none.
    concurrent_spawn_limit: int | None = None


@dataclass(frozen=True)
class Nfs:
    server: str = ""
    path: str = ""


@dataclass(frozen=True)
class Volume:
    """The facility volume holding data_root on Kubernetes; each beamtime is mounted from it by subPath."""

    type: str = "pvc"  # pvc, nfs or hostPath
    claim_name: str = "beamtime-data"
    nfs: Nfs = field(default_factory=Nfs)
    host_path: str = ""


@dataclass(frozen=True)
class Data:
    catalog: str | None = None  # the facility's catalog file; None: generate demo data (chart: its mounted copy)
    demo_size: str | int = _only(LOCAL, "1GB")
    volume: Volume = _only(KUBERNETES, factory=Volume)


@dataclass(frozen=True)
class Oidc:
    authorize_url: str | None = None
    token_url: str | None = None
    userdata_url: str | None = None
    client_id: str = "beamside"
    client_secret: str | None = None  # chart: from the Secret named by existing_secret, never in values
    scope: list = field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    allowed_groups: list = field(default_factory=list)  # who may log in; required (an empty list refuses to load)
    # Admit everyone the provider authenticates (the whole federation, not only this facility's
    # users). Only on purpose: an empty allowed_groups used to mean this (issue 17, finding 11).
    allow_all: bool = False
    admin_groups: list = field(default_factory=list)
    login_service: str = "facility login"
    existing_secret: str = _only(KUBERNETES, "")
    secret_key: str = _only(KUBERNETES, "client-secret")


@dataclass(frozen=True)
class Passwords:
    existing_secret: str = ""  # the Secret holding passwords.yaml


@dataclass(frozen=True)
class Auth:
    type: str = "passwords"  # "passwords" (hashed, per user) or "oidc"
    admin_users: list | None = None  # default: ["admin"] with passwords and demo data, nobody otherwise
    # Default: <state_dir>/secrets/passwords.yaml (filled in by from_yaml; demo users: first run, demo data only)
    passwords_file: str | None = _only(LOCAL, None)
    passwords: Passwords = _only(KUBERNETES, factory=Passwords)
    oidc: Oidc = field(default_factory=Oidc)


@dataclass(frozen=True)
class Image:
    name: str = "ghcr.io/beamside/singleuser"
    tag: str = "0.1.0"

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class Home:
    """A user's writable home on Kubernetes: one PVC each, or one subPath each on an NFS export."""

    type: str = "pvc"
    size: str = "10Gi"
    storage_class: str | None = None
    nfs: Nfs = field(default_factory=Nfs)


@dataclass(frozen=True)
class Singleuser:
    isolation: str = _only(LOCAL, "auto")  # "bubblewrap", "none" (a demo without isolation), or "auto"
    # "private": each user's processes in a network namespace of their own (isolated mode only);
    # "host": they share the machine's network (and every user reaches others' loopback ports)
    network: str = _only(LOCAL, "private")
    default_url: str = "/lab"
    mem_limit: str | int | None = None
    cpu_limit: float | None = None
    start_timeout: int = 120
    access_check_every: int = 30  # seconds: running servers and clusters whose beamtime was revoked stop
    image: Image = _only(KUBERNETES, factory=Image)
    uid: int = _only(KUBERNETES, 1000)  # user and Dask pods run as (never 0)
    gid: int = _only(KUBERNETES, 100)
    supplemental_gids: list = _only(KUBERNETES, factory=list)
    fs_gid: int | None = _only(KUBERNETES, None)
    mem_guarantee: str | int | None = _only(KUBERNETES, None)
    cpu_guarantee: float | None = _only(KUBERNETES, None)
    profiles: list = _only(KUBERNETES, factory=list)
    node_selector: dict = _only(KUBERNETES, factory=dict)
    home: Home = _only(KUBERNETES, factory=Home)


@dataclass(frozen=True)
class Dask:
    enabled: bool = True
    port: int = _only(LOCAL, 8010)  # gateway HTTP (behind the hub's proxy)
    api_port: int = _only(LOCAL, 8011)
    scheduler_port: int = _only(LOCAL, 8786)  # scheduler traffic (TLS, for scripts from outside too)
    max_clusters_per_user: int = 2
    max_workers: int = 4
    max_cores: int = 4
    max_memory: str | int = "8 G"
    worker_cores: int = 1
    worker_memory: str | int = "2 G"
    scheduler_cores: int = _only(KUBERNETES, 1)
    scheduler_memory: str | int = _only(KUBERNETES, "2 G")
    idle_timeout: int = 1800
    max_age: int = 7 * 86400  # seconds: even a busy cluster ends then (0: never)
    # the gateway's record of clusters; default sqlite in state_dir; e.g. postgresql://user:password@host/gateway
    # (on Kubernetes the clusters are the cluster's own objects: no database)
    db_url: str | None = _only(LOCAL, None)


@dataclass(frozen=True)
class Limits:
    """What one user's processes together may use on this machine (server, kernels and Dask
    clusters), kept by the kernel's cgroups (:mod:`beamside_hub.limits`); every user also gets an
    equal CPU share under contention. ``singleuser.mem_limit``/``cpu_limit`` cap the server and its
    kernels within this. On SLURM the job's own limits hold (slurm.memory, cores); on Kubernetes the
    pods' resources."""

    memory: str | int | None = None  # e.g. "8 G"; null: no per-user cap
    cpu: float | None = None  # cores; null: no cap (the equal share still holds)
    processes: int | None = 4096  # processes and threads of one user (a fork flood stops there); null: no cap


@dataclass(frozen=True)
class Culler:
    """Stops idle servers; ``max_age`` stops even busy ones, so no session outlives a week of catalog changes unseen."""

    enabled: bool = True
    timeout: int = 3600
    every: int = 300
    max_age: int = 7 * 86400  # 0: never


@dataclass(frozen=True)
class Audit:
    enabled: bool = True


@dataclass(frozen=True)
class Slurm:
    """Where user servers and Dask clusters run with ``platform: slurm``: jobs on the facility's cluster.

    Each server is one job (one task) of the user's own account; its cores, memory and time are what
    the user picks in the spawn form, within the ``max_`` limits (the admin's), starting at the defaults.
    """

    partition: str = ""  # a server's partition unless the user picks another; empty: the cluster's default
    partitions: list = field(default_factory=list)  # the others a user may pick in the spawn form
    account: str = ""  # the SLURM account jobs are charged to; empty: the user's default
    cores: int = 1
    memory: str = "4G"
    walltime: str = "8:00:00"  # [days-]hours:minutes:seconds, as sbatch --time takes it
    max_cores: int = 8
    max_memory: str = "32G"
    max_walltime: str = "24:00:00"
    # The address of the hub's host that jobs on the nodes reach (the hub's API, the gateway);
    # 127.0.0.1 when the hub runs on the cluster's only node.
    hub_ip: str = "127.0.0.1"
    # Where servers and Dask processes listen on their node: loopback when the hub is on that
    # node, "node" for each job's node's own address as SLURM has it (NodeAddr: a cluster of
    # several nodes), or one fixed address (a one-node cluster). Never 0.0.0.0 unless set so.
    server_ip: str = "127.0.0.1"
    conf: str | None = None  # SLURM_CONF for sbatch, squeue and scancel; None: SLURM's own default
    bin_dir: str = "/usr/bin"  # where sbatch, squeue, scontrol and scancel are
    poll_every: float = 2.0  # seconds between looks at a starting job


    def check(self) -> None:
        import ipaddress

        from dask.utils import parse_bytes

        for key in ("hub_ip", "server_ip"):
            value = getattr(self, key)
            if not (key == "server_ip" and value == "node"):
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    also = ' or "node" (each job\'s node\'s address)' if key == "server_ip" else ""
                    raise ValueError(f"slurm.{key}: {value!r} is not an IP address{also}") from None
        if not all(isinstance(p, str) and p.strip() for p in self.partitions):
            raise ValueError(f"slurm.partitions: {self.partitions!r} is not a list of partition names")
        for key in ("walltime", "max_walltime"):
            try:
                walltime(getattr(self, key))
            except ValueError as exc:
                raise ValueError(f"slurm.{key}: {exc}") from None
        for key in ("memory", "max_memory"):
            try:
                parse_bytes(str(getattr(self, key)))
            except ValueError:
                raise ValueError(f"slurm.{key}: {getattr(self, key)!r} is not a size such as 4G") from None
        if not (1 <= self.cores <= self.max_cores and parse_bytes(self.memory) <= parse_bytes(self.max_memory)
                and walltime(self.walltime) <= walltime(self.max_walltime)):
            raise ValueError("slurm.cores, memory and walltime (what a server gets by default) must lie within "
                             "slurm.max_cores, max_memory and max_walltime")


@dataclass(frozen=True)
class Settings:
    # where user servers and Dask clusters run: "local" (this machine) or "slurm" (jobs on a cluster);
    # the Helm chart is always "kubernetes"
    platform: str = _only(LOCAL, "local")
    slurm: Slurm = _only(LOCAL, factory=Slurm)
    hub: Hub = field(default_factory=Hub)
    data: Data = field(default_factory=Data)
    auth: Auth = field(default_factory=Auth)
    singleuser: Singleuser = field(default_factory=Singleuser)
    dask: Dask = field(default_factory=Dask)
    limits: Limits = _only(LOCAL, factory=Limits)
    culler: Culler = field(default_factory=Culler)
    audit: Audit = field(default_factory=Audit)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None = None, overrides: dict | None = None) -> Settings:
        """The embedded settings file (YAML) on top of the defaults, with absolute paths."""
        doc: dict = {}
        base = Path.cwd()
        if path:
            path = Path(path).resolve()
            doc = yaml.safe_load(path.read_text()) or {}
            if not isinstance(doc, dict):
                raise ValueError(f"{path}: the settings must be a mapping of sections (hub, data, auth, …)")
            base = path.parent
        merged = _deep_merge(doc, overrides or {})
        if merged.get("platform") == KUBERNETES:
            raise ValueError("platform: kubernetes is the Helm chart's (helm/beamside), not a settings file's")
        settings = _build(cls, merged, "", refuse=KUBERNETES)

        def absolute(value: str | None) -> str | None:
            if not value:
                return value
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())

        state = absolute(settings.hub.state_dir)
        settings = settings.replace(
            hub={"state_dir": state},
            data={"catalog": absolute(settings.data.catalog)},
            auth={"passwords_file": absolute(settings.auth.passwords_file) or str(Path(state) / "secrets" / "passwords.yaml")},
        )
        settings.check()
        return settings

    @classmethod
    def from_helm_values(cls, values: dict, *, catalog: str, passwords_file: str) -> Settings:
        """The chart's values as the admin wrote them (``catalog`` and ``passwords_file``: where the
        chart mounts them in the hub pod). Embedded-only keys keep their defaults; the audit service
        is off (the chart does not run it yet)."""
        sections = {}
        for name, section in values.items():
            if name in CHART_ONLY and CHART_ONLY[name] is None:
                continue
            if not isinstance(section, dict):
                raise ValueError(f"values: {name} must be a mapping, got {section!r}")
            sections[name] = {k: v for k, v in section.items() if k not in (CHART_ONLY.get(name) or ())}
        sections["data"] = {**sections.get("data", {}), "catalog": catalog}
        sections["auth"] = {**sections.get("auth", {}), "passwords_file": passwords_file}
        sections["audit"] = {"enabled": False}
        sections["platform"] = KUBERNETES
        settings = _build(cls, sections, "", refuse=None)
        settings.check()
        return settings

    def check(self) -> None:
        """The checks both doors share; each message names the setting and what would fix it."""
        auth = self.auth
        if auth.type not in ("passwords", "oidc"):
            raise ValueError("auth.type must be 'passwords' or 'oidc'")
        if auth.type == "oidc":
            missing = [k for k in ("authorize_url", "token_url", "userdata_url") if not getattr(auth.oidc, k)]
            if not auth.oidc.client_secret and not auth.oidc.existing_secret:
                missing.append("client_secret")
            if missing:
                raise ValueError(f"auth.type is oidc but auth.oidc.{', auth.oidc.'.join(missing)} not set")
            if not auth.oidc.allowed_groups and auth.oidc.allow_all is not True:
                raise ValueError(
                    "auth.type is oidc but auth.oidc.allowed_groups is empty: nobody could log in. List the groups "
                    "(from the provider's groups claim) whose members may use the hub, or set auth.oidc.allow_all: true "
                    "to admit everyone the provider authenticates"
                )
        if self.platform not in ("local", "slurm", KUBERNETES):
            raise ValueError(f"platform must be 'local' or 'slurm', got {self.platform!r}")
        if self.platform != "slurm" and self.slurm != Slurm():
            raise ValueError("the slurm settings need platform: slurm")
        self.slurm.check()
        if self.platform == "slurm" and self.singleuser.isolation == "none":
            raise ValueError("platform: slurm runs every server as its user's own account, in a sandbox: "
                             "singleuser.isolation: none cannot apply")
        self._check_limits()
        if self.singleuser.isolation not in ("auto", "bubblewrap", "none"):
            raise ValueError("singleuser.isolation must be 'auto', 'bubblewrap' or 'none'")
        if self.singleuser.network not in ("private", "host"):
            raise ValueError("singleuser.network must be 'private' or 'host'")
        if self.data.volume.type not in ("pvc", "nfs", "hostPath"):
            raise ValueError(f"data.volume.type must be pvc, nfs or hostPath, got {self.data.volume.type!r}")
        if self.singleuser.home.type not in ("pvc", "nfs"):
            raise ValueError(f"singleuser.home.type must be pvc or nfs, got {self.singleuser.home.type!r}")

    def _check_limits(self) -> None:
        from dask.utils import parse_bytes

        limits = self.limits
        if self.platform == "slurm" and (limits.memory, limits.cpu) != (None, None):
            raise ValueError("the limits section is for one machine; on SLURM each server and Dask process is a job with "
                             "its own limits (slurm.memory, slurm.cores, dask.worker_memory)")
        for name, value in (("limits.memory", limits.memory), ("singleuser.mem_limit", self.singleuser.mem_limit)):
            try:
                if value is not None and parse_bytes(value) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{name} must be an amount of memory such as '4 G', got {value!r}") from None
        for name, value in (("limits.cpu", limits.cpu), ("singleuser.cpu_limit", self.singleuser.cpu_limit)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a number of cores above 0, got {value!r}")
        if limits.processes is not None and limits.processes < 64:
            raise ValueError(f"limits.processes must be at least 64 (a server with a kernel runs dozens of threads), "
                             f"got {limits.processes}")

    def replace(self, **sections) -> Settings:
        """A copy with some keys of some sections changed: ``s.replace(hub={"port": 9000})``."""
        return dataclasses.replace(self, **{
            name: dataclasses.replace(getattr(self, name), **keys) if isinstance(keys, dict) else keys
            for name, keys in sections.items()
        })

    def to_dict(self) -> dict:
        """Plain data (for the runtime file)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> Settings:
        """Back from :meth:`to_dict` (the runtime file): every key known, nothing refused."""
        return _build(cls, doc, "", refuse=None)


# What the chart's templates alone use, per values section (None: the whole section).
CHART_ONLY: dict[str, tuple[str, ...] | None] = {
    "fullnameOverride": None,
    "proxy": None,
    "network_policy": None,  # read from the values by the platform (kube), not a setting
    "hub": ("image", "existing_secret", "db_pvc", "resources", "node_selector"),
    "data": ("catalog",),  # the catalog document or the object holding it; the hub reads its mounted copy
    "dask": ("resources",),
    "Release": None,  # added by the chart: the release's name and namespace
}


_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")


def walltime(text) -> int:
    """``[days-]hours:minutes:seconds`` (as sbatch's --time takes it) in seconds."""
    match = _WALLTIME.match(str(text).strip())
    if not match:
        raise ValueError(f"time {text!r} is not [days-]hours:minutes:seconds (e.g. 8:00:00)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def load(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Settings:
    """The embedded settings file: :meth:`Settings.from_yaml`."""
    return Settings.from_yaml(path, overrides)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls, doc, where: str, refuse: str | None):
    """``cls`` from the mapping ``doc``: unknown keys, wrong types and other platforms' keys refused."""
    if not isinstance(doc, dict):
        raise ValueError(f"setting {where.rstrip('.') or 'the settings'} must be a mapping, got {doc!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in doc.items():
        if key not in known:
            raise ValueError(f"unknown setting {where}{key!r}; known: {', '.join(sorted(known))}")
        only = known[key].metadata.get("only")
        if refuse and only == refuse:
            raise ValueError(f"setting {where}{key} only applies on {only} (the Helm chart's values), not here")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value if value is not None else {}, f"{where}{key}.", refuse)
        else:
            values[key] = _checked(value, hint, f"{where}{key}")
    return cls(**values)


def _checked(value, hint, name: str):
    """``value`` if it has the type ``hint`` names (ints pass as floats; bools never as numbers)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, list, dict) and isinstance(value, t):
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ValueError(f"setting {name} must be {names}, got {value!r}")
