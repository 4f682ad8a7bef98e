"""Inspect an untrusted HDF5/NeXus file in a separate, time-bounded process.

HDF5 upstream says the library is not built to read malicious files safely:
mutated files have made it loop forever holding the GIL, allocate hundreds of
MB for one element, or crash. So the caller never parses a file's metadata
itself. ``describe()`` runs this module as a child process with a time limit
and an address-space limit, and reads back at most ``beamside.probe.output``
bytes of its answer; the child walks the NeXus structure, follows links
*itself* (HDF5 never follows an external link here), checks every place a read
could lead against the user's :class:`~analysis_lib._access.Boundary`, records
where each chunk's bytes are, and prints a JSON :class:`FileDescription`.
A hang, crash or memory blow-up becomes a :class:`ProbeFailedError`, an
answer too long to hold a :class:`TooLargeError`.
"""

from __future__ import annotations

import json
import os
import posixpath
import selectors
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from dask.utils import format_bytes

from . import _errors
from ._access import Boundary
from ._errors import (
    AccessDenied,
    DataError,
    NexusStructureError,
    NotHDF5Error,
    ProbeFailedError,
    TooLargeError,
    TruncatedFileError,
)
from ._filters import check_available, pipeline
from ._layout import ChunkIndex, FileDescription, StoredArray, Variable

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_LINK_DEPTH = 16


# ---------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------
def check_signature(path: str | os.PathLike) -> None:
    """Cheap first look in the caller: refuse non-HDF5 files without starting a probe.

    HDF5 looks for its signature at offset 0, 512, 1024, 2048, ... (a user block
    may come first).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == HDF5_SIGNATURE:
                    return
                offset = 512 if offset == 0 else offset * 2
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
    doc = _run_child(request, timeout, dataset or signal, output_bytes)
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
    return _run_child(request, timeout, None, output_bytes)["tree"]


def _run_child(request: dict, timeout: float, dataset: str | None, output_bytes: int) -> dict:
    """Run the probe on ``request``; its answer may be at most ``output_bytes`` long.

    The answer is read in pieces and the child is killed as soon as it says
    more than that: a file with millions of chunks would otherwise make the
    caller (the user's kernel) hold its whole chunk index several times over
    (the pipe's bytes, the JSON text, the decoded arrays).
    """
    path = request["path"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis_lib._probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        stdout, stderr = _read_bounded(proc, json.dumps(request).encode(), timeout, output_bytes)
    except subprocess.TimeoutExpired:
        raise ProbeFailedError(
            f"inspecting the file did not finish within {timeout:g} s (the HDF5 library hung on it); "
            "the file is probably corrupt or hostile — raise beamside.probe.timeout only if it is merely huge",
            file=path,
            dataset=dataset,
        ) from None
    except _OutputTooLarge:
        raise TooLargeError(
            f"its description (where each chunk lies) is larger than beamside.probe.output "
            f"({format_bytes(output_bytes)}): a dataset with millions of chunks? Raise beamside.probe.output "
            "if the file is genuine (each chunk costs about 60 bytes)",
            file=path,
            dataset=dataset,
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ProbeFailedError(
            f"the HDF5 library crashed while inspecting the file ({how}); the file is probably corrupt. "
            + " | ".join(tail),
            file=path,
            dataset=dataset,
        )
    doc = json.loads(stdout)
    if "error" in doc:
        raise _error_from_child(doc["error"])
    return doc


class _OutputTooLarge(Exception):
    """The child said more than the caller agreed to read."""


_STDERR_TAIL = 64 * 1024  # only the end of an HDF5 error stack is worth showing


def _read_bounded(proc: subprocess.Popen, request: bytes, timeout: float, limit: int) -> tuple[bytes, bytes]:
    """``proc.communicate(request, timeout)``, but stdout may hold at most ``limit`` bytes.

    Raises ``subprocess.TimeoutExpired`` or ``_OutputTooLarge``; the caller kills the child.
    """
    deadline = time.monotonic() + timeout
    try:
        proc.stdin.write(request)  # small; the child reads all of it before it writes anything
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once: its exit code tells why
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            for key, _ in sel.select(remaining):
                piece = os.read(key.fd, 1 << 16)
                if not piece:
                    sel.unregister(key.fileobj)
                elif key.data is out:
                    out += piece
                    if len(out) > limit:
                        raise _OutputTooLarge()
                else:
                    err += piece
                    del err[:-_STDERR_TAIL]
    proc.wait(max(deadline - time.monotonic(), 0))
    return bytes(out), bytes(err)


def _error_from_child(err: dict) -> Exception:
    cls = getattr(_errors, err["type"], None)
    if cls is AccessDenied:
        return AccessDenied(err["reason"])
    if not (isinstance(cls, type) and issubclass(cls, DataError)):
        cls = DataError
    return cls(err["reason"], file=err.get("file"), dataset=err.get("dataset"))


# ---------------------------------------------------------------------------
# child side
# ---------------------------------------------------------------------------
class _Inspector:
    """Walks one file (and the files its links lead to) inside a boundary."""

    def __init__(self, path: str, boundary: Boundary, limits: dict):
        import h5py

        self.h5py = h5py
        self.boundary = boundary
        self.limits = limits
        self.path = path
        self.files: dict[str, object] = {}
        self.root_file = self.open_file(path)

    # -- files and links -------------------------------------------------------
    def open_file(self, path: str):
        path = os.path.realpath(path)
        if path not in self.files:
            try:
                self.files[path] = self.h5py.File(path, "r", locking=False)
            except FileNotFoundError:
                raise DataError("file not found", file=path) from None
            except OSError as exc:
                raise _classify_open_error(exc, path) from None
        return self.files[path]

    def get(self, f, path: str, depth: int = 0):
        """The object at ``path`` in file ``f``, following soft and external links ourselves.

        Returns ``(object, file)``: an external link may lead into another file.
        """
        h5py = self.h5py
        if depth > _MAX_LINK_DEPTH:
            raise NexusStructureError(f"more than {_MAX_LINK_DEPTH} links deep at {path!r} (a link loop?)", file=f.filename)
        node = f["/"]
        parts = [p for p in path.split("/") if p and p != "."]
        for i, name in enumerate(parts):
            if not isinstance(node, h5py.Group):
                raise NexusStructureError(f"{node.name!r} is a dataset, not a group", file=f.filename, dataset=path)
            try:
                link = node.get(name, getlink=True)
            except (KeyError, OSError, ValueError):
                link = None
            if link is None:
                raise NexusStructureError("no such object in the file", file=f.filename, dataset=path)
            rest = "/".join(parts[i + 1 :])
            if isinstance(link, h5py.SoftLink):
                target = posixpath.normpath(posixpath.join(node.name, link.path))
                node, f = self.get(f, target, depth + 1)
            elif isinstance(link, h5py.ExternalLink):
                target_file = self._external_target(f.filename, link.filename)
                node, f = self.get(self.open_file(str(target_file)), link.path, depth + 1)
            else:
                node = node[name]
            if rest and not isinstance(node, h5py.Group):
                raise NexusStructureError(f"{node.name!r} is a dataset, not a group", file=f.filename, dataset=path)
        return node, f

    def _external_target(self, from_file: str, filename: str) -> Path:
        # We open the target ourselves, so what matters is the file *we* pick:
        # relative names are taken relative to the linking file's folder.
        candidate = filename if os.path.isabs(filename) else os.path.join(os.path.dirname(from_file), filename)
        real = self.boundary.check(candidate, f"an HDF5 external link in {from_file!r}")
        if not real.exists():
            raise DataError(f"an external link points to {filename!r}, which does not exist", file=from_file)
        return real

    # -- metadata --------------------------------------------------------------
    def attr(self, obj, name: str, default=None):
        if name not in obj.attrs:
            return default
        aid = obj.attrs.get_id(name)
        size = aid.get_storage_size()
        if size > self.limits["attribute-bytes"]:
            raise TooLargeError(
                f"attribute {name!r} declares {size} bytes (limit beamside.limits.attribute-bytes)",
                file=obj.file.filename,
                dataset=obj.name,
            )
        return _plain(obj.attrs[name])

    def attrs(self, obj) -> dict:
        out = {}
        for name in list(obj.attrs):
            try:
                value = self.attr(obj, name)
            except (OSError, TypeError, ValueError):
                continue  # an attribute HDF5 cannot convert is not worth failing the open
            if _jsonable(value):
                out[name] = value
        return out

    # -- storage ---------------------------------------------------------------
    def stored(self, dset, f, depth: int = 0) -> StoredArray:
        h5py = self.h5py
        where = {"file": f.filename, "dataset": dset.name}
        dtype = dset.dtype
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise DataError(f"unsupported element type {dtype} (numbers only)", **where)
        nbytes = int(dset.size) * dtype.itemsize if dset.shape else dtype.itemsize
        if nbytes > self.limits["dataset-bytes"]:
            raise TooLargeError(
                f"declares {nbytes} bytes (shape {dset.shape}), beyond beamside.limits.dataset-bytes", **where
            )
        dcpl = dset.id.get_create_plist()
        layout = dcpl.get_layout()
        fill = dset.fillvalue
        base = dict(
            file=os.path.realpath(f.filename),
            path=dset.name,
            shape=tuple(int(n) for n in dset.shape),
            dtype=dtype.str,
            fill_value=fill.item() if hasattr(fill, "item") else fill,
        )
        if dset.is_virtual:
            self._check_virtual(dset, f, depth)
            return StoredArray(layout="virtual", **base)
        if dset.external:
            return StoredArray(layout="external", segments=self._external_storage(dset, f), **base)
        if layout == h5py.h5d.CHUNKED:
            chunks = tuple(int(c) for c in dset.chunks)
            chunk_bytes = int(_prod(chunks)) * dtype.itemsize
            if chunk_bytes > self.limits["chunk-bytes"]:
                raise TooLargeError(f"one chunk {chunks} is {chunk_bytes} bytes, beyond beamside.limits.chunk-bytes", **where)
            filters = pipeline(dcpl)
            check_available(filters, where)
            return StoredArray(
                layout="chunked", chunks=chunks, filters=filters, index=self._chunk_index(dset, f, chunks), **base
            )
        if layout == h5py.h5d.CONTIGUOUS:
            offset = dset.id.get_offset()
            if offset is not None:
                self._check_within_file(f, offset + nbytes, **where)
            return StoredArray(layout="contiguous", segments=(() if offset is None else ((base["file"], offset, nbytes),)), **base)
        return StoredArray(layout="compact", **base)

    def _chunk_index(self, dset, f, chunks) -> ChunkIndex:
        import numpy as np

        grid, addr, size, mask = [], [], [], []

        def visit(info):
            grid.append([o // c for o, c in zip(info.chunk_offset, chunks)])
            addr.append(info.byte_offset)
            size.append(info.size)
            mask.append(info.filter_mask)

        try:
            dset.id.chunk_iter(visit)
        except (AttributeError, NotImplementedError):  # older HDF5: one call per chunk
            for i in range(dset.id.get_num_chunks()):
                visit(dset.id.get_chunk_info(i))
        index = ChunkIndex(
            np.asarray(grid, dtype=np.int64).reshape(-1, len(chunks)),
            np.asarray(addr, dtype=np.uint64),
            np.asarray(size, dtype=np.uint64),
            np.asarray(mask, dtype=np.uint32),
        )
        if len(addr):
            end = int((index.addr + index.size).max())
            self._check_within_file(f, end, file=f.filename, dataset=dset.name)
        return index

    def _check_within_file(self, f, end: int, *, file, dataset):
        size = os.path.getsize(f.filename)
        if end > size:
            raise TruncatedFileError(
                f"the file is {size} bytes but its data reach byte {end}: an incomplete copy or an interrupted write",
                file=file,
                dataset=dataset,
            )

    def _external_storage(self, dset, f) -> tuple[tuple[str, int, int], ...]:
        segments = []
        for name, offset, size in dset.external:
            name = name.decode() if isinstance(name, bytes) else name
            # HDF5 may take a relative name from the working directory or from
            # the file's folder: every candidate that exists must be allowed,
            # and we read from the file's folder one.
            candidates = [name] if os.path.isabs(name) else [os.path.join(os.path.dirname(f.filename), name), name]
            for c in candidates:
                if os.path.exists(c):
                    self.boundary.check(c, f"external storage of dataset {dset.name!r}")
            chosen = next((c for c in candidates if os.path.exists(c)), None)
            if chosen is None:
                raise DataError(f"its external storage file {name!r} does not exist", file=f.filename, dataset=dset.name)
            segments.append((os.path.realpath(chosen), int(offset), int(size)))
        return tuple(segments)

    def _check_virtual(self, dset, f, depth: int):
        if depth > _MAX_LINK_DEPTH:
            raise NexusStructureError("virtual datasets nested too deep", file=f.filename, dataset=dset.name)
        here = os.path.dirname(f.filename)
        for vmap in dset.virtual_sources():
            name = vmap.file_name
            if "%" in name:
                raise DataError(
                    f"virtual dataset source pattern {name!r} is not supported (its files cannot be checked)",
                    file=f.filename,
                    dataset=dset.name,
                )
            if name == ".":
                src_file = f
            else:
                candidates = [name] if os.path.isabs(name) else [os.path.join(here, name), name]
                for env in ("HDF5_VDS_PREFIX",):
                    if os.environ.get(env) and not os.path.isabs(name):
                        candidates.append(os.path.join(os.environ[env], name))
                existing = [c for c in candidates if os.path.exists(c)]
                for c in existing:
                    self.boundary.check(c, f"virtual dataset {dset.name!r}")
                if not existing:
                    raise DataError(
                        f"virtual dataset source file {name!r} is missing (HDF5 would silently return fill values)",
                        file=f.filename,
                        dataset=dset.name,
                    )
                src_file = self.open_file(existing[0])
            src, src_f = self.get(src_file, vmap.dset_name, depth + 1)
            if not isinstance(src, self.h5py.Dataset):
                raise DataError(f"virtual dataset source {vmap.dset_name!r} is not a dataset", file=f.filename, dataset=dset.name)
            self.stored(src, src_f, depth + 1)  # nested checks: links, VDS, external storage


def _classify_open_error(exc: OSError, path: str) -> DataError:
    text = str(exc)
    if "truncated file" in text or "eof" in text.lower():
        return TruncatedFileError(f"the file is shorter than HDF5 expects ({text})", file=path)
    if "file signature not found" in text:
        return NotHDF5Error("not an HDF5/NeXus file", file=path)
    return DataError(f"HDF5 cannot open it: {text}", file=path)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _plain(value):
    """An attribute value as plain JSON-able Python (str, numbers, lists)."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in value.ravel()]
        if value.ndim == 0:
            return value.item()
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(":", ",").split(",")] if ("," in value or ":" in value) else [value]
    return [str(v) for v in value]


def _default_dims(ndim: int) -> list[str]:
    """Dimension names when the file names none: detector images are (row, column)."""
    if ndim == 0:
        return []
    if ndim == 1:
        return ["frame"]
    if ndim == 2:
        return ["row", "column"]
    if ndim == 3:
        return ["frame", "row", "column"]
    return [f"scan_{i}" for i in range(ndim - 2)] + ["row", "column"]


_MAX_TREE = 10_000


class _Describer(_Inspector):
    """Builds the :class:`FileDescription` of a NeXus default signal or a named dataset."""

    def describe(self, signal: str | None, dataset: str | None) -> FileDescription:
        f = self.root_file
        if dataset is not None:
            obj, of = self.get(f, dataset)
            if not isinstance(obj, self.h5py.Dataset):
                raise DataError("this is a group, not a dataset; pass the path of a dataset", file=self.path, dataset=dataset)
            name = posixpath.basename(obj.name) or "data"
            dims = _default_dims(obj.ndim)
            var = Variable(name, tuple(dims), self.attrs(obj), self.stored(obj, of))
            return FileDescription(self.path, posixpath.dirname(dataset) or "/", [var], [], self.attrs(f))
        group, gpath = self.nxdata()
        return self.describe_nxdata(group, gpath, signal)

    def tree(self) -> list[dict]:
        """Every link in the file, depth first; datasets with shape, dtype, chunks, filters."""
        h5py = self.h5py
        entries: list[dict] = []

        def walk(group, path):
            for name in group:
                if len(entries) >= _MAX_TREE:
                    return
                child_path = posixpath.join(path, name)
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.SoftLink):
                    entries.append({"path": child_path, "kind": "soft link", "target": link.path})
                    continue
                if isinstance(link, h5py.ExternalLink):
                    entries.append({"path": child_path, "kind": "external link", "target": f"{link.filename}:{link.path}"})
                    continue
                obj = group[name]
                entry = {"path": child_path, "nx_class": self.attr(obj, "NX_class")}
                if isinstance(obj, h5py.Group):
                    entry.update(kind="group", default=self.attr(obj, "default"), signal=self.attr(obj, "signal"))
                    entries.append(entry)
                    walk(obj, child_path)
                else:
                    dcpl = obj.id.get_create_plist()
                    entry.update(
                        kind="dataset",
                        shape=list(obj.shape or ()),
                        dtype=str(obj.dtype),
                        chunks=list(obj.chunks) if obj.chunks else None,
                        filters=[f.name or str(f.id) for f in pipeline(dcpl)],
                        virtual=bool(obj.is_virtual),
                        external=bool(obj.external),
                        units=self.attr(obj, "units"),
                    )
                    entries.append(entry)

        walk(self.root_file["/"], "/")
        return entries

    def nxdata(self):
        """Follow the NeXus ``@default`` chain from the root to an NXdata group."""
        f = self.root_file
        node, path = f["/"], "/"
        for _ in range(_MAX_LINK_DEPTH):
            if self.attr(node, "NX_class") == "NXdata" or (path != "/" and self.attr(node, "signal")):
                return node, path
            default = self.attr(node, "default")
            if isinstance(default, str) and default:
                target = posixpath.join(path, default)
                try:
                    node, _ = self.get(f, target)
                except NexusStructureError:
                    raise NexusStructureError(
                        f"@default of {path!r} names {default!r}, which does not exist", file=self.path
                    ) from None
                path = target
                continue
            child = self._first_child(node, ("NXentry", "NXsubentry", "NXdata"))
            if child is None:
                raise NexusStructureError(
                    f"no NeXus default data under {path!r} (no @default, no NXentry/NXdata); "
                    "pass dataset='/path/to/data' to open a plain HDF5 dataset",
                    file=self.path,
                )
            node, path = child
        raise NexusStructureError("the @default chain does not end (a loop?)", file=self.path)

    def _first_child(self, group, classes):
        if not isinstance(group, self.h5py.Group):
            return None
        for name in group:
            link = group.get(name, getlink=True)
            if not isinstance(link, self.h5py.HardLink):
                continue
            child = group[name]
            if isinstance(child, self.h5py.Group) and self.attr(child, "NX_class") in classes:
                return child, posixpath.join(group.name, name)
        return None

    def describe_nxdata(self, group, gpath: str, signal: str | None) -> FileDescription:
        f = self.root_file
        if not isinstance(group, self.h5py.Group):
            raise NexusStructureError(f"{gpath!r} is not a group", file=self.path)
        signal = signal or self.attr(group, "signal")
        if not isinstance(signal, str) or not signal:
            raise NexusStructureError(f"NXdata group {gpath!r} has no @signal; pass signal=NAME", file=self.path, dataset=gpath)
        try:
            sig, sf = self.get(f, posixpath.join(gpath, signal))
        except NexusStructureError:
            raise NexusStructureError(
                f"@signal names {signal!r}, which is not in {gpath!r}", file=self.path, dataset=gpath
            ) from None
        if not isinstance(sig, self.h5py.Dataset):
            raise NexusStructureError(f"signal {signal!r} is not a dataset", file=self.path, dataset=gpath)
        ndim = sig.ndim
        dims = _default_dims(ndim)
        axes = _as_list(self.attr(group, "axes"))
        if axes and len(axes) != ndim:
            raise NexusStructureError(
                f"@axes has {len(axes)} entries but signal {signal!r} has {ndim} dimensions", file=self.path, dataset=gpath
            )
        coords: list[Variable] = []
        axis_names = set(a for a in axes if a and a != ".")
        for name in list(group):
            if self.attr(group, f"{name}_indices") is not None:
                axis_names.add(name)
        # Dimensions take the names of the axes on them (NeXus @axes), else defaults.
        for i, a in enumerate(axes):
            if a and a != ".":
                dims[i] = a
        for name in sorted(axis_names, key=lambda n: axes.index(n) if n in axes else ndim):
            indices = self.attr(group, f"{name}_indices")
            if indices is None:
                indices = [axes.index(name)] if name in axes else None
            indices = [int(i) for i in (indices if isinstance(indices, list) else [indices])] if indices is not None else None
            if not indices or any(not (0 <= i < ndim) for i in indices):
                raise NexusStructureError(f"axis {name!r} has no valid @{name}_indices", file=self.path, dataset=gpath)
            try:
                axis, _ = self.get(f, posixpath.join(gpath, name))
            except NexusStructureError:
                raise NexusStructureError(f"@axes names {name!r}, which is not in {gpath!r}", file=self.path, dataset=gpath) from None
            coords.append(self._coordinate(name, axis, [dims[i] for i in indices], [sig.shape[i] for i in indices], gpath))
        variables = [Variable(signal, tuple(dims), self.attrs(sig), self.stored(sig, sf))]
        for aux in _as_list(self.attr(group, "auxiliary_signals")):
            obj, of = self.get(f, posixpath.join(gpath, aux))
            if isinstance(obj, self.h5py.Dataset) and obj.shape == sig.shape:
                variables.append(Variable(aux, tuple(dims), self.attrs(obj), self.stored(obj, of)))
        attrs = {k: v for k, v in self.attrs(group).items() if k not in ("signal", "axes", "NX_class", "auxiliary_signals")}
        attrs = {k: v for k, v in attrs.items() if not k.endswith("_indices")}
        return FileDescription(self.path, gpath, variables, coords, attrs)

    def _coordinate(self, name, axis, dims, sizes, gpath) -> Variable:
        import numpy as np

        if not isinstance(axis, self.h5py.Dataset):
            raise NexusStructureError(f"axis {name!r} is not a dataset", file=self.path, dataset=gpath)
        if axis.size * axis.dtype.itemsize > self.limits["attribute-bytes"]:
            raise TooLargeError(f"axis {name!r} is larger than beamside.limits.attribute-bytes", file=self.path, dataset=gpath)
        values = np.asarray(axis[()])
        attrs = self.attrs(axis)
        if values.shape == tuple(n + 1 for n in sizes) and len(sizes) == 1:
            attrs["bin_edges"] = values.tolist()  # NeXus allows bin edges; xarray wants centres
            values = (values[:-1] + values[1:]) / 2
        if values.shape != tuple(sizes):
            raise NexusStructureError(
                f"axis {name!r} has shape {values.shape}, expected {tuple(sizes)} to match the signal",
                file=self.path,
                dataset=gpath,
            )
        if values.dtype.kind in "SO":
            values = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()]).reshape(values.shape)
        return Variable(name, tuple(dims), attrs, values=values.tolist())


def _child_main() -> int:
    import resource

    request = json.loads(sys.stdin.read())
    mem = int(request["memory_bytes"])
    try:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    except (ValueError, OSError):
        pass
    limits = {k: int(v) for k, v in request["limits"].items()}
    try:
        inspector = _Describer(request["path"], Boundary(request["roots"]), limits)
        if request["mode"] == "tree":
            out = {"tree": inspector.tree()}
        else:
            out = inspector.describe(request["signal"], request["dataset"]).to_json_dict()
    except (DataError, AccessDenied) as exc:
        out = {"error": {"type": type(exc).__name__, "reason": getattr(exc, "reason", str(exc)),
                         "file": getattr(exc, "file", None), "dataset": getattr(exc, "dataset", None)}}
    except MemoryError:
        out = {"error": {"type": "TooLargeError", "reason": "inspecting its metadata needs more memory than "
                         "beamside.probe.memory allows (a hostile or corrupt size field?)", "file": request["path"]}}
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        out = {"error": {"type": "DataError", "reason": f"HDF5 cannot read its metadata: {exc}", "file": request["path"]}}
    sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
