"""``al.open``: a beamtime file as a lazy, chunk-aligned xarray.Dataset."""

from __future__ import annotations

import os
import warnings

import xarray as xr

from ._backend import access_policy

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
    about ``beamside.chunk-size`` bytes each (128 MiB) — the backend's
    ``preferred_chunks``, so this is ``xr.open_dataset(path, engine="nexus",
    chunks={})``; a dict is passed to ``xr.open_dataset`` as is; ``None``
    gives numpy-backed lazy arrays (no Dask).

    Raises :class:`AccessDenied` for data the user may not read (including
    through HDF5 external links or virtual datasets) and a :class:`DataError`
    subclass naming file, dataset and reason for bad files.
    """
    # The real path, so that xarray's Dask names carry the file and its mtime (its token:
    # deterministic, new when the file changes) whatever form ``ref`` had; the backend
    # checks it against the policy again.
    real, _ = access_policy(ref, user=user, catalog=catalog)
    with warnings.catch_warnings():
        # Our preferred chunks are ~128 MiB blocks, not the stored chunks xarray's warning means.
        warnings.filterwarnings("ignore", "The specified chunks separate the stored chunks", UserWarning)
        return xr.open_dataset(
            real,
            engine="nexus",
            chunks={} if chunks == "auto" else chunks,
            cache=False,  # chunks=None: lazy numpy-backed arrays, never a copy kept in memory
            signal=signal,
            dataset=dataset,
            user=user,
            catalog=catalog,
        )
