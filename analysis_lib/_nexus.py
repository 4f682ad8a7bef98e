"""NeXus meaning: which dataset is the data (``@default``, ``@signal``) and what its axes are (``@axes``).

A NeXus file says what to show by a chain of ``@default`` attributes from
the root to an NXdata group, whose ``@signal`` names the frames and whose
``@axes``/``@AXISNAME_indices`` name the coordinates on each dimension
(bin edges allowed). :class:`Describer` reads that meaning into a
:class:`~analysis_lib._layout.FileDescription`, the storage of each array
from :class:`~analysis_lib._storage.StorageLocator`. Runs in the guarded
child only.
"""

from __future__ import annotations

import posixpath

from ._errors import DataError, NexusStructureError, TooLargeError
from ._layout import FileDescription, Variable
from ._storage import StorageLocator
from ._walk import MAX_LINK_DEPTH


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


class Describer(StorageLocator):
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

    def nxdata(self):
        """Follow the NeXus ``@default`` chain from the root to an NXdata group."""
        f = self.root_file
        node, path = f["/"], "/"
        for _ in range(MAX_LINK_DEPTH):
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
