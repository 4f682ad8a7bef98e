"""Tests of ``al.ops``: every reduction equals numpy applied to the loaded array.

Property tests write real HDF5 files with h5py — random shapes (3-D frame
stacks and 4-D scans), chunkings, dtypes and filters (none, gzip+shuffle,
bitshuffle/LZ4, LZ4, Zstd, and Blosc, which beamside reads through h5py) — open
them with ``al.open`` under random Dask chunkings, and compare each lazy result
with numpy. The schedulers are the real ones: threads, and a two-process
``distributed.LocalCluster``, which only works if the graph pickles (readers
carry paths and byte offsets, never open h5py handles). ``radial_profile`` is
checked against pyFAI itself on synthetic rings of a known ``q``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
import re

import dask
import dask.array as da
import h5py
import hdf5plugin
import numpy as np
import pyFAI
import pyFAI.detectors
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

import analysis_lib as al
from analysis_lib._reduce import streaming_reader
from analysis_lib.catalog import CATALOG_ENV

ops = al.ops

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    database=None,  # no .hypothesis/ folder left in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

DTYPES = ("uint16", "uint32", "int32", "float32")
COMPRESSIONS = {
    "none": dict,
    "gzip+shuffle": lambda: {"compression": "gzip", "compression_opts": 4, "shuffle": True},
    "bitshuffle/lz4": lambda: dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "lz4": lambda: dict(hdf5plugin.LZ4()),
    "zstd": lambda: dict(hdf5plugin.Zstd()),
    "blosc": lambda: dict(hdf5plugin.Blosc()),  # no decoder in beamside: read through h5py
}
IMAGE_DIMS = ("row", "column")


@pytest.fixture(scope="module", autouse=True)
def no_catalog():
    """Tests start without a catalog, whatever the environment running them has."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(CATALOG_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory):
    """One folder for the files of every hypothesis example (each example writes a new file)."""
    return tmp_path_factory.mktemp("stacks")


# ---------------------------------------------------------------------------
# random frame stacks, written with h5py and opened with al.open
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StackSpec:
    shape: tuple[int, ...]
    dtype: str
    values: str  # "full"/"counts" for integers, "normal"/"dyadic" for floats
    scale_exponent: int
    seed: int
    compression: str
    hdf5_chunks: tuple[int, ...] | None  # None: contiguous
    dask_chunks: str | dict

    @property
    def dims(self) -> tuple[str, ...]:
        lead = ("frame",) if len(self.shape) == 3 else ("scan_0", "scan_1")
        return lead + IMAGE_DIMS


@st.composite
def stack_specs(draw, exact_float_sums: bool = False):
    """A frame stack to write: shape, dtype, values, HDF5 layout and Dask chunks.

    With ``exact_float_sums`` float values are multiples of 1/8 below 512 in
    magnitude, so any sum of a few hundred of them is exact even in float32.
    """
    if draw(st.booleans()):
        lead = (draw(st.integers(1, 12)),)
    else:
        lead = (draw(st.integers(1, 4)), draw(st.integers(1, 3)))
    shape = lead + (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    dtype = draw(st.sampled_from(DTYPES))
    if dtype == "float32":
        values = "dyadic" if exact_float_sums else draw(st.sampled_from(["normal", "dyadic"]))
    else:
        values = draw(st.sampled_from(["full", "counts"]))
    compression = draw(st.sampled_from(sorted(COMPRESSIONS)))
    contiguous = compression == "none" and draw(st.booleans())
    hdf5_chunks = None if contiguous else tuple(draw(st.integers(1, n)) for n in shape)
    dims = (("frame",) if len(lead) == 1 else ("scan_0", "scan_1")) + IMAGE_DIMS
    if draw(st.booleans()):
        dask_chunks: str | dict = "auto"
    else:
        dask_chunks = {}
        for dim, n in zip(dims, shape):
            if draw(st.booleans()):
                # At most 2 blocks per image axis keeps the graphs (and the run) small.
                low = -(-n // 2) if dim in IMAGE_DIMS else 1
                dask_chunks[dim] = draw(st.integers(low, n))
    return StackSpec(
        shape=shape,
        dtype=dtype,
        values=values,
        scale_exponent=draw(st.integers(-3, 6)),
        seed=draw(st.integers(0, 2**32 - 1)),
        compression=compression,
        hdf5_chunks=hdf5_chunks,
        dask_chunks=dask_chunks,
    )


def _values(spec: StackSpec, shape=None, seed_offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(spec.seed + seed_offset)
    shape = spec.shape if shape is None else shape
    dtype = np.dtype(spec.dtype)
    if spec.values == "normal":
        return (rng.standard_normal(shape) * 10.0**spec.scale_exponent).astype(dtype)
    if spec.values == "dyadic":
        return (rng.integers(-4096, 4096, size=shape) / 8).astype(dtype)
    info = np.iinfo(dtype)
    if spec.values == "full":
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return rng.poisson(20.0, size=shape).astype(dtype)  # detector-like counts


_file_numbers = itertools.count()


def _write(folder, arr: np.ndarray, *, chunks=None, compression: str = "none", nexus: bool = False) -> str:
    """A new HDF5 file holding ``arr`` as ``/data`` (or as a NeXus default signal)."""
    path = folder / f"stack_{next(_file_numbers):05d}.{'nxs' if nexus else 'h5'}"
    with h5py.File(path, "w") as f:
        if nexus:
            f.attrs["default"] = "entry"
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            group = entry.create_group("data")
            group.attrs["NX_class"] = "NXdata"
            group.attrs["signal"] = "data"
        else:
            group = f
        group.create_dataset("data", data=arr, chunks=chunks, **COMPRESSIONS[compression]())
    return str(path)


def _open_spec(folder, spec: StackSpec) -> tuple[np.ndarray, xr.DataArray]:
    arr = _values(spec)
    path = _write(folder, arr, chunks=spec.hdf5_chunks, compression=spec.compression)
    frames = al.open(path, dataset="/data", chunks=spec.dask_chunks)["data"]
    assert frames.dims == spec.dims
    assert isinstance(frames.data, da.Array)
    return arr, frames


def _accumulator(dtype) -> np.dtype:
    kind = np.dtype(dtype).kind
    return np.dtype({"u": np.uint64, "i": np.int64}.get(kind, np.float64))


def _assert_lazy(result) -> None:
    variables = result.data_vars.values() if isinstance(result, xr.Dataset) else [result]
    for v in variables:
        assert isinstance(v.data, da.Array), f"{v.name} is not dask-backed before compute()"


def _assert_matches(actual, expected: np.ndarray, arr: np.ndarray) -> None:
    """Exact for integers; float tolerance (rtol 1e-6, atol at float64 rounding of the data) otherwise."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(actual, expected)
    else:
        atol = 1e-9 * float(np.abs(arr).max(initial=0.0))
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=atol)


# ---------------------------------------------------------------------------
# 1. properties: every op equals numpy
# ---------------------------------------------------------------------------
@st.composite
def rois_for(draw, frame_shape):
    """Named rectangles (tuples or numpy ints) and boolean masks (empty and full included)."""
    rows, cols = frame_shape
    rois = {}
    for i in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            r0 = draw(st.integers(0, rows - 1))
            r1 = draw(st.integers(r0 + 1, rows))
            c0 = draw(st.integers(0, cols - 1))
            c1 = draw(st.integers(c0 + 1, cols))
            rois[f"rect_{i}"] = np.array([r0, r1, c0, c1]) if draw(st.booleans()) else (r0, r1, c0, c1)
        else:
            density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            rois[f"mask_{i}"] = rng.random(frame_shape) < density
    return rois


def _roi_reference(arr: np.ndarray, roi, acc) -> np.ndarray:
    roi = np.asarray(roi)
    if roi.dtype == bool:
        return arr[..., roi].sum(axis=-1, dtype=acc)
    r0, r1, c0, c1 = (int(v) for v in roi)
    return arr[..., r0:r1, c0:c1].sum(axis=(-2, -1), dtype=acc)


@PROPERTY
@given(spec=stack_specs(), data=st.data())
def test_reductions_equal_numpy(stack_dir, spec, data):
    arr, frames = _open_spec(stack_dir, spec)
    lead = frames.dims[:-2]
    acc = _accumulator(arr.dtype)
    rois = data.draw(rois_for(arr.shape[-2:]), label="rois")

    stats = ops.frame_stats(frames)
    mean = ops.mean_frame(frames)
    peak = ops.max_frame(frames)
    sums = ops.roi_sums(frames, rois)
    for result in (stats, mean, peak, sums):
        _assert_lazy(result)

    np.testing.assert_array_equal(frames.values, arr)  # the reader gives back what h5py wrote

    per_frame = arr.reshape(arr.shape[:-2] + (-1,))
    assert {n: stats[n].dims for n in stats.data_vars} == {n: lead for n in ("sum", "mean", "min", "max")}
    assert (stats["sum"].dtype, stats["mean"].dtype) == (acc, np.float64)
    assert stats["min"].dtype == stats["max"].dtype == arr.dtype
    stats = stats.compute()
    _assert_matches(stats["sum"], per_frame.sum(axis=-1, dtype=acc), arr)
    _assert_matches(stats["mean"], per_frame.mean(axis=-1, dtype=np.float64), arr)
    np.testing.assert_array_equal(stats["min"], per_frame.min(axis=-1))
    np.testing.assert_array_equal(stats["max"], per_frame.max(axis=-1))

    leading_axes = tuple(range(len(lead)))
    assert mean.dims == peak.dims == IMAGE_DIMS
    assert (mean.dtype, peak.dtype) == (np.float64, arr.dtype)
    _assert_matches(mean.values, arr.mean(axis=leading_axes, dtype=np.float64), arr)
    np.testing.assert_array_equal(peak.values, arr.max(axis=leading_axes))

    assert sums.dims == lead + ("roi",)
    assert list(sums["roi"].values) == list(rois)
    assert sums.dtype == acc
    expected = np.stack([_roi_reference(arr, roi, acc) for roi in rois.values()], axis=-1)
    _assert_matches(sums.values, expected, arr)


def _bin_reference(arr: np.ndarray, factor: int, frame_factor: int) -> np.ndarray:
    acc = _accumulator(arr.dtype)
    rows, cols = arr.shape[-2] // factor, arr.shape[-1] // factor
    out = arr[..., : rows * factor, : cols * factor]
    out = out.reshape(out.shape[:-2] + (rows, factor, cols, factor)).sum(axis=(-3, -1), dtype=acc)
    if frame_factor > 1:
        n = out.shape[0] // frame_factor
        out = out[: n * frame_factor].reshape((n, frame_factor) + out.shape[1:]).sum(axis=1, dtype=acc)
    return out


@PROPERTY
@given(spec=stack_specs(exact_float_sums=True), data=st.data())
def test_bin_equals_numpy_reshape_sum(stack_dir, spec, data):
    arr, frames = _open_spec(stack_dir, spec)
    # Windows fit the stack: larger ones are test_bin_window_larger_than_the_stack's.
    factor = data.draw(st.integers(1, min(6, *arr.shape[-2:])), label="factor")
    # Several scan axes: only the image is binned (see test_bad_parameters).
    frame_factor = data.draw(st.integers(1, min(3, arr.shape[0])) if arr.ndim == 3 else st.just(1), label="frame_factor")
    binned = ops.bin(frames, factor, frame_factor=frame_factor)
    _assert_lazy(binned)
    expected = _bin_reference(arr, factor, frame_factor)
    assert binned.dims == frames.dims
    assert binned.dtype == _accumulator(arr.dtype)
    # Integer sums are exact; float data is dyadic here, so its sums are exact too.
    np.testing.assert_array_equal(binned.values, expected)


@st.composite
def corrections(draw, spec: StackSpec):
    """dark (None, an image, a stack to average, a lazy DataArray stack), flat (maybe with dead
    pixels at 0) and mask (bool or integer, non-zero = bad), all from one seed."""
    image = spec.shape[-2:]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dark_kind = draw(st.sampled_from([None, "image", "stack", "dataarray"]))
    flat_kind = draw(st.sampled_from([None, "flat", "dead pixels"]))
    mask_kind = draw(st.sampled_from([None, "bool", "int"]))
    n_dark = 1 if dark_kind == "image" else 1 + int(rng.integers(3))
    dark = None if dark_kind is None else _values(spec, (n_dark,) + image, seed_offset=1)
    flat = None if flat_kind is None else rng.uniform(0.5, 1.5, size=image)
    if flat_kind == "dead pixels":
        flat[rng.random(image) < 0.1] = 0.0
    bad = rng.random(image) < draw(st.sampled_from([0.0, 0.05, 0.5]))
    if flat is not None and not ((flat > 0) & ~bad).any():
        flat[0, 0], bad[0, 0] = 1.0, False  # one good pixel, so the flat has a mean
    mask = None if mask_kind is None else (bad if mask_kind == "bool" else bad.astype(np.uint8) * 3)
    return dark_kind, dark, flat, mask


def _correct_reference(arr, dark, flat, mask) -> np.ndarray:
    """The formula of correct()'s docstring, in numpy."""
    out = arr.astype(np.float32)
    if dark is not None:
        out = out - dark.reshape((-1,) + dark.shape[-2:]).mean(axis=0, dtype=np.float64).astype(np.float32)
    bad = np.zeros(arr.shape[-2:], bool) if mask is None else np.asarray(mask) != 0
    if flat is not None:
        f = flat.astype(np.float64)
        norm = (f / f[(f > 0) & ~bad].mean()).astype(np.float32)
        out = out / np.where(norm > 0, norm, np.float32(np.nan))
    return np.where(bad, np.float32(np.nan), out).astype(np.float32)


@PROPERTY
@given(spec=stack_specs(), data=st.data())
def test_correct_equals_numpy_formula(stack_dir, spec, data):
    arr, frames = _open_spec(stack_dir, spec)
    dark_kind, dark, flat, mask = data.draw(corrections(spec), label="corrections")
    if dark_kind == "image":
        dark_arg = dark[0]
    elif dark_kind == "dataarray":
        dark_arg = xr.DataArray(da.from_array(dark, chunks=1), dims=("frame",) + IMAGE_DIMS)
    else:
        dark_arg = dark
    corrected = ops.correct(frames, dark=dark_arg, flat=flat, mask=mask)
    _assert_lazy(corrected)
    assert corrected.dims == frames.dims
    assert corrected.dtype == np.float32
    expected = _correct_reference(arr, dark, flat, mask)
    # float32 arithmetic on both sides; atol covers dark subtraction cancelling to ~0.
    norm_min = 1.0 if flat is None else float(flat[flat > 0].min() / flat[flat > 0].mean())
    scale = float(np.abs(arr).max()) + (0.0 if dark is None else float(np.abs(dark).max()))
    actual = corrected.values
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * scale / norm_min)


# ---------------------------------------------------------------------------
# 2. schedulers: threads, and worker processes (the graph must pickle)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector_stack(tmp_path_factory):
    """12 frames of 40×40 uint32 counts with bitshuffle/LZ4 — decoded by beamside's own reader."""
    arr = np.random.default_rng(1234).poisson(50.0, size=(12, 40, 40)).astype(np.uint32)
    arr[3, 5, 7] = 2**32 - 1  # a hot pixel: integer sums must stay exact
    path = _write(tmp_path_factory.mktemp("detector"), arr, chunks=(1, 40, 40), compression="bitshuffle/lz4")
    return path, arr


def _open_detector(detector_stack, frames_per_block: int = 3) -> tuple[str, np.ndarray, xr.DataArray]:
    path, arr = detector_stack
    return path, arr, al.open(path, dataset="/data", chunks={"frame": frames_per_block})["data"]


def _check_mean_and_stats(mean, stats, arr) -> None:
    np.testing.assert_allclose(mean.values, arr.mean(axis=0, dtype=np.float64), rtol=1e-12)
    per_frame = arr.reshape(arr.shape[0], -1)
    np.testing.assert_array_equal(stats["sum"].values, per_frame.sum(axis=-1, dtype=np.uint64))
    np.testing.assert_allclose(stats["mean"].values, per_frame.mean(axis=-1, dtype=np.float64), rtol=1e-12)
    np.testing.assert_array_equal(stats["min"].values, per_frame.min(axis=-1))
    np.testing.assert_array_equal(stats["max"].values, per_frame.max(axis=-1))


def test_threaded_scheduler(detector_stack):
    _, arr, frames = _open_detector(detector_stack, frames_per_block=1)
    with dask.config.set(scheduler="threads", num_workers=4):
        mean, stats = al.compute(ops.mean_frame(frames), ops.frame_stats(frames), progress=False)
    assert isinstance(mean, xr.DataArray) and isinstance(stats, xr.Dataset)
    _check_mean_and_stats(mean, stats, arr)


@pytest.mark.slow
def test_distributed_worker_processes(detector_stack):
    path, arr, frames = _open_detector(detector_stack)
    mean, stats = ops.mean_frame(frames), ops.frame_stats(frames)
    pickle.loads(pickle.dumps(mean.data))  # plain pickle, no cloudpickle tricks: no open handles inside

    def opened_files():
        from analysis_lib import _chunks

        return sorted({p for (_pid, p) in _chunks._fds})

    def arrived_ready():
        import os
        import sys

        return "analysis_lib.ops" in sys.modules, os.environ.get("MALLOC_TRIM_THRESHOLD_")

    client = None
    try:
        client = al.cluster(workers=2, cores=1)  # the door a user takes off the hub: a LocalCluster of processes
        client.wait_for_workers(2, timeout=60)
        # Before any task: the reductions are imported (a worker importing them mid-graph stalls the
        # others) and glibc's trim threshold is unset (set, it makes frame reads 2.7x slower).
        assert set(client.run(arrived_ready).values()) == {(True, None)}
        mean, stats = al.compute(mean, stats, progress=False)
        # The workers read the file themselves (by path and byte offset), not the client.
        assert any(path in files for files in client.run(opened_files).values())
    finally:
        if client is not None:
            client.close()
            client.cluster.close()
    _check_mean_and_stats(mean, stats, arr)


# ---------------------------------------------------------------------------
# 3. radial_profile equals pyFAI
# ---------------------------------------------------------------------------
RING_Q = (1.5, 2.5, 3.5)  # nm^-1, each inside the detector's inscribed circle (q ≈ 4.2)


@pytest.fixture(scope="module")
def rings(tmp_path_factory):
    """A 200×180 detector, its PONI file, and a NeXus stack with one ring per frame at RING_Q."""
    rows, cols, pixel = 200, 180, 75e-6
    detector = pyFAI.detectors.Detector(pixel, pixel, max_shape=(rows, cols))
    ai = AzimuthalIntegrator(
        dist=0.1, poni1=(rows / 2 + 3.3) * pixel, poni2=(cols / 2 - 4.1) * pixel, detector=detector, wavelength=1e-10
    )
    folder = tmp_path_factory.mktemp("rings")
    poni = str(folder / "geometry.poni")
    ai.save(poni)
    q = ai.array_from_unit((rows, cols), "center", "q_nm^-1")
    expected = np.stack([100.0 + 5000.0 * np.exp(-0.5 * ((q - q0) / 0.06) ** 2) for q0 in RING_Q])
    arr = np.random.default_rng(42).poisson(expected).astype(np.uint32)
    path = _write(folder, arr, chunks=(1, rows, cols), compression="bitshuffle/lz4", nexus=True)
    ds = al.open(path, chunks={"frame": 1})
    return {"ai": ai, "poni": poni, "arr": arr, "ds": ds}


def _one_thread(profile: xr.DataArray) -> xr.DataArray:
    """Computed on one thread: beamside shares one pyFAI integrator between threads (see below)."""
    _assert_lazy(profile)
    with dask.config.set(scheduler="synchronous"):
        return profile.compute()


def _pyfai_profiles(poni: str, arr: np.ndarray, npt: int, unit: str, mask=None):
    reference = pyFAI.load(poni)  # a fresh integrator, not beamside's cached one
    results = [reference.integrate1d(frame, npt, unit=unit, mask=mask) for frame in arr]
    return np.stack([r.intensity for r in results]), results[0].radial


def test_radial_profile_equals_pyfai_and_finds_the_rings(rings):
    frames = rings["ds"]["data"]
    profile = _one_thread(ops.radial_profile(frames, rings["poni"], npt=300, unit="q_nm^-1"))
    assert profile.dims == ("frame", "q")
    intensity, radial = _pyfai_profiles(rings["poni"], rings["arr"], 300, "q_nm^-1")
    np.testing.assert_allclose(profile["q"].values, radial, rtol=1e-12)
    values = profile.values
    np.testing.assert_allclose(values, intensity, rtol=1e-6)
    bin_width = radial[1] - radial[0]
    for frame, q0 in zip(values, RING_Q):
        assert abs(radial[np.argmax(frame)] - q0) <= 2 * bin_width


def test_radial_profile_with_a_mask(rings):
    rows, cols = rings["arr"].shape[-2:]
    mask = np.random.default_rng(3).random((rows, cols)) < 0.05
    mask[90:110, :] = True  # a beamstop arm across the centre
    profile = _one_thread(ops.radial_profile(rings["ds"], rings["poni"], npt=300, unit="q_nm^-1", mask=mask))
    intensity, radial = _pyfai_profiles(rings["poni"], rings["arr"], 300, "q_nm^-1", mask=mask)
    np.testing.assert_allclose(profile["q"].values, radial, rtol=1e-12)
    np.testing.assert_allclose(profile.values, intensity, rtol=1e-6)


def test_radial_profile_in_two_theta(rings):
    profile = _one_thread(ops.radial_profile(rings["ds"]["data"], rings["poni"], npt=300, unit="2th_deg"))
    assert profile.dims == ("frame", "2th")
    intensity, radial = _pyfai_profiles(rings["poni"], rings["arr"], 300, "2th_deg")
    np.testing.assert_allclose(profile["2th"].values, radial, rtol=1e-12)
    np.testing.assert_allclose(profile.values, intensity, rtol=1e-6)


def test_radial_profile_from_a_geometry_dict(rings):
    config = rings["ai"].get_config()
    profile = _one_thread(ops.radial_profile(rings["ds"]["data"], config, npt=300, unit="q_nm^-1"))
    intensity, radial = _pyfai_profiles(rings["poni"], rings["arr"], 300, "q_nm^-1")
    np.testing.assert_allclose(profile["q"].values, radial, rtol=1e-12)
    np.testing.assert_allclose(profile.values, intensity, rtol=1e-6)


def test_radial_profile_on_the_threaded_scheduler(rings):
    # 16 one-frame blocks on 4 threads, three times: the race has shown up in every such run so far.
    arr = np.concatenate([rings["arr"]] * 6)[:16]
    frames = xr.DataArray(da.from_array(arr, chunks=(1,) + arr.shape[1:]), dims=("frame",) + IMAGE_DIMS)
    intensity, _ = _pyfai_profiles(rings["poni"], arr, 300, "q_nm^-1")
    for _ in range(3):
        with dask.config.set(scheduler="threads", num_workers=4):
            profile = ops.radial_profile(frames, rings["poni"], npt=300, unit="q_nm^-1").values
        np.testing.assert_allclose(profile, intensity, rtol=1e-6)


# ---------------------------------------------------------------------------
# 4. provenance
# ---------------------------------------------------------------------------
def test_every_result_records_its_step_and_the_bytes_read(detector_stack, rings):
    path, arr, frames = _open_detector(detector_stack)
    results = {
        "frame_stats": ops.frame_stats(frames),
        "mean_frame": ops.mean_frame(frames),
        "max_frame": ops.max_frame(frames),
        "roi_sums": ops.roi_sums(frames, {"centre": (10, 30, 10, 30)}),
        "correct": ops.correct(frames, dark=np.ones((40, 40))),
        "bin": ops.bin(frames, 4),
    }
    for op, result in results.items():
        steps = json.loads(result.attrs["beamside_steps"])
        assert [s["op"] for s in steps] == [op]
        assert result.attrs["beamside_bytes_read"] == frames.nbytes == arr.nbytes
        assert result.attrs["beamside_source"] == path
    for variable in results["frame_stats"].data_vars.values():
        assert json.loads(variable.attrs["beamside_steps"])[0]["op"] == "frame_stats"
        assert variable.attrs["beamside_bytes_read"] == arr.nbytes
    assert json.loads(results["roi_sums"].attrs["beamside_steps"])[0]["parameters"] == {"centre": [10, 30, 10, 30]}

    profile = ops.radial_profile(rings["ds"]["data"], rings["poni"], npt=50)
    (step,) = json.loads(profile.attrs["beamside_steps"])
    assert step["op"] == "radial_profile" and step["parameters"]["poni"] == rings["poni"]
    assert profile.attrs["beamside_bytes_read"] == rings["arr"].nbytes


def test_chained_ops_keep_every_step(detector_stack):
    _, _, frames = _open_detector(detector_stack)
    chained = ops.bin(ops.correct(frames, dark=np.ones((40, 40))), 2)
    assert [s["op"] for s in json.loads(chained.attrs["beamside_steps"])] == ["correct", "bin"]


def test_chained_ops_report_the_bytes_read_from_disk(tmp_path):
    arr = np.ones((4, 8, 8), dtype=np.uint16)
    frames = al.open(_write(tmp_path, arr, chunks=(1, 8, 8)), dataset="/data")["data"]
    chained = ops.bin(ops.correct(frames), 2)  # correct() makes float32: twice the bytes of uint16
    assert chained.attrs["beamside_bytes_read"] == arr.nbytes


def test_data_stayed_here_names_both_sizes(detector_stack):
    _, arr, frames = _open_detector(detector_stack)
    mean = ops.mean_frame(frames)  # 12×40×40 uint32 = 76 800 B read, 40×40 float64 = 12 800 B kept
    sentence = ops.data_stayed_here(mean)
    assert re.match(r"read 76\.8 kB on-site, result 12\.8 kB\b", sentence), sentence
    assert "6× smaller" in sentence
    sums = ops.roi_sums(frames, {"a": (0, 1, 0, 1)})  # 12 uint64 = 96 B
    assert re.match(r"read 76\.8 kB on-site, result 96 B\b", ops.data_stayed_here(sums))


# ---------------------------------------------------------------------------
# 5. bad parameters fail early, with a message saying what is wrong
# ---------------------------------------------------------------------------
def _frames_3d(rows: int = 8, cols: int = 6) -> xr.DataArray:
    return xr.DataArray(da.zeros((4, rows, cols), dtype=np.uint16, chunks=2), dims=("frame",) + IMAGE_DIMS)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda f: ops.roi_sums(f, {"a": (0, 9, 0, 2)}), r"outside the frame \(8, 6\)", id="roi-rows-outside"),
        pytest.param(lambda f: ops.roi_sums(f, {"a": (0, 2, 5, 7)}), "outside the frame", id="roi-cols-outside"),
        pytest.param(lambda f: ops.roi_sums(f, {"a": (-1, 2, 0, 2)}), "outside the frame", id="roi-negative"),
        pytest.param(lambda f: ops.roi_sums(f, {"a": (3, 3, 0, 2)}), "is empty", id="roi-empty"),
        pytest.param(lambda f: ops.roi_sums(f, {"a": np.ones((6, 8), bool)}), "does not match the frame shape", id="roi-mask-shape"),
        pytest.param(lambda f: ops.roi_sums(f, {"a": (0.0, 2.0, 0.0, 2.0)}), "give a rectangle", id="roi-float-rect"),
        pytest.param(lambda f: ops.roi_sums(f, {}), "no ROI given", id="roi-none"),
        pytest.param(lambda f: ops.correct(f, mask=np.zeros((8, 5), bool)), r"the mask has shape \(8, 5\)", id="correct-mask-shape"),
        pytest.param(lambda f: ops.correct(f, dark=np.zeros((6, 8))), r"the dark has shape", id="correct-dark-shape"),
        pytest.param(lambda f: ops.correct(f, flat=np.ones(48)), r"the flat has shape", id="correct-flat-shape"),
        pytest.param(lambda f: ops.bin(f, 0), "binning factors must be whole numbers", id="bin-factor-0"),
        pytest.param(lambda f: ops.bin(f, 2, frame_factor=0), "binning factors must be whole numbers", id="bin-frame-factor-0"),
        pytest.param(
            lambda f: ops.bin(f.expand_dims(scan=2), 2, frame_factor=2), "needs a single frame dimension", id="bin-frames-of-a-scan"
        ),
    ],
)
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call(_frames_3d())


def test_radial_profile_bad_parameters(rings):
    frames = rings["ds"]["data"]
    with pytest.raises(ValueError, match=r"mask has shape \(180, 200\)"):
        ops.radial_profile(frames, rings["poni"], npt=50, mask=np.zeros((180, 200), bool))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ops.radial_profile(frames, rings["poni"] + ".missing", npt=50)


ONE_D = xr.DataArray(da.arange(5, chunks=2), dims="frame", name="counts")


@pytest.mark.parametrize("op", [ops.frame_stats, ops.mean_frame, ops.max_frame, ops.correct, ops.bin])
@pytest.mark.parametrize(
    "frames", [pytest.param(ONE_D, id="DataArray"), pytest.param(ONE_D.to_dataset(), id="Dataset")]
)
def test_one_dimensional_input_is_refused(op, frames):
    with pytest.raises(ValueError, match=r"at least two \(image\) dimensions"):
        op(frames)


def test_bin_sums_float_frames_in_float64():
    frames = xr.DataArray(
        da.from_array(np.array([[[1e8, 1.0], [-1e8, 1.0]]], dtype=np.float32)), dims=("frame",) + IMAGE_DIMS
    )
    binned = ops.bin(frames, 2)
    assert binned.dtype == np.float64
    assert binned.values.item() == 2.0  # float64 accumulation; float32 gives 1.0


@pytest.mark.parametrize(
    ("chunks", "factor", "frame_factor", "too_big"),
    [
        pytest.param((1, 4, 4), 5, 1, ["row", "column"], id="image-window"),
        pytest.param((1, 1, 1), 1, 4, ["frame"], id="frame-window"),
        pytest.param((1, 4, 4), 5, 4, ["row", "column", "frame"], id="both-windows"),
    ],
)
def test_bin_window_larger_than_the_stack(chunks, factor, frame_factor, too_big):
    """A window larger than the stack is refused, naming the dimensions (rather than numpy's empty result)."""
    arr = np.ones((3, 4, 4), dtype=np.uint16)
    frames = xr.DataArray(da.from_array(arr, chunks=chunks), dims=("frame",) + IMAGE_DIMS)
    with pytest.raises(ValueError, match="binning window larger than the data") as err:
        ops.bin(frames, factor, frame_factor=frame_factor)
    assert re.search(r"along \[([^\]]*)\]", str(err.value)).group(1) == ", ".join(map(repr, too_big))


@pytest.mark.parametrize(
    ("chunks", "factor", "frame_factor"),
    [pytest.param((1, 4, 4), 4, 1, id="image-window"), pytest.param((1, 1, 1), 1, 3, id="frame-window"),
     pytest.param((2, 3, 3), 4, 3, id="both-windows")],
)
def test_bin_window_as_large_as_the_stack(chunks, factor, frame_factor):
    """The largest windows still allowed give numpy's result: one pixel (or frame) along that dimension."""
    arr = np.arange(3 * 4 * 4, dtype=np.uint16).reshape(3, 4, 4)
    frames = xr.DataArray(da.from_array(arr, chunks=chunks), dims=("frame",) + IMAGE_DIMS)
    binned = ops.bin(frames, factor, frame_factor=frame_factor)
    expected = _bin_reference(arr, factor, frame_factor)
    assert binned.shape == expected.shape
    np.testing.assert_array_equal(binned.values, expected)


def test_fused_reductions_read_frames_straight_from_the_file(tmp_path):
    """Untouched frames from al.open are reduced frame by frame from the file; anything else takes the generic path."""
    from .conftest import write_stack

    arr = np.random.default_rng(5).poisson(7, (9, 24, 20)).astype(np.uint32)
    frames = al.open(write_stack(tmp_path / "s.nxs", arr), chunks={"frame": 4})["data"]
    assert streaming_reader(frames.data) is not None
    for changed in (frames[1:], frames + 1, frames.chunk({"row": 12})):
        assert streaming_reader(changed.data) is None
    np.testing.assert_allclose(ops.mean_frame(frames).values, arr.mean(axis=0))
    stats = ops.frame_stats(frames)
    np.testing.assert_array_equal(stats["sum"].values, arr.reshape(9, -1).sum(axis=1))
    np.testing.assert_array_equal(stats["min"].values, arr.min(axis=(1, 2)))
    mask = arr[0] > 7
    rois = ops.roi_sums(frames, {"box": (2, 10, 3, 15), "mask": mask})
    np.testing.assert_array_equal(rois.sel(roi="box").values, arr[:, 2:10, 3:15].sum(axis=(1, 2)))
    np.testing.assert_array_equal(rois.sel(roi="mask").values, arr[:, mask].sum(axis=1))
    np.testing.assert_array_equal(ops.mean_frame(frames[2:7]).values, arr[2:7].mean(axis=0))


@pytest.mark.parametrize("dtype", ["uint32", "float32"])
def test_streaming_and_generic_paths_give_equal_results(tmp_path, dtype, rings):
    """Each reduction streams untouched frames and gives, bit for bit, what the generic path gives on touched ones."""
    from .conftest import write_stack

    rng = np.random.default_rng(11)
    arr = rng.poisson(7, (10, 24, 20)).astype(dtype)
    if dtype == "float32":
        arr = arr / 8 - 1  # multiples of 1/8: every sum is exact, in any order
        arr = arr.astype(np.float32)
    frames = al.open(write_stack(tmp_path / "s.nxs", arr), chunks={"frame": 4})["data"]
    touched = frames + 0
    assert touched.dtype == frames.dtype
    assert streaming_reader(frames.data) is not None and streaming_reader(touched.data) is None
    mask = arr[0] > 7
    reductions = {
        "mean_frame": ops.mean_frame,
        "max_frame": ops.max_frame,
        "frame_stats": ops.frame_stats,
        "roi_sums": lambda f: ops.roi_sums(f, {"box": (2, 10, 3, 15), "mask": mask}),
    }
    ring_frames = rings["ds"]["data"]
    cases = [(frames, touched, reduce) for reduce in reductions.values()]
    cases.append((ring_frames, ring_frames + 0, lambda f: ops.radial_profile(f, rings["poni"], npt=40)))
    assert streaming_reader(ring_frames.data) is not None
    for untouched, generic_input, reduce in cases:
        streamed, generic = reduce(untouched).compute(), reduce(generic_input).compute()
        xr.testing.assert_identical(streamed.drop_attrs(), generic.drop_attrs())
    np.testing.assert_array_equal(ops.max_frame(frames).values, arr.max(axis=0))
    np.testing.assert_array_equal(ops.mean_frame(frames).values, arr.astype(np.float64).sum(axis=0) / 10)
    sliced = frames[3:9]
    assert streaming_reader(sliced.data) is None
    np.testing.assert_array_equal(ops.max_frame(sliced).values, arr[3:9].max(axis=0))
    np.testing.assert_array_equal(ops.frame_stats(sliced)["sum"].values, arr[3:9].sum(axis=(1, 2), dtype=_accumulator(dtype)))
