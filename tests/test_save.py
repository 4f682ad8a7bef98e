"""Tests of ``save``: real files written under tmp_path and read back with h5py.

The atomicity test kills a real writer process with SIGKILL mid-write; the
beamtime-data refusal uses a real catalog file and a real symlink; the full
disk is a real small file system (tmpfs, mounted as root).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import analysis_lib as al
from analysis_lib import _save
from analysis_lib._errors import AccessDenied
from analysis_lib._save import save
from analysis_lib.catalog import CATALOG_ENV, Catalog


@pytest.fixture(autouse=True)
def no_catalog(monkeypatch):
    """Tests start without a catalog, whatever the environment running them has."""
    monkeypatch.delenv(CATALOG_ENV, raising=False)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _small_result(name: str = "result", value: float = 1.0) -> xr.DataArray:
    return xr.DataArray(np.full(3, value), dims="x", name=name)


# -- layout and round trips ---------------------------------------------------------
def test_dataarray_roundtrip_with_coords_units_and_attrs(tmp_path):
    intensity = xr.DataArray(
        np.arange(12.0).reshape(3, 4),
        dims=("frame", "q"),
        coords={
            "q": ("q", np.linspace(0.1, 0.4, 4), {"units": "1/nm", "long_name": "scattering vector"}),
            "label": ("frame", np.array(["a", "bb", "c"], dtype=object)),
            "energy": ((), 12.4, {"units": "keV"}),
        },
        name="intensity",
        attrs={
            "units": "counts",
            "count": 7,
            "mask": np.array([1, 0, 1]),
            "detectors": ["eiger", "pilatus"],
            "geometry": {"distance": 0.2, "pixel": [75e-6, 75e-6]},
        },
    )
    path = save(intensity, tmp_path / "out.nxs")

    assert path == tmp_path / "out.nxs"
    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert f.attrs["default"] == "entry"
        assert f.attrs["file_name"] == str(path)
        assert f.attrs["creator"].startswith("beamside ")
        dt.datetime.fromisoformat(f.attrs["file_time"])
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry"].attrs["default"] == "result"

        data = f["entry/result"]
        assert data.attrs["NX_class"] == "NXdata"
        assert data.attrs["signal"] == "intensity"
        assert list(data.attrs["axes"]) == [".", "q"]
        assert list(data.attrs["q_indices"]) == [1]
        assert list(data.attrs["label_indices"]) == [0]
        assert "energy_indices" not in data.attrs

        np.testing.assert_array_equal(data["intensity"][()], intensity.values)
        assert data["intensity"].compression is None  # small: stored plain
        np.testing.assert_allclose(data["q"][()], intensity.q.values)
        assert data["q"].attrs["units"] == "1/nm"
        assert data["q"].attrs["long_name"] == "scattering vector"
        assert [_text(v) for v in data["label"][()]] == ["a", "bb", "c"]
        assert data["energy"][()] == 12.4
        assert data["energy"].attrs["units"] == "keV"

        attrs = data["intensity"].attrs
        assert attrs["units"] == "counts"
        assert attrs["count"] == 7
        np.testing.assert_array_equal(attrs["mask"], [1, 0, 1])
        assert list(attrs["detectors"]) == ["eiger", "pilatus"]
        assert json.loads(attrs["geometry"]) == {"distance": 0.2, "pixel": [75e-6, 75e-6]}


def test_results_do_not_carry_the_sources_link_target(tmp_path):
    """The detector signal's NeXus ``@target`` is true of the raw file only: a saved result is no link target."""
    import analysis_lib as al

    from .conftest import write_stack

    def link_from_the_detector(f):
        f.create_group("/entry/instrument/detector")["data"] = f["/entry/data/data"]  # a hard link, @target on the field
        f["/entry/data/data"].attrs["target"] = "/entry/instrument/detector/data"

    raw = write_stack(tmp_path / "raw.nxs", np.ones((4, 8, 8), dtype=np.uint16), extra=link_from_the_detector)
    frames = al.open(raw)["data"]
    assert frames.attrs["target"] == "/entry/instrument/detector/data"
    for name, result in {"bin": al.ops.bin(frames, 2), "correct": al.ops.correct(frames), "mean": al.ops.mean_frame(frames)}.items():
        with h5py.File(save(result, tmp_path / f"{name}.nxs"), "r") as f:
            for obj in [f, *(f[p] for p in _all_paths(f))]:
                assert "target" not in obj.attrs, (name, obj.name)
            signal = f["/entry/result"].attrs["signal"]
            assert f["/entry/result"][signal].attrs["units"] == "counts"  # the other attrs travel as before


def _all_paths(f: h5py.File) -> list[str]:
    paths: list[str] = []
    f.visit(paths.append)
    return paths


def test_dataset_with_two_variables(tmp_path):
    ds = xr.Dataset(
        {
            "mean": (("y", "x"), np.ones((2, 3)), {"units": "counts"}),
            "std": (("y", "x"), np.full((2, 3), 0.5)),
        },
        coords={"x": ("x", [0.0, 1.0, 2.0], {"units": "mm"}), "y": ("y", [10, 20])},
        attrs={"title": "dark-corrected frames"},
    )
    save(ds, tmp_path / "two.nxs")

    with h5py.File(tmp_path / "two.nxs", "r") as f:
        data = f["entry/result"]
        assert data.attrs["signal"] == "mean"
        assert list(data.attrs["axes"]) == ["y", "x"]
        assert list(data.attrs["y_indices"]) == [0]
        assert list(data.attrs["x_indices"]) == [1]
        assert data.attrs["title"] == "dark-corrected frames"
        np.testing.assert_array_equal(data["mean"][()], ds["mean"].values)
        np.testing.assert_array_equal(data["std"][()], ds["std"].values)
        assert data["mean"].attrs["units"] == "counts"
        assert data["x"].attrs["units"] == "mm"


def test_dask_backed_result_is_computed_before_any_file_exists(tmp_path):
    temps_seen_while_computing = []

    def record(block):
        temps_seen_while_computing.extend(_temps(tmp_path))
        return block * 2

    lazy = da.ones((512, 512), chunks=(128, 512)).map_blocks(record, dtype=float)  # 2 MiB
    result = xr.DataArray(lazy, dims=("y", "x"), name="doubled")
    save(result, tmp_path / "lazy.nxs")

    assert temps_seen_while_computing == []
    with h5py.File(tmp_path / "lazy.nxs", "r") as f:
        dataset = f["entry/result/doubled"]
        np.testing.assert_array_equal(dataset[()], np.full((512, 512), 2.0))
        assert dataset.compression == "gzip"  # above ~1 MB: compressed, chunked
        assert dataset.compression_opts == 4
        assert dataset.chunks is not None
        assert list(f["entry/result"].attrs["axes"]) == [".", "."]


def test_plain_numpy_array_becomes_data(tmp_path):
    save(np.arange(6).reshape(2, 3), tmp_path / "np.nxs")
    with h5py.File(tmp_path / "np.nxs", "r") as f:
        assert f["entry/result"].attrs["signal"] == "data"
        np.testing.assert_array_equal(f["entry/result/data"][()], np.arange(6).reshape(2, 3))


def test_time_coordinates_are_written_as_iso_text(tmp_path):
    times = np.array(["2026-03-01T10:00:00", "2026-03-01T10:00:01"], dtype="datetime64[s]")
    save(xr.DataArray([1.0, 2.0], dims="t", coords={"t": times}, name="I"), tmp_path / "t.nxs")
    with h5py.File(tmp_path / "t.nxs", "r") as f:
        assert [_text(v) for v in f["entry/result/t"][()]] == ["2026-03-01T10:00:00", "2026-03-01T10:00:01"]


# -- provenance ---------------------------------------------------------------------
def test_provenance_records_program_user_parameters_steps_and_inputs(tmp_path):
    raw = tmp_path / "scan_0001.nxs"
    raw.write_bytes(b"x" * 1234)
    dark = tmp_path / "dark.nxs"
    dark.write_bytes(b"y" * 10)
    mask = tmp_path / "mask.h5"
    mask.write_bytes(b"z" * 77)
    for i, p in enumerate((raw, dark, mask)):
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    steps = json.dumps([{"op": "subtract_dark", "parameters": {}}, {"op": "mean_frame", "parameters": {"axis": 0}}])
    ds = xr.Dataset(
        {
            "mean": ("x", [1.0, 2.0], {"beamside_source": [str(raw), str(dark)], "units": "counts"}),
            "std": ("x", [0.1, 0.2], {"beamside_source": str(raw)}),
        },
        attrs={"beamside_source": str(raw), "beamside_steps": steps},
    )

    save(
        ds,
        tmp_path / "result.nxs",
        parameters={"threshold": 3.5, "roi": [10, 20, 30, 40], "detector": "eiger", "geometry": {"d": 0.2}},
        inputs=[mask],
        program="azimuthal.py",
        user="alice",
    )

    with h5py.File(tmp_path / "result.nxs", "r") as f:
        process = f["entry/process"]
        assert process.attrs["NX_class"] == "NXprocess"
        assert _text(process["program"][()]) == "azimuthal.py"
        assert _text(process["version"][()])
        assert _text(process["user"][()]) == "alice"
        date = dt.datetime.fromisoformat(_text(process["date"][()]))
        assert date.utcoffset() == dt.timedelta(0)
        assert abs(dt.datetime.now(dt.timezone.utc) - date) < dt.timedelta(minutes=5)
        assert json.loads(_text(process["steps"][()])) == json.loads(steps)

        params = process["parameters"]
        assert params.attrs["NX_class"] == "NXcollection"
        assert params["threshold"][()] == 3.5
        np.testing.assert_array_equal(params["roi"][()], [10, 20, 30, 40])
        assert _text(params["detector"][()]) == "eiger"
        assert json.loads(_text(params["geometry"][()])) == {"d": 0.2}
        assert json.loads(_text(params["json"][()])) == {
            "threshold": 3.5,
            "roi": [10, 20, 30, 40],
            "detector": "eiger",
            "geometry": {"d": 0.2},
        }

        listing = process["inputs"]
        assert listing.attrs["NX_class"] == "NXcollection"
        assert sorted(listing) == ["input_0", "input_1", "input_2"]  # raw is mentioned thrice, kept once
        recorded = [listing[f"input_{i}"] for i in range(3)]
        assert [_text(g["path"][()]) for g in recorded] == [str(mask), str(raw), str(dark)]
        for group, source in zip(recorded, (mask, raw, dark)):
            assert group["size"][()] == source.stat().st_size
            mtime = dt.datetime.fromisoformat(_text(group["mtime"][()]))
            assert mtime.timestamp() == pytest.approx(source.stat().st_mtime)

        # Provenance lives in /entry/process, not repeated as attrs of the result.
        data = f["entry/result"]
        for obj in (data, data["mean"], data["std"]):
            assert "beamside_source" not in obj.attrs
            assert "beamside_steps" not in obj.attrs
        assert data["mean"].attrs["units"] == "counts"


def test_provenance_without_parameters_or_inputs(tmp_path):
    save(_small_result(), tmp_path / "bare.nxs")
    with h5py.File(tmp_path / "bare.nxs", "r") as f:
        process = f["entry/process"]
        assert _text(process["program"][()]) == "beamside"
        assert json.loads(_text(process["parameters/json"][()])) == {}
        assert list(process["inputs"]) == []
        assert "steps" not in process


# -- where results may go -----------------------------------------------------------
@pytest.fixture
def facility(tmp_path):
    """A data root with one beamtime, a home directory, and the catalog describing them."""
    data = tmp_path / "data"
    (data / "bt-1001" / "processed").mkdir(parents=True)
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        textwrap.dedent(
            f"""\
            data_root: {data}
            beamtimes:
              - id: bt-1001
                members:
                  - {{user: alice, role: pi}}
            """
        )
    )
    return data, home, catalog


def test_refuses_to_write_inside_beamtime_data(facility, monkeypatch):
    data, home, catalog = facility
    monkeypatch.setenv(CATALOG_ENV, str(catalog))
    target = data / "bt-1001" / "processed" / "mean.nxs"

    with pytest.raises(AccessDenied, match="own space") as info:
        save(_small_result(), target)
    assert str(target) in str(info.value)
    assert list((data / "bt-1001" / "processed").iterdir()) == []

    with pytest.raises(AccessDenied):
        save(_small_result(), data / "loose.nxs")  # the data root itself, outside any beamtime
    assert save(_small_result(), home / "mean.nxs") == home / "mean.nxs"


def test_refuses_a_symlinked_folder_that_leads_into_data(facility, monkeypatch):
    data, home, catalog = facility
    monkeypatch.setenv(CATALOG_ENV, str(catalog))
    (home / "beamtime").symlink_to(data / "bt-1001")

    with pytest.raises(AccessDenied, match="inside beamtime data"):
        save(_small_result(), home / "beamtime" / "processed" / "mean.nxs")
    assert list((data / "bt-1001" / "processed").iterdir()) == []


def test_refuses_with_an_explicit_catalog(facility):
    data, _, catalog = facility
    target = data / "bt-1001" / "mean.nxs"
    with pytest.raises(AccessDenied):
        save(_small_result(), target, catalog=catalog)
    with pytest.raises(AccessDenied):
        save(_small_result(), target, catalog=Catalog.load(catalog))
    assert not target.exists()


def test_without_a_catalog_there_is_nothing_to_check(facility):
    data, _, _ = facility
    assert save(_small_result(), data / "demo.nxs").exists()


def test_expands_home_and_requires_an_existing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert save(_small_result(), "~/mean.nxs") == tmp_path / "mean.nxs"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(_small_result(), tmp_path / "missing" / "mean.nxs")


# -- atomicity ----------------------------------------------------------------------
_KILLED_WRITER = """
import sys
import numpy as np
from analysis_lib._save import save

# 400 MB of random float64: gzip cannot shrink it, so writing takes seconds.
save(np.random.default_rng(0).random(50_000_000), sys.argv[1])
"""


def test_sigkill_mid_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "result.nxs"
    save(_small_result("old", 42.0), target)

    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            temps = list(tmp_path.glob(".result.nxs.tmp-*"))
            if temps and temps[0].stat().st_size > 16 << 20:  # well into the write
                break
            if writer.poll() is not None:
                pytest.fail(f"writer ended before it could be killed: {writer.communicate()[1].decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the writer never got going")
            time.sleep(0.01)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.communicate()
    assert writer.returncode == -signal.SIGKILL

    # The final name still holds the complete old file; the partial one is a hidden temp.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result.nxs", temps[0].name])
    with h5py.File(target, "r") as f:
        assert f["entry/result"].attrs["signal"] == "old"
        np.testing.assert_array_equal(f["entry/result/old"][()], [42.0, 42.0, 42.0])

    # A young temp file may belong to a writer still running: the next save leaves it.
    save(_small_result("new", 1.0), target)
    assert _temps(tmp_path) == [temps[0].name]
    # Once it counts as stale, the next save to the same name removes it.
    monkeypatch.setattr(_save, "_STALE_SECONDS", 0)
    save(_small_result("new", 2.0), target)
    assert _temps(tmp_path) == []
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["entry/result/new"][()], [2.0, 2.0, 2.0])


def test_stale_temps_of_other_names_are_left_alone(tmp_path, monkeypatch):
    other = tmp_path / ".other.nxs.tmp-abc"
    other.write_bytes(b"")
    monkeypatch.setattr(_save, "_STALE_SECONDS", 0)
    save(_small_result(), tmp_path / "result.nxs")
    assert other.exists()


def test_saving_twice_just_replaces(tmp_path):
    target = tmp_path / "twice.nxs"
    result = _small_result("mean", 3.0)
    save(result, target, parameters={"n": 1})
    save(result, target, parameters={"n": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice.nxs"]
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["entry/result/mean"][()], [3.0, 3.0, 3.0])


def test_failure_during_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    fresh = tmp_path / "fresh.nxs"
    unsavable = xr.Dataset(
        {"good": ("x", [1.0, 2.0]), "bad": ("x", np.array([object(), object()], dtype=object))}
    )
    with pytest.raises(TypeError, match="'bad'"):
        save(unsavable, fresh)
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "existing.nxs"
    save(_small_result("old", 5.0), existing)
    with pytest.raises(TypeError):
        save(unsavable, existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.nxs"]
    with h5py.File(existing, "r") as f:
        np.testing.assert_array_equal(f["entry/result/old"][()], [5.0, 5.0, 5.0])


# -- a full disk ------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs) of the test's own, unmounted afterwards."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _free_bytes(folder) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root (CI runs as root)")
def test_full_disk_is_a_clear_error_and_keeps_the_earlier_result(small_disk):
    target = small_disk / "azimuthal.nxs"
    save(_small_result("old", 7.0), target)
    (small_disk / "filler").write_bytes(os.urandom(_free_bytes(small_disk) - (256 << 10)))  # 256 KiB left
    free = _free_bytes(small_disk)
    big = xr.DataArray(np.random.default_rng(1).random(1 << 17), dims="x", name="new")  # 1 MiB, gzip cannot shrink it

    with pytest.raises(al.NoSpaceError, match="no space") as err:
        save(big, target)
    assert str(target) in str(err.value) and err.value.file == str(target)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert sorted(p.name for p in small_disk.iterdir()) == ["azimuthal.nxs", "filler"]  # no temp file
    assert _free_bytes(small_disk) == free  # and no space held by one deleted but still open
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["entry/result/old"][()], [7.0, 7.0, 7.0])

    with pytest.raises(al.NoSpaceError, match="no space"):  # a new name: nothing of it appears
        save(big, small_disk / "fresh.nxs")
    assert sorted(p.name for p in small_disk.iterdir()) == ["azimuthal.nxs", "filler"]

    (small_disk / "filler").unlink()  # space freed: the same call now works
    save(big, target)
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["entry/result/new"][()], big.values)
