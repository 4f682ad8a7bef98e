"""``al.view``: look at a frame stack from a browser at the end of a slow link.

Frames are rendered next to the data, into compressed images of display
size (a 1-Mpixel frame becomes a ~40-100 kB JPEG; :mod:`._render`); the browser
never receives a raw frame. Showing a frame reads only that frame's chunk, so the first
image of a huge scan appears as fast as one chunk decompresses. Summing a
region of interest over the whole stack reads every frame, so it runs in a
background thread (on the user's Dask cluster when one is open) while the
frame slider stays responsive.

This room is the widget: :class:`FrameViewer` wires the pure renderers of
:mod:`._render` to ipywidgets, and runs the reductions behind the side plots.
ipywidgets is optional: without it the viewer shows one static image.
"""

from __future__ import annotations

import base64
import html
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from . import ops
from ._calibration import find_pixel_mask, find_poni
from ._integrator import integrate1d
from ._render import COLORMAPS, MIME, Look, frame_at, frame_count, frame_label, line_plot, render_frame, scan_axis

__all__ = ["FrameViewer", "view"]

RADIAL_POINTS = 500
RADIAL_UNIT = "q_nm^-1"


# ---------------------------------------------------------------------------
# plots beside the frame: ROI sum vs frame, radial profile
# ---------------------------------------------------------------------------
def roi_series(frames: xr.DataArray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Sum of the ROI in every frame, flattened in frame order (reads the whole stack, on Dask)."""
    sums = ops.roi_sums(frames, {"roi": tuple(int(v) for v in roi)}).compute()
    return np.asarray(sums.values).reshape(-1)


def radial_profile(frame: np.ndarray, poni, *, mask: np.ndarray | None = None, npt: int = RADIAL_POINTS,
                   unit: str = RADIAL_UNIT):
    """The azimuthally integrated profile of one frame: (radial values, intensity, radial axis label)."""
    result = integrate1d(poni, np.asarray(frame), npt, unit, mask)
    symbol = str(getattr(result.unit, "unit_symbol", "") or "").strip("$")
    name = str(getattr(result.unit, "name", unit)).split("_")[0]
    return result.radial, result.intensity, f"{name} (${symbol}$)" if symbol else name  # mathtext: nm^{-1} as a superscript


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
        return (f'<figure><img src="data:{MIME[self.look.image_format]};base64,{encoded}" '
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
    the shown frame; by default the PONI file the data's file names
    (``@beamside_geometry`` on the signal), else the beamtime's ``calib/*.poni``.
    ``mask`` is non-zero for bad pixels; by default the NeXus ``pixel_mask`` of
    the detector the signal belongs to (its ``@target``), from the same file.
    """
    return FrameViewer(obj, poni=poni, mask=mask)
