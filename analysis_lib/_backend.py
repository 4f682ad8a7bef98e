"""The ``nexus`` xarray backend: ``xr.open_dataset(path, engine="nexus")``.

Three parts, as xarray's guide for new backends has them: a thread-safe
``BackendArray`` that reads one region, a store that pickles to Dask workers
as paths and byte offsets (the readers in :mod:`._chunks`), and the
``BackendEntrypoint`` that recognises NeXus/HDF5 files (by their HDF5
signature) and sets ``preferred_chunks`` to whole HDF5 chunks of about
``beamside.chunk-size`` bytes (:func:`dask_chunks`), so that
``xr.open_dataset(path, engine="nexus", chunks={})`` gives ``al.open``'s
chunks, and ``al.ops`` streams such untouched frames from the file
(:mod:`._reduce`).
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from . import _audit, _config, _provenance
from ._access import Boundary, Policy
from ._chunks import reader_for
from ._layout import FileDescription
from ._probe import describe, has_hdf5_signature, tree
from .catalog import CATALOG_ENV, current_user


class NexusBackendArray(BackendArray):
    """One HDF5 dataset as a lazily indexed array; reads go through a picklable reader."""

    def __init__(self, reader):
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self.reader.__getitem__)


def access_policy(path, *, user=None, catalog=None) -> tuple[str, Boundary]:
    """The real path to open and the boundary its links must stay in.

    With a catalog (given, or ``BEAMSIDE_CATALOG``), the user must be allowed to
    read ``path`` and links may lead only into the user's beamtimes. Without
    one (a laptop, a test), links may not leave the file's own folder.
    """
    if catalog is not None or os.environ.get(CATALOG_ENV):
        policy, who = Policy(catalog), current_user(user)
        return str(policy.resolve(path, who)), policy.boundary(who)
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    return real, Boundary([os.path.dirname(real)])


def _guards() -> dict:
    """The probe's time, memory and size bounds, from beamside's Dask config."""
    return {
        "timeout": float(_config.get("probe.timeout")),
        "memory_bytes": _config.get_bytes("probe.memory"),
        "output_bytes": _config.get_bytes("probe.output"),
        "limits": {k: _config.get_bytes(f"limits.{k}") for k in ("dataset-bytes", "chunk-bytes", "attribute-bytes")},
    }


def describe_file(path, *, signal=None, dataset=None, user=None, catalog=None) -> FileDescription:
    """Inspect ``path`` under the access policy, in the guarded probe process."""
    real, boundary = access_policy(path, user=user, catalog=catalog)
    _audit.record(real)
    return describe(real, boundary, signal=signal, dataset=dataset, **_guards())


def file_tree(path, *, user=None, catalog=None) -> tuple[str, list[dict]]:
    """The real path and every object of the file (for ``beamside info``), guarded likewise."""
    real, boundary = access_policy(path, user=user, catalog=catalog)
    return real, tree(real, boundary, **_guards())


def dask_chunks(stored, dims, target_bytes: int) -> dict:
    """Dask chunk sizes that are whole HDF5 chunks: fill the trailing axes first, then frames.

    A whole detector frame per block keeps reads sequential; stacking frames
    up to ``target_bytes`` keeps Dask's per-task overhead small.
    """
    shape = stored.shape
    base = list(stored.chunks) if stored.chunks else [1] * (len(shape) - 2) + list(shape[-2:]) if len(shape) >= 2 else list(shape)
    base = [min(b, n) if n else 1 for b, n in zip(base, shape)]
    itemsize = np.dtype(stored.dtype).itemsize
    sizes = list(base)
    for axis in reversed(range(len(shape))):
        others = int(np.prod([s for i, s in enumerate(sizes) if i != axis], dtype=np.int64)) * itemsize
        fit = max(1, target_bytes // max(1, others * base[axis]))
        sizes[axis] = min(shape[axis], base[axis] * fit) if shape[axis] else 1
        if sizes[axis] < shape[axis]:
            break  # this axis could not be filled: leading axes stay one HDF5 chunk deep
    return {d: s for d, s in zip(dims, sizes)}


def dataset_from_description(desc: FileDescription) -> xr.Dataset:
    data_vars = {}
    target = _config.get_bytes("chunk-size")
    for v in desc.variables:
        stored = v.stored
        reader = reader_for(stored)
        array = indexing.LazilyIndexedArray(NexusBackendArray(reader))
        encoding = {"dtype": np.dtype(stored.dtype), "preferred_chunks": dask_chunks(stored, v.dims, target)}
        if stored.chunks:
            encoding["chunksizes"] = stored.chunks
        attrs = {**v.attrs, _provenance.SOURCE: stored.file, _provenance.DATASET: stored.path}
        data_vars[v.name] = xr.Variable(v.dims, array, attrs, encoding)
    coords = {c.name: xr.Variable(c.dims, np.asarray(c.values), c.attrs) for c in desc.coords}
    attrs = {**desc.attrs, _provenance.SOURCE: desc.file, _provenance.GROUP: desc.group}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


class NexusBackendEntrypoint(BackendEntrypoint):
    """Open the NeXus default signal (or ``dataset=``) of an HDF5/NeXus file lazily."""

    description = "beamtime NeXus/HDF5 detector data: lazy, chunk-aligned, parallel decompression, link-safe"
    url = "https://github.com/beamside/beamside"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "signal", "dataset", "user", "catalog")

    def open_dataset(self, filename_or_obj, *, drop_variables=None, signal=None, dataset=None, user=None, catalog=None):
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            raise TypeError("the nexus engine opens files by path (beamtime data must be checked before reading)")
        ds = dataset_from_description(
            describe_file(filename_or_obj, signal=signal, dataset=dataset, user=user, catalog=catalog)
        )
        if drop_variables:
            ds = ds.drop_vars(drop_variables, errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        # Plain .h5 files are left to h5netcdf unless engine="nexus" is asked for.
        path = os.fspath(filename_or_obj)
        if os.path.splitext(path)[1].lower() not in (".nxs", ".nx5", ".nexus"):
            return False
        try:
            return has_hdf5_signature(path)  # a .nxs text file (or folder) is not ours to claim
        except OSError:
            return False

