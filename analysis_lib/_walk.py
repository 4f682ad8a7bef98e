"""Walking one file, and the files its links lead to, within a boundary and within limits.

HDF5 would follow a soft or external link by itself, into any file its name
leads to. The probe's child never lets it: :class:`Walker` resolves every
link itself, checks each file a link leads to against the user's
:class:`~analysis_lib._access.Boundary`, stops at a depth (link loops), and
reads an attribute only after its declared size is within
``beamside.limits.attribute-bytes``. Runs in the guarded child only.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

from ._access import Boundary
from ._errors import DataError, NexusStructureError, NotHDF5Error, TooLargeError, TruncatedFileError
from ._filters import pipeline

MAX_LINK_DEPTH = 16
_MAX_TREE = 10_000


class Walker:
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
        if depth > MAX_LINK_DEPTH:
            raise NexusStructureError(f"more than {MAX_LINK_DEPTH} links deep at {path!r} (a link loop?)", file=f.filename)
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


def _classify_open_error(exc: OSError, path: str) -> DataError:
    text = str(exc)
    if "truncated file" in text or "eof" in text.lower():
        return TruncatedFileError(f"the file is shorter than HDF5 expects ({text})", file=path)
    if "file signature not found" in text:
        return NotHDF5Error("not an HDF5/NeXus file", file=path)
    return DataError(f"HDF5 cannot open it: {text}", file=path)


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
