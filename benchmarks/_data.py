"""The benchmark's frame stack: one Eiger-1M-like NeXus file, written once and reused.

The frames are those of ``beamside demo-data`` (:func:`analysis_lib.demo.write_stack`,
a y scan of bt-1001 and that beamtime's PONI file): 1062×1028 uint32 frames,
one frame per HDF5 chunk, bitshuffle/LZ4, as an Eiger's file writer stores
them. Counts are Poisson (air scatter, Debye-Scherrer rings where the PONI file
says, zero in the module gaps, shadowed by the beamstop), so bitshuffle/LZ4
compresses them about as well as real data (~7:1) and decoding costs what it
costs on real data; writing runs at about the speed of HDF5's encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

from analysis_lib.demo import FRAME_BYTES, FRAME_SHAPE, parse_size, write_poni, write_stack

__all__ = ["DATASET", "FRAME_BYTES", "FRAME_SHAPE", "ensure_stack", "frames_for", "parse_size", "poni_path", "stack_path"]

DATASET = "/entry/data/data"  # the NXdata signal; also linked from the NXdetector

# Bump when the frames change, so an old cached file is not mistaken for the new one.
_VERSION = 2  # 2: the frames of analysis_lib.demo


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
    write_poni(poni)
    if _complete(path, frames, seed):
        log(f"reusing {path}")
        return path, poni
    import time

    log(f"writing {frames} frames ({frames * FRAME_BYTES / 1e9:.2f} GB uncompressed) to {path} ...")
    t0 = time.perf_counter()
    write_stack(path, frames, seed=seed)
    log(f"  written in {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e9:.3f} GB on disk")
    return path, poni


def _complete(path: Path, frames: int, seed: int) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("beamside_demo_seed") == seed and f[DATASET].shape == (frames,) + FRAME_SHAPE
    except (OSError, KeyError):
        return False


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
