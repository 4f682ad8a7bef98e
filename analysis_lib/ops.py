"""Reductions of frame stacks: lazy in, lazy out, on Dask, next to the data.

A *frame stack* is a DataArray whose last two dimensions are the detector
image (row, column); every dimension before them counts frames (a plain
``frame`` axis, or scan axes such as ``y``). Every function here returns a
lazy xarray object with named dimensions that equals, to float tolerance,
numpy applied to the loaded array — and never loads the stack whole.

Each result carries its provenance (:mod:`._provenance`: the bytes of frames
it reads on-site, the source file, the steps), and :func:`data_stayed_here`
turns that into the sentence a remote user wants. Which functions count as
reductions is listed once, in :mod:`._reductions`.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import xarray as xr

from ._integrator import integrate1d  # one pyFAI integrator per process, shared with the viewer

from ._provenance import SOURCE, data_stayed_here, record_step as _finish
from ._reduce import Kernel, reduce_frames
from ._reductions import REDUCTIONS

__all__ = [
    "bin",
    "correct",
    "data_stayed_here",
    "frame_stats",
    "max_frame",
    "mean_frame",
    "radial_profile",
    "roi_sums",
]

__all__ = sorted([*REDUCTIONS, "data_stayed_here"])


# ---------------------------------------------------------------------------
# shared plumbing
# ---------------------------------------------------------------------------
def _frames(obj) -> xr.DataArray:
    """The frame stack in ``obj``: a DataArray, or a Dataset's NeXus signal (its first variable)."""
    if isinstance(obj, xr.Dataset):
        if not obj.data_vars:
            raise ValueError("this Dataset has no data variable to reduce")
        name = next(iter(obj.data_vars))
        source = obj.attrs.get(SOURCE)
        obj = obj[name]
        if source:
            obj.attrs.setdefault(SOURCE, source)
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"expected an xarray DataArray or Dataset of frames, got {type(obj).__name__}")
    if obj.ndim < 2:
        raise ValueError(f"expected frames with at least two (image) dimensions, got dims {obj.dims}")
    return obj


def _split(arr: xr.DataArray) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return arr.dims[:-2], arr.dims[-2:]


def _accumulator(dtype) -> np.dtype:
    """Exact integer sums for counts, float64 for everything else."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return np.dtype(np.uint64)
    if dtype.kind in "ib":
        return np.dtype(np.int64)
    return np.dtype(np.float64)


def _dask(arr: xr.DataArray) -> da.Array:
    """The Dask array behind ``arr`` (numpy-backed frames become one)."""
    return arr.data if isinstance(arr.data, da.Array) else da.from_array(np.asarray(arr.data), chunks="auto")


# ---------------------------------------------------------------------------
# per-frame statistics and whole-stack images
# ---------------------------------------------------------------------------
def _stats_block(block: np.ndarray, acc) -> np.ndarray:
    flat = block.reshape(block.shape[:-2] + (-1,))
    out = np.empty(block.shape[:-2] + (3,), dtype=np.float64)
    out[..., 0] = flat.sum(axis=-1, dtype=acc)
    out[..., 1] = flat.min(axis=-1)
    out[..., 2] = flat.max(axis=-1)
    return out


def _stats_frame(frame: np.ndarray, acc) -> tuple:
    return frame.sum(dtype=acc), frame.min(), frame.max()


def frame_stats(frames) -> xr.Dataset:
    """Sum, mean, min and max of every frame, in one pass over the data."""
    frames = _frames(frames)
    lead, image = _split(frames)
    acc = _accumulator(frames.dtype)
    kernel = Kernel(np.dtype(np.float64), block=_stats_block, frame=_stats_frame, tail=(3,), args=(acc,))
    stats = reduce_frames(_dask(frames), kernel)
    npix = frames.shape[-1] * frames.shape[-2]
    coords = {k: v for k, v in frames.coords.items() if set(v.dims) <= set(lead)}
    total = stats[..., 0].astype(acc) if acc.kind != "f" else stats[..., 0]
    out = xr.Dataset(
        {
            "sum": (lead, total, {"long_name": "sum of the frame", "units": frames.attrs.get("units", "")}),
            "mean": (lead, stats[..., 0] / npix, {"long_name": "mean of the frame"}),
            "min": (lead, stats[..., 1].astype(frames.dtype), {"long_name": "minimum of the frame"}),
            "max": (lead, stats[..., 2].astype(frames.dtype), {"long_name": "maximum of the frame"}),
        },
        coords=coords,
    )
    return _finish(out, frames, "frame_stats", {})


def mean_frame(frames) -> xr.DataArray:
    """The average frame (float64) over every frame of the stack."""
    frames = _frames(frames)
    lead, image = _split(frames)
    n = int(np.prod([frames.sizes[d] for d in lead], dtype=np.int64)) or 1
    total = reduce_frames(_dask(frames), Kernel(_accumulator(frames.dtype), merge=np.add))
    out = xr.DataArray(total.astype(np.float64) / n, dims=image, coords=_image_coords(frames), name="mean_frame")
    out.attrs.update({"long_name": "mean frame", "units": frames.attrs.get("units", ""), "frames": n})
    return _finish(out, frames, "mean_frame", {})


def max_frame(frames) -> xr.DataArray:
    """The pixel-wise maximum over every frame of the stack."""
    frames = _frames(frames)
    image = frames.dims[-2:]
    peak = reduce_frames(_dask(frames), Kernel(frames.dtype, merge=np.maximum))
    out = xr.DataArray(peak, dims=image, coords=_image_coords(frames), name="max_frame")
    out.attrs.update({"long_name": "maximum frame", "units": frames.attrs.get("units", "")})
    return _finish(out, frames, "max_frame", {})


def _image_coords(frames: xr.DataArray) -> dict:
    image = set(frames.dims[-2:])
    return {k: v for k, v in frames.coords.items() if set(v.dims) <= image}


# ---------------------------------------------------------------------------
# regions of interest
# ---------------------------------------------------------------------------
def _roi_masks(rois, shape) -> tuple[list[str], list]:
    """Normalise ROIs to (name, selector): rectangles stay slices, masks become flat indices."""
    if not isinstance(rois, dict):
        rois = {f"roi_{i}": r for i, r in enumerate(rois)}
    names, selectors = [], []
    for name, roi in rois.items():
        arr = np.asarray(roi)
        if arr.dtype == bool:
            if arr.shape != tuple(shape):
                raise ValueError(f"ROI {name!r}: mask shape {arr.shape} does not match the frame shape {tuple(shape)}")
            selectors.append(np.flatnonzero(arr))
        elif arr.shape == (4,) and arr.dtype.kind in "iu":
            r0, r1, c0, c1 = (int(v) for v in arr)
            if not (0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]):
                raise ValueError(f"ROI {name!r}: rectangle {(r0, r1, c0, c1)} is empty or outside the frame {tuple(shape)}")
            selectors.append((slice(r0, r1), slice(c0, c1)))
        else:
            raise ValueError(
                f"ROI {name!r}: give a rectangle (row_start, row_stop, col_start, col_stop) or a boolean mask of the frame shape"
            )
        names.append(str(name))
    if not names:
        raise ValueError("no ROI given")
    return names, selectors


def _roi_block(block: np.ndarray, selectors, acc) -> np.ndarray:
    out = np.empty(block.shape[:-2] + (len(selectors),), dtype=acc)
    flat = None
    for i, sel in enumerate(selectors):
        if isinstance(sel, tuple):
            out[..., i] = block[(..., *sel)].sum(axis=(-2, -1), dtype=acc)
        else:
            if flat is None:
                flat = block.reshape(block.shape[:-2] + (-1,))
            out[..., i] = flat[..., sel].sum(axis=-1, dtype=acc)
    return out


def roi_sums(frames, rois) -> xr.DataArray:
    """Sums of many regions of every frame at once (one pass over the data).

    ``rois`` maps names to rectangles ``(row_start, row_stop, col_start,
    col_stop)`` or boolean masks of the frame shape (a list gets names
    ``roi_0``, ``roi_1`` …). Result dims: the frame dims, then ``roi``.
    """
    frames = _frames(frames)
    lead, image = _split(frames)
    names, selectors = _roi_masks(rois, frames.shape[-2:])
    acc = _accumulator(frames.dtype)
    sums = reduce_frames(_dask(frames), Kernel(acc, block=_roi_block, tail=(len(names),), args=(selectors, acc)))
    coords = {k: v for k, v in frames.coords.items() if set(v.dims) <= set(lead)}
    coords["roi"] = names
    out = xr.DataArray(sums, dims=lead + ("roi",), coords=coords, name="roi_sums")
    out.attrs.update({"long_name": "ROI sum", "units": frames.attrs.get("units", "")})
    described = {n: (s if not isinstance(s, tuple) else [s[0].start, s[0].stop, s[1].start, s[1].stop]) for n, s in zip(names, selectors)}
    return _finish(out, frames, "roi_sums", {n: (v if isinstance(v, list) else f"mask of {len(v)} pixels") for n, v in described.items()})


# ---------------------------------------------------------------------------
# corrections and binning
# ---------------------------------------------------------------------------
def _image(value, frames: xr.DataArray, what: str) -> xr.DataArray | None:
    """A dark/flat/mask given as an array, a frame stack (averaged) or a DataArray, on the image dims."""
    if value is None:
        return None
    if isinstance(value, xr.Dataset):
        value = _frames(value)
    if isinstance(value, xr.DataArray):
        if value.ndim > 2:
            value = mean_frame(value)
        arr = value.data
    else:
        arr = np.asarray(value)
        if arr.ndim > 2:
            arr = arr.reshape((-1,) + arr.shape[-2:]).mean(axis=0)
    if tuple(arr.shape) != tuple(frames.shape[-2:]):
        raise ValueError(f"{what} has shape {tuple(arr.shape)}, the frames {tuple(frames.shape[-2:])}")
    return xr.DataArray(arr, dims=frames.dims[-2:])


def correct(frames, dark=None, flat=None, mask=None) -> xr.DataArray:
    """Dark-subtracted, flat-field-corrected frames (float32), masked pixels NaN.

    ``corrected = (frames - dark) / (flat / mean(flat))`` — the flat is
    normalised to mean 1 over good pixels so counts keep their scale. ``mask``
    is true (non-zero) for bad pixels, as NeXus ``pixel_mask`` is.
    """
    frames = _frames(frames)
    out = frames.astype(np.float32)
    d = _image(dark, frames, "the dark")
    if d is not None:
        out = out - d.astype(np.float32)
    bad = _image(mask, frames, "the mask")
    bad = (bad != 0) if bad is not None else None
    f = _image(flat, frames, "the flat")
    if f is not None:
        f = f.astype(np.float64)
        good = f.where(f > 0) if bad is None else f.where((f > 0) & ~bad)
        norm = (f / good.mean()).astype(np.float32)
        out = out / norm.where(norm > 0)
    if bad is not None:
        out = out.where(~bad)
    out = out.astype(np.float32)
    out.name = frames.name
    out.attrs = {k: v for k, v in frames.attrs.items()}
    out.attrs["long_name"] = f"corrected {frames.attrs.get('long_name', 'frames')}"
    return _finish(out, frames, "correct", {"dark": d is not None, "flat": f is not None, "mask": bad is not None})


def bin(frames, factor: int = 2, *, frame_factor: int = 1) -> xr.DataArray:
    """Downsample: sum ``factor``×``factor`` pixel blocks and ``frame_factor`` consecutive frames.

    Edges that do not fill a whole block are dropped (as ``coarsen(boundary="trim")``).
    """
    frames = _frames(frames)
    if int(factor) < 1 or int(frame_factor) < 1:
        raise ValueError("binning factors must be whole numbers ≥ 1")
    lead, (row, col) = _split(frames)
    windows = {row: int(factor), col: int(factor)}
    if frame_factor > 1:
        if len(lead) != 1:
            raise ValueError("frame_factor needs a single frame dimension")
        windows[lead[0]] = int(frame_factor)
    too_big = [d for d, w in windows.items() if w > frames.sizes[d]]
    if too_big:
        raise ValueError(f"binning window larger than the data along {too_big}: sizes {dict(frames.sizes)}")
    acc = _accumulator(frames.dtype)
    out = frames.astype(acc).coarsen(windows, boundary="trim", coord_func="mean").sum()
    out.attrs = dict(frames.attrs)
    return _finish(out, frames, "bin", {"factor": int(factor), "frame_factor": int(frame_factor)})


# ---------------------------------------------------------------------------
# azimuthal integration with pyFAI
# ---------------------------------------------------------------------------
def _radial_block(block: np.ndarray, poni, npt, unit, mask, kwargs) -> np.ndarray:
    images = block.reshape((-1,) + block.shape[-2:])
    out = np.empty((images.shape[0], npt), dtype=np.float64)
    for i, image in enumerate(images):
        out[i] = integrate1d(poni, image, npt, unit, mask, **kwargs).intensity
    return out.reshape(block.shape[:-2] + (npt,))


def radial_profile(frames, poni, npt: int = 1000, unit: str = "q_nm^-1", mask=None, **integrate1d_kwargs) -> xr.DataArray:
    """Azimuthally integrated profile of every frame, with pyFAI.

    ``poni`` is a PONI file path or a pyFAI geometry dict. pyFAI's defaults
    apply unless overridden, so each profile equals
    ``pyFAI.load(poni).integrate1d(frame, npt, unit=unit, mask=mask, **kwargs).intensity``.
    Result dims: the frame dims, then ``unit``'s radial name (e.g. ``q``).
    """
    frames = _frames(frames)
    lead, image = _split(frames)
    mask_arr = None if mask is None else np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask)
    if mask_arr is not None and mask_arr.shape != tuple(frames.shape[-2:]):
        raise ValueError(f"mask has shape {mask_arr.shape}, the frames {tuple(frames.shape[-2:])}")
    npt = int(npt)
    # One integration of an empty frame here gives the radial axis and checks the parameters early.
    probe = integrate1d(poni, np.zeros(frames.shape[-2:], dtype=np.float32), npt, unit, mask_arr, **integrate1d_kwargs)
    radial_unit = probe.unit
    dim = str(getattr(radial_unit, "name", unit)).split("_")[0]
    kernel = Kernel(np.dtype(np.float64), block=_radial_block, tail=(npt,), args=(poni, npt, unit, mask_arr, integrate1d_kwargs))
    profiles = reduce_frames(_dask(frames), kernel)
    coords = {k: v for k, v in frames.coords.items() if set(v.dims) <= set(lead)}
    units = str(getattr(radial_unit, "unit_symbol", "") or unit)
    coords[dim] = xr.Variable(dim, probe.radial, {"units": units.strip("$"), "long_name": str(radial_unit)})
    out = xr.DataArray(profiles, dims=lead + (dim,), coords=coords, name="radial_profile")
    out.attrs.update({"long_name": "azimuthally integrated intensity", "units": frames.attrs.get("units", "")})
    params = {"poni": poni if isinstance(poni, dict) else os.fspath(poni), "npt": npt, "unit": unit,
              "mask": mask_arr is not None, **{k: repr(v) for k, v in integrate1d_kwargs.items()}}
    return _finish(out, frames, "radial_profile", params)
