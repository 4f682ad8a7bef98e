"""Writing the demo's files: NeXus scans frame by frame (bitshuffle/LZ4, one frame a chunk), PONI files.

Every file is written beside its final name and renamed into place, so readers
never see half a file, and a file that already holds its frames is skipped.
Used by :mod:`analysis_lib.demo`.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from ._demo_scene import FRAME_BYTES, FRAME_SHAPE, PIXEL_SIZE, WAVELENGTH, _Scene

ProgressCallback = Callable[[int, int], object]


class _Tally:
    """Bytes of frames written (or found already written) so far, told to ``progress``."""

    def __init__(self, progress: ProgressCallback | None, total: int):
        self._progress = progress
        self.done = 0
        self.total = total

    def add(self, frames: int) -> None:
        self.done += frames * FRAME_BYTES
        if self._progress is not None:
            self._progress(self.done, self.total)


@dataclass(frozen=True)
class _NexusFile:
    """What goes into one NeXus file besides its frames."""

    path: Path
    scene: _Scene
    title: str
    start_time: _dt.datetime
    frames: int
    sample: str | None = None
    y: np.ndarray | None = None  # scan axis, mm; None for calibration frames


def _write_poni(path: Path, scene: _Scene) -> None:
    """The beamtime's geometry in pyFAI's own format (its writer appends, hence the fresh temp file)."""
    if path.exists():
        return
    part = _part(path)
    part.unlink(missing_ok=True)
    scene.integrator.write(str(part))
    os.replace(part, path)


def _part(path: Path) -> Path:
    """Where ``path`` is written before an atomic rename: readers never see half a file."""
    return path.with_name(path.name + ".part")


def _complete(spec: _NexusFile) -> bool:
    """True when ``spec.path`` already holds this seed's frames, all of them."""
    try:
        with h5py.File(spec.path, "r") as f:
            return (
                f.attrs.get("beamside_demo_seed") == spec.scene.seed
                and f["entry/instrument/detector/data"].shape[0] == spec.frames
            )
    except (OSError, KeyError):
        return False


def _write_nexus(spec: _NexusFile, frames: Iterator[np.ndarray], tally: _Tally) -> None:
    """Write one NeXus file frame by frame (bitshuffle/LZ4 chunks of one frame, like an Eiger).

    ``frames`` is a generator, so nothing of it is computed when the file is skipped.
    """
    if _complete(spec):
        tally.add(spec.frames)
        return
    part = _part(spec.path)
    with h5py.File(part, "w") as f:
        stack = _nexus_layout(f, spec)
        for i, frame in enumerate(frames):
            stack[i] = frame
            tally.add(1)
    os.replace(part, spec.path)


def _nexus_layout(f: h5py.File, spec: _NexusFile) -> h5py.Dataset:
    """The NeXus tree of a scan or calibration file; returns the empty frame stack."""
    bt = spec.scene.beamtime
    f.attrs.update(default="entry", NX_class="NXroot", creator="beamside demo-data", beamside_demo_seed=spec.scene.seed)
    entry = _group(f, "entry", "NXentry", default="data")
    entry["title"] = spec.title
    entry["start_time"] = spec.start_time.isoformat()
    entry["experiment_identifier"] = bt.id

    instrument = _group(entry, "instrument", "NXinstrument")
    _quantity(_group(instrument, "beam", "NXbeam"), "incident_wavelength", WAVELENGTH, "m")
    detector = _group(instrument, "detector", "NXdetector")
    detector["description"] = "Eiger-like 1M (demo)"
    _quantity(detector, "x_pixel_size", PIXEL_SIZE, "m")
    _quantity(detector, "y_pixel_size", PIXEL_SIZE, "m")
    _quantity(detector, "distance", bt.distance, "m")
    _quantity(detector, "beam_center_x", bt.beam_centre[1], "pixel")
    _quantity(detector, "beam_center_y", bt.beam_centre[0], "pixel")
    detector.create_dataset("pixel_mask", data=spec.scene.detector.pixel_mask, compression="gzip")
    stack = detector.create_dataset(
        "data",
        shape=(spec.frames,) + FRAME_SHAPE,
        dtype=np.uint32,
        chunks=(1,) + FRAME_SHAPE,
        **hdf5plugin.Bitshuffle(cname="lz4"),
    )
    stack.attrs.update(units="counts", long_name="Eiger counts")
    # how the viewer finds this detector's pixel_mask and geometry (analysis_lib._calibration)
    poni = os.path.relpath(spec.path.parent.parent / "calib" / "detector.poni", spec.path.parent)
    stack.attrs.update(target=stack.name, beamside_geometry=poni)

    if spec.sample is not None:
        _group(entry, "sample", "NXsample")["name"] = spec.sample
    data = _group(entry, "data", "NXdata", signal="data")
    data["data"] = stack  # hard link: the NXdata signal is the detector's stack
    if spec.y is None:
        data.attrs["axes"] = [".", ".", "."]
    else:
        data["y"] = spec.y
        data["y"].attrs.update(units="mm", long_name="sample y")
        data.attrs.update(axes=["y", ".", "."], y_indices=0)
    return stack


def _group(parent: h5py.Group, name: str, nx_class: str, **attrs: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs.update(NX_class=nx_class, **attrs)
    return group


def _quantity(group: h5py.Group, name: str, value: float, units: str) -> None:
    group[name] = value
    group[name].attrs["units"] = units
