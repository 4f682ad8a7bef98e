"""The audit service: which user opened which beamtime file, when (JSON lines).

Runs as root beside the hub (a hub-managed service). Two sources:

- **the kernel** (``"via": "open"``): a fanotify mark on the filesystem that
  holds the data root reports every open of a file there, whoever makes it and
  however (``open()``, h5py, HDF5 external links, a compiled program). The
  user cannot skip it. The kernel names each opened file by its folder's
  file handle and its name, and the service reopens the handle on its own
  view of the data root to learn the full path (a sandbox's bind mounts are
  not its mounts): no path a user chose is ever resolved by root. The user is the
  opening process's uid, read from ``/proc`` (a process that exits before the
  event is read is recorded by pid, as ``"user": null``).
- **the library** (``"via": "library"``): ``analysis_lib`` reports the files it
  opens on a Unix socket bound into every sandbox, with the kernel's word for
  who is asking (``SO_PEERCRED``).

The same (user, file) is written once a minute at most; each uid may add at
most ``rate`` entries a second (burst ``burst``) and what is over is counted
and written as one ``"dropped"`` entry, never lost silently; the log rotates
at ``max_bytes`` keeping ``keep`` old files. It is root-owned, mode 0640.

What the trail proves: that a process of that account opened that file at
that time. What it cannot prove: what was read from it, or that a file was
not copied elsewhere afterwards; opens by root are not recorded.

    python -m beamside_hub.audit --socket S --log L --catalog C
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime as dt
import json
import os
import socket
import stat
import struct
import time
from pathlib import Path

from analysis_lib.catalog import load_catalog

from .accounts import hub_name_of_uid

_MAX_LINE = 16384
_REPEAT_SECONDS = 60


def _peer_uid(writer) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Beamtimes:
    """Path -> beamtime id, by whole path components and without touching the filesystem
    (the catalog's own paths are the admin's; the paths looked up come from users or the kernel)."""

    def __init__(self, catalog: str):
        self.catalog = catalog
        self._loaded = None  # load_catalog re-reads a changed file; the roots follow its object
        self._roots: list[tuple[Path, str]] = []

    def of(self, path: str) -> str | None:
        try:
            cat = load_catalog(self.catalog)
            if cat is not self._loaded:
                self._roots = sorted({(r, bt.id) for bt in cat.beamtimes for r in (bt.real_path, Path(bt.path))},
                                     key=lambda rb: -len(rb[0].parts))
                self._loaded = cat
        except Exception:  # a broken catalog: entries keep their paths, the beamtime stays unknown
            pass
        p = Path(os.path.normpath(path))
        for root, bt_id in self._roots:
            if p.is_relative_to(root):
                return bt_id
        return None


class _Bucket:
    """Per-uid token bucket: ``rate`` entries a second, bursts of ``burst``; counts what it refuses."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens: dict[int, float] = {}
        self.stamp: dict[int, float] = {}
        self.dropped: dict[int, int] = {}

    def take(self, uid: int, now: float) -> bool:
        tokens = min(self.burst, self.tokens.get(uid, self.burst) + (now - self.stamp.get(uid, now)) * self.rate)
        self.stamp[uid] = now
        if tokens >= 1:
            self.tokens[uid] = tokens - 1
            return True
        self.tokens[uid] = tokens
        self.dropped[uid] = self.dropped.get(uid, 0) + 1
        return False


class AuditLog:
    def __init__(self, log_path: str, catalog: str, *, rate: float = 50, burst: int = 2000,
                 max_bytes: int = 64 << 20, keep: int = 5):
        self.log_path = log_path
        self.max_bytes, self.keep = max_bytes, keep
        self.beamtimes = _Beamtimes(catalog)
        self.bucket = _Bucket(rate, burst)
        self.recent: dict[tuple[int | None, str], float] = {}
        self.fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o640)
        return fd

    def _rotate(self) -> None:
        os.close(self.fd)
        for i in range(self.keep - 1, 0, -1):
            if os.path.exists(f"{self.log_path}.{i}"):
                os.replace(f"{self.log_path}.{i}", f"{self.log_path}.{i + 1}")
        if self.keep:
            os.replace(self.log_path, f"{self.log_path}.1")
        else:
            os.unlink(self.log_path)
        self.fd = self._open()

    def _emit(self, entry: dict) -> None:
        os.write(self.fd, (json.dumps(entry) + "\n").encode())
        if os.fstat(self.fd).st_size >= self.max_bytes:
            self._rotate()

    def write(self, uid: int | None, path: str, *, via: str = "library", pid: int | None = None) -> bool:
        """Record one open; False if it was a repeat within a minute or over the uid's rate."""
        now = time.monotonic()
        key = (uid, path)
        if now - self.recent.get(key, -_REPEAT_SECONDS) < _REPEAT_SECONDS:
            return False
        if not self.bucket.take(-1 if uid is None else uid, now):
            return False
        self.recent[key] = now
        if len(self.recent) > 100_000:
            self.recent = {k: t for k, t in self.recent.items() if now - t < _REPEAT_SECONDS}
        user = (hub_name_of_uid(uid) or f"uid:{uid}") if uid is not None else None
        entry = {"time": dt.datetime.now(dt.timezone.utc).isoformat(), "user": user,
                 "beamtime": self.beamtimes.of(path), "path": path, "via": via}
        if pid is not None:
            entry["pid"] = pid
        self._emit(entry)
        return True

    def flush_dropped(self) -> None:
        """One entry per uid that went over its rate since the last call: nothing vanishes silently."""
        for uid, count in list(self.bucket.dropped.items()):
            self._emit({"time": dt.datetime.now(dt.timezone.utc).isoformat(),
                        "user": hub_name_of_uid(uid) or f"uid:{uid}" if uid >= 0 else None,
                        "dropped": count, "why": f"more than {self.bucket.rate:g} entries/s"})
        self.bucket.dropped.clear()

    async def handle(self, reader, writer):
        try:
            uid = _peer_uid(writer)
            while line := await asyncio.wait_for(reader.readline(), timeout=10):
                if len(line) > _MAX_LINE:
                    break
                try:
                    path = json.loads(line)["path"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(path, str) and len(path) < 4096:
                    self.write(uid, path)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()


# -- the kernel's word: fanotify ---------------------------------------------------------------------
_FAN_CLOEXEC, _FAN_NONBLOCK, _FAN_CLASS_NOTIF = 0x1, 0x2, 0x0
_FAN_MARK_ADD, _FAN_MARK_FILESYSTEM, _FAN_OPEN = 0x1, 0x100, 0x20
_FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME (Linux 5.9)
_FAN_INFO_DFID_NAME = 2  # FAN_EVENT_INFO_TYPE_DFID_NAME
_AT_EMPTY_PATH = 0x1000
_EVENT = struct.Struct("IBBHQii")  # struct fanotify_event_metadata
_INFO = struct.Struct("BBH8xIi")  # info header, fsid, then struct file_handle: handle_bytes, handle_type
_FOLDERS_KEPT = 8192  # folders whose path the watch remembers (see OpenWatch)
_FOLDER_SECONDS = 30.0  # ... and for how long (a renamed folder is named right again after this)


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


class OpenWatch:
    """Every open of a file on the data root's filesystem, as (pid, full host path) under the data root.

    The mark covers the whole filesystem (a sandbox's bind mounts are other mounts of it), so when
    the data root shares it with the software, every import of every server start is an event too:
    tens of thousands in a burst of logins. The kernel therefore reports each open as its folder's
    file handle and the file's name, with no file descriptor made for the service, and the service
    resolves each folder once (reopening the handle on its own view of the data root; no path a
    user chose is resolved by root) and remembers it for ``_FOLDER_SECONDS``: an open outside the
    data root costs a dictionary lookup. A kernel or filesystem without that mode gets the older
    one (a descriptor per open, resolved the same way)."""

    def __init__(self, data_root: str):
        self.data_root = Path(os.path.realpath(data_root))
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                                                ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
        self.by_handle = True
        self._folders: dict[bytes, tuple[float, str | None]] = {}
        try:
            self.fd = self._watch(_FAN_REPORT_DFID_NAME)
        except OSError:
            self.by_handle = False
            self.fd = self._watch(0)
        self.root_fd = os.open(self.data_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _watch(self, report: int) -> int:
        fd = self.libc.fanotify_init(_FAN_CLASS_NOTIF | _FAN_CLOEXEC | _FAN_NONBLOCK | report,
                                     os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NOATIME)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        if self.libc.fanotify_mark(fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, _FAN_OPEN, -100,
                                   str(self.data_root).encode()) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"fanotify_mark on the filesystem of {self.data_root}")
        return fd

    def _path_of(self, handle: _FileHandle) -> str | None:
        """The host path of the file or folder ``handle`` names, if under the data root."""
        here = self.libc.open_by_handle_at(self.root_fd, ctypes.byref(handle), os.O_PATH | os.O_CLOEXEC)
        if here < 0:
            return None
        try:
            path = os.readlink(f"/proc/self/fd/{here}")
        finally:
            os.close(here)
        return path if Path(path).is_relative_to(self.data_root) else None

    def _full_path(self, fd: int) -> str | None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if Path(path).is_relative_to(self.data_root):
            return path
        # opened through a mount this namespace does not have (a sandbox's bind mount): the link is
        # relative to that mount; the file's handle, reopened here, names it in full
        handle, mount_id = _FileHandle(handle_bytes=128), ctypes.c_int()
        if self.libc.name_to_handle_at(fd, b"", ctypes.byref(handle), ctypes.byref(mount_id), _AT_EMPTY_PATH) != 0:
            return None
        return self._path_of(handle)

    def _folder(self, record: bytes, now: float) -> str | None:
        """The data-root path of the folder whose handle is ``record`` (struct file_handle), or None."""
        kept = self._folders.get(record)
        if kept is not None and now - kept[0] < _FOLDER_SECONDS:
            return kept[1]
        size, kind = struct.unpack_from("Ii", record)
        handle = _FileHandle(handle_bytes=size, handle_type=kind)
        ctypes.memmove(handle.f_handle, record[8:8 + size], min(size, 128))
        path = self._path_of(handle)
        if len(self._folders) >= _FOLDERS_KEPT:
            self._folders.clear()
        self._folders[record] = (now, path)
        return path

    def read(self) -> list[tuple[int, str]]:
        """The opens waiting now (non-blocking)."""
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        opens, off, now = [], 0, time.monotonic()
        while off + _EVENT.size <= len(buf):
            length, _v, _r, meta_len, _mask, fd, pid = _EVENT.unpack_from(buf, off)
            event, off = buf[off:off + (length or _EVENT.size)], off + (length or _EVENT.size)
            path = self._by_handle(event, meta_len, now) if self.by_handle else self._by_descriptor(fd)
            if path:
                opens.append((pid, path))
        return opens

    def _by_handle(self, event: bytes, at: int, now: float) -> str | None:
        while at + _INFO.size <= len(event):
            kind, _pad, length, size, _type = _INFO.unpack_from(event, at)
            if kind == _FAN_INFO_DFID_NAME and length:
                record_at = at + 12  # after the header (4) and fsid (8): struct file_handle
                record = event[record_at:record_at + 8 + size]
                name = event[record_at + 8 + size:at + length].split(b"\0", 1)[0]
                folder = self._folder(record, now)
                return os.path.join(folder, os.fsdecode(name)) if folder and name else None
            if not length:
                return None
            at += length
        return None

    def _by_descriptor(self, fd: int) -> str | None:
        if fd < 0:
            return None
        try:
            return self._full_path(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError:
            return None
        finally:
            os.close(fd)


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


async def serve(socket_path: str, log_path: str, catalog: str) -> None:
    audit = AuditLog(log_path, catalog)
    try:
        watch = OpenWatch(str(load_catalog(catalog).data_root))
    except OSError as exc:  # the kernel cannot watch this filesystem: say so, keep the library's reports
        watch = None
        audit._emit({"time": dt.datetime.now(dt.timezone.utc).isoformat(), "user": None,
                     "warning": f"opens are not watched by the kernel here ({exc}); only the library's reports"})
    loop = asyncio.get_running_loop()
    if watch is not None:
        def on_opens():
            for pid, path in watch.read():
                uid = _uid_of(pid)
                if uid != 0:  # users' opens; the hub's own (root) are not the users' doing
                    audit.write(uid, path, via="open", pid=pid)

        loop.add_reader(watch.fd, on_opens)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(audit.handle, path=socket_path, limit=_MAX_LINE * 2)
    os.chmod(socket_path, 0o666)  # any sandbox may report; the kernel says who it is

    async def flush_dropped():
        while True:
            await asyncio.sleep(1)
            audit.flush_dropped()

    flusher = asyncio.ensure_future(flush_dropped())
    async with server:
        try:
            await server.serve_forever()
        finally:
            flusher.cancel()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--catalog", required=True)
    args = p.parse_args(argv)
    asyncio.run(serve(args.socket, args.log, args.catalog))


if __name__ == "__main__":
    main()
