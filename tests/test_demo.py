"""The demo beamtime data: catalog, NeXus layout, physics and reruns.

One small demo (a few frames per scan) is written once per module; the tests
read it with the same tools a user would (h5py + hdf5plugin, pyFAI, the catalog).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for reading)
import numpy as np
import pytest

from analysis_lib import _demo
from analysis_lib._demo import FRAME_BYTES, FRAME_SHAPE, parse_size, write_demo_data
from analysis_lib.catalog import Catalog

SIZE = "40MB"
BEAMTIME_IDS = ["bt-1001", "bt-1002", "bt-2001"]
CALIB_FRAMES = 10 + 3  # dark + flat, per beamtime


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(catalog path, progress calls) of one demo written with seed 0."""
    calls = []
    catalog = write_demo_data(tmp_path_factory.mktemp("demo"), SIZE, progress=lambda done, total: calls.append((done, total)))
    return catalog, calls


def data_dir(catalog: Path) -> Path:
    return catalog.parent / "data"


def first_frame(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["entry/data/data"][0]


# -- catalog ------------------------------------------------------------------------
def test_catalog_text_is_the_documented_shape(demo):
    catalog, _ = demo
    assert catalog == catalog.parent / "catalog.yaml" and catalog.is_absolute()
    assert catalog.read_text() == f"""\
data_root: {data_dir(catalog)}
beamtimes:
  - id: bt-1001
    title: "In-situ XRD of battery cathodes"
    path: bt-1001
    confidential: false
    members:
      - {{user: alice, role: pi}}
      - {{user: bob, role: member}}
  - id: bt-1002
    title: "Residual strain in welded steel"
    path: bt-1002
    confidential: false
    members:
      - {{user: bob, role: pi}}
  - id: bt-2001
    title: "Industrial proposal: catalyst pellets (confidential)"
    path: bt-2001
    confidential: true
    members:
      - {{user: carol, role: industrial-mediator}}
"""


def test_catalog_loads_with_members_and_confidentiality(demo):
    catalog = Catalog.load(demo[0])
    assert catalog.data_root == data_dir(demo[0])
    assert [bt.id for bt in catalog.beamtimes] == BEAMTIME_IDS
    assert [bt.confidential for bt in catalog.beamtimes] == [False, False, True]
    assert [bt.id for bt in catalog.readable("alice")] == ["bt-1001"]
    assert [bt.id for bt in catalog.readable("bob")] == ["bt-1001", "bt-1002"]
    assert [bt.id for bt in catalog.readable("carol")] == ["bt-2001"]
    assert catalog.beamtimes[2].role_of("carol") == "industrial-mediator"
    assert all(bt.path.is_dir() for bt in catalog.beamtimes)


# -- layout -------------------------------------------------------------------------
@pytest.mark.parametrize("beamtime", BEAMTIME_IDS)
def test_beamtime_folder_layout(demo, beamtime):
    folder = data_dir(demo[0]) / beamtime
    for name in ("raw/scan_0001.nxs", "raw/scan_0002.nxs", "calib/detector.poni", "calib/dark.nxs", "calib/flat.nxs"):
        assert (folder / name).is_file(), name
    assert (folder / "processed").is_dir() and not any((folder / "processed").iterdir())
    assert not list(folder.rglob("*.part")), "a temporary file was left behind"


def test_scan_is_eiger_like_nexus(demo):
    path = data_dir(demo[0]) / "bt-1001" / "raw" / "scan_0001.nxs"
    with h5py.File(path, "r") as f:
        assert dict(f.attrs) == {
            "default": "entry",
            "NX_class": "NXroot",
            "creator": "beamside demo-data",
            "beamside_demo_seed": 0,
        }
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["default"] == "data"
        assert entry["experiment_identifier"].asstr()[()] == "bt-1001"
        assert entry["title"].asstr()[()]
        assert dt.datetime.fromisoformat(entry["start_time"].asstr()[()]).tzinfo is not None

        detector = entry["instrument/detector"]
        assert detector.attrs["NX_class"] == "NXdetector"
        assert detector["description"].asstr()[()] == "Eiger-like 1M (demo)"
        for name in ("x_pixel_size", "y_pixel_size"):
            assert detector[name][()] == 75e-6 and detector[name].attrs["units"] == "m"
        assert 0.1 < detector["distance"][()] < 0.2 and detector["distance"].attrs["units"] == "m"

        stack = detector["data"]
        frames = stack.shape[0]
        assert frames >= 4 and stack.shape[1:] == FRAME_SHAPE
        assert stack.dtype == np.uint32 and stack.chunks == (1,) + FRAME_SHAPE
        code, _, options, _ = stack.id.get_create_plist().get_filter(0)
        assert code == 32008 and options[4] == 2  # bitshuffle with LZ4, like a Dectris Eiger
        assert dict(stack.attrs) == {"units": "counts", "long_name": "Eiger counts", "target": stack.name,
                                     "beamside_geometry": "../calib/detector.poni"}  # what the viewer looks for
        poni = (path.parent / stack.attrs["beamside_geometry"]).resolve()
        assert poni == (path.parents[1] / "calib" / "detector.poni").resolve()

        data = entry["data"]
        assert data.attrs["NX_class"] == "NXdata" and data.attrs["signal"] == "data"
        assert list(data.attrs["axes"]) == ["y", ".", "."] and data.attrs["y_indices"] == 0
        assert isinstance(data.get("data", getlink=True), h5py.HardLink)
        assert data["data"] == stack  # one dataset, two names
        y = data["y"]
        assert y.dtype == np.float64 and y.shape == (frames,)
        assert dict(y.attrs) == {"units": "mm", "long_name": "sample y"}
        assert np.all(np.diff(y[()]) > 0)
        assert entry["sample/name"].asstr()[()] == "CeO2"


def test_masked_pixels_read_zero_and_gaps_are_flagged(demo):
    with h5py.File(data_dir(demo[0]) / "bt-1001" / "raw" / "scan_0001.nxs", "r") as f:
        mask = f["entry/instrument/detector/pixel_mask"][()]
        frames = f["entry/data/data"][()]
    assert mask.dtype == np.uint32 and mask.shape == FRAME_SHAPE
    gap, dead = (mask & 1) != 0, (mask & 2) != 0  # NXdetector/pixel_mask bits
    gap_rows, gap_columns = np.flatnonzero(gap.all(axis=1)), np.flatnonzero(gap.all(axis=0))
    assert len(gap_rows) > 10 and len(gap_columns) > 1  # horizontal and vertical module gaps
    assert gap.sum() == gap_rows.size * FRAME_SHAPE[1] + gap_columns.size * FRAME_SHAPE[0] - gap_rows.size * gap_columns.size
    assert 0.0005 < dead.mean() < 0.002
    assert not frames[:, mask != 0].any()
    live = frames[:, mask == 0]
    assert 1 < np.median(live) < 10  # a few counts of background ...
    assert live.max() > 100  # ... and bright rings


def test_calibration_frames(demo):
    calib = data_dir(demo[0]) / "bt-1002" / "calib"
    with h5py.File(calib / "dark.nxs", "r") as dark, h5py.File(calib / "flat.nxs", "r") as flat:
        mask = dark["entry/instrument/detector/pixel_mask"][()] == 0
        darks, flats = dark["entry/data/data"], flat["entry/data/data"]
        assert darks.shape == (10,) + FRAME_SHAPE and darks.dtype == np.uint32
        assert flats.shape[1:] == FRAME_SHAPE and flats.dtype == np.uint32
        assert darks.id.get_create_plist().get_filter(0)[0] == 32008
        assert dark["entry/experiment_identifier"].asstr()[()] == "bt-1002"
        assert abs(darks[()][:, mask].mean() - 1) < 0.01
        gain = flats[()].mean(axis=0)[mask] / 1000
        assert abs(gain.mean() - 1) < 0.02 and 0.005 < gain.std() < 0.1  # a mild gain pattern


@pytest.mark.parametrize("beamtime", BEAMTIME_IDS)
def test_rings_lie_where_the_poni_file_says(demo, beamtime):
    import pyFAI
    from pyFAI.calibrant import get_calibrant

    folder = data_dir(demo[0]) / beamtime
    with h5py.File(folder / "raw" / "scan_0001.nxs", "r") as f:
        mean_frame = f["entry/data/data"][()].mean(axis=0)
        mask = f["entry/instrument/detector/pixel_mask"][()]
        sample = f["entry/sample/name"].asstr()[()]
        distance = f["entry/instrument/detector/distance"][()]
    integrator = pyFAI.load(str(folder / "calib" / "detector.poni"))
    assert integrator.dist == pytest.approx(distance)
    pattern = integrator.integrate1d(mean_frame, 1000, unit="2th_deg", mask=mask)
    strongest = pattern.radial[np.argmax(pattern.intensity)]
    rings = np.degrees(get_calibrant(sample, integrator.wavelength).get_2th())
    assert np.min(np.abs(rings - strongest)) < 0.1


def test_ring_intensity_follows_the_sample_along_the_scan(demo):
    with h5py.File(data_dir(demo[0]) / "bt-1001" / "raw" / "scan_0001.nxs", "r") as f:
        y = f["entry/data/y"][()]
        totals = f["entry/data/data"][()].sum(axis=(1, 2), dtype=np.int64)
    inside, outside = totals[np.abs(y) < 1.5], totals[np.abs(y) > 2.5]  # the sample ends near |y| = 2 mm
    assert inside.min() > 1.5 * outside.max()


# -- size, progress, reruns ---------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1234, 1234),
        ("1234", 1234),
        ("500MB", 500_000_000),
        ("10GB", 10_000_000_000),
        ("2 GiB", 2 * 2**30),
        ("1.5 gb", 1_500_000_000),
        ("64KiB", 65536),
        ("3T", 3_000_000_000_000),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten GB", "5 XB", "-1GB", "0", 0, "2 iB", True])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("size", ["2GB", "10GB", "2 GiB"])
def test_scan_frames_add_up_to_the_size(size):
    frames = _demo._frames_per_scan(parse_size(size))
    assert len(frames) == 6
    assert abs(sum(frames.values()) * FRAME_BYTES - parse_size(size)) <= len(frames) * FRAME_BYTES
    bulk = sum(n for (beamtime, _), n in frames.items() if beamtime == "bt-1001")
    assert bulk > 0.5 * sum(frames.values())


def test_tiny_sizes_still_give_every_scan_a_few_frames():
    assert set(_demo._frames_per_scan(parse_size("1MB")).values()) == {_demo.MIN_FRAMES_PER_SCAN}


def test_progress_counts_every_frame(demo):
    catalog, calls = demo
    frames = 0
    for path in data_dir(catalog).rglob("*.nxs"):
        with h5py.File(path, "r") as f:
            frames += f["entry/data/data"].shape[0]
    assert frames == sum(_demo._frames_per_scan(parse_size(SIZE)).values()) + CALIB_FRAMES * len(BEAMTIME_IDS)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) == frames
    assert calls[-1] == (frames * FRAME_BYTES, frames * FRAME_BYTES)


def test_rerun_skips_complete_files(demo):
    catalog, calls = demo
    stamps = {p: p.stat().st_mtime_ns for p in data_dir(catalog).rglob("*") if p.is_file()}
    rerun = []
    assert write_demo_data(catalog.parent, SIZE, progress=lambda *a: rerun.append(a)) == catalog
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert rerun[-1] == calls[-1]  # the bar still reaches the end


def test_same_seed_gives_the_same_frames(demo, tmp_path):
    """A scan rewritten alone (the others skipped) has the same bytes as in a full run."""
    copy = tmp_path / "copy"
    shutil.copytree(demo[0].parent, copy)
    scan = Path("data/bt-1001/raw/scan_0001.nxs")
    (copy / scan).unlink()
    write_demo_data(copy, SIZE, seed=0)
    with h5py.File(demo[0].parent / scan, "r") as a, h5py.File(copy / scan, "r") as b:
        np.testing.assert_array_equal(a["entry/data/data"][()], b["entry/data/data"][()])
        np.testing.assert_array_equal(a["entry/data/y"][()], b["entry/data/y"][()])


def test_another_seed_rewrites_with_other_frames(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo[0].parent, copy)
    write_demo_data(copy, SIZE, seed=1)
    scan = "data/bt-1001/raw/scan_0001.nxs"
    with h5py.File(copy / scan, "r") as f:
        assert f.attrs["beamside_demo_seed"] == 1
    assert not np.array_equal(first_frame(demo[0].parent / scan), first_frame(copy / scan))
