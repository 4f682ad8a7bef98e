"""Per-user limits on one machine: each user's processes in cgroups of their own, made by root.

JupyterHub's ``mem_limit`` and ``cpu_limit`` are promises a spawner may keep; the local spawner
does not, so without this one user's kernel could take the machine's memory or its cores from
everyone else. Here the kernel's own controllers keep them:

    beamside-<id>/<account>/       everything of one user: memory (limits.memory), CPU cap
                                   (limits.cpu), processes and threads (limits.processes), and an
                                   equal CPU share with every other user under contention
    beamside-<id>/<account>/server the notebook server, its kernels and terminals
                                   (singleuser.mem_limit, singleuser.cpu_limit)
    beamside-<id>/<account>/dask-<cluster> one Dask cluster's scheduler and workers (dask.max_memory plus
                                   one worker's memory, for its scheduler)

A process is put into its group between fork and exec, while still root (:meth:`Group.enter`), so
everything it starts is inside too; no one in a sandbox can leave: the sandbox sees no cgroup
file (it mounts no ``/sys``), and every group's files are root's. Going over a memory limit
makes the kernel stop one process of that group, the one using most (a kernel that allocated too
much, not the server beside it); the server's group counts such kills, and the library tells the
user at their next cell (:mod:`analysis_lib._limits`).

Both cgroup versions: v1 (one hierarchy per controller, as on this project's CI machines) and v2
(one unified hierarchy with ``memory``, ``cpu`` and ``pids`` enabled). Folders are names root
picks (accounts, "server", the gateway's cluster ids) under the deployment's own folder in the
cgroup file system (``beamside-<id>``, :func:`top_for`), which users cannot write: no user-controlled path is involved.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

TOP = "beamside"  # beamside's folder in each hierarchy; a deployment's own is top_for(its state folder)
SERVER = "server"
_PERIOD_US = 100_000  # CFS period for CPU caps
_V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


@dataclass(frozen=True)
class Limit:
    """What one group may use (None: no cap of its own; its parents' still hold)."""

    memory: int | None = None  # bytes
    cpu: float | None = None  # cores
    processes: int | None = None  # processes and threads


class LimitsUnavailable(RuntimeError):
    """Limits are set but this machine's kernel offers no controller to enforce them."""


@dataclass(frozen=True)
class Group:
    """One group's folders: one per controller on v1, a single one on v2."""

    folders: tuple[Path, ...]
    memory_folder: Path
    version: int

    def enter(self) -> None:
        """Move the calling process in (for a ``preexec_fn``: in the child, before exec, as root)."""
        pid = str(os.getpid()).encode()
        for folder in self.folders:
            fd = os.open(folder / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for folder in self.folders:
            try:
                found |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
            except FileNotFoundError:
                pass
        return found

    def oom_kills(self) -> int:
        """How many of the group's processes the kernel stopped for going over its memory."""
        return out_of_memory_kills(self.memory_folder, self.version)

    def cpu_seconds(self) -> float:
        """CPU time the group's processes used (user + system), since the group was made."""
        if self.version == 1:
            cpuacct = self.folders[_V1_CONTROLLERS.index("cpuacct")]
            return int((cpuacct / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.memory_folder / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def remove(self, timeout: float = 5.0) -> None:
        """Stop whatever is still inside (a process that left its process group), then remove the
        folders. Never raises for a group already gone."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                for folder in self.folders:
                    if folder.exists():
                        folder.rmdir()
                return
            except OSError:  # EBUSY: processes are still leaving
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def top_for(state_dir: str) -> str:
    """The deployment's own folder in the cgroup file systems. Two deployments on one machine (a
    test run beside a facility's, or two of the facility's) share the Unix accounts, but must never
    share, empty or remove each other's groups."""
    digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]
    return f"{TOP}-{digest}"


def out_of_memory_kills(folder: Path, version: int) -> int:
    """The ``oom_kill`` count of a memory group folder (v1 ``memory.oom_control``, v2 ``memory.events``)."""
    name = "memory.oom_control" if version == 1 else "memory.events"
    for line in (Path(folder) / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def describe(settings) -> str:
    """What ``beamside up`` says about per-user limits; stops (fails closed) when limits are set
    and nothing here could keep them."""
    s = settings
    wanted = {"limits.memory": s.limits.memory, "limits.cpu": s.limits.cpu, "limits.processes": s.limits.processes,
              "singleuser.mem_limit": s.singleuser.mem_limit, "singleuser.cpu_limit": s.singleuser.cpu_limit}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    found = Cgroups.detect()
    if found is None:
        if wanted:
            raise SystemExit(f"{', '.join(wanted)} set, but this machine's kernel offers no cgroup memory, cpu and pids "
                             "controllers to keep them (mount them, or set these to null to run without per-user limits)")
        return "per-user limits: NONE (no cgroup controllers here): one user can use the whole machine"
    shown = ", ".join(f"{k.split('.')[-1] if k.startswith('limits') else k} {v}" for k, v in wanted.items())
    return f"per-user limits (cgroup v{found.version}): {shown or 'none set'}; an equal CPU share per user"


class Cgroups:
    """The machine's cgroup hierarchies and beamside's groups in them."""

    def __init__(self, version: int, roots: dict[str, Path], top: str = TOP):
        self.version = version
        self.roots = roots  # v1: controller -> its mount; v2: "" -> the unified mount
        self.top = top  # this deployment's folder under each root

    @classmethod
    def detect(cls, top: str = TOP, mounts: str = "/proc/self/mounts") -> Cgroups | None:
        """The v1 controllers if memory, cpu and pids are mounted there (cpuacct too, for accounting),
        else a v2 hierarchy offering memory, cpu and pids; None if neither."""
        v1: dict[str, Path] = {}
        v2: list[Path] = []
        for line in Path(mounts).read_text().splitlines():
            _dev, where, fstype, options, *_ = line.split()
            if fstype == "cgroup":
                for option in options.split(","):
                    if option in _V1_CONTROLLERS:
                        v1[option] = Path(where)
            elif fstype == "cgroup2":
                v2.append(Path(where))
        if all(c in v1 for c in _V1_CONTROLLERS):
            return cls(1, v1, top)
        for root in v2:
            offered = (root / "cgroup.controllers").read_text().split()
            if all(c in offered for c in ("memory", "cpu", "pids")):
                return cls(2, {"": root}, top)
        return None

    # -- making groups -------------------------------------------------------------------------
    def user_group(self, account: str, gid: int, limit: Limit) -> Group:
        """``beamside/<account>``: the user's share and caps (made if missing, limits set again)."""
        return self._make((account,), gid, limit, share=True)

    def part_group(self, account: str, gid: int, part: str, user: Limit, limit: Limit) -> Group:
        """``beamside/<account>/<part>``, inside the user's group (both made if missing). Root's,
        readable by the account's group only (its sandbox binds the memory folder read-only)."""
        for _ in range(20):  # another process may remove the empty user group meanwhile: make it again
            self.user_group(account, gid, user)
            try:
                return self._make((account, part), gid, limit, share=False)
            except FileNotFoundError:
                continue
        raise RuntimeError(f"could not make the cgroup of {account}/{part}")

    def group(self, *names: str) -> Group:
        """An existing group's handle (nothing is made)."""
        if self.version == 1:
            folders = tuple(self.roots[c] / self.top / Path(*names) for c in _V1_CONTROLLERS)
            return Group(folders, self.roots["memory"] / self.top / Path(*names), 1)
        folder = self.roots[""] / self.top / Path(*names)
        return Group((folder,), folder, 2)

    def remove_user_if_empty(self, account: str) -> None:
        """The user's group goes once none of its parts is left."""
        group = self.group(account)
        try:
            for folder in group.folders:
                if folder.exists():
                    folder.rmdir()
        except OSError:  # a part is still there (or was just made): the group stays
            pass

    def _make(self, names: tuple[str, ...], gid: int, limit: Limit, *, share: bool) -> Group:
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r} cannot name a cgroup")
        group = self.group(*names)
        if self.version == 2:
            self._enable_v2(names)
        for folder in group.folders:
            if len(names) == 1:  # the deployment's folder: users pass through to their own group only
                folder.parent.mkdir(exist_ok=True)
                os.chmod(folder.parent, 0o711)
            folder.mkdir(exist_ok=True)
            os.chown(folder, 0, gid)
            os.chmod(folder, 0o750)
        for path, value in self._settings(group, limit, share):
            path.write_text(value)
        return group

    def _enable_v2(self, names: tuple[str, ...]) -> None:
        """v2 gives a child a controller only if every parent enables it for its children."""
        folder = self.roots[""]
        for name in (self.top, *names[:-1]):
            (folder / "cgroup.subtree_control").write_text("+memory +cpu +pids")
            folder = folder / name
            folder.mkdir(exist_ok=True)
        (folder / "cgroup.subtree_control").write_text("+memory +cpu +pids")

    def _settings(self, group: Group, limit: Limit, share: bool) -> list[tuple[Path, str]]:
        """The files to write for ``limit``, in an order the kernel accepts."""
        out: list[tuple[Path, str]] = []
        if self.version == 1:
            memory, cpu, _cpuacct, pids = group.folders
            if limit.memory is not None:
                out.append((memory / "memory.limit_in_bytes", str(limit.memory)))
                if (memory / "memory.memsw.limit_in_bytes").exists():  # no way round the limit through swap
                    out.append((memory / "memory.memsw.limit_in_bytes", str(limit.memory)))
            out.append((cpu / "cpu.cfs_period_us", str(_PERIOD_US)))
            out.append((cpu / "cpu.cfs_quota_us", str(int(limit.cpu * _PERIOD_US)) if limit.cpu else "-1"))
            if share:
                out.append((cpu / "cpu.shares", "1024"))
            out.append((pids / "pids.max", str(limit.processes) if limit.processes else "max"))
            return out
        folder = group.memory_folder
        out.append((folder / "memory.max", str(limit.memory) if limit.memory is not None else "max"))
        if (folder / "memory.swap.max").exists():
            out.append((folder / "memory.swap.max", "0" if limit.memory is not None else "max"))
        out.append((folder / "cpu.max", f"{int(limit.cpu * _PERIOD_US)} {_PERIOD_US}" if limit.cpu else f"max {_PERIOD_US}"))
        if share:
            out.append((folder / "cpu.weight", "100"))
        out.append((folder / "pids.max", str(limit.processes) if limit.processes else "max"))
        return out
