"""Demo beamtime data: a catalog and Eiger-like NeXus scans to try beamside on.

The ``beamside`` CLI and the test suite call :func:`write_demo_data` to lay out
what a facility's storage looks like next to the hub: a beamtime catalog and
three beamtimes (one confidential), each with raw scans, an empty
``processed/`` and the calibration a user reduces with (PONI geometry, dark
and flat frames).

The frames are physics, not random bytes, so a demo shows something real: the
Debye-Scherrer rings of a pyFAI calibrant (standing in for the sample) lie
exactly where the beamtime's PONI file says, ring intensity follows the sample
along the scan, the beamstop and the module gaps cast their shadows, and the
counts are Poisson, so bitshuffle/LZ4 compresses them about as well as it
compresses a real Eiger's.

Cheap enough for 10 GB in minutes and bounded in memory: the expensive parts
(ring image, Poisson draws) are done once per beamtime, each frame is then a
sum of precomputed Poisson "photon units" (see ``_PhotonPool``), and frames are
written one at a time.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import h5py
import hdf5plugin
import numpy as np
import yaml

__all__ = ["parse_size", "write_demo_data", "write_poni", "write_stack"]

FRAME_SHAPE = (1062, 1028)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * np.dtype(np.uint32).itemsize
PIXEL_SIZE = 75e-6  # m
# 24.8 keV: at 0.12-0.18 m several rings of each sample fit on a 1M detector
# (at 1 Angstrom the first CeO2 ring would only touch the corners).
WAVELENGTH = 0.5e-10  # m
MIN_FRAMES_PER_SCAN = 4

# Module gaps of the 2 x 2 half-module layout; flagged in pixel_mask, never read out.
_GAP_ROWS = slice(514, 548)
_GAP_COLUMNS = slice(512, 516)
# NXdetector/pixel_mask bits (NeXus: bit 0 gap, bit 1 dead).
_MASK_GAP = 1
_MASK_DEAD = 2
_DEAD_FRACTION = 1e-3

# Counts per pixel per frame, chosen so Poisson frames compress ~7:1 like a real Eiger.
_DARK_COUNTS = 1.0
_FLAT_COUNTS = 1000.0
_AIR_COUNTS = 1.5  # diffuse background everywhere ...
_AIR_HALO_COUNTS = 6.0  # ... plus air scatter rising towards the direct beam
_AIR_HALO_DEG = 2.5
_RING_PEAK_COUNTS = 400.0  # strongest ring where the sample is thickest
_RING_FWHM_DEG = 0.06
_RING_CUTOFF_COUNTS = 0.02  # ring tails below this are left to the background

_BEAMSTOP_RADIUS = 22.0  # px
_BEAMSTOP_ARM_HALF_WIDTH = 5.0  # px
_BEAMSTOP_TRANSMISSION = 0.005
_BEAMSTOP_PENUMBRA = 2.0  # px

# Photon pools: a frame is two different units of the background pool (66 pairs)
# plus a run of up to _RING_UNITS ring units (fewer where there is less sample).
_BACKGROUND_POOL = 12
_RING_POOL = 48
_RING_UNITS = 32

_DARK_FRAMES = 10
_FLAT_FRAMES = 3

# Independent random streams, so a file's bytes do not depend on which other
# files a rerun skips: default_rng([seed, stream, ...ids]).
_STREAM_DETECTOR, _STREAM_POOL, _STREAM_SCAN, _STREAM_CALIB = range(4)

ProgressCallback = Callable[[int, int], object]


@dataclass(frozen=True)
class _DemoBeamtime:
    """One demo proposal: its catalog entry and the setup its data was taken with."""

    id: str
    title: str
    confidential: bool
    members: tuple[tuple[str, str], ...]  # (user, role)
    sample: str  # pyFAI calibrant standing in for the sample material
    distance: float  # sample-detector distance, m
    beam_centre: tuple[float, float]  # (row, column) in pixels, pyFAI's PONI
    beamstop_arm_deg: float  # direction of the beamstop holder from the centre
    start: _dt.datetime
    scan_shares: tuple[float, ...]  # fraction of the requested size per scan


_CET = _dt.timezone(_dt.timedelta(hours=1))
BEAMTIMES = (
    _DemoBeamtime(
        id="bt-1001",
        title="In-situ XRD of battery cathodes",
        confidential=False,
        members=(("alice", "pi"), ("bob", "member")),
        sample="CeO2",
        distance=0.150,
        beam_centre=(545.3, 497.8),
        beamstop_arm_deg=90.0,
        start=_dt.datetime(2025, 3, 10, 8, 0, tzinfo=_CET),
        scan_shares=(0.45, 0.35),
    ),
    _DemoBeamtime(
        id="bt-1002",
        title="Residual strain in welded steel",
        confidential=False,
        members=(("bob", "pi"),),
        sample="Ni",  # fcc like austenitic steel, lattice within 2%
        distance=0.120,
        beam_centre=(520.6, 530.2),
        beamstop_arm_deg=300.0,
        start=_dt.datetime(2025, 4, 2, 14, 0, tzinfo=_CET),
        scan_shares=(0.06, 0.04),
    ),
    _DemoBeamtime(
        id="bt-2001",
        title="Industrial proposal: catalyst pellets (confidential)",
        confidential=True,
        members=(("carol", "industrial-mediator"),),
        sample="alpha_Al2O3",  # the usual catalyst support
        distance=0.180,
        beam_centre=(552.1, 505.4),
        beamstop_arm_deg=135.0,
        start=_dt.datetime(2025, 5, 20, 9, 30, tzinfo=_CET),
        scan_shares=(0.06, 0.04),
    ),
)


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or text like ``"500MB"``, ``"10GB"``, ``"2 GiB"``.

    kB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB powers of 1024, as on
    the storage system's own quota reports.
    """
    from dask.utils import parse_bytes

    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        text = str(size).strip()
        try:
            if isinstance(size, bool) or not (text[:1].isdigit() or text[:1] == "."):
                raise ValueError  # dask reads "" and "kB" as one unit: a size starts with its number
            value = int(parse_bytes(text))
        except ValueError:
            raise ValueError(f"size {size!r}: expected bytes or a size like '500MB', '10GB' or '2 GiB'") from None
    if value <= 0:
        raise ValueError(f"size {size!r}: must be more than zero bytes")
    return value


def write_demo_data(directory, size="2GB", *, seed=0, progress=None) -> Path:
    """Write a demo catalog + beamtimes under `directory`; return the catalog path.

    ``size`` is the total uncompressed bytes of scan frames (int or text for
    :func:`parse_size`), shared so that bt-1001 gets most of it; every scan
    gets at least ``MIN_FRAMES_PER_SCAN`` frames, so tiny sizes still write
    every file. ``progress(bytes_done, bytes_total)`` is called after each
    frame (dark and flat frames included in both numbers). The same ``size``
    and ``seed`` give the same frames; files already written for them are
    skipped, so rerunning on an existing directory is quick.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed {seed!r}: must be a non-negative integer")
    root = Path(os.path.abspath(os.path.expanduser(directory)))
    frames = _frames_per_scan(parse_size(size))
    calib_frames = _DARK_FRAMES + _FLAT_FRAMES
    tally = _Tally(progress, FRAME_BYTES * (sum(frames.values()) + calib_frames * len(BEAMTIMES)))
    detector = _Detector.build(seed)
    for index, beamtime in enumerate(BEAMTIMES):
        scene = _Scene(beamtime, index, detector, seed)
        _write_beamtime(root / "data" / beamtime.id, scene, frames, tally)
    return _write_catalog(root)


def write_stack(path, frames: int, *, seed: int = 0, beamtime: str = "bt-1001") -> Path:
    """One NeXus file of ``frames`` frames of a y scan of ``beamtime``, as demo-data writes them.

    A plain stack: the NXdata signal at ``/entry/data/data`` has no scan axis
    (``axes`` all "."), for whoever needs one realistic frame stack rather
    than a facility (the benchmarks). Skipped when ``path`` already holds it.
    """
    path = Path(os.path.abspath(os.path.expanduser(path)))
    scene = _scene(beamtime, seed)
    spec = _NexusFile(path, scene, title=f"{frames} frames of a y scan ({scene.beamtime.sample} stand-in)",
                      start_time=scene.beamtime.start, frames=int(frames), sample=scene.beamtime.sample)
    _write_nexus(spec, scene.scan_frames(1, np.linspace(-3.0, 3.0, int(frames))), _Tally(None, 0))
    return path


def write_poni(path, *, beamtime: str = "bt-1001") -> Path:
    """The PONI geometry file of ``beamtime`` at ``path`` (skipped when there)."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    _write_poni(path, _scene(beamtime, 0))
    return path


def _scene(beamtime: str, seed: int) -> "_Scene":
    for index, bt in enumerate(BEAMTIMES):
        if bt.id == beamtime:
            return _Scene(bt, index, _Detector.build(seed), seed)
    raise ValueError(f"no demo beamtime {beamtime!r}; choose from {', '.join(bt.id for bt in BEAMTIMES)}")


def _frames_per_scan(size_bytes: int) -> dict[tuple[str, int], int]:
    """Frames for each (beamtime id, scan number): ``size`` split by the scan shares."""
    total = size_bytes / FRAME_BYTES
    return {
        (bt.id, number): max(MIN_FRAMES_PER_SCAN, round(total * share))
        for bt in BEAMTIMES
        for number, share in enumerate(bt.scan_shares, start=1)
    }


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
class _Detector:
    """The beamline's Eiger-like 1M, shared by all beamtimes: gaps, dead pixels, gain."""

    pixel_mask: np.ndarray  # uint32, NeXus bits; non-zero = no usable counts
    gain: np.ndarray  # float32 relative response of the live pixels, ~1

    @classmethod
    def build(cls, seed: int) -> "_Detector":
        rng = np.random.default_rng([seed, _STREAM_DETECTOR])
        mask = np.zeros(FRAME_SHAPE, np.uint32)
        mask[_GAP_ROWS, :] |= _MASK_GAP
        mask[:, _GAP_COLUMNS] |= _MASK_GAP
        mask[(rng.random(FRAME_SHAPE) < _DEAD_FRACTION) & (mask == 0)] |= _MASK_DEAD
        return cls(mask, _smooth_gain(rng))

    @cached_property
    def live(self) -> np.ndarray:
        return (self.pixel_mask == 0).astype(np.float32)


def _smooth_gain(rng: np.random.Generator) -> np.ndarray:
    """A few percent of slowly varying sensor response: what a flat field corrects."""
    v, u = np.meshgrid(*(np.linspace(-1, 1, n) for n in FRAME_SHAPE), indexing="ij")
    gain = np.ones(FRAME_SHAPE)
    for _ in range(3):
        ku, kv, phase = rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
        gain += 0.015 * np.cos(np.pi * (ku * u + kv * v) + phase)
    return gain.astype(np.float32)


class _PhotonPool:
    """Poisson "photon units" drawn once, summed in runs to make frames cheaply.

    A sum of n independent Poisson(u) images is Poisson(n u), so a frame that
    expects n units of counts costs one subtraction of two running totals
    instead of a million Poisson draws. Frames reuse the pool's units, so the
    noise of a many-frame mean stops improving at about the pool's size:
    fine for demos, not for photon-statistics studies.
    """

    def __init__(self, unit: np.ndarray, size: int, rng: np.random.Generator):
        # Running totals of the cyclic pool: run [start, start + n) = totals[stop] - totals[start].
        self._totals = np.zeros((size + 1,) + unit.shape, np.uint32)
        for k in range(size):
            np.add(self._totals[k], rng.poisson(unit), out=self._totals[k + 1], casting="unsafe")

    @property
    def size(self) -> int:
        return len(self._totals) - 1

    def take(self, start: int, units: int) -> np.ndarray:
        """A new image: the sum of ``units`` pool units from ``start`` on, wrapping around."""
        stop = start + units
        if stop <= self.size:
            return self._totals[stop] - self._totals[start]
        return self._totals[self.size] - self._totals[start] + self._totals[stop - self.size]


class _Scene:
    """What one beamtime's detector sees: geometry, sample rings, beamstop, noise pools."""

    def __init__(self, beamtime: _DemoBeamtime, index: int, detector: _Detector, seed: int):
        self.beamtime = beamtime
        self.index = index
        self.detector = detector
        self.seed = seed

    # pyFAI is imported where it is used: it takes seconds, and a rerun that
    # finds every file written never needs it.
    @cached_property
    def integrator(self):
        """The pyFAI geometry of this beamtime: what ``calib/detector.poni`` records."""
        from pyFAI.detectors import Detector
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        row, column = self.beamtime.beam_centre
        return AzimuthalIntegrator(
            dist=self.beamtime.distance,
            poni1=row * PIXEL_SIZE,
            poni2=column * PIXEL_SIZE,
            detector=Detector(PIXEL_SIZE, PIXEL_SIZE, max_shape=FRAME_SHAPE),
            wavelength=WAVELENGTH,
        )

    @cached_property
    def _pools(self) -> tuple[_PhotonPool, _PhotonPool, np.ndarray]:
        """Background pool, ring pool and the flat pixel indices the ring pool covers.

        Built on first use only, so a rerun that skips every scan skips this too.
        """
        from pyFAI.calibrant import get_calibrant

        response = self.detector.live * self.detector.gain * _beamstop_transmission(self.beamtime)
        two_theta = self.integrator.center_array(FRAME_SHAPE, unit="2th_deg")
        air = _AIR_COUNTS + _AIR_HALO_COUNTS * np.exp(-two_theta / _AIR_HALO_DEG)
        background = self.detector.live * _DARK_COUNTS + response * air

        calibrant = get_calibrant(self.beamtime.sample, WAVELENGTH)
        rings = calibrant.fake_calibration_image(self.integrator, shape=FRAME_SHAPE, resolution=_RING_FWHM_DEG)
        rings = (rings * (_RING_PEAK_COUNTS / rings.max()) * response).ravel()
        support = np.flatnonzero(rings > _RING_CUTOFF_COUNTS)

        rng = np.random.default_rng([self.seed, _STREAM_POOL, self.index])
        return (
            _PhotonPool(background / 2, _BACKGROUND_POOL, rng),  # a frame sums two units
            _PhotonPool(rings[support] / _RING_UNITS, _RING_POOL, rng),
            support,
        )

    def scan_frames(self, number: int, y: np.ndarray) -> Iterator[np.ndarray]:
        """uint32 frames of scan ``number``, one per sample position ``y`` (mm).

        Ring counts follow how much sample the beam crosses; rounding the ring
        units up or down at random keeps each frame's expected counts exact,
        like a small beam-intensity jitter.
        """
        rng = np.random.default_rng([self.seed, _STREAM_SCAN, self.index, number])
        sample = _sample_profile(y, rng)
        background, rings, support = self._pools
        for thickness in sample:
            first, second = rng.choice(background.size, 2, replace=False)
            frame = background.take(first, 1)
            frame += background.take(second, 1)
            units = int(thickness * _RING_UNITS + rng.random())
            if units:
                frame.reshape(-1)[support] += rings.take(int(rng.integers(rings.size)), units)
            yield frame

    def calib_frames(self, kind: str, count: int) -> Iterator[np.ndarray]:
        """Dark (no beam) or flat (uniform illumination, no beamstop) frames."""
        rng = np.random.default_rng([self.seed, _STREAM_CALIB, self.index, ("dark", "flat").index(kind)])
        expected = self.detector.live * (_DARK_COUNTS if kind == "dark" else _FLAT_COUNTS * self.detector.gain)
        for _ in range(count):
            yield rng.poisson(expected).astype(np.uint32)


def _beamstop_transmission(beamtime: _DemoBeamtime) -> np.ndarray:
    """The beamstop's shadow: a disk on the direct beam and its holder arm to the edge."""
    row, column = beamtime.beam_centre
    dy = np.arange(FRAME_SHAPE[0])[:, None] + 0.5 - row  # pixel centres, pyFAI's convention
    dx = np.arange(FRAME_SHAPE[1])[None, :] + 0.5 - column
    angle = np.radians(beamtime.beamstop_arm_deg)
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = np.abs(dy * np.cos(angle) - dx * np.sin(angle))
    disk = np.hypot(dx, dy) - _BEAMSTOP_RADIUS
    arm = np.where(along > 0, across - _BEAMSTOP_ARM_HALF_WIDTH, np.inf)
    outside = np.clip(np.minimum(disk, arm) / _BEAMSTOP_PENUMBRA, 0.0, 1.0)
    return (_BEAMSTOP_TRANSMISSION + (1 - _BEAMSTOP_TRANSMISSION) * outside).astype(np.float32)


def _sample_profile(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How much sample the beam crosses at each ``y`` (mm): a layer with soft edges and a lumpy inside.

    Gives "ROI sum vs frame" something to show: a plateau, edges, ripples.
    """
    low, high = rng.uniform(-2.4, -1.6), rng.uniform(1.6, 2.4)
    layer = 0.5 * (np.tanh((y - low) / 0.15) - np.tanh((y - high) / 0.15))
    ripple = 1 + 0.12 * np.sin(2 * np.pi * y / rng.uniform(0.8, 1.6) + rng.uniform(0, 2 * np.pi))
    return np.clip(0.05 + 0.95 * layer * ripple / 1.12, 0.0, 1.0)


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


def _write_beamtime(folder: Path, scene: _Scene, frames: dict[tuple[str, int], int], tally: _Tally) -> None:
    bt = scene.beamtime
    for sub in ("raw", "processed", "calib"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _write_poni(folder / "calib" / "detector.poni", scene)
    for kind, count, before in (("dark", _DARK_FRAMES, 45), ("flat", _FLAT_FRAMES, 30)):
        spec = _NexusFile(
            folder / "calib" / f"{kind}.nxs",
            scene,
            title=f"{kind} frames",
            start_time=bt.start - _dt.timedelta(minutes=before),
            frames=count,
        )
        _write_nexus(spec, scene.calib_frames(kind, count), tally)
    for number in range(1, len(bt.scan_shares) + 1):
        count = frames[bt.id, number]
        y = np.linspace(-3.0, 3.0, count)
        spec = _NexusFile(
            folder / "raw" / f"scan_{number:04d}.nxs",
            scene,
            title=f"y scan {number} across the sample ({bt.sample} stand-in)",
            start_time=bt.start + _dt.timedelta(hours=2 * number),
            frames=count,
            sample=bt.sample,
            y=y,
        )
        _write_nexus(spec, scene.scan_frames(number, y), tally)


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


def _write_catalog(root: Path) -> Path:
    """``catalog.yaml`` in the hand-written shape admins know (see ``analysis_lib.catalog``)."""
    lines = [yaml.safe_dump({"data_root": str(root / "data")}).rstrip("\n"), "beamtimes:"]
    for bt in BEAMTIMES:
        lines += [
            f"  - id: {bt.id}",
            f"    title: {json.dumps(bt.title)}",
            f"    path: {bt.id}",
            f"    confidential: {'true' if bt.confidential else 'false'}",
            "    members:",
        ]
        lines += [f"      - {{user: {user}, role: {role}}}" for user, role in bt.members]
    path = root / "catalog.yaml"
    part = _part(path)
    part.write_text("\n".join(lines) + "\n")
    os.replace(part, path)
    return path
