"""What one user's processes may see: a bubblewrap sandbox per server and per Dask process.

HDF5 external links, virtual datasets and external storage can read any file
the process can see, so path checks in Python are not enough: a user's
notebook server, kernels, Dask scheduler and workers run in a sandbox where
the data root holds *only* that user's beamtimes (read-only), the home is the
only writable place, and there is nothing else of the host's: no other
users' homes or processes (own PID namespace), no hub state, no capabilities
(bubblewrap runs unprivileged, as the user's own uid, in a user namespace).
It is the same picture a Kubernetes pod of the Helm chart has.

:func:`bwrap_argv` is a pure function of a :class:`SandboxSpec`, so what a
sandbox contains is tested without starting one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from traitlets import Bool, HasTraits, List, Unicode

from analysis_lib.catalog import Catalog, load_catalog

IN_SANDBOX_CATALOG = "/run/beamside/catalog.yaml"
IN_SANDBOX_AUDIT = "/run/beamside/audit.sock"
_SYSTEM_RO = ("/usr", "/etc")
_SYSTEM_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}


@dataclass
class SandboxSpec:
    """Everything one sandbox binds in. Paths are host paths, mounted at the same place inside."""

    home: Path
    data_root: Path
    beamtimes: list[tuple[Path, Path]]  # (real folder, where it appears under data_root)
    software: list[Path]  # read-only: the virtual environment and beamside's sources
    catalog: Path | None = None  # the user's own, filtered catalog
    audit_socket: Path | None = None
    writable: list[Path] = field(default_factory=list)  # e.g. a Dask cluster's working folder
    workdir: Path | None = None


def bwrap_argv(spec: SandboxSpec, bwrap: str = "bwrap") -> list[str]:
    """The bubblewrap command line (to be followed by the command to run)."""
    argv = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--cap-drop", "ALL", "--hostname", "beamside",
    ]
    # No --new-session: the sandbox must stay in the process group its launcher
    # starts (start_new_session=True, so it has no terminal to protect), or
    # stopping that group would leave the sandbox running.
    for path in _SYSTEM_RO:
        argv += ["--ro-bind", path, path]
    for link, target in _SYSTEM_LINKS.items():
        if os.path.exists(link):
            argv += ["--symlink", target, link]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", str(spec.data_root)]
    for path in spec.software:
        argv += ["--ro-bind", str(path), str(path)]
    for real, inside in spec.beamtimes:
        argv += ["--ro-bind", str(real), str(inside)]
    argv += ["--bind", str(spec.home), str(spec.home)]
    for path in spec.writable:
        argv += ["--bind", str(path), str(path)]
    if spec.catalog is not None:
        argv += ["--ro-bind", str(spec.catalog), IN_SANDBOX_CATALOG]
    if spec.audit_socket is not None:
        argv += ["--bind", str(spec.audit_socket), IN_SANDBOX_AUDIT]
    argv += ["--setenv", "HOME", str(spec.home), "--setenv", "TMPDIR", "/tmp"]
    argv += ["--chdir", str(spec.workdir or spec.home), "--"]
    return argv


def user_catalog(catalog: Catalog, user: str) -> dict:
    """The catalog as one user may see it: only their beamtimes (confidential ids never leak)."""
    beamtimes = []
    for bt in catalog.readable(user):
        beamtimes.append(
            {
                "id": bt.id,
                "title": bt.title,
                "path": os.path.relpath(bt.path, catalog.data_root),
                "confidential": bt.confidential,
                "members": [{"user": m.user, "role": m.role, **({"until": m.until} if m.until else {})}
                            for m in bt.members if m.user == user],
            }
        )
    return {"data_root": str(catalog.data_root), "beamtimes": beamtimes}


def write_user_catalog(catalog: Catalog, user: str, path: Path, gid: int) -> Path:
    """Write the user's catalog, readable by root and the user's group only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, 0, gid)
    os.chmod(path.parent, 0o750)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(user_catalog(catalog, user), sort_keys=False))
    os.chown(tmp, 0, gid)
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)
    return path


def beamtime_mounts(catalog: Catalog, user: str) -> list[tuple[Path, Path]]:
    return [(bt.real_path, Path(bt.path)) for bt in catalog.readable(user)]


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def can_isolate() -> tuple[bool, str]:
    """Whether this machine can run isolated servers, and if not, why."""
    if os.geteuid() != 0:
        return False, "not running as root (per-user accounts cannot be created)"
    if find_bwrap() is None:
        return False, "bubblewrap (bwrap) is not installed"
    if not os.path.exists("/proc/self/ns/user"):
        return False, "the kernel has no user namespaces"
    return True, "per-user Unix accounts + bubblewrap sandboxes"


class Sandboxed(HasTraits):
    """What the spawner and the Dask gateway's backend share: where the sandboxes' parts are.

    Both put a user's processes into the same picture: the user's beamtimes
    read-only, their home writable, their filtered catalog, the audit socket.
    """

    catalog = Unicode(config=True, help="The facility's beamtime catalog (YAML), the one source of truth for access.")
    homes_dir = Unicode(config=True, help="Folder holding every user's home (created per user, mode 0700).")
    sandboxes_dir = Unicode(config=True, help="Folder for per-user sandbox files (the user's filtered catalog).")
    isolate = Bool(True, config=True, help="Run user processes as per-user accounts in bubblewrap sandboxes (needs root).")
    software_paths = List(Unicode(), config=True, help="Read-only paths every sandbox needs: the venv, beamside's sources.")
    audit_socket = Unicode("", config=True, help="Unix socket of the audit service, bound into every sandbox.")

    def home_of(self, user: str) -> Path:
        return Path(self.homes_dir) / user

    def sandbox_argv(self, user: str, gid: int, *, writable=(), workdir: Path | None = None) -> list[str]:
        """The bubblewrap command line for ``user`` (writes the user's filtered catalog first)."""
        catalog = load_catalog(self.catalog)
        spec = SandboxSpec(
            home=self.home_of(user),
            data_root=catalog.data_root,
            beamtimes=beamtime_mounts(catalog, user),
            software=[Path(p) for p in self.software_paths],
            catalog=write_user_catalog(catalog, user, Path(self.sandboxes_dir) / user / "catalog.yaml", gid),
            audit_socket=Path(self.audit_socket) if self.audit_socket else None,
            writable=list(writable),
            workdir=workdir,
        )
        return bwrap_argv(spec, find_bwrap() or "bwrap")

    def sandbox_env(self) -> dict:
        """Where the library finds the catalog and the audit socket, inside the sandbox (or not)."""
        env = {"BEAMSIDE_CATALOG": IN_SANDBOX_CATALOG if self.isolate else self.catalog}
        if self.audit_socket:
            env["BEAMSIDE_AUDIT_SOCKET"] = IN_SANDBOX_AUDIT if self.isolate else self.audit_socket
        return env
