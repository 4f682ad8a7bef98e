"""``al.view``: look at a frame stack from a browser at the end of a slow link.

Frames are rendered here, next to the data, into compressed images of display
size (a 1-Mpixel frame becomes a ~40-100 kB JPEG); the browser never receives
a raw frame. Showing a frame reads only that frame's chunk, so the first
image of a huge scan appears as fast as one chunk decompresses. Summing a
region of interest over the whole stack reads every frame, so it runs in a
background thread (on the user's Dask cluster when one is open) while the
frame slider stays responsive.

Rendering is a chain of small pure functions (downsample → contrast →
palette indices → encoded image, and plots to PNG) that tests call without a
browser; :class:`FrameViewer` only wires them to ipywidgets. ipywidgets is
optional: without it the viewer shows one static image.
"""

from __future__ import annotations

import base64
import html
import io
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from . import _provenance, ops

__all__ = ["FrameViewer", "view"]

DISPLAY_SIZE = 600  # px: a 1062×1028 frame is shown 2×2-binned, 531×514
COLORMAPS = ("viridis", "magma", "inferno", "cividis", "gray", "turbo")
DEFAULT_PERCENTILES = (1.0, 99.5)
RADIAL_POINTS = 500
RADIAL_UNIT = "q_nm^-1"

# Palette layout of a rendered frame: colormap shades, then two reserved entries.
_SHADES = 254
_NO_DATA = 254  # masked or empty pixels (module gaps, dead pixels): grey
_ROI_EDGE = 255  # the ROI's outline
_NO_DATA_RGB = (128, 128, 128)
_ROI_RGB = (255, 64, 64)
_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


# ---------------------------------------------------------------------------
# what a frame is: position in the scan and its labels
# ---------------------------------------------------------------------------
def scan_shape(frames: xr.DataArray) -> tuple[int, ...]:
    """Sizes of the scan (frame) dimensions: everything before the two image dimensions."""
    return tuple(frames.shape[:-2])


def frame_count(frames: xr.DataArray) -> int:
    return int(np.prod(scan_shape(frames), dtype=np.int64))


def frame_at(frames: xr.DataArray, index: int) -> xr.DataArray:
    """Frame number ``index`` (scan dimensions taken in order) as a lazy 2-D DataArray."""
    position = np.unravel_index(index, scan_shape(frames)) if frames.ndim > 2 else ()
    return frames[tuple(int(i) for i in position)]


def axis_label(variable: xr.DataArray | xr.Variable, fallback: str) -> str:
    """'sample y (mm)': the NeXus long_name (or name) and units of a coordinate or signal."""
    name = variable.attrs.get("long_name") or fallback
    units = variable.attrs.get("units")
    return f"{name} ({units})" if units else str(name)


def frame_label(frames: xr.DataArray, index: int) -> str:
    """'y = -2.333 mm · frame 2 of 10': where in the scan frame ``index`` was taken."""
    frame = frame_at(frames, index)
    parts = []
    for dim in frames.dims[:-2]:
        coord = frame.coords.get(dim)
        if coord is None:
            continue
        value = coord.values.item()
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        units = coord.attrs.get("units")
        parts.append(f"{dim} = {text} {units}" if units else f"{dim} = {text}")
    parts.append(f"frame {index + 1} of {frame_count(frames)}")
    return " · ".join(parts)


def scan_axis(frames: xr.DataArray) -> tuple[np.ndarray, str]:
    """Values and label for plotting against the frames: the scan coordinate when there is one."""
    dims = frames.dims[:-2]
    if len(dims) == 1 and dims[0] in frames.coords:
        coord = frames.coords[dims[0]]
        return np.asarray(coord.values), axis_label(coord, dims[0])
    return np.arange(frame_count(frames)), "frame"


# ---------------------------------------------------------------------------
# frame → image at display size
# ---------------------------------------------------------------------------
def display_factor(shape: tuple[int, int], size: int = DISPLAY_SIZE) -> int:
    """The binning that makes the larger image side at most ``size`` pixels."""
    return max(1, -(-max(shape) // int(size)))


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor``×``factor`` pixel blocks, ignoring NaN (bad pixels); NaN where a block has none.

    The mean keeps counts on the scale of one pixel, so the colour bar reads
    the same whatever the display size.
    """
    image = np.asarray(image, dtype=np.float64)
    if factor == 1:
        return image
    rows, cols = (-(-n // factor) * factor for n in image.shape)
    padded = np.full((rows, cols), np.nan)
    padded[: image.shape[0], : image.shape[1]] = image
    valid = np.isfinite(padded)
    blocks = (rows // factor, factor, cols // factor, factor)
    total = np.where(valid, padded, 0.0).reshape(blocks).sum(axis=(1, 3))
    count = valid.reshape(blocks).sum(axis=(1, 3))
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def scaled(image: np.ndarray, log: bool) -> np.ndarray:
    """The values the colours stand for: as they are, or log10 with non-positive pixels at the floor.

    On a log scale zero-count pixels are shown as the smallest positive
    value, not as missing: zero is a measurement, a module gap is not.
    """
    if not log:
        return image
    positive = image[np.isfinite(image) & (image > 0)]
    floor = positive.min() if positive.size else 1.0
    return np.log10(np.where(np.isfinite(image), np.maximum(image, floor), np.nan))


def contrast_limits(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """Auto-contrast: the values at the given percentiles of the finite pixels (hot pixels do not wash it out)."""
    finite = image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, sorted(percentiles)))
    return (low, high) if high > low else (low, low + 1.0)


def palette_indices(image: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """uint8 palette indices: shades for the data between ``limits``, ``_NO_DATA`` for NaN."""
    low, high = limits
    shade = np.clip((np.nan_to_num(image, nan=low) - low) / (high - low), 0.0, 1.0) * (_SHADES - 1)
    return np.where(np.isfinite(image), np.rint(shade), _NO_DATA).astype(np.uint8)


def draw_roi(indices: np.ndarray, roi: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """The ROI (row_start, row_stop, col_start, col_stop in detector pixels) outlined on the display image."""
    out = indices.copy()
    r0, r1, c0, c1 = roi
    top, bottom = r0 // factor, min(out.shape[0], -(-r1 // factor)) - 1
    left, right = c0 // factor, min(out.shape[1], -(-c1 // factor)) - 1
    out[top, left : right + 1] = out[bottom, left : right + 1] = _ROI_EDGE
    out[top : bottom + 1, left] = out[top : bottom + 1, right] = _ROI_EDGE
    return out


def palette(colormap: str) -> list[int]:
    """The 256-entry RGB palette: ``colormap``'s shades, then no-data grey and the ROI colour."""
    import matplotlib

    shades = matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, _SHADES))[:, :3]
    rgb = [tuple(int(round(c * 255)) for c in shade) for shade in shades] + [_NO_DATA_RGB, _ROI_RGB]
    return [c for colour in rgb for c in colour]


def encode(indices: np.ndarray, colormap: str, image_format: str = "jpeg", quality: int = 85) -> bytes:
    """A palette image as compressed bytes: PNG stays paletted (lossless, small), JPEG/WebP become RGB."""
    from PIL import Image

    if image_format not in _MIME:
        raise ValueError(f"image format {image_format!r}: choose from {sorted(_MIME)}")
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette(colormap))
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, "PNG", optimize=True)
    else:
        image.convert("RGB").save(buffer, image_format.upper(), quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class Look:
    """How a frame is shown: the viewer's controls, as one value the renderer takes."""

    log: bool = False
    colormap: str = "viridis"
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    size: int = DISPLAY_SIZE
    image_format: str = "jpeg"


def render_frame(frame: np.ndarray, look: Look = Look(), *, mask: np.ndarray | None = None,
                 roi: tuple[int, int, int, int] | None = None) -> bytes:
    """One detector frame as a compressed image at display size; ``mask`` is non-zero for bad pixels."""
    image = np.asarray(frame, dtype=np.float64)
    if mask is not None:
        image = np.where(np.asarray(mask) != 0, np.nan, image)
    factor = display_factor(image.shape, look.size)
    values = scaled(downsample(image, factor), look.log)
    indices = palette_indices(values, contrast_limits(values, look.percentiles))
    if roi is not None:
        indices = draw_roi(indices, roi, factor)
    return encode(indices, look.colormap, look.image_format)


# ---------------------------------------------------------------------------
# plots beside the frame: ROI sum vs frame, radial profile
# ---------------------------------------------------------------------------
def line_plot(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, *, title: str = "",
              mark: float | None = None) -> bytes:
    """A small PNG line plot (matplotlib, no pyplot: nothing leaks into the notebook's figures)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.8), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, y, ".-" if len(x) < 50 else "-", lw=1)
    if mark is not None:
        ax.axvline(mark, color="tab:red", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.title.set_fontsize(9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def roi_series(frames: xr.DataArray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Sum of the ROI in every frame, flattened in frame order (reads the whole stack, on Dask)."""
    sums = ops.roi_sums(frames, {"roi": tuple(int(v) for v in roi)}).compute()
    return np.asarray(sums.values).reshape(-1)


def radial_profile(frame: np.ndarray, poni, *, mask: np.ndarray | None = None, npt: int = RADIAL_POINTS,
                   unit: str = RADIAL_UNIT):
    """The azimuthally integrated profile of one frame: (radial values, intensity, radial axis label)."""
    result = ops.integrate1d(poni, np.asarray(frame), npt, unit, mask)
    symbol = str(getattr(result.unit, "unit_symbol", "") or "").strip("$")
    name = str(getattr(result.unit, "name", unit)).split("_")[0]
    return result.radial, result.intensity, f"{name} (${symbol}$)" if symbol else name  # mathtext: nm^{-1} as a superscript


# ---------------------------------------------------------------------------
# what lies beside the data
# ---------------------------------------------------------------------------
def find_poni(frames: xr.DataArray) -> Path | None:
    """The beamtime's PONI geometry, ``<beamtime>/calib/*.poni``, found from the file the frames came from."""
    source = frames.attrs.get(_provenance.SOURCE)
    if not source:
        return None
    for folder in list(Path(source).parents)[:4]:  # <beamtime>/raw[/run]/file: a few levels up at most
        found = sorted(folder.glob("calib/*.poni"))
        if found:
            return found[0]
    return None


def find_pixel_mask(frames: xr.DataArray) -> np.ndarray | None:
    """The detector's NeXus ``pixel_mask`` from the frames' own file, if it has one."""
    source = frames.attrs.get(_provenance.SOURCE)
    if not source:
        return None
    from ._errors import BeamsideError
    from ._open import open as open_beamtime_file

    try:
        found = open_beamtime_file(source, dataset="/entry/instrument/detector/pixel_mask", chunks=None)
    except (BeamsideError, KeyError, OSError):  # no mask there, or not ours to read: show every pixel
        return None
    mask = found[next(iter(found.data_vars))].values
    return mask if mask.shape == tuple(frames.shape[-2:]) else None


# ---------------------------------------------------------------------------
# the widget
# ---------------------------------------------------------------------------
class FrameViewer:
    """A frame stack in a notebook: slider over the scan, contrast, colormap, ROI, radial profile.

    Display it (it is the cell's result); ``last_update_bytes`` and
    ``first_frame_seconds`` say what the viewer cost. ``wait()`` blocks until
    the background plots are drawn (tests and scripts use it).
    """

    def __init__(self, obj, *, poni=None, mask=None, look: Look = Look()):
        started = time.perf_counter()
        self.frames = ops._frames(obj)
        self.poni = poni if poni is not None else find_poni(self.frames)
        self.mask = None if mask is None else np.asarray(mask)
        # Looking for the detector's pixel_mask opens the file again (a guarded probe, ~0.2 s):
        # done after the first frame is on screen, which then is redrawn with the gaps greyed.
        self._mask_unknown = mask is None
        rows, cols = self.frames.shape[-2:]
        self.roi = (rows // 4, 3 * rows // 4, cols // 4, 3 * cols // 4)
        self.look = look
        self.index = 0
        self._frame: np.ndarray | None = None
        self._series: np.ndarray | None = None
        self._lock = threading.Lock()
        self._plots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="beamside-view")
        self._pending: Future | None = None
        self._cached_widget = None
        self.image = self.render()
        self.first_frame_seconds = time.perf_counter() - started

    # -- rendering (no widgets needed) --------------------------------------------------------------
    def current_frame(self) -> np.ndarray:
        """The shown frame's pixels: read once per frame change (one chunk), reused for every redraw."""
        if self._frame is None:
            self._frame = np.asarray(frame_at(self.frames, self.index).values)
        return self._frame

    def render(self) -> bytes:
        self.image = render_frame(self.current_frame(), self.look, mask=self.mask, roi=self.roi)
        self.last_update_bytes = len(self.image)
        return self.image

    def roi_plot(self) -> bytes:
        """The ROI's sum in every frame, the shown frame marked; computes the sums once per ROI."""
        with self._lock:
            if self._series is None:
                self._series = roi_series(self.frames, self.roi)
            series = self._series
        x, xlabel = scan_axis(self.frames)
        r0, r1, c0, c1 = self.roi
        return line_plot(x, series, xlabel, self._counts_label("ROI sum"),
                         title=f"rows {r0}:{r1}, columns {c0}:{c1}", mark=x[self.index])

    def radial_plot(self) -> bytes | None:
        """The shown frame's radial profile; None without a PONI geometry."""
        if self.poni is None:
            return None
        radial, intensity, xlabel = radial_profile(self.current_frame(), self.poni, mask=self.mask)
        poni_name = Path(self.poni).name if isinstance(self.poni, (str, Path)) else "PONI"
        return line_plot(radial, intensity, xlabel, self._counts_label("azimuthal mean"),
                         title=f"{poni_name}: {frame_label(self.frames, self.index)}")

    def _counts_label(self, what: str) -> str:
        units = self.frames.attrs.get("units")
        return f"{what} ({units})" if units else what

    def find_mask(self) -> bool:
        """Look up the detector's pixel_mask once (unless one was given); True if one was found now."""
        if not self._mask_unknown:
            return False
        self.mask, self._mask_unknown = find_pixel_mask(self.frames), False
        return self.mask is not None

    def wait(self, timeout: float | None = 300) -> None:
        """Block until the plots queued so far are drawn; re-raises what went wrong drawing them."""
        if self._pending is not None:
            self._pending.result(timeout)

    # -- the widget (optional) ------------------------------------------------------------------------
    def _widget(self):
        """The ipywidgets panel, built on first display; None without ipywidgets."""
        if self._cached_widget is not None:
            return self._cached_widget
        try:
            import ipywidgets as w
        except ImportError:
            return None
        rows, cols = self.frames.shape[-2:]
        n = frame_count(self.frames)
        self._image = w.Image(value=self.image, format=self.look.image_format)
        self._where = w.Label(frame_label(self.frames, self.index))
        self._slider = w.IntSlider(0, min=0, max=max(0, n - 1), description="frame", readout=False,
                                   disabled=n < 2, continuous_update=True, layout=w.Layout(width="360px"))
        self._scale = w.ToggleButtons(options=["linear", "log"], value="log" if self.look.log else "linear",
                                      style={"button_width": "60px"})
        self._colormap = w.Dropdown(options=COLORMAPS, value=self.look.colormap, description="colours",
                                    layout=w.Layout(width="200px"))
        self._contrast = w.FloatRangeSlider(value=self.look.percentiles, min=0.0, max=100.0, step=0.1,
                                            description="percentiles", continuous_update=False)
        self._rows = w.IntRangeSlider(value=self.roi[:2], min=0, max=rows, description="ROI rows",
                                      continuous_update=False)
        self._cols = w.IntRangeSlider(value=self.roi[2:], min=0, max=cols, description="ROI columns",
                                      continuous_update=False)
        self._status = w.HTML()
        # hidden until drawn: an empty image shows as a broken-image icon
        self._roi_image = w.Image(format="png", layout=w.Layout(display="none"))
        self._radial_image = w.Image(format="png", layout=w.Layout(display="none"))
        for control in (self._slider, self._scale, self._colormap, self._contrast):
            control.observe(self._on_look, "value")
        for control in (self._rows, self._cols):
            control.observe(self._on_roi, "value")
        controls = w.VBox([w.HBox([self._slider, self._where]), w.HBox([self._scale, self._colormap]),
                           self._contrast, self._rows, self._cols, self._status])
        self._cached_widget = w.VBox([controls, w.HBox([self._image, w.VBox([self._roi_image, self._radial_image])])])
        self._queue_plots(roi_changed=True)
        return self._cached_widget

    def _on_look(self, change) -> None:
        frame_changed = change["owner"] is self._slider
        if frame_changed:
            self.index = int(self._slider.value)
            self._frame = None
            self._where.value = frame_label(self.frames, self.index)
        self.look = Look(self._scale.value == "log", self._colormap.value, tuple(self._contrast.value),
                         self.look.size, self.look.image_format)
        self._image.value = self.render()
        if frame_changed:
            self._queue_plots(roi_changed=False)

    def _on_roi(self, change) -> None:
        (r0, r1), (c0, c1) = self._rows.value, self._cols.value
        if r1 <= r0 or c1 <= c0:
            self._status.value = "<i>the ROI is empty: give it at least one row and one column</i>"
            return
        self.roi = (r0, r1, c0, c1)
        with self._lock:
            self._series = None
        self._image.value = self.render()
        self._queue_plots(roi_changed=True)

    def _queue_plots(self, roi_changed: bool) -> None:
        """Draw the side plots in the background: an ROI sum reads every frame, the slider must not wait."""
        if roi_changed:
            self._status.value = "<i>summing the ROI over all frames …</i>"
        self._pending = self._plots.submit(self._draw_plots)

    def _draw_plots(self) -> None:
        try:
            if self.find_mask():
                self._image.value = self.render()
            _show(self._roi_image, self.roi_plot())
            radial = self.radial_plot()
            if radial is not None:
                _show(self._radial_image, radial)
            self._status.value = ""
        except Exception as exc:  # shown in the panel: the notebook's thread never sees it
            self._status.value = f"<b>could not draw the plots:</b> {html.escape(str(exc))}"
            raise

    # -- display --------------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """Without ipywidgets: the first frame as a static image and where it was taken."""
        if self.find_mask():
            self.render()
        encoded = base64.b64encode(self.image).decode()
        return (f'<figure><img src="data:{_MIME[self.look.image_format]};base64,{encoded}" '
                f'alt="detector frame"/><figcaption>{html.escape(frame_label(self.frames, self.index))}'
                "</figcaption></figure>")

    def _repr_mimebundle_(self, **kwargs):
        widget = self._widget()
        if widget is not None:
            return widget._repr_mimebundle_(**kwargs)
        return {"text/plain": repr(self), "text/html": self._repr_html_()}

    def __repr__(self) -> str:
        return f"<FrameViewer {dict(self.frames.sizes)} · {frame_label(self.frames, self.index)}>"


def _show(image, value: bytes) -> None:
    image.value = value
    image.layout.display = ""


def view(obj, *, poni=None, mask=None) -> FrameViewer:
    """View a frame stack (Dataset or DataArray) in a notebook; only rendered images reach the browser.

    ``poni`` (a PONI file or pyFAI geometry dict) adds the radial profile of
    the shown frame; by default the beamtime's ``calib/*.poni`` is used when
    the data came from a beamtime. ``mask`` is non-zero for bad pixels; by
    default the detector's NeXus ``pixel_mask`` from the same file.
    """
    return FrameViewer(obj, poni=poni, mask=mask)
