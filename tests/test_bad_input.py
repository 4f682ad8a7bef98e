"""Bad input gets a typed error naming file, dataset and reason — never a crash or a hang."""

from __future__ import annotations

import os

import dask
import h5py
import numpy as np
import pytest

import analysis_lib as al
from analysis_lib._backend import describe_file

from .conftest import write_stack

FRAMES = (np.arange(6 * 32 * 24, dtype=np.uint32).reshape(6, 32, 24) * 7919) % 50


@pytest.fixture
def scan(tmp_path):
    return write_stack(tmp_path / "scan.nxs", FRAMES)


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.nxs"
    path.write_text("this is a lab notebook, not detector data\n" * 100)
    with pytest.raises(al.NotHDF5Error, match="not an HDF5") as err:
        al.open(path)
    assert err.value.file == str(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nxs"
    path.touch()
    with pytest.raises(al.NotHDF5Error, match="empty"):
        al.open(path)


def test_missing_file(tmp_path):
    with pytest.raises(al.DataError, match="no such file"):
        al.open(tmp_path / "never_written.nxs")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file(scan, keep):
    size = os.path.getsize(scan)
    with open(scan, "r+b") as f:
        f.truncate(int(size * keep))
    with pytest.raises(al.TruncatedFileError) as err:
        al.open(scan).load()
    assert err.value.file == str(scan)


def test_file_truncated_after_opening(scan):
    ds = al.open(scan)
    with open(scan, "r+b") as f:
        f.truncate(os.path.getsize(scan) // 2)
    with pytest.raises(al.TruncatedFileError, match="past the end") as err:
        ds["data"].values
    assert err.value.dataset == "/entry/data/data"


def _chunk_bytes(path, dataset="/entry/data/data"):
    with h5py.File(path) as f:
        d = f[dataset]
        return [(info.byte_offset, info.size) for info in (d.id.get_chunk_info(i) for i in range(d.id.get_num_chunks()))]


@pytest.mark.parametrize("compression", ["bitshuffle", "gzip"])
def test_corrupt_chunk_names_file_dataset_and_chunk(tmp_path, compression):
    import hdf5plugin

    kwargs = hdf5plugin.Bitshuffle(cname="lz4") if compression == "bitshuffle" else {"compression": "gzip", "shuffle": True}
    path = write_stack(tmp_path / "scan.nxs", FRAMES, compression=kwargs)
    offset, size = _chunk_bytes(path)[3]
    with open(path, "r+b") as f:
        f.seek(offset + 12)
        f.write(b"\xff" * min(64, size - 12))
    ds = al.open(path)
    np.testing.assert_array_equal(ds["data"][:3].values, FRAMES[:3])  # good chunks still read
    with pytest.raises(al.CorruptChunkError, match=r"chunk at \(3, 0, 0\)") as err:
        ds["data"].values
    assert err.value.file == str(path) and err.value.dataset == "/entry/data/data"


def _damage_pipelines():
    import hdf5plugin

    return [
        pytest.param(dict(hdf5plugin.Bitshuffle(cname="lz4")), False, id="bitshuffle-lz4"),
        pytest.param({"compression": "gzip", "shuffle": True}, True, id="gzip+shuffle"),  # zlib's adler32
        pytest.param(dict(hdf5plugin.Zstd()), False, id="zstd"),
        pytest.param(dict(hdf5plugin.LZ4()), False, id="lz4"),
        pytest.param({"fletcher32": True}, True, id="fletcher32"),
        pytest.param({**hdf5plugin.Bitshuffle(cname="lz4"), "fletcher32": True}, True, id="bitshuffle-lz4+fletcher32"),
    ]


@pytest.mark.parametrize(("compression", "checksummed"), _damage_pipelines())
def test_random_damage_never_crashes(tmp_path, compression, checksummed):
    """Random byte changes in one stored chunk: every frame either reads or raises CorruptChunkError; frames
    the damage did not touch read their original values; and where the pipeline carries a checksum the damaged
    frame is never silently wrong (without one, wrong values cannot be told from right ones)."""
    original = np.random.default_rng(1).poisson(3, (6, 128, 96)).astype(np.uint32)
    path = write_stack(tmp_path / "scan.nxs", original, compression=compression)
    pristine = path.read_bytes()
    chunks = _chunk_bytes(path)
    assert len(chunks) == len(original)  # one frame per chunk: frame i is chunk i
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "same": 0, "changed": 0}
    trials = 40
    for trial in range(trials):
        data = bytearray(pristine)
        damaged_frame = trial % len(chunks)
        offset, size = chunks[damaged_frame]
        for pos in rng.integers(offset, offset + size, rng.integers(1, 40)):
            data[pos] = int(rng.integers(0, 256))
        damaged = tmp_path / f"damaged_{trial}.nxs"
        damaged.write_bytes(bytes(data))
        frames = al.open(damaged, chunks=None)["data"]  # lazy, no Dask: each frame read is one chunk decode
        for i in range(len(original)):
            if i != damaged_frame:
                np.testing.assert_array_equal(frames[i].values, original[i], err_msg=f"trial {trial}: untouched frame {i}")
                continue
            try:
                values = frames[i].values
            except al.CorruptChunkError as err:
                assert f"chunk at ({i}, 0, 0)" in str(err), err
                outcomes["error"] += 1
                continue
            assert values.shape == original[i].shape and values.dtype == original.dtype
            same = bool((values == original[i]).all())
            outcomes["same" if same else "changed"] += 1
            if checksummed:
                assert same, f"trial {trial}: damaged frame {i} decoded to wrong values despite the checksum"
        damaged.unlink()
    assert outcomes["error"] > trials // 3, outcomes


def test_unknown_filter(scan, tmp_path):
    import hdf5plugin

    path = write_stack(tmp_path / "odd.nxs", FRAMES, compression=hdf5plugin.Bitshuffle(cname="lz4"))
    raw = bytearray(path.read_bytes())
    at = raw.find(b"bitshuffle")
    assert at > 8
    # pipeline message v1: filter id (2 bytes LE) sits 8 bytes before the name
    assert raw[at - 8 : at - 6] == (32008).to_bytes(2, "little")
    raw[at - 8 : at - 6] = (32999).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(al.UnknownFilterError, match="32999") as err:
        al.open(path)
    assert err.value.dataset == "/entry/data/data"


@pytest.mark.parametrize(
    "limit, value, message",
    [
        ("dataset-bytes", 1000, "dataset-bytes"),
        ("chunk-bytes", 100, "chunk-bytes"),
        ("attribute-bytes", 2, "attribute"),
    ],
)
def test_declared_size_beyond_budget(scan, limit, value, message):
    with dask.config.set({f"beamside.limits.{limit}": value}):
        with pytest.raises(al.TooLargeError, match=message):
            al.open(scan)


def test_huge_declared_shape(tmp_path):
    path = tmp_path / "huge.nxs"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(10**9, 10**6, 10**3), dtype="uint32", chunks=(1, 1000, 1000))
    with pytest.raises(al.TooLargeError, match="declares") as err:
        al.open(path, dataset="/data")
    assert err.value.dataset == "/data"


def _nexus(path, edit):
    write_stack(path, FRAMES, axes=[("y", np.linspace(0, 1, 6))])
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.attrs.__setitem__("default", "nowhere"), "names 'nowhere'"),
        (lambda f: f["entry/data"].attrs.__setitem__("signal", "missing"), "'missing'"),
        (lambda f: f["entry/data"].attrs.__setitem__("axes", ["y", "."]), "@axes has 2 entries"),
        (lambda f: f["entry/data"].attrs.__setitem__("axes", ["z", ".", "."]), "'z'"),
        (lambda f: (f["entry/data"].__delitem__("y"), f["entry/data"].__setitem__("y", np.arange(4.0))), "shape"),
        (lambda f: f["entry/data"].attrs.__setitem__("y_indices", 7), "indices"),
    ],
    ids=["default", "signal", "axes-length", "axes-name", "axis-shape", "indices"],
)
def test_broken_nexus_attributes(tmp_path, edit, message):
    path = _nexus(tmp_path / "broken.nxs", edit)
    with pytest.raises(al.NexusStructureError, match=message) as err:
        al.open(path)
    assert err.value.file == str(path)


def test_no_nexus_default_suggests_dataset(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = FRAMES
    with pytest.raises(al.NexusStructureError, match="dataset="):
        al.open(path)
    np.testing.assert_array_equal(al.open(path, dataset="/frames")["frames"].values, FRAMES)


def test_wrong_dataset_paths(scan):
    with pytest.raises(al.NexusStructureError, match="no such object"):
        al.open(scan, dataset="/entry/nope")
    with pytest.raises(al.DataError, match="group, not a dataset"):
        al.open(scan, dataset="/entry")


def test_inspection_is_time_bounded(scan):
    with dask.config.set({"beamside.probe.timeout": 0.001}):
        with pytest.raises(al.ProbeFailedError, match="did not finish within"):
            describe_file(scan)


def test_a_crashing_inspection_is_reported_not_fatal(scan):
    with dask.config.set({"beamside.probe.memory": "20MiB"}):
        with pytest.raises(al.ProbeFailedError, match="crashed|memory") as err:
            describe_file(scan)
    assert err.value.file == str(scan)
    assert al.open(scan)["data"].shape == FRAMES.shape  # and the caller carries on


def test_a_description_too_long_to_hold_is_refused(tmp_path):
    """100 000 one-byte chunks make a 4 MB chunk index: over a 1 MiB probe.output, the child is stopped."""
    path = tmp_path / "many_chunks.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=np.zeros(100_000, np.uint8), chunks=(1,))
    with dask.config.set({"beamside.probe.output": "1MiB"}):
        with pytest.raises(al.TooLargeError, match=r"beamside\.probe\.output \(1\.00 MiB\)") as err:
            describe_file(path, dataset="/frames")
    assert err.value.file == str(path) and err.value.dataset == "/frames"
    assert describe_file(path, dataset="/frames").variables[0].stored.index.addr.size == 100_000  # the default holds it


def test_errors_travel_from_dask_workers_intact(scan):
    err = al.CorruptChunkError("bad", file="/f.nxs", dataset="/d")
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert type(again) is al.CorruptChunkError and again.file == "/f.nxs" and again.dataset == "/d"
    assert str(again) == str(err)
