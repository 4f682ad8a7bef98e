"""The worked examples, for real: every notebook inside a user's server on the embedded deployment, its
results checked against numpy and pyFAI run here on the same files, and 01-quickstart in a real browser.

The notebooks' code cells run in order through the kernel API, exactly as written (no parameters
injected): they must find the user's own beamtime by themselves. The browser test uses Debian's
Chromium through Playwright (RECIPES §4) and keeps its screenshot in ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (bitshuffle frames)
import nbformat
import numpy as np
import pytest

from analysis_lib.catalog import Catalog

from .browser import logged_in
from .deploy import deployment_for_module
from .hubclient import Kernel

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
ARTIFACTS = REPO / "test-artifacts"
VIEWER_BYTES_LIMIT = 150_000
figures: dict = {}


@pytest.fixture(scope="module")
def dep():
    yield from deployment_for_module("examples", figures)


@pytest.fixture(scope="module")
def catalog(dep) -> Catalog:
    return Catalog.load(dep.runtime["paths"]["catalog"])


@pytest.fixture(scope="module")
def kernels(dep):
    """One kernel per user, in that user's own server, started on first use."""
    opened: dict[str, Kernel] = {}

    def kernel(user: str) -> Kernel:
        if user not in opened:
            figures[f"spawn to ready, {user} (s)"] = round(dep.hub.spawn(user), 2)
            opened[user] = Kernel(dep.url, user, dep.hub.token(user))
        return opened[user]

    yield kernel
    for k in opened.values():
        k.close()


def run_notebook(kernel: Kernel, name: str) -> str:
    """Run every code cell of ``examples/<name>`` in order; returns what the cells printed."""
    started = time.perf_counter()
    printed = []
    for number, cell in enumerate(nbformat.read(EXAMPLES / name, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        out = kernel.run(cell.source)
        assert out["status"] == "ok", f"{name}, cell {number}: {out['error']}\n{out['stderr'][-2000:]}"
        # nothing on stderr: no library warning a scientist can do nothing about (issue 15)
        assert out["stderr"] == "", f"{name}, cell {number} wrote to stderr:\n{out['stderr'][-2000:]}"
        printed.append(out["stdout"])
    figures[f"{name} in a user server (s)"] = round(time.perf_counter() - started, 1)
    return "".join(printed)


def ask(kernel: Kernel, expression: str):
    """The JSON value of ``expression`` in the kernel (after a notebook ran there)."""
    out = kernel.run(f"import json as _json; print(_json.dumps({expression}))")
    assert out["status"] == "ok", out["error"]
    return json.loads(out["stdout"].strip().splitlines()[-1])


def first_scan(catalog: Catalog, user: str) -> tuple[str, Path]:
    """What the notebooks pick for ``user``: the first readable beamtime and its first raw scan."""
    beamtime = catalog.readable(user)[0]
    return beamtime.id, sorted((beamtime.path / "raw").glob("*.nxs"))[0]


def result_file(dep, user: str, beamtime: str, scan: Path, what: str) -> Path:
    return Path(dep.runtime["paths"]["homes"]) / user / "results" / f"{beamtime}_{scan.stem}_{what}.nxs"


def frames_of(scan: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(scan) as f:
        return f["/entry/data/data"][()], f["/entry/instrument/detector/pixel_mask"][()]


def check_mean_frame(dep, catalog, user: str) -> Path:
    beamtime, scan = first_scan(catalog, user)
    saved = result_file(dep, user, beamtime, scan, "mean")
    with h5py.File(saved) as f:
        np.testing.assert_allclose(f["/entry/result/mean_frame"][()], frames_of(scan)[0].mean(axis=0), rtol=1e-12)
        assert f["/entry/process/inputs/input_0/path"][()].decode().endswith(f"{beamtime}/raw/{scan.name}")
    return saved


# -- the notebooks in a user's server -------------------------------------------------------------
def test_examples_are_in_a_new_users_home(dep, kernels):
    kernels("alice")
    home = Path(dep.runtime["paths"]["homes"]) / "alice" / "examples"
    names = sorted(p.name for p in home.glob("*.ipynb"))
    assert names == ["01-quickstart.ipynb", "02-azimuthal-integration.ipynb", "03-roi-scan.ipynb"]
    for name in names:  # shipped without outputs: a new user sees the code, not someone else's results
        assert all(not c.get("outputs") for c in nbformat.read(home / name, as_version=4).cells)


def test_quickstart_views_and_saves_the_mean_frame(dep, catalog, kernels):
    alice = kernels("alice")
    printed = run_notebook(alice, "01-quickstart.ipynb")
    assert "bt-1001" in printed and "the data stayed here" in printed
    shown = ask(alice, "[viewer.wait(), viewer.first_frame_seconds, str(viewer.poni), viewer.mask is not None,"
                       " viewer.last_update_bytes][1:]")
    figures["viewer in alice's server: time to first frame (s)"] = round(shown[0], 3)
    figures["viewer in alice's server: bytes of the first frame (masked)"] = shown[3]
    assert shown[1].endswith("bt-1001/calib/detector.poni") and shown[2] is True  # found beside the data
    assert shown[3] <= VIEWER_BYTES_LIMIT
    # moving the slider sends one rendered frame (and the redrawn plots), never the raw one (4.4 MB)
    alice.binary.clear()
    assert ask(alice, "[viewer._widget() is not None, setattr(viewer._slider, 'value', 3)][0]") is True
    frame_update = ask(alice, "[viewer.wait(), viewer.last_update_bytes][1]")
    figures["viewer in alice's server: websocket bytes of one frame update (frame + plots)"] = sum(alice.binary)
    assert 0 < frame_update <= VIEWER_BYTES_LIMIT
    assert frame_update < max(alice.binary) < frame_update + 2000  # the image and its message header
    assert sum(alice.binary) <= VIEWER_BYTES_LIMIT + 100_000  # with the ROI and radial plots
    check_mean_frame(dep, catalog, "alice")


def test_quickstart_runs_unmodified_for_another_beamtime(dep, catalog, kernels):
    printed = run_notebook(kernels("carol"), "01-quickstart.ipynb")
    assert "bt-2001" in printed and "bt-1001" not in printed
    check_mean_frame(dep, catalog, "carol")


def test_azimuthal_integration_on_the_gateway_cluster(dep, catalog, kernels):
    from pyFAI import load
    from pyFAI.calibrant import get_calibrant

    alice = kernels("alice")
    printed = run_notebook(alice, "02-azimuthal-integration.ipynb")
    assert "/services/dask-gateway/clusters/" in printed  # the dashboard link, through the hub's proxy
    beamtime, scan = first_scan(catalog, "alice")
    frames, pixel_mask = frames_of(scan)
    poni = scan.parent.parent / "calib" / "detector.poni"
    with h5py.File(result_file(dep, "alice", beamtime, scan, "radial")) as f:
        profiles, q = f["/entry/result/radial_profile"][()], f["/entry/result/q"][()]
        assert f["/entry/result/y"].attrs["units"] == "mm" and f["/entry/result/q"].attrs["units"] == "nm^{-1}"
        steps = f["/entry/process/steps"][()].decode()
        inputs = {f[f"/entry/process/inputs/{k}/path"][()].decode() for k in f["/entry/process/inputs"]}
        assert f["/entry/process/parameters/poni"][()].decode() == str(poni)
    assert profiles.shape == (len(frames), 1000) and q.shape == (1000,)
    assert "radial_profile" in steps and {str(scan), str(poni)} <= inputs
    ai = load(str(poni))
    for i in (0, len(frames) - 1):
        expected = ai.integrate1d(frames[i], 1000, unit="q_nm^-1", mask=pixel_mask != 0)
        np.testing.assert_allclose(profiles[i], expected.intensity, rtol=1e-6)
        np.testing.assert_allclose(q, expected.radial)
    # the strongest peak of the summed profiles is a reflection of the sample (CeO2 for bt-1001)
    with h5py.File(scan) as f:
        sample = f["/entry/sample/name"][()].decode()
    reflections = 2 * np.pi / np.array(get_calibrant(sample).get_dSpacing())  # Å^-1, as peak below
    peak = q[np.argmax(np.nansum(profiles, axis=0))] / 10
    assert np.min(np.abs(reflections - peak)) < 0.02, f"strongest peak at q={peak * 10:.2f} nm^-1"
    assert ask(alice, "client.status") == "closed"


def test_roi_scan_sums_equal_numpy(dep, catalog, kernels):
    alice = kernels("alice")
    run_notebook(alice, "03-roi-scan.ipynb")
    rois = ask(alice, "rois")
    beamtime, scan = first_scan(catalog, "alice")
    frames = frames_of(scan)[0].astype(np.uint64)
    with h5py.File(result_file(dep, "alice", beamtime, scan, "roi_sums")) as f:
        sums, names = f["/entry/result/roi_sums"][()], [n.decode() for n in f["/entry/result/roi"][()]]
        y, y_units = f["/entry/result/y"][()], f["/entry/result/y"].attrs["units"]
    assert names == list(rois) and y_units == "mm" and len(y) == len(frames)
    for column, (r0, r1, c0, c1) in enumerate(rois.values()):
        np.testing.assert_array_equal(sums[:, column], frames[:, r0:r1, c0:c1].sum(axis=(1, 2)))
    assert ask(alice, "[ax.get_xlabel(), ax.get_ylabel()]") == ["sample y [mm]", "ROI sum [counts]"]


def test_remote_script_reduces_any_users_scan(dep, catalog, tmp_path):
    """examples/scripts/remote_reduce.py from outside, for carol's confidential beamtime: only the mean travels."""
    beamtime, scan = first_scan(catalog, "carol")
    env = {k: v for k, v in os.environ.items() if k not in ("BEAMSIDE_CATALOG", "JUPYTERHUB_USER")}
    env["BEAMSIDE_TOKEN"] = dep.hub.token("carol", scopes=["access:services!service=dask-gateway"])
    proxy = f"gateway://127.0.0.1:{dep.runtime['settings']['dask']['scheduler_port']}"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "scripts" / "remote_reduce.py"), "--hub", dep.url, "--proxy-address", proxy,
         "--ref", f"{beamtime}/raw/{scan.name}", "-o", str(tmp_path / "mean.nxs")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    with h5py.File(tmp_path / "mean.nxs") as f:
        np.testing.assert_allclose(f["/entry/result/mean_frame"][()], frames_of(scan)[0].mean(axis=0), rtol=1e-12)


# -- the quickstart in a real browser -----------------------------------------------------------------
def test_quickstart_in_the_browser(dep, catalog, kernels):
    kernels("alice")  # her server is up; the saved result must be written anew by the browser run
    beamtime, scan = first_scan(catalog, "alice")
    result = result_file(dep, "alice", beamtime, scan, "mean")
    result.unlink(missing_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    with logged_in(dep.url, "alice", dep.logins["alice"], {"width": 1400, "height": 1100}) as (_, page):
        console_errors = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        try:
            page.goto(f"{dep.url}/user/alice/lab/tree/examples/01-quickstart.ipynb?reset")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # RECIPES §4
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            images = page.locator(".jp-OutputArea-output img.widget-image")
            images.first.wait_for(timeout=180_000)
            # the frame, then the ROI sum and radial profile plots, all drawn
            page.wait_for_function("""() => { const shown = [...document.querySelectorAll(
                '.jp-OutputArea-output img.widget-image')].filter(i => i.complete && i.naturalWidth > 0);
                return shown.length === 3; }""", timeout=180_000)
            frame = images.first
            size = frame.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            page.get_by_text(re.compile(r"^saved /.*_mean\.nxs")).wait_for(timeout=180_000)
            figures["browser: login to all cells run (s)"] = round(time.perf_counter() - started, 1)
            frame.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "quickstart-alice.png"))
            # what a scientist should not see in their first session (issue 15)
            noise = {text: page.get_by_text(text).count() for text in (
                "pyOpenCl", "WARNING:silx", "Would you like to get notified about official Jupyter news?")}
            stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            warnings = stderr.all_inner_texts()
            # the saved result, opened by double-click in the file browser
            page.goto(f"{dep.url}/user/alice/lab/tree/results")
            page.locator(".jp-DirListing-item", has_text=result.name).dblclick(timeout=60_000)
            # h5web follows the file's NeXus @default to the mean frame and draws it as a heatmap
            page.get_by_text("NX Heatmap").wait_for(timeout=120_000)
            page.get_by_text("mean frame", exact=True).wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "quickstart-alice-h5web.png"))
    assert noise == dict.fromkeys(noise, 0), noise
    assert warnings == [], warnings
    assert console_errors == [], console_errors
    assert size == [514, 531]  # 1028×1062 frame, shown 2×2-binned
    assert result.exists(), f"{result} was not written by the browser run"
    check_mean_frame(dep, catalog, "alice")
