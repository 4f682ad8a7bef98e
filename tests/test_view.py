"""al.view without a browser: the rendering functions (_render), the numbers behind the plots, the widget (_view)."""

from __future__ import annotations

import io
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import analysis_lib as al
from analysis_lib import _calibration as calibration
from analysis_lib import _render as render
from analysis_lib import _view as view

from .conftest import write_stack

EIGER_1M = (1062, 1028)
LIMIT = 150_000  # bytes per frame update for a 1-Mpixel frame (issue 5)
GEOMETRY = {  # a pyFAI geometry dict: Eiger-like 75 µm pixels, beam near the centre
    "detector": "Detector",
    "detector_config": {"pixel1": 75e-6, "pixel2": 75e-6, "max_shape": list(EIGER_1M)},
    "dist": 0.15, "poni1": 0.04, "poni2": 0.037, "rot1": 0.0, "rot2": 0.0, "rot3": 0.0, "wavelength": 0.5e-10,
}


def eiger_frame(seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A Poisson frame with Debye-Scherrer rings and a module gap: as hard to compress as a real one."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.meshgrid(np.arange(EIGER_1M[0]) - 533.0, np.arange(EIGER_1M[1]) - 493.0, indexing="ij"))
    rings = sum(300 * np.exp(-((r - r0) / 2.0) ** 2) for r0 in (180, 260, 390, 470))
    frame = rng.poisson(scale * (2 + 6 * np.exp(-r / 150) + rings)).astype(np.uint32)
    frame[514:548] = 0
    return frame


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return eiger_frame()


@pytest.fixture(scope="module")
def stack() -> xr.DataArray:
    frames = np.stack([eiger_frame(i, scale=1 + i) for i in range(4)])
    y = xr.Variable("y", [-1.5, -0.5, 0.5, 1.5], {"units": "mm", "long_name": "sample y"})
    return xr.DataArray(da.from_array(frames, chunks=(1, *EIGER_1M)), dims=("y", "row", "column"),
                        coords={"y": y}, attrs={"units": "counts"})


def geometry():
    """pyFAI's own integrator for GEOMETRY: what the viewer's profiles are checked against."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    ai = AzimuthalIntegrator()
    ai.set_config(dict(GEOMETRY))
    return ai


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- rendering ---------------------------------------------------------------------------------
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("image_format, size", [("jpeg", render.DISPLAY_SIZE), ("webp", render.DISPLAY_SIZE), ("png", 400)])
def test_a_1m_frame_renders_small_at_display_size(frame, log, image_format, size):
    data = render.render_frame(frame, render.Look(log=log, size=size, image_format=image_format))
    image = decoded(data)
    assert image.format == image_format.upper()
    factor = render.display_factor(EIGER_1M, size)
    assert image.size == (-(-EIGER_1M[1] // factor), -(-EIGER_1M[0] // factor))
    assert max(image.size) <= size
    assert len(data) <= LIMIT, f"{image_format} {'log' if log else 'linear'}: {len(data):,} bytes"


def test_downsample_is_the_block_mean_of_good_pixels():
    image = np.arange(25, dtype=float).reshape(5, 5)
    image[0, 0] = np.nan
    out = render.downsample(image, 2)
    assert out.shape == (3, 3)
    assert out[0, 0] == pytest.approx((1 + 5 + 6) / 3)
    assert out[2, 2] == 24  # the padded edge averages only real pixels
    assert np.isnan(render.downsample(np.full((2, 2), np.nan), 2)).all()


def test_contrast_limits_are_the_percentiles_of_the_finite_pixels(frame):
    values = np.where(frame > 0, frame, np.nan)
    low, high = render.contrast_limits(values, (2.0, 98.0))
    assert (low, high) == pytest.approx(tuple(np.nanpercentile(values, [2, 98])))
    assert render.contrast_limits(np.full((3, 3), np.nan)) == (0.0, 1.0)
    assert render.contrast_limits(np.ones((3, 3))) == (1.0, 2.0)  # flat frame: a visible, non-empty range


def test_log_scale_keeps_zero_counts_at_the_floor_and_gaps_missing():
    image = np.array([[0.0, 1.0], [100.0, np.nan]])
    out = render.scaled(image, log=True)
    np.testing.assert_allclose(out[:1], [[0.0, 0.0]])
    assert out[1, 0] == pytest.approx(2.0) and np.isnan(out[1, 1])
    assert render.scaled(image, log=False) is image


def test_linear_and_log_differ_and_mask_and_roi_show(frame):
    linear = np.asarray(decoded(render.render_frame(frame, render.Look(image_format="png"))))
    log = np.asarray(decoded(render.render_frame(frame, render.Look(log=True, image_format="png"))))
    assert (linear != log).mean() > 0.3
    mask = np.zeros(EIGER_1M, bool)
    mask[514:548] = True
    masked = decoded(render.render_frame(frame, render.Look(image_format="png"), mask=mask, roi=(100, 300, 200, 500)))
    indices = np.asarray(masked)  # the palette indices themselves (PNG stays paletted)
    assert (indices[260:272] == render._NO_DATA).all()  # gap rows 514-548, binned by 2
    assert (indices[50, 100:250] == render._ROI_EDGE).all() and (indices[149, 100:250] == render._ROI_EDGE).all()
    assert (indices[50:150, 100] == render._ROI_EDGE).all() and (indices[50:150, 249] == render._ROI_EDGE).all()


def test_unknown_image_format_is_refused(frame):
    with pytest.raises(ValueError, match="image format 'gif'"):
        render.render_frame(frame, render.Look(image_format="gif"))


# -- scan axes and the numbers behind the plots ------------------------------------------------
def test_frame_labels_name_the_scan_position_with_units(stack):
    assert render.frame_label(stack, 2) == "y = 0.5 mm · frame 3 of 4"
    values, label = render.scan_axis(stack)
    assert label == "sample y (mm)" and list(values) == [-1.5, -0.5, 0.5, 1.5]
    grid = stack.data.reshape(2, 2, *EIGER_1M)
    two_axes = xr.DataArray(grid, dims=("x", "y", "row", "column"), coords={"x": [0, 1]})
    assert render.frame_label(two_axes, 3) == "x = 1 · frame 4 of 4"
    assert render.scan_axis(two_axes)[1] == "frame"
    np.testing.assert_array_equal(render.frame_at(two_axes, 3).values, grid[1, 1].compute())


def test_roi_series_equals_numpy(stack):
    roi = (100, 400, 50, 700)
    expected = stack.values[:, 100:400, 50:700].sum(axis=(1, 2))
    np.testing.assert_array_equal(view.roi_series(stack, roi), expected)


def test_radial_profile_of_a_frame_is_pyfais(frame):
    radial, intensity, label = view.radial_profile(frame, GEOMETRY, npt=300)
    expected = geometry().integrate1d(frame, 300, unit=view.RADIAL_UNIT)
    np.testing.assert_allclose(intensity, expected.intensity)
    np.testing.assert_allclose(radial, expected.radial)
    assert label.startswith("q (") and "nm" in label


def test_the_viewer_and_ops_share_one_integrator_per_geometry(frame):
    from analysis_lib import _integrator, ops

    view.radial_profile(frame, GEOMETRY, npt=50)
    built = _integrator.integrator(GEOMETRY)
    assert _integrator.integrator(dict(GEOMETRY)) is built  # pyFAI's engine is built once per process
    assert ops.integrate1d is view.integrate1d is _integrator.integrate1d


def test_geometry_and_pixel_mask_are_found_beside_the_data(tmp_path, stack):
    beamtime = tmp_path / "bt-9"
    (beamtime / "raw").mkdir(parents=True)
    (beamtime / "calib").mkdir()
    poni = beamtime / "calib" / "detector.poni"
    geometry().write(str(poni))
    mask = np.zeros(EIGER_1M, np.uint32)
    mask[514:548] = 1

    def with_mask(f):
        f.create_dataset("/entry/instrument/detector/pixel_mask", data=mask)

    path = write_stack(beamtime / "raw" / "scan.nxs", stack.values[:2], extra=with_mask)
    frames = al.open(path)["data"]
    assert calibration.find_poni(frames) == poni
    np.testing.assert_array_equal(calibration.find_pixel_mask(frames), mask)
    assert calibration.find_poni(stack) is None and calibration.find_pixel_mask(stack) is None  # nothing says where it came from
    viewer = al.view(frames)  # the first frame shows before the mask is looked up, then is redrawn with it
    assert viewer.poni == poni and viewer.mask is None
    first = viewer.image
    viewer._widget()
    viewer.wait()
    np.testing.assert_array_equal(viewer.mask, mask)
    assert viewer._image.value != first and decoded(viewer._radial_image.value).format == "PNG"


def test_geometry_and_pixel_mask_are_found_from_the_files_own_nexus_metadata(tmp_path, stack):
    """@beamside_geometry names the PONI file, @target the NXdetector whose pixel_mask it is."""
    folder = tmp_path / "bt-10"
    folder.mkdir()
    poni = folder / "eiger.poni"  # not where the fallback looks
    geometry().write(str(poni))
    mask = np.zeros(EIGER_1M, np.uint32)
    mask[:, 514:520] = 1

    def detector_elsewhere(f):
        detector = f.create_group("/entry/instrument/eiger")
        detector.attrs["NX_class"] = "NXdetector"
        detector["data"] = f["/entry/data/data"]  # hard link, as NeXus writers do
        f["/entry/data/data"].attrs.update(target="/entry/instrument/eiger/data", beamside_geometry="eiger.poni")
        detector.create_dataset("pixel_mask", data=mask)

    frames = al.open(write_stack(folder / "scan.nxs", stack.values[:2], extra=detector_elsewhere))["data"]
    assert calibration.pixel_mask_path(frames) == "/entry/instrument/eiger/pixel_mask"
    assert calibration.find_poni(frames) == poni
    np.testing.assert_array_equal(calibration.find_pixel_mask(frames), mask)


def test_a_geometry_the_file_names_outside_what_the_user_may_read_is_not_used(tmp_path, stack):
    outside = tmp_path / "elsewhere.poni"
    geometry().write(str(outside))
    (tmp_path / "bt-11").mkdir()

    def naming_outside(f):
        f["/entry/data/data"].attrs["beamside_geometry"] = "../elsewhere.poni"

    frames = al.open(write_stack(tmp_path / "bt-11" / "scan.nxs", stack.values[:2], extra=naming_outside))["data"]
    assert calibration.find_poni(frames) is None  # the file's own folder is the boundary without a catalog


# -- the widget ---------------------------------------------------------------------------------
def test_the_viewer_builds_and_follows_its_controls(stack):
    import ipywidgets

    viewer = al.view(stack, poni=GEOMETRY)
    assert viewer.first_frame_seconds > 0 and viewer.last_update_bytes == len(viewer.image) <= LIMIT
    panel = viewer._widget()
    assert isinstance(panel, ipywidgets.VBox)
    assert "application/vnd.jupyter.widget-view+json" in viewer._repr_mimebundle_()
    viewer.wait()
    assert decoded(viewer._roi_image.value).format == "PNG"
    assert decoded(viewer._radial_image.value).format == "PNG"
    first = viewer._image.value

    viewer._slider.value = 3
    assert viewer._where.value == "y = 1.5 mm · frame 4 of 4"
    assert viewer._image.value != first and decoded(viewer._image.value).format == "JPEG"
    viewer._scale.value = "log"
    assert viewer.look.log and viewer.last_update_bytes <= LIMIT

    viewer._rows.value = (10, 20)
    viewer._cols.value = (30, 60)
    viewer.wait()
    np.testing.assert_array_equal(viewer._series, stack.values[:, 10:20, 30:60].sum(axis=(1, 2)))
    viewer._rows.value = (5, 5)
    assert "empty" in viewer._status.value and viewer.roi == (10, 20, 30, 60)


def test_without_a_geometry_there_is_no_radial_profile(stack):
    viewer = al.view(stack)
    assert viewer.radial_plot() is None
    viewer._widget()
    viewer.wait()
    assert viewer._radial_image.layout.display == "none" and viewer._roi_image.value


def test_without_ipywidgets_the_viewer_is_a_static_image(stack, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails as if not installed
    viewer = view.view(stack)
    bundle = viewer._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert '<img src="data:image/jpeg;base64,' in bundle["text/html"] and "frame 1 of 4" in bundle["text/html"]
