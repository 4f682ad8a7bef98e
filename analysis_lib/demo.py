"""Demo beamtime data: a catalog and Eiger-like NeXus scans to try beamside on.

The ``beamside`` CLI and the test suite call :func:`write_demo_data` to lay out
what a facility's storage looks like next to the hub: a beamtime catalog and
three beamtimes (one confidential), each with raw scans, an empty
``processed/`` and the calibration a user reduces with (PONI geometry, dark
and flat frames).

:mod:`._demo_scene` makes the frames (detector, rings, beamstop, Poisson
counts), :mod:`._demo_nexus` writes them; this module knows the beamtimes,
their folders and the catalog.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ._demo_nexus import (  # noqa: F401
    ProgressCallback,
    _NexusFile,
    _part,
    _Tally,
    _write_nexus,
    _write_poni,
)
from ._demo_scene import FRAME_BYTES, FRAME_SHAPE, _Detector, _Scene  # noqa: F401 (public names)

__all__ = ["parse_size", "write_demo_data", "write_poni", "write_stack"]

MIN_FRAMES_PER_SCAN = 4
_DARK_FRAMES = 10
_FLAT_FRAMES = 3


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


def _scene(beamtime: str, seed: int) -> _Scene:
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
