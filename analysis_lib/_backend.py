"""The ``nexus`` xarray backend: ``xr.open_dataset(path, engine="nexus")``.

Three parts, as xarray's guide for new backends has them: a thread-safe
``BackendArray`` that reads one region, a store that pickles to Dask workers
as paths and byte offsets (the readers in :mod:`._chunks`), and the
``BackendEntrypoint`` that recognises NeXus/HDF5 files and sets
``preferred_chunks`` from the HDF5 chunking.
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
from ._probe import describe, tree
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


def dataset_from_description(desc: FileDescription) -> xr.Dataset:
    data_vars = {}
    for v in desc.variables:
        stored = v.stored
        reader = reader_for(stored)
        array = indexing.LazilyIndexedArray(NexusBackendArray(reader))
        encoding = {"dtype": np.dtype(stored.dtype), "beamside_reader": reader}
        if stored.chunks:
            encoding["preferred_chunks"] = dict(zip(v.dims, stored.chunks))
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
        return os.path.splitext(os.fspath(filename_or_obj))[1].lower() in (".nxs", ".nx5", ".nexus")
