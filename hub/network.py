"""One network namespace per user: a user's processes reach the hub's services, and nothing of other users'.

Without this, every sandbox shares the host's network: a Dask scheduler's
dashboard, a worker's, anything a user binds on loopback is open to every
other user (exception texts, paths with confidential beamtime ids, task
names). So each account gets a namespace of its own (``bs-net-<uid>``) with
its loopback and one veth link to the host:

- inside, the user's address (``169.254.<129+uid/256>.<uid%256>``) and a
  route to the host's *internal address* only (``169.254.128.1``, held by the
  host's loopback device), where the hub's API and the Dask gateway listen;
  no default route, so no other user's address is reachable (and the user
  holds no capability in that namespace to add one);
- on the host, a route to the user's address through the link, so the proxy
  reaches the user's server and the gateway the user's scheduler.

Link-local addresses (169.254/16) are used so that no facility network is
shadowed; the 169.254.169.0/24 of cloud metadata services is never handed out.
The servers of one account (in every deployment on the machine) share its
namespace; it is removed once no process is left in it.

Processes enter the namespace in their ``preexec_fn`` (:func:`enter`), as root,
before they drop their privileges and start bubblewrap (which cannot join a
namespace itself, but keeps the one it starts in).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import subprocess
import threading

INTERNAL_IP = "169.254.128.1"  # the hub's services, as users' namespaces see them
_CLONE_NEWNET = 0x40000000
_MAX_UID = 124 * 256  # 169.254.129.x ... 169.254.254.x, skipping 169.254.169.x (see address_of)
_lock = threading.Lock()


class NetworkError(RuntimeError):
    """A user's network namespace could not be made (the message names the command and its answer)."""


def namespace(uid: int) -> str:
    return f"bs-net-{uid}"


def address_of(uid: int) -> str:
    """The user's own address inside their namespace (unique per uid, link-local)."""
    if not 0 < uid < _MAX_UID:
        raise NetworkError(f"uid {uid} is outside the range that gets a network namespace (1..{_MAX_UID - 1})")
    third = 129 + uid // 256
    if third >= 169:  # skip 169.254.169.0/24: cloud metadata services answer there
        third += 1
    return str(ipaddress.IPv4Address(f"169.254.{third}.{uid % 256}"))


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    if check and run.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {run.stderr.strip()}")
    return run


def ensure_internal_address() -> None:
    """Give the host's loopback device the internal address (once; it stays)."""
    if INTERNAL_IP not in _ip("-4", "addr", "show", "dev", "lo").stdout:
        _ip("addr", "add", f"{INTERNAL_IP}/32", "dev", "lo")


def ensure(uid: int) -> str:
    """The namespace of ``uid``, made if missing (idempotent); returns the user's address."""
    name, addr = namespace(uid), address_of(uid)
    host_link, user_link = f"bsh{uid}", f"bsn{uid}"
    with _lock:
        ensure_internal_address()
        if os.path.exists(f"/run/netns/{name}") and _ip("link", "show", host_link, check=False).returncode == 0:
            return addr
        _ip("netns", "delete", name, check=False)  # a half-made one from a crash
        _ip("link", "delete", host_link, check=False)
        _ip("netns", "add", name)
        _ip("link", "add", host_link, "type", "veth", "peer", "name", user_link, "netns", name)
        _ip("link", "set", host_link, "up")
        _ip("route", "replace", f"{addr}/32", "dev", host_link)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{addr}/32", "dev", user_link)
        _ip("-n", name, "link", "set", user_link, "up")
        _ip("-n", name, "route", "add", f"{INTERNAL_IP}/32", "dev", user_link)
    return addr


def enter(uid: int) -> None:
    """Move the calling process into the namespace of ``uid`` (in a ``preexec_fn``, as root)."""
    fd = os.open(f"/run/netns/{namespace(uid)}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace(uid)}")
    finally:
        os.close(fd)


def remove_unused() -> list[str]:
    """Remove the namespaces (and their links) in which no process runs any more."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith("bs-net-"):
            continue
        if _ip("netns", "pids", name, check=False).stdout.strip():
            continue
        _ip("netns", "delete", name, check=False)
        _ip("link", "delete", f"bsh{name.rsplit('-', 1)[1]}", check=False)
        removed.append(name)
    return removed


def start_relay(listen: tuple[str, int], target: tuple[str, int]) -> threading.Thread:
    """Relay TCP from ``listen`` to ``target`` in a daemon thread (for a service that listens on one
    address only, e.g. the gateway's scheduler proxy on the public address, which users' namespaces
    reach at the internal one)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    async def pipe(reader, writer):
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def connection(reader, writer):
        try:
            t_reader, t_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, t_writer), pipe(t_reader, writer))

    async def main():
        try:
            server = await asyncio.start_server(connection, *listen)
        except OSError as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True, name=f"relay-{listen[1]}")
    thread.start()
    ready.wait(10)
    if failure:
        raise NetworkError(f"cannot relay {listen[0]}:{listen[1]} to {target[0]}:{target[1]}: {failure[0]}")
    return thread
