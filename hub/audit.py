"""The audit service: which user opened which beamtime file, when (JSON lines).

Runs as root beside the hub (a hub-managed service) and listens on a Unix
socket that every user sandbox binds in. The user is taken from the peer's
credentials (``SO_PEERCRED``: the kernel's word, not the client's), the
beamtime from the catalog. The log is root-owned, mode 0640: admins read it,
users cannot write it.

    python -m beamside_hub.audit --socket /srv/beamside/run/audit.sock --log /srv/beamside/audit.log --catalog CATALOG
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import struct

from analysis_lib.catalog import load_catalog

from .accounts import hub_name_of_uid

_MAX_LINE = 16384


def _peer_uid(writer) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class AuditLog:
    def __init__(self, log_path: str, catalog: str):
        self.log_path = log_path
        self.catalog = catalog
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.fchmod(fd, 0o640)
        self.fd = fd

    def write(self, uid: int, path: str) -> None:
        user = hub_name_of_uid(uid) or f"uid:{uid}"
        beamtime = None
        try:
            bt = load_catalog(self.catalog).beamtime_of(path)
            beamtime = bt.id if bt else None
        except Exception:
            pass
        entry = {"time": dt.datetime.now(dt.timezone.utc).isoformat(), "user": user, "beamtime": beamtime, "path": path}
        os.write(self.fd, (json.dumps(entry) + "\n").encode())

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
                if isinstance(path, str):
                    self.write(uid, path)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def serve(socket_path: str, log_path: str, catalog: str) -> None:
    audit = AuditLog(log_path, catalog)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(audit.handle, path=socket_path, limit=_MAX_LINE * 2)
    os.chmod(socket_path, 0o666)  # any sandbox may report; the kernel says who it is
    async with server:
        await server.serve_forever()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--catalog", required=True)
    args = p.parse_args(argv)
    asyncio.run(serve(args.socket, args.log, args.catalog))


if __name__ == "__main__":
    main()
