"""What the demo detector sees: an Eiger-like 1M, a calibrant's rings, the beamstop, Poisson counts.

The frames are physics, not random bytes, so a demo shows something real: the
Debye-Scherrer rings of a pyFAI calibrant (standing in for the sample) lie
exactly where the beamtime's PONI file says, ring intensity follows the sample
along the scan, the beamstop and the module gaps cast their shadows, and the
counts are Poisson, so bitshuffle/LZ4 compresses them about as well as it
compresses a real Eiger's. The expensive parts (ring image, Poisson draws) are
done once per beamtime; each frame is then a sum of precomputed Poisson
"photon units" (see ``_PhotonPool``). Used by :mod:`analysis_lib.demo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .demo import _DemoBeamtime

FRAME_SHAPE = (1062, 1028)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * np.dtype(np.uint32).itemsize
PIXEL_SIZE = 75e-6  # m
# 24.8 keV: at 0.12-0.18 m several rings of each sample fit on a 1M detector
# (at 1 Angstrom the first CeO2 ring would only touch the corners).
WAVELENGTH = 0.5e-10  # m

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

# Independent random streams, so a file's bytes do not depend on which other
# files a rerun skips: default_rng([seed, stream, ...ids]).
_STREAM_DETECTOR, _STREAM_POOL, _STREAM_SCAN, _STREAM_CALIB = range(4)


@dataclass(frozen=True)
class _Detector:
    """The beamline's Eiger-like 1M, shared by all beamtimes: gaps, dead pixels, gain."""

    pixel_mask: np.ndarray  # uint32, NeXus bits; non-zero = no usable counts
    gain: np.ndarray  # float32 relative response of the live pixels, ~1

    @classmethod
    def build(cls, seed: int) -> _Detector:
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

