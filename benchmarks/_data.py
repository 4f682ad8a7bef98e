"""The benchmark's frame stack: one Eiger-1M-like NeXus file, written once and reused.

1062×1028 uint32 frames, one frame per HDF5 chunk, bitshuffle/LZ4, as an
Eiger's file writer stores them. Counts are Poisson (an air-scatter halo plus
CeO2-like Debye-Scherrer rings where the PONI file says, zero in the module
gaps and behind the beamstop), so bitshuffle/LZ4 compresses them about as well
as real data (~7:1) and decoding costs what it costs on real data.

Poisson draws are the slow part, so a small pool of them is drawn once and
every frame is a different combination of pool images: writing runs at the
speed of HDF5's encoder (~1 GB/s of frames), and no two neighbouring frames
are alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FRAME_SHAPE = (1062, 1028)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * 4
DATASET = "/entry/data/data"  # the NXdata signal; also linked from the NXdetector
PIXEL_SIZE = 75e-6  # m
WAVELENGTH = 0.5e-10  # m (24.8 keV)
DISTANCE = 0.15  # m
BEAM_CENTRE = (545.3, 497.8)  # (row, column) px

# Bump when the frames change, so an old cached file is not mistaken for the new one.
_VERSION = 1
_BACKGROUND_POOL = 12
_RING_POOL = 12
_GAP_ROWS = slice(514, 548)
_GAP_COLUMNS = slice(512, 516)
_BEAMSTOP_RADIUS = 22.0  # px


def parse_size(text: str | int) -> int:
    """Bytes in ``"4GB"``, ``"500MB"``, ``"2GiB"`` (kB/MB/GB powers of 1000, KiB/MiB/GiB of 1024)."""
    import re

    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i?))?b?\s*", str(text), re.IGNORECASE)
    if m is None:
        raise ValueError(f"size {text!r}: expected bytes or a size like '500MB', '4GB' or '2GiB'")
    number, prefix, binary = m.groups()
    power = " kmgt".index(prefix.lower()) if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def frames_for(size_bytes: int) -> int:
    """Whole frames in ``size_bytes`` of uncompressed data (at least 8)."""
    return max(8, round(size_bytes / FRAME_BYTES))


def stack_path(directory: Path, frames: int, seed: int) -> Path:
    return Path(directory) / f"eiger1m_bslz4_{frames}f_seed{seed}_v{_VERSION}.nxs"


def poni_path(directory: Path) -> Path:
    return Path(directory) / "eiger1m.poni"


def ensure_stack(directory, frames: int, seed: int = 0, log=print) -> tuple[Path, Path]:
    """The stack file and its PONI file under ``directory``: reused if complete, else written."""
    directory = Path(os.path.abspath(os.path.expanduser(directory)))
    directory.mkdir(parents=True, exist_ok=True)
    path, poni = stack_path(directory, frames, seed), poni_path(directory)
    if not poni.exists():
        _write_poni(poni)
    if _complete(path, frames, seed):
        log(f"reusing {path}")
        return path, poni
    import time

    log(f"writing {frames} frames ({frames * FRAME_BYTES / 1e9:.2f} GB uncompressed) to {path} ...")
    t0 = time.perf_counter()
    _write_stack(path, frames, seed)
    log(f"  written in {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e9:.3f} GB on disk")
    return path, poni


def _integrator():
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    return AzimuthalIntegrator(
        dist=DISTANCE,
        poni1=BEAM_CENTRE[0] * PIXEL_SIZE,
        poni2=BEAM_CENTRE[1] * PIXEL_SIZE,
        detector=Detector(PIXEL_SIZE, PIXEL_SIZE, max_shape=FRAME_SHAPE),
        wavelength=WAVELENGTH,
    )


def _write_poni(path: Path) -> None:
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)  # pyFAI's writer appends
    _integrator().write(str(part))
    os.replace(part, path)


def _complete(path: Path, frames: int, seed: int) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("beamside_bench_version") == _VERSION and f[DATASET].shape == (frames,) + FRAME_SHAPE
    except (OSError, KeyError):
        return False


def _expected_counts() -> tuple[np.ndarray, np.ndarray]:
    """Mean counts per frame: (background, rings), zero in gaps and behind the beamstop."""
    from pyFAI.calibrant import get_calibrant

    ai = _integrator()
    q = ai.center_array(FRAME_SHAPE, unit="q_nm^-1")
    two_theta = ai.center_array(FRAME_SHAPE, unit="2th_deg")
    live = np.ones(FRAME_SHAPE)
    live[_GAP_ROWS, :] = 0
    live[:, _GAP_COLUMNS] = 0
    rows, cols = np.indices(FRAME_SHAPE)
    live[np.hypot(rows + 0.5 - BEAM_CENTRE[0], cols + 0.5 - BEAM_CENTRE[1]) < _BEAMSTOP_RADIUS] = 0
    background = live * (2.0 + 6.0 * np.exp(-two_theta / 2.5))
    rings = np.zeros(FRAME_SHAPE)
    d_spacings = get_calibrant("CeO2").dspacing  # Angstrom
    for k, d in enumerate(d_spacings[:12]):
        q_ring = 2 * np.pi / (d / 10)  # nm^-1
        rings += 150.0 / (1 + k) * np.exp(-0.5 * ((q - q_ring) / 0.08) ** 2)
    return background, live * rings


def _write_stack(path: Path, frames: int, seed: int) -> None:
    import h5py
    import hdf5plugin

    rng = np.random.default_rng([seed, _VERSION])
    background, rings = _expected_counts()
    # A frame is two background units plus one ring unit scaled by a per-frame
    # "sample thickness": pairs and scales differ frame to frame.
    bg_pool = [rng.poisson(background / 2).astype(np.uint32) for _ in range(_BACKGROUND_POOL)]
    ring_pool = [rng.poisson(rings).astype(np.uint32) for _ in range(_RING_POOL)]
    part = path.with_name(path.name + ".part")
    with h5py.File(part, "w") as f:
        f.attrs.update(default="entry", NX_class="NXroot", creator="beamside benchmarks", beamside_bench_version=_VERSION)
        entry = f.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="data")
        detector = entry.create_group("instrument").create_group("detector")
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        detector.attrs["NX_class"] = "NXdetector"
        stack = detector.create_dataset(
            "data",
            shape=(frames,) + FRAME_SHAPE,
            dtype=np.uint32,
            chunks=(1,) + FRAME_SHAPE,
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )
        stack.attrs.update(units="counts", long_name="Eiger counts")
        data = entry.create_group("data")
        data.attrs.update(NX_class="NXdata", signal="data")
        data["data"] = stack
        frame = np.empty(FRAME_SHAPE, np.uint32)
        for i in range(frames):
            a, b = rng.choice(_BACKGROUND_POOL, 2, replace=False)
            np.add(bg_pool[a], bg_pool[b], out=frame)
            ring = ring_pool[int(rng.integers(_RING_POOL))]
            shift = int(rng.integers(0, 2))  # ×1 or ×2: stronger and weaker diffraction
            frame += ring << shift
            stack[i] = frame
    os.replace(part, path)


def main(argv=None) -> int:
    """``python -m benchmarks._data --data DIR --frames N``: write (or find) the stack, in its own process.

    The orchestrator stays small this way: generating frames takes a few
    hundred MB, which would otherwise sit in its heap while it measures others.
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks._data")
    p.add_argument("--data", required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ensure_stack(a.data, a.frames, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
