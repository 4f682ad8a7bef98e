"""al.open and the nexus xarray engine: lazy, chunk-aligned, NeXus-aware, equal to h5py."""

from __future__ import annotations

import os

import dask
import dask.array as da
import h5py
import hdf5plugin
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analysis_lib as al
from analysis_lib._backend import NexusBackendEntrypoint, dask_chunks, describe_file
from analysis_lib._chunks import ChunkedReader, H5Reader, SegmentReader, reader_for
from analysis_lib._reduce import streaming_reader

from .conftest import write_stack

COMPRESSIONS = {
    "none": None,
    "gzip+shuffle": {"compression": "gzip", "shuffle": True},
    "gzip+fletcher32": {"compression": "gzip", "fletcher32": True},
    "bitshuffle-lz4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "bitshuffle": dict(hdf5plugin.Bitshuffle(cname="none")),
    "lz4": dict(hdf5plugin.LZ4()),
    "zstd": dict(hdf5plugin.Zstd()),
    "blosc": dict(hdf5plugin.Blosc()),
}
# what each compression must be read with: our own decoders unless there is none
READERS = {"blosc": H5Reader}


def stored_of(path, **kwargs):
    return describe_file(path, **kwargs).variables[0].stored


def test_nexus_default_chain_axes_units(tmp_path):
    frames = np.random.default_rng(0).integers(0, 1000, (5, 20, 30), dtype=np.uint32)
    edges = np.linspace(0, 5, 6)  # bin edges: one more than frames

    def extra(f):
        f["entry/data"].attrs["y_indices"] = 0
        f["entry/data/data"].attrs["long_name"] = "Eiger counts"

    path = write_stack(tmp_path / "scan.nxs", frames, axes=[("y", edges)], extra=extra)
    ds = al.open(path)
    assert list(ds.data_vars) == ["data"]
    arr = ds["data"]
    assert arr.dims == ("y", "row", "column")
    assert isinstance(arr.data, da.Array)
    np.testing.assert_allclose(ds["y"].values, (edges[:-1] + edges[1:]) / 2)
    assert ds["y"].attrs["units"] == "mm"
    assert arr.attrs["units"] == "counts" and arr.attrs["long_name"] == "Eiger counts"
    assert arr.attrs["beamside_source"] == str(path)
    np.testing.assert_array_equal(arr.values, frames)
    np.testing.assert_array_equal(arr.sel(y=2.5).values, frames[2])


def test_opening_reads_metadata_only(tmp_path):
    """Opening touches nothing but metadata: a stack whose every chunk is written, then overwritten with
    garbage, still opens (shape, dtype, attributes, chunking) - only computing reads, and fails on, the chunks."""
    frames = np.random.default_rng(2).poisson(50, (64, 256, 256)).astype(np.uint32)  # 16 MiB, ~3.3 MiB stored
    path = write_stack(tmp_path / "big.nxs", frames)
    with h5py.File(path) as f:
        d = f["/entry/data/data"]
        chunks = [d.id.get_chunk_info(i) for i in range(d.id.get_num_chunks())]
    assert len(chunks) == 64 and sum(c.size for c in chunks) > 3 * 2**20  # really written, and not small
    with open(path, "r+b") as f:
        for c in chunks:
            f.seek(c.byte_offset)
            f.write(b"\xff" * c.size)  # a bitshuffle header declaring 2**64 - 1 bytes: no decoder accepts it
    ds = al.open(path)
    arr = ds["data"]
    assert arr.shape == frames.shape and arr.dtype == np.uint32 and arr.attrs["units"] == "counts"
    assert arr.data.chunksize[1:] == (256, 256)
    with pytest.raises(al.CorruptChunkError, match=r"chunk at \(5, 0, 0\)"):
        arr[5].values


def test_auto_chunks_are_whole_hdf5_chunks_frame_axis_first(tmp_path):
    frames = np.zeros((50, 64, 48), dtype=np.uint32)
    path = write_stack(tmp_path / "scan.nxs", frames, chunks=(1, 32, 48))
    with dask.config.set({"beamside.chunk-size": 64 * 48 * 4 * 8}):
        arr = al.open(path)["data"]
    assert arr.data.chunksize == (8, 64, 48)
    assert dask_chunks(stored_of(path), ("f", "r", "c"), 128 * 2**20) == {"f": 50, "r": 64, "c": 48}
    assert dask_chunks(stored_of(path), ("f", "r", "c"), 64 * 48 * 4 * 3 + 5) == {"f": 3, "r": 64, "c": 48}
    assert dask_chunks(stored_of(path), ("f", "r", "c"), 100) == {"f": 1, "r": 32, "c": 48}


def test_xarray_engine_with_preferred_chunks(tmp_path):
    """``xr.open_dataset(engine="nexus", chunks={})`` is ``al.open``: the same chunks, the same streaming reductions."""
    frames = np.arange(40 * 8 * 6, dtype=np.uint16).reshape(40, 8, 6)
    path = write_stack(tmp_path / "scan.nxs", frames)
    with dask.config.set({"beamside.chunk-size": 8 * 6 * 2 * 16}):  # 16 frames a block
        ds = xr.open_dataset(path, engine="nexus", chunks={})
        opened = al.open(path)
    assert ds["data"].chunks == opened["data"].chunks == ((16, 16, 8), (8,), (6,))
    np.testing.assert_array_equal(ds["data"].values, frames)
    assert streaming_reader(ds["data"].data) is not None
    mean = al.ops.mean_frame(ds)
    assert any(str(key[0] if isinstance(key, tuple) else key).startswith("_fold_frames") for key in mean.data.dask)
    np.testing.assert_array_equal(mean.values, frames.mean(axis=0))
    # (no engine= autodetection test: xarray asks its built-in engines first, and h5netcdf claims any HDF5 file)


def test_dask_names_are_deterministic_and_change_with_the_file(tmp_path):
    """Dask names (which caches key on) are the same for the same file, new when it is rewritten."""
    path = write_stack(tmp_path / "scan.nxs", np.ones((4, 8, 6), dtype=np.uint16))
    name = al.open(path)["data"].data.name
    assert al.open(path)["data"].data.name == name
    assert xr.open_dataset(path, engine="nexus", chunks={})["data"].data.name != al.open(path, chunks={"frame": 1})["data"].data.name
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert al.open(path)["data"].data.name != name


def test_guess_can_open_by_signature(tmp_path):
    """The engine claims NeXus-named files that are HDF5 (a user block before the superblock allowed), nothing else."""
    engine = NexusBackendEntrypoint()
    nexus = write_stack(tmp_path / "scan.nxs", np.ones((2, 4, 4), dtype=np.uint16))
    user_block = tmp_path / "with_user_block.nxs"
    with h5py.File(user_block, "w", userblock_size=1024) as f:
        f["data"] = np.ones(3)
    with open(user_block, "r+b") as fh:
        fh.write(b"beamline notes, not HDF5")
    text = tmp_path / "notes.nxs"
    text.write_text("not HDF5, whatever the name says\n" * 200)
    hdf5_named_h5 = tmp_path / "plain.h5"
    with h5py.File(hdf5_named_h5, "w") as f:
        f["data"] = np.ones(3)
    (tmp_path / "folder.nxs").mkdir()
    assert engine.guess_can_open(nexus) and engine.guess_can_open(str(user_block))
    for other in (text, tmp_path / "empty.nxs", tmp_path / "folder.nxs", tmp_path / "missing.nxs", hdf5_named_h5):
        if other.name == "empty.nxs":
            other.write_bytes(b"")
        assert not engine.guess_can_open(other), other


@pytest.mark.parametrize("name", list(COMPRESSIONS))
def test_every_compression_reads_like_h5py(tmp_path, name):
    frames = np.random.default_rng(3).poisson(20, (7, 33, 29)).astype(np.uint32)
    path = write_stack(tmp_path / f"{name}.nxs", frames, compression=COMPRESSIONS[name] or {}, chunks=(2, 17, 29))
    arr = al.open(path)["data"]
    assert isinstance(reader_for(stored_of(path)), READERS.get(name, ChunkedReader))
    np.testing.assert_array_equal(arr.values, frames)
    np.testing.assert_array_equal(arr[1:6:2, 5:30:4, -3].values, frames[1:6:2, 5:30:4, -3])


def test_contiguous_dataset_reads_without_hdf5(tmp_path):
    frames = np.arange(3 * 5 * 4, dtype=np.float32).reshape(3, 5, 4)
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = frames
        f.create_dataset("never_written", shape=(2, 3), dtype="int16", fillvalue=-1)
    ds = al.open(path, dataset="/frames", chunks=None)
    assert isinstance(reader_for(stored_of(path, dataset="/frames")), SegmentReader)
    np.testing.assert_array_equal(ds["frames"].values, frames)
    np.testing.assert_array_equal(al.open(path, dataset="/never_written")["never_written"].values, np.full((2, 3), -1))


def test_big_endian_and_partial_edge_chunks(tmp_path):
    frames = np.arange(5 * 7 * 9, dtype=">i4").reshape(5, 7, 9)
    path = write_stack(tmp_path / "be.nxs", frames, compression={"compression": "gzip"}, chunks=(2, 3, 4))
    np.testing.assert_array_equal(al.open(path)["data"].values, frames)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_regions_match_numpy(tmp_path_factory, data):
    shape = data.draw(st.tuples(st.integers(1, 9), st.integers(1, 23), st.integers(1, 19)), label="shape")
    chunks = tuple(data.draw(st.integers(1, n), label=f"chunk{i}") for i, n in enumerate(shape))
    name = data.draw(st.sampled_from(["none", "gzip+shuffle", "bitshuffle-lz4", "lz4", "zstd"]), label="compression")
    dtype = data.draw(st.sampled_from(["uint16", "uint32", "int32", "float32", "float64"]), label="dtype")
    values = np.random.default_rng(sum(shape)).integers(0, 500, shape).astype(dtype)
    path = write_stack(tmp_path_factory.mktemp("h") / "r.nxs", values, compression=COMPRESSIONS[name] or {}, chunks=chunks)
    arr = al.open(path, chunks=None)["data"]
    key = []
    for n in shape:
        if data.draw(st.booleans(), label="int index"):
            key.append(data.draw(st.integers(-n, n - 1)))
        else:
            a = data.draw(st.integers(0, n))
            b = data.draw(st.integers(a, n))
            key.append(slice(a, b, data.draw(st.integers(1, 3))))
    key = tuple(key)
    np.testing.assert_array_equal(arr[key].values, values[key])


def test_graph_holds_paths_not_handles(tmp_path):
    import pickle

    path = write_stack(tmp_path / "scan.nxs", np.ones((4, 8, 8), dtype=np.uint32))
    graph = dict(al.open(path)["data"].data.__dask_graph__())
    blob = pickle.dumps(graph)
    assert b"h5py" not in blob and str(path).encode() in blob
