"""The user's memory limit as seen from inside their server, and the notice after a kernel was stopped.

When a user's server and kernels together go over their memory limit, the machine's kernel stops
the process using most, usually the kernel that allocated too much; JupyterLab then only says
the kernel "appears to have died". Every kernel of a beamside server loads this as an IPython
extension (the sandbox's ``/etc/ipython``): if the server's memory group counted a kill since the
last kernel looked, the next cell the user runs starts with a message saying what happened and
what to do instead. The counts come from the group's own files, bound read-only into the sandbox
(``contract.MEMORY_GROUP_DIR``); outside a beamside sandbox this does nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .contract import MEMORY_GROUP_DIR, MEMORY_LIMIT_ENV

_SEEN = Path(tempfile.gettempdir()) / ".beamside-memory-kills-seen"  # the sandbox's /tmp: its kernels share it


def memory_kills(folder: str | os.PathLike = MEMORY_GROUP_DIR) -> int | None:
    """How many processes of this server the kernel stopped for memory (None: no memory group here)."""
    folder = Path(folder)
    for name in ("memory.events", "memory.oom_control"):  # cgroup v2, v1
        try:
            text = (folder / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0
    return None


def memory_limit() -> int | None:
    """The server's memory limit in bytes, as the hub set it (None: none)."""
    try:
        return int(os.environ.get(MEMORY_LIMIT_ENV, "")) or None
    except ValueError:
        return None


def notice(limit: int | None) -> str:
    amount = f" of {limit / 2**30:.1f} GiB" if limit else ""
    return (
        f"beamside: a process of your notebook server (most likely the previous kernel) was stopped because your "
        f"server and its kernels together reached their memory limit{amount}. Variables of that kernel are gone. "
        "Reduce big data where it lies instead of loading it whole (al.ops works frame by frame), or use a Dask "
        "cluster (al.cluster()) whose workers have memory of their own.\n"
    )


def _new_kills() -> bool:
    """Whether the group counted a kill since a kernel last looked (and note that this one has)."""
    count = memory_kills()
    if count is None:
        return False
    try:
        seen = int(_SEEN.read_text())
    except (OSError, ValueError):
        seen = 0
    try:
        _SEEN.write_text(str(count))
    except OSError:
        pass
    return count > seen


def load_ipython_extension(ipython) -> None:
    if not _new_kills():
        return
    message = notice(memory_limit())

    def tell(*_):
        ipython.events.unregister("pre_run_cell", tell)
        sys.stderr.write(message)
        sys.stderr.flush()

    ipython.events.register("pre_run_cell", tell)
