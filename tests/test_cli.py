"""The beamside command as a new user types it: demo-data, info, reduce."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import analysis_lib as al


def beamside(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "analysis_lib.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    run = beamside("demo-data", folder, "--size", "60MB")
    assert run.returncode == 0, run.stderr
    catalog = folder / "catalog.yaml"
    assert f"catalog: {catalog}" in run.stdout
    return {"BEAMSIDE_CATALOG": str(catalog), "JUPYTERHUB_USER": "alice"}


def test_info_shows_tree_chunks_filters_and_default(demo):
    run = beamside("info", "bt-1001/raw/scan_0001.nxs", env_extra=demo)
    assert run.returncode == 0, run.stderr
    assert "chunks 1×1062×1028" in run.stdout and "bitshuffle" in run.stdout
    assert "NeXus default: /entry/data/data" in run.stdout
    assert "pixel_mask" in run.stdout


def test_reduce_mean_frame_matches_numpy(demo, tmp_path):
    out = tmp_path / "mean.nxs"
    run = beamside("reduce", "mean-frame", "bt-1001/raw/scan_0001.nxs", "-o", out, "--quiet", env_extra=demo)
    assert run.returncode == 0, run.stderr
    assert "on-site" in run.stdout and "the data stayed here" in run.stdout
    source = al.resolve("bt-1001/raw/scan_0001.nxs", user="alice", catalog=demo["BEAMSIDE_CATALOG"])
    import hdf5plugin  # noqa: F401

    with h5py.File(source) as f:
        expected = f["/entry/data/data"][()].mean(axis=0)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["/entry/result/mean_frame"][()], expected)
        assert f["/entry/process/user"][()].decode() == "alice"
        assert f["/entry/process/inputs/input_0/path"][()].decode() == str(source)


def test_reduce_roi_sums_with_progress_bar(demo, tmp_path):
    out = tmp_path / "roi.nxs"
    run = beamside("reduce", "roi-sums", "bt-1001/raw/scan_0001.nxs", "-o", out,
                   "--roi", "ring=100:200,300:400", "--roi", "corner=0:10,0:10", env_extra=demo)
    assert run.returncode == 0, run.stderr
    assert "100%" in run.stderr  # the progress bar reached the end
    with h5py.File(out) as f:
        sums = f["/entry/result/roi_sums"][()]
        assert sums.shape[1] == 2 and (sums[:, 0] > 0).all()


def test_reduce_radial_profile_with_beamtime_poni(demo, tmp_path):
    out = tmp_path / "rings.nxs"
    run = beamside("reduce", "radial-profile", "bt-1001/raw/scan_0001.nxs", "-o", out, "--poni",
                   "bt-1001/calib/detector.poni", "--npt", "200", "--quiet", env_extra=demo)
    assert run.returncode == 0, run.stderr
    with h5py.File(out) as f:
        profiles = f["/entry/result/radial_profile"][()]
        assert profiles.shape[1] == 200 and np.isfinite(profiles).all()
        assert f["/entry/result/q"].attrs["units"]


def test_no_access_is_one_clear_line(demo, tmp_path):
    run = beamside("reduce", "mean-frame", "bt-1002/raw/scan_0001.nxs", "-o", tmp_path / "x.nxs", env_extra=demo)
    assert run.returncode == 2
    assert run.stderr.strip() == "beamside: error: user 'alice' is not (or no longer) a member of beamtime 'bt-1002'"


def test_output_inside_beamtime_data_is_refused_before_reading(demo):
    data_root = os.path.dirname(demo["BEAMSIDE_CATALOG"]) + "/data"
    run = beamside("reduce", "mean-frame", "bt-1001/raw/scan_0001.nxs", "-o", f"{data_root}/bt-1001/processed/m.nxs",
                   env_extra=demo)
    assert run.returncode == 2 and "inside beamtime data" in run.stderr
    assert "reducing" not in run.stderr  # refused before any work


def test_hub_commands_come_from_the_hub_and_the_library_never_imports_it():
    # `beamside up` and `beamside passwd` are added by beamside_hub through an entry point
    for command in ("up", "passwd"):
        run = beamside(command, "--help")
        assert run.returncode == 0, run.stderr
        assert f"usage: beamside {command}" in run.stdout
    library = os.path.dirname(al.__file__)
    for name in os.listdir(library):
        if name.endswith(".py"):
            with open(os.path.join(library, name)) as f:
                imports = re.findall(r"^\s*(?:from|import)\s+beamside_hub\b", f.read(), re.MULTILINE)
            assert not imports, f"analysis_lib/{name} imports beamside_hub"
