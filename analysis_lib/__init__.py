"""analysis_lib: open beamtime HDF5/NeXus lazily and reduce it where it lives.

The public face is small and flat::

    import analysis_lib as al
    al.beamtimes()                      # what may I read?
    ds = al.open("bt-1001/raw/scan_0001.nxs")   # lazy xarray.Dataset, metadata only
    al.ops.mean_frame(ds["data"])       # lazy reduction, runs on Dask
    al.save(result, "~/results/mean.nxs")       # atomic NeXus with provenance
    client = al.cluster()               # dask-gateway when configured, else local
    al.view(ds)                         # frames rendered on-site, images to the browser

Everything else lives in private modules behind it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from ._errors import (
    AccessDenied,
    BeamsideError,
    CatalogError,
    CorruptChunkError,
    DataError,
    NexusStructureError,
    NoSpaceError,
    ClusterLost,
    NotHDF5Error,
    ProbeFailedError,
    TooLargeError,
    TruncatedFileError,
    UnknownFilterError,
)

# The rest loads on first use: the guarded probe process imports this package
# too and must start fast, without xarray, dask or pyFAI.
_LAZY = {
    "Policy": "._access",
    "beamtimes": "._access",
    "resolve": "._access",
    "cluster": "._cluster",
    "compute": "._cluster",
    "open": "._open",
    "save": "._save",
    "ops": ".ops",
    "view": "._view",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = module if name == "ops" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


try:
    __version__ = _version("beamside")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "AccessDenied",
    "BeamsideError",
    "CatalogError",
    "CorruptChunkError",
    "DataError",
    "NexusStructureError",
    "NoSpaceError",
    "ClusterLost",
    "Policy",
    "NotHDF5Error",
    "ProbeFailedError",
    "TooLargeError",
    "TruncatedFileError",
    "UnknownFilterError",
    "beamtimes",
    "cluster",
    "compute",
    "open",
    "ops",
    "resolve",
    "save",
    "view",
]
