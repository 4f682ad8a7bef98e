"""``al.open``: a beamtime file as a lazy, chunk-aligned xarray.Dataset."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from . import _config
from ._backend import dataset_from_description, describe_file

_builtin_open = open


def open(
    ref: str | os.PathLike,
    *,
    signal: str | None = None,
    dataset: str | None = None,
    chunks: str | dict | None = "auto",
    user: str | None = None,
    catalog=None,
) -> xr.Dataset:
    """Open a beamtime file lazily: metadata only, every variable a Dask array.

    ``ref`` is ``"bt-1001/raw/scan_0001.nxs"`` (beamtime id, then the path in
    it) or an absolute path. NeXus files open at their ``@default`` signal,
    with ``@axes`` as coordinates; ``signal=`` picks another dataset of the
    NXdata group, ``dataset="/entry/instrument/detector/data"`` any dataset of
    a plain HDF5 file.

    ``chunks="auto"`` makes Dask chunks of whole HDF5 chunks, frame axis first,
    about ``beamside.chunk-size`` bytes each (128 MiB); a dict is passed to
    xarray as is; ``None`` gives numpy-backed lazy arrays (no Dask).

    Raises :class:`AccessDenied` for data the user may not read (including
    through HDF5 external links or virtual datasets) and a :class:`DataError`
    subclass naming file, dataset and reason for bad files.
    """
    desc = describe_file(ref, signal=signal, dataset=dataset, user=user, catalog=catalog)
    ds = dataset_from_description(desc)
    if chunks is None:
        return ds
    if chunks == "auto":
        chunks = {}
        for v in desc.variables:
            chunks.update(dask_chunks(v.stored, v.dims, _config.get_bytes("chunk-size")))
    token = f"{desc.file}-{os.stat(desc.file).st_mtime_ns}-{desc.group}-{signal}-{dataset}"
    ds = ds.chunk(chunks, name_prefix="beamside-", token=token)
    for v in desc.variables:
        # Lets al.ops reduce these frames straight from the file with the backend's reader
        # (see ops._fused); valid only while the array is untouched, which the Dask name proves.
        ds[v.name].encoding["beamside_dask_name"] = ds[v.name].data.name
    return ds


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
