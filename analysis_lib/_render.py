"""Rendering a frame stack for a browser at the end of a slow link: pure functions, no widgets.

Frames are rendered next to the data into compressed images of display size
(a 1-Mpixel frame becomes a ~40-100 kB JPEG); the browser never receives a
raw frame. Rendering is a chain of small pure functions (downsample →
contrast → palette indices → encoded image, and plots to PNG) that tests call
without a browser, plus the labels that say where in a scan a frame was
taken. :mod:`._view` wires them to ipywidgets.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import xarray as xr

DISPLAY_SIZE = 600  # px: a 1062×1028 frame is shown 2×2-binned, 531×514
COLORMAPS = ("viridis", "magma", "inferno", "cividis", "gray", "turbo")
DEFAULT_PERCENTILES = (1.0, 99.5)

# Palette layout of a rendered frame: colormap shades, then two reserved entries.
_SHADES = 254
_NO_DATA = 254  # masked or empty pixels (module gaps, dead pixels): grey
_ROI_EDGE = 255  # the ROI's outline
_NO_DATA_RGB = (128, 128, 128)
_ROI_RGB = (255, 64, 64)
MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


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

    if image_format not in MIME:
        raise ValueError(f"image format {image_format!r}: choose from {sorted(MIME)}")
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
# plots beside the frame
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
