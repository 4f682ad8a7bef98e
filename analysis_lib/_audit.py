"""Tell the facility's audit service which beamtime files this process opens.

On the hub every user server and Dask worker has ``BEAMSIDE_AUDIT_SOCKET``:
a Unix socket of a root-owned service that records (user, beamtime, path,
time). The service learns *who* from the socket's peer credentials, so a user
cannot write the log nor speak for someone else. Reporting is best effort and
once per file per process; it never slows or breaks a read.
"""

from __future__ import annotations

import json
import os
import socket
import threading

from .contract import AUDIT_SOCKET_ENV

_seen: set[tuple[int, str]] = set()
_lock = threading.Lock()


def record(path: str) -> None:
    """Report that this process opens ``path`` (no-op without an audit socket)."""
    address = os.environ.get(AUDIT_SOCKET_ENV)
    if not address:
        return
    key = (os.getpid(), path)
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(address)
            s.sendall(json.dumps({"path": path}).encode() + b"\n")
    except OSError:
        pass  # the audit service being down must not stop analysis
