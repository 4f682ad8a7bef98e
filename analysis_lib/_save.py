"""Saving results: one NeXus file per result, written atomically, with provenance.

A result is what a scientist takes home from a beamtime, so the file must be
trustworthy on its own: readable by any NeXus viewer (``/entry/result`` is an
NXdata with ``signal`` and ``axes``), saying where it came from
(``/entry/process``: program, user, date, parameters, the input files with
size and mtime), and never half-written. Results go to the user's own space;
beamtime data is read-only to analysis, and this module refuses to write
there even where the file system would allow it.

Layout::

    /                       NXroot   @default=entry @file_name @file_time @creator
    /entry                  NXentry  @default=result
    /entry/result           NXdata   @signal @axes @<dim>_indices
        <variable>, <coordinate> ...
    /entry/process          NXprocess
        program, version, date, user, steps
        parameters/         NXcollection  <name> ..., json
        inputs/             NXcollection  input_0/{path, size, mtime} ...
"""

from __future__ import annotations

import datetime as _dt
import errno
import io
import json
import os
import secrets
import time
from importlib.metadata import PackageNotFoundError, version as _version
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ._access import Policy
from . import _provenance
from ._errors import AccessDenied, NoSpaceError
from .catalog import CATALOG_ENV, Catalog, current_user

__all__ = ["save"]

# A temp file this old was left by a killed writer, not by one still running.
_STALE_SECONDS = 3600.0
# Below this, gzip costs more time than the space it saves.
_COMPRESS_ABOVE = 1 << 20


def save(
    obj: xr.DataArray | xr.Dataset | np.ndarray,
    path: str | os.PathLike,
    *,
    parameters: dict | None = None,
    inputs: list[str | os.PathLike] | None = None,
    program: str = "beamside",
    user: str | None = None,
    catalog: Catalog | str | os.PathLike | None = None,
) -> Path:
    """Write ``obj`` to ``path`` as NeXus, atomically, and return the final path.

    The file appears under its final name complete or not at all, even if the
    process is killed mid-write; an older file there stays intact until the
    new one replaces it. A full disk (or quota) is a :class:`NoSpaceError`
    naming the file, with nothing left behind. Saving the same result twice (Dask may run a task
    twice) just replaces the first copy. ``inputs`` are recorded along with
    the source files recorded on ``obj`` (:data:`._provenance.SOURCE`).
    """
    target = destination(path, catalog=catalog)
    ds = _as_dataset(obj).compute()  # before any file exists: a failing task leaves nothing
    # Built in memory, then written with one plain write: HDF5 meets a full disk while flushing its
    # caches, where it cannot raise (errors printed and ignored, and closing such a file has crashed
    # the process, kernel and all); a plain write says ENOSPC, and the temp file goes with it.
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        _write_root(f, target)
        entry = _group(f, "entry", "NXentry", default="result")
        _write_result(entry, ds)
        _write_process(
            entry,
            program=program,
            user=current_user(user),
            parameters=parameters or {},
            steps=_steps(ds),
            inputs=_unique([*_as_list(inputs), *_sources(ds)]),
        )
    try:
        _remove_stale_temps(target)
        tmp = _create_temp(target)
        try:
            with open(tmp, "wb") as out:
                out.write(image.getbuffer())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"cannot save {str(target)!r}: no space left in {str(target.parent)!r} (the disk is full or your "
                f"quota is used up; the result needs {_size(image.getbuffer().nbytes)}). Nothing was written"
                f"{' and the earlier result there is unchanged' if target.exists() else ''}: free some space or "
                "save elsewhere", str(target), exc.errno) from None
        raise
    return target


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


# -- where ----------------------------------------------------------------------
def destination(path: str | os.PathLike, *, catalog: Catalog | str | os.PathLike | None = None) -> Path:
    """The absolute path a result will be saved to, checked now (before any long computation)."""
    target = _target(path)
    _refuse_inside_data(target, catalog)
    return target


def _target(path: str | os.PathLike) -> Path:
    """The absolute final path; its folder must already exist (we never create folders)."""
    target = Path(os.path.abspath(Path(path).expanduser()))
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save to {str(target)!r}: folder {str(target.parent)!r} does not exist; create it first"
        )
    if target.is_dir():
        raise IsADirectoryError(f"cannot save to {str(target)!r}: it is a folder; give a file name such as result.nxs")
    return target


def _refuse_inside_data(target: Path, catalog: Catalog | str | os.PathLike | None) -> None:
    """Refuse beamtime data as a destination, judged by the catalog (when one is configured).

    The folder is checked by real path, so a symlink in the home directory
    that points into the data root is caught as well.
    """
    if catalog is None and not os.environ.get(CATALOG_ENV):
        return
    if not Policy(catalog).may_write(target.parent):
        raise AccessDenied(
            f"cannot save to {str(target)!r}: {os.path.realpath(target.parent)!r} is inside beamtime data, "
            f"which is read-only for analysis; save results in your own space, e.g. under {str(Path.home())!r}"
        )


# -- what -----------------------------------------------------------------------
def _as_dataset(obj: xr.DataArray | xr.Dataset | np.ndarray) -> xr.Dataset:
    """Everything becomes a Dataset so one writer serves all three kinds of result."""
    if isinstance(obj, np.ndarray):
        obj = xr.DataArray(obj)
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name="data" if obj.name is None else str(obj.name), promote_attrs=False)
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"save() takes an xarray.DataArray, xarray.Dataset or numpy array, not {type(obj).__name__}")
    if not obj.data_vars:
        raise ValueError("save(): the Dataset has no data variables, so there is no result to write")
    bad = [str(n) for n in obj.variables if "/" in str(n)]
    if bad:
        raise ValueError(f"save(): variable names must not contain '/' (HDF5 reads it as a group): {bad}")
    return obj


def _owners(ds: xr.Dataset) -> list[tuple[str, dict]]:
    """The Dataset and each of its variables, with their attrs: where provenance may sit."""
    return [(".", ds.attrs)] + [(str(name), var.attrs) for name, var in ds.variables.items()]


def _sources(ds: xr.Dataset) -> list[str]:
    found: list[str] = []
    for _, attrs in _owners(ds):
        found += _as_list(attrs.get(_provenance.SOURCE))
    return found


def _steps(ds: xr.Dataset) -> dict[str, str]:
    """The recorded steps (:data:`._provenance.STEPS`) by owner, each distinct value once.

    Normally one pipeline made the whole result and there is one value; a
    Dataset merged from several keeps every history rather than the first.
    """
    steps: dict[str, str] = {}
    for owner, attrs in _owners(ds):
        value = attrs.get(_provenance.STEPS)
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
        if text not in steps.values():
            steps[owner] = text
    return steps


# -- writing --------------------------------------------------------------------
def _write_root(f: h5py.File, target: Path) -> None:
    f.attrs.update(
        NX_class="NXroot",
        default="entry",
        file_name=str(target),
        file_time=_now(),
        creator=f"beamside {_beamside_version()}",
    )


def _write_result(entry: h5py.Group, ds: xr.Dataset) -> None:
    """The NXdata group: variables, coordinates, and the attrs that tie them together."""
    data = _group(entry, "result", "NXdata")
    _write_attrs(data, ds.attrs)
    signal = str(next(iter(ds.data_vars)))
    for name, var in ds.variables.items():
        _write_dataset(data, str(name), var.values, var.attrs)
    dims = [str(d) for d in ds[signal].dims]
    coord_names = {str(c) for c in ds.coords}
    data.attrs["NX_class"] = "NXdata"  # a Dataset attr called NX_class must not win
    data.attrs["signal"] = signal
    data.attrs["axes"] = _strings([d if d in coord_names else "." for d in dims])
    for name, coord in ds.coords.items():
        if coord.ndim and all(str(d) in dims for d in coord.dims):
            data.attrs[f"{name}_indices"] = np.array([dims.index(str(d)) for d in coord.dims], dtype=np.int64)


def _write_process(
    entry: h5py.Group,
    *,
    program: str,
    user: str,
    parameters: dict,
    steps: dict[str, str],
    inputs: list[str],
) -> None:
    process = _group(entry, "process", "NXprocess")
    process["program"] = program
    process["version"] = _beamside_version()
    process["date"] = _now()
    process["user"] = user
    for i, (owner, text) in enumerate(steps.items()):
        process["steps" if i == 0 else f"steps_{owner}"] = text
    params = _group(process, "parameters", "NXcollection")
    for key, value in parameters.items():
        name = str(key).replace("/", "_")
        if name != "json":  # the json dataset below holds every parameter anyway
            params[name] = _h5_value(value)
    params["json"] = json.dumps(parameters, default=_json_default)
    listing = _group(process, "inputs", "NXcollection")
    for i, source in enumerate(inputs):
        _write_input(_group(listing, f"input_{i}", "NXnote"), source)


def _write_input(group: h5py.Group, source: str) -> None:
    """One input file; size and mtime say which version of it was read."""
    group["path"] = source
    try:
        st = os.stat(source)
    except OSError:
        return  # gone or not visible from here: the path is all we can vouch for
    group["size"] = np.int64(st.st_size)
    group["mtime"] = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat()


def _write_dataset(group: h5py.Group, name: str, values: np.ndarray, attrs: dict) -> None:
    try:
        values = _h5_array(values)
    except TypeError as exc:
        raise TypeError(f"cannot save variable {name!r}: {exc}") from None
    big = values.nbytes > _COMPRESS_ABOVE and values.dtype.kind != "O"
    options = {"compression": "gzip", "compression_opts": 4, "chunks": True} if big else {}
    _write_attrs(group.create_dataset(name, data=values, **options), attrs)


def _write_attrs(obj: h5py.Group | h5py.Dataset, attrs: dict) -> None:
    for key, value in attrs.items():
        if key not in _provenance.NOT_SAVED:
            obj.attrs[str(key)] = _h5_value(value)


def _group(parent: h5py.Group, name: str, nx_class: str, **attrs: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs.update(NX_class=nx_class, **attrs)
    return group


# -- values HDF5 can hold -------------------------------------------------------
def _h5_array(values: np.ndarray) -> np.ndarray:
    """``values`` in a dtype h5py writes: text as UTF-8 strings, times as ISO 8601 at their own resolution."""
    if values.dtype.kind == "M":
        return _strings(np.datetime_as_string(values))
    if values.dtype.kind == "U" or (values.dtype.kind == "O" and all(isinstance(v, str) for v in values.flat)):
        return _strings(values)
    if values.dtype.kind in "Om":
        raise TypeError(f"dtype {values.dtype} has no HDF5 equivalent; convert it first, e.g. with .astype(float)")
    return values


def _h5_value(value: object) -> object:
    """An attribute or parameter as HDF5 can hold it; anything richer becomes JSON text."""
    if isinstance(value, (str, bytes, bool, int, float, complex, np.generic)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufcU":
        return _strings(value) if value.dtype.kind == "U" else value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return _strings(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float, np.number)) for v in value):
        return np.asarray(value)
    return json.dumps(value, default=_json_default)


def _strings(values: object) -> np.ndarray:
    return np.asarray(values, dtype=object).astype(h5py.string_dtype())


def _json_default(value: object) -> object:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


# -- atomic file handling -------------------------------------------------------
def _create_temp(target: Path) -> Path:
    """A fresh hidden file next to ``target``: same file system, so the final rename is atomic.

    Created with O_EXCL under the user's umask (not mkstemp's 0600), so the
    result gets the permissions any other file of the user would.
    """
    while True:
        tmp = target.with_name(_temp_prefix(target) + secrets.token_hex(6))
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _remove_stale_temps(target: Path) -> None:
    """Delete temp files of this name left by writers killed long ago."""
    cutoff = time.time() - _STALE_SECONDS
    prefix = _temp_prefix(target)  # compared literally: names may hold glob characters
    for stale in target.parent.iterdir():
        try:
            if stale.name.startswith(prefix) and stale.stat().st_mtime <= cutoff:
                stale.unlink()
        except FileNotFoundError:
            pass  # another writer cleaned it up first


def _fsync_path(path: Path) -> None:
    """Flush the file's bytes to disk: h5py's close writes them only to the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some network file systems refuse, and then it is up to them."""
    try:
        _fsync_path(folder)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


# -- small facts ----------------------------------------------------------------
def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def _unique(paths: list[str]) -> list[str]:
    """Absolute paths, each once, in order of first mention."""
    return list(dict.fromkeys(os.path.abspath(os.path.expanduser(p)) for p in paths))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _beamside_version() -> str:
    try:
        return _version("beamside")
    except PackageNotFoundError:
        return "unknown"
