"""Inspect an untrusted HDF5/NeXus file in a separate, time-bounded process.

The caller never parses a file's metadata itself (HDF5 is not built to read
malicious files safely). ``describe()`` and ``tree()`` run this module as a
guarded child (:mod:`._guard`: time, memory and output bounds, errors carried
back); the child walks links itself within the user's
:class:`~analysis_lib._access.Boundary` (:mod:`._walk`), records where each
chunk's bytes are (:mod:`._storage`), reads the NeXus meaning
(:mod:`._nexus`) and prints a JSON :class:`FileDescription`. This room is the
job's two ends: the cheap signature check and answer cache in the caller,
and the dispatch in the child.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict

from ._access import Boundary
from ._errors import DataError, NotHDF5Error
from ._guard import run_child, serve
from ._layout import FileDescription
from ._nexus import Describer

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MODULE = "analysis_lib._probe"


# ---------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------
def has_hdf5_signature(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file by its signature.

    HDF5 looks for its signature at offset 0, 512, 1024, 2048, ... (a user block
    may come first). Raises OSError if the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def check_signature(path: str | os.PathLike) -> None:
    """Cheap first look in the caller: refuse non-HDF5 files without starting a probe."""
    try:
        if has_hdf5_signature(path):
            return
        size = os.stat(path).st_size
    except IsADirectoryError:
        raise NotHDF5Error("this is a folder, not an HDF5/NeXus file", file=path) from None
    except FileNotFoundError:
        raise DataError("no such file", file=path) from None
    raise NotHDF5Error(
        f"not an HDF5/NeXus file (no HDF5 signature in its {size} bytes)"
        + ("; the file is empty — an interrupted copy?" if size == 0 else ""),
        file=path,
    )


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple, FileDescription] = OrderedDict()
_CACHE_SIZE = 64


def describe(
    path: str | os.PathLike,
    boundary: Boundary,
    *,
    signal: str | None = None,
    dataset: str | None = None,
    timeout: float,
    memory_bytes: int,
    output_bytes: int,
    limits: dict,
) -> FileDescription:
    """Describe ``path`` (its NeXus default signal, or ``dataset``) from a guarded child process."""
    path = os.path.realpath(path)
    check_signature(path)
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, st.st_ino, signal, dataset, boundary.roots, tuple(sorted(limits.items())))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    request = {
        "mode": "describe",
        "path": path,
        "signal": signal,
        "dataset": dataset,
        "roots": [str(r) for r in boundary.roots],
        "memory_bytes": memory_bytes,
        "limits": limits,
    }
    doc = run_child(_MODULE, request, timeout, dataset or signal, output_bytes)
    description = FileDescription.from_json_dict(doc)
    with _cache_lock:
        _cache[key] = description
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return description


def tree(
    path: str | os.PathLike, boundary: Boundary, *, timeout: float, memory_bytes: int, output_bytes: int, limits: dict
) -> list[dict]:
    """Every object of the file (links shown, never followed), from the guarded child."""
    path = os.path.realpath(path)
    check_signature(path)
    request = {"mode": "tree", "path": path, "roots": [str(r) for r in boundary.roots],
               "memory_bytes": memory_bytes, "limits": limits}
    return run_child(_MODULE, request, timeout, None, output_bytes)["tree"]


# ---------------------------------------------------------------------------
# child side
# ---------------------------------------------------------------------------
def _answer(request: dict) -> dict:
    inspector = Describer(request["path"], Boundary(request["roots"]), request["limits"])
    if request["mode"] == "tree":
        return {"tree": inspector.tree()}
    return inspector.describe(request["signal"], request["dataset"]).to_json_dict()


if __name__ == "__main__":
    sys.exit(serve(_answer))
