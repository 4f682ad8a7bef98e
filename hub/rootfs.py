"""What root does to files near users: few, named actions, all on file descriptors.

The hub, the gateway and ``beamside up`` run as root and create files in
places that users' processes can also reach (homes, cluster folders, logs).
A path that root opens by name can be rewritten by a user between two system
calls (a symlink swapped in with ``renameat2``), and root then acts on a file
of the user's choosing. So every such action here starts from a directory
that only root can change, opened once, and goes on with ``openat``-style
calls and no-follow flags relative to it (the habit of systemd-tmpfiles and
of CPython's fd-based ``shutil.rmtree``). Nothing here ever walks a tree that
a user can write.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(PermissionError):
    """A folder root must act in is not root's alone (owned by someone else, or writable by others)."""


def open_root_dir(path: str | os.PathLike) -> int:
    """Open ``path`` component by component without following symlinks; every folder on the way
    must belong to root and be writable by nobody else (or the caller could be redirected)."""
    path = Path(path)
    if not path.is_absolute():
        raise ValueError(f"{path}: an absolute path is needed")
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in path.parts[1:]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            others_write = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0)
            if st.st_uid != 0 or (others_write and not st.st_mode & stat.S_ISVTX):
                raise UnsafePathError(f"{path}: {part!r} is not root's alone (uid {st.st_uid}, mode {oct(st.st_mode & 0o7777)})")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def root_dir(path: str | os.PathLike):
    """:func:`open_root_dir` as a context manager."""
    fd = open_root_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def make_dir(parent: int, name: str, *, mode: int, uid: int = 0, gid: int = 0, exist_ok: bool = False) -> tuple[int, bool]:
    """Create folder ``name`` in ``parent`` (an fd) and return (an fd of it, whether it is new).

    An existing entry is used only if it is a real folder (never a symlink); its owner and mode are
    set to the given ones on the fd, so a folder a user swapped in cannot redirect root."""
    _check_name(name)
    created = True
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        if not exist_ok:
            raise
        created = False
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def create_file(parent: int, name: str, *, mode: int, uid: int = 0, gid: int = 0, data: bytes | None = None,
                append: bool = False) -> int:
    """Create (or, with ``append``, reopen) a regular file in ``parent``; never through a symlink.

    Returns a write fd (the caller closes it). Owner and mode are set on the fd."""
    _check_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_EXCL)
    fd = os.open(name, flags, mode, dir_fd=parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{name}: not a regular file")
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        if data is not None:
            os.write(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_file(parent: int, name: str, data: bytes, *, mode: int, uid: int = 0, gid: int = 0,
                 durable: bool = True) -> None:
    """Write ``name`` in ``parent`` atomically (a fresh temporary file, then a rename in the same folder).

    A file that already holds ``data`` with that owner and mode is left alone: the spawner rewrites
    each user's sandbox files on every poll, and most polls change nothing. ``durable=False``
    skips the fsync, for a status file rewritten many times a second that a crash may lose."""
    if _holds(parent, name, data, mode, uid, gid):
        return
    tmp = f".{name}.tmp"
    try:
        os.unlink(tmp, dir_fd=parent)
    except FileNotFoundError:
        pass
    fd = create_file(parent, tmp, mode=mode, uid=uid, gid=gid, data=data)
    try:
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)


def _holds(parent: int, name: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, mode) \
                or st.st_size != len(data):
            return False
        return os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r}: one plain path component is needed")
