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

import grp
import hashlib
import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from traitlets import Bool, Float, HasTraits, Integer, List, Unicode

from analysis_lib import Policy
from analysis_lib.catalog import Catalog, load_catalog
from analysis_lib.contract import AUDIT_SOCKET_ENV, CATALOG_ENV, MEMORY_GROUP_DIR

from . import limits, network, rootfs
from .platform import USER_CATALOG as IN_SANDBOX_CATALOG, USER_CATALOG_DIR as IN_SANDBOX_CATALOG_DIR
from .accounts import Account, drop_privileges

IN_SANDBOX_AUDIT = "/run/beamside/audit.sock"
# beamside's IPython kernel config in every sandbox's /etc/ipython: kernels load the library's
# memory-limit notice (analysis_lib._limits)
IPYTHON_KERNEL_CONFIG = Path(__file__).with_name("ipython_kernel_config.json")
# The sandbox's own host name (its UTS namespace), which its /etc/hosts resolves: programs that look up
# their machine's name (TigerVNC's vncserver does, for the desktop) find it as on any machine.
HOSTNAME = "beamside"
_SYSTEM_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
# The host's /etc holds other users' names (passwd, group), perhaps an admin's settings, catalog or
# state: a sandbox gets only what programs need to run, plus a passwd and group of its own.
ETC_ALLOWED = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "debian_version", "environment",
    "fonts", "gai.conf", "host.conf", "hosts", "inputrc", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
    "locale.alias", "localtime", "magic", "magic.mime", "mime.types", "nsswitch.conf", "os-release", "profile",
    "profile.d", "protocols", "python3", "python3.11", "services", "shells", "ssl", "terminfo", "timezone", "xdg",
    "X11", "tigervnc",  # the desktop (hub/desktop.py): TigerVNC's and X's session scripts
)


@dataclass
class SandboxSpec:
    """Everything one sandbox binds in. Paths are host paths, mounted at the same place inside."""

    home: Path
    data_root: Path
    beamtimes: list[tuple[Path, Path]]  # (real folder, where it appears under data_root)
    software: list[Path]  # read-only: the virtual environment and beamside's sources
    catalog_dir: Path | None = None  # holds the user's own, filtered catalog.yaml
    etc_dir: Path | None = None  # holds the sandbox's own passwd and group
    audit_socket: Path | None = None
    readonly: list[Path] = field(default_factory=list)  # e.g. a Dask cluster's folder (its TLS files)
    writable: list[Path] = field(default_factory=list)  # e.g. the user's part of that folder
    workdir: Path | None = None
    memory_group: Path | None = None  # the cgroup folder whose memory events the user may read


# Written per user (write_user_files), bound instead of the host's. The host's machine-id identifies the
# machine and is kept from sandboxes; D-Bus's session bus (the desktop's) needs one, so each gets its own.
_OWN_ETC = ("passwd", "group", "hosts", "machine-id")


def _etc_argv(etc_dir: Path | None) -> list[str]:
    argv = ["--dir", "/etc"]
    for name in ETC_ALLOWED:
        if etc_dir is not None and name in _OWN_ETC:
            continue
        host = Path("/etc") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.exists():
            argv += ["--ro-bind", str(host), str(host)]
    if etc_dir is not None:
        for name in _OWN_ETC:
            argv += ["--ro-bind", str(etc_dir / name), f"/etc/{name}"]
    return argv + ["--ro-bind", str(IPYTHON_KERNEL_CONFIG), "/etc/ipython/ipython_kernel_config.json"]


def bwrap_argv(spec: SandboxSpec, bwrap: str = "bwrap") -> list[str]:
    """The bubblewrap command line (to be followed by the command to run)."""
    argv = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--cap-drop", "ALL", "--hostname", HOSTNAME,
    ]
    # No --new-session: the sandbox must stay in the process group its launcher
    # starts (start_new_session=True, so it has no terminal to protect), or
    # stopping that group would leave the sandbox running.
    argv += ["--ro-bind", "/usr", "/usr"]
    for link, target in _SYSTEM_LINKS.items():
        if os.path.exists(link):
            argv += ["--symlink", target, link]
    argv += _etc_argv(spec.etc_dir)
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", str(spec.data_root)]
    for path in spec.software:
        argv += ["--ro-bind", str(path), str(path)]
    for real, inside in spec.beamtimes:
        argv += ["--ro-bind", str(real), str(inside)]
    argv += ["--bind", str(spec.home), str(spec.home)]
    for path in spec.readonly:
        argv += ["--ro-bind", str(path), str(path)]
    for path in spec.writable:
        argv += ["--bind", str(path), str(path)]
    if spec.catalog_dir is not None:
        argv += ["--ro-bind", str(spec.catalog_dir), IN_SANDBOX_CATALOG_DIR]
    if spec.audit_socket is not None:
        argv += ["--bind", str(spec.audit_socket), IN_SANDBOX_AUDIT]
    if spec.memory_group is not None:  # read-only: the user reads their usage and kills, never a limit
        argv += ["--ro-bind", str(spec.memory_group), MEMORY_GROUP_DIR]
    argv += ["--setenv", "HOME", str(spec.home), "--setenv", "TMPDIR", "/tmp"]
    argv += ["--chdir", str(spec.workdir or spec.home), "--"]
    return argv


def passwd_lines(account: Account) -> tuple[str, str]:
    """The sandbox's own /etc/passwd and /etc/group: root, nobody and the user, no other hub user."""
    pw, gr = pwd.getpwuid(account.uid), grp.getgrgid(account.gid)
    passwd = (f"root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
              f"{pw.pw_name}:x:{pw.pw_uid}:{pw.pw_gid}:{pw.pw_gecos}:{pw.pw_dir}:/bin/bash\n")
    group = f"root:x:0:\nnogroup:x:65534:\n{gr.gr_name}:x:{gr.gr_gid}:\n"
    return passwd, group


def machine_id(account: Account) -> str:
    """The sandbox's /etc/machine-id: the same at every start of the user's sandbox (D-Bus files in the home
    are named after it), derived from the account alone, so it says nothing about the machine."""
    return hashlib.sha256(f"beamside-sandbox:{account.unix_name}:{account.uid}".encode()).hexdigest()[:32] + "\n"


def hosts_text(host_hosts: Path = Path("/etc/hosts")) -> str:
    """The sandbox's /etc/hosts: the machine's, plus the sandbox's own name for the loopback address."""
    try:
        text = host_hosts.read_text()
    except OSError:
        text = "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
    return text.rstrip("\n") + f"\n127.0.1.1\t{HOSTNAME}\n"


def write_user_files(catalog: Catalog, account: Account, sandboxes_dir: Path) -> Path:
    """The user's folder of sandbox files (root's, readable by the user's group only): the filtered
    catalog in ``catalog/`` (bound as a folder, so a replaced catalog reaches running sandboxes)
    and ``etc/`` (passwd, group, hosts, machine-id). Written on file descriptors from root's sandboxes folder."""
    passwd, group = passwd_lines(account)
    text = yaml.safe_dump(catalog.view_for(account.hub_name), sort_keys=False).encode()
    with rootfs.root_dir(sandboxes_dir) as top:
        user_fd, _ = rootfs.make_dir(top, account.unix_name, mode=0o750, gid=account.gid, exist_ok=True)
        try:
            etc = {"passwd": passwd.encode(), "group": group.encode(), "hosts": hosts_text().encode(),
                   "machine-id": machine_id(account).encode()}
            for sub, files in (("catalog", {"catalog.yaml": text}), ("etc", etc)):
                fd, _ = rootfs.make_dir(user_fd, sub, mode=0o750, gid=account.gid, exist_ok=True)
                try:
                    for name, data in files.items():
                        rootfs.replace_file(fd, name, data, mode=0o640, gid=account.gid)
                finally:
                    os.close(fd)
        finally:
            os.close(user_fd)
    return sandboxes_dir / account.unix_name


def ensure_home(homes_dir: Path, name: str, account: Account | None, examples: str | None = None) -> Path:
    """The user's home, created on first use with the worked examples in it.

    Root never walks a home a user can write: a new home stays root's (mode 0700) while the examples
    are copied in, and only then is the folder itself given to the user, on its fd. An existing
    home only has its own owner and mode set again, never anything inside it.
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} cannot name a home folder")
    home = homes_dir / name
    if account is None or os.geteuid() != 0:  # the unisolated demo, run by an ordinary user
        fresh = not home.exists()
        home.mkdir(parents=True, exist_ok=True)
        if fresh and examples and os.path.isdir(examples):
            shutil.copytree(examples, home / "examples")
        return home
    with rootfs.root_dir(homes_dir) as homes:
        try:
            os.mkdir(name, 0o700, dir_fd=homes)
            fresh = True
        except FileExistsError:
            fresh = False
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=homes)
        try:
            if fresh and examples and os.path.isdir(examples):
                _copy_in(Path(examples), fd, "examples", account)
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return home


def _copy_in(source: Path, parent: int, name: str, account: Account) -> None:
    """Copy root's own tree ``source`` into a folder only root can reach yet, owned by the user."""
    fd, _ = rootfs.make_dir(parent, name, mode=0o755, uid=account.uid, gid=account.gid)
    try:
        for entry in sorted(source.iterdir()):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                _copy_in(entry, fd, entry.name, account)
            elif entry.is_file():
                out = rootfs.create_file(fd, entry.name, mode=0o644, uid=account.uid, gid=account.gid,
                                         data=entry.read_bytes())
                os.close(out)
    finally:
        os.close(fd)


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
    private_network = Bool(False, config=True,
                           help="Run each user's processes in a network namespace of their own (beamside_hub.network).")
    user_memory_limit = Integer(0, config=True, help="Bytes all of one user's processes may use together (0: no cap).")
    user_cpu_limit = Float(0, config=True, help="Cores all of one user's processes may use together (0: no cap).")
    user_process_limit = Integer(0, config=True, help="Processes and threads one user may run (0: no cap).")
    cgroup_top = Unicode(limits.TOP, config=True, help="This deployment's folder in the cgroup file systems.")

    def home_of(self, user: str) -> Path:
        return Path(self.homes_dir) / user

    def sandbox_argv(self, account: Account, *, readonly=(), writable=(), workdir: Path | None = None,
                     group: limits.Group | None = None) -> list[str]:
        """The bubblewrap command line for ``account``'s user (writes the user's sandbox files first)."""
        catalog = load_catalog(self.catalog)
        user_dir = write_user_files(catalog, account, Path(self.sandboxes_dir))
        spec = SandboxSpec(
            home=self.home_of(account.hub_name),
            data_root=catalog.data_root,
            beamtimes=Policy(catalog).mounts(account.hub_name),
            software=[Path(p) for p in self.software_paths],
            catalog_dir=user_dir / "catalog",
            etc_dir=user_dir / "etc",
            audit_socket=Path(self.audit_socket) if self.audit_socket else None,
            readonly=list(readonly),
            writable=list(writable),
            workdir=workdir,
            memory_group=group.memory_folder if group is not None else None,
        )
        return bwrap_argv(spec, find_bwrap() or "bwrap")

    def user_address(self, account: Account) -> str | None:
        """The address the user's processes listen on: their own namespace's (made if missing), or
        None when they share the host's network."""
        return network.ensure(account.uid) if self.private_network else None

    def preexec_for(self, account: Account, workdir: str, group: limits.Group | None = None):
        """A ``preexec_fn``: into the user's cgroup and network namespace (while still root), then
        the account's ids."""
        drop = drop_privileges(account, workdir)
        uid, private = account.uid, self.private_network

        def preexec():
            if group is not None:
                group.enter()
            if private:
                network.enter(uid)
            drop()

        return preexec

    # -- per-user limits (cgroups) ----------------------------------------------------------
    def _cgroups(self) -> limits.Cgroups | None:
        """The machine's cgroups, or None: then only if no limit is set (else: fail closed)."""
        found = limits.Cgroups.detect(self.cgroup_top) if self.isolate else None
        if found is None and self.isolate and self._limited():
            raise limits.LimitsUnavailable("per-user limits are set but this machine's kernel has no cgroup memory, "
                                           "cpu and pids controllers to keep them")
        return found

    def _limited(self) -> bool:
        return bool(self.user_memory_limit or self.user_cpu_limit or self.user_process_limit)

    def user_limit(self) -> limits.Limit:
        return limits.Limit(memory=self.user_memory_limit or None, cpu=self.user_cpu_limit or None,
                            processes=self.user_process_limit or None)

    def fresh_group(self, account: Account, part: str, limit: limits.Limit) -> limits.Group | None:
        """``part``'s cgroup in ``account``'s, emptied of anything a previous run left (None: no cgroups)."""
        cgroups = self._cgroups()
        if cgroups is None:
            return None
        cgroups.group(account.unix_name, part).remove()
        return cgroups.part_group(account.unix_name, account.gid, part, self.user_limit(), limit)

    def end_group(self, account: Account, part: str) -> None:
        """Whatever is left in ``part``'s cgroup is stopped and the group removed (the user's too, if empty)."""
        cgroups = limits.Cgroups.detect(self.cgroup_top) if self.isolate else None
        if cgroups is None:
            return
        cgroups.group(account.unix_name, part).remove()
        cgroups.remove_user_if_empty(account.unix_name)

    def sandbox_env(self) -> dict:
        """Where the library finds the catalog and the audit socket, inside the sandbox (or not)."""
        env = {CATALOG_ENV: IN_SANDBOX_CATALOG if self.isolate else self.catalog}
        if self.audit_socket:
            env[AUDIT_SOCKET_ENV] = IN_SANDBOX_AUDIT if self.isolate else self.audit_socket
        return env
