"""What a frame stack's own file says about its detector: the PONI geometry and the pixel mask.

The viewer needs both to draw a radial profile and to grey out module gaps.
It asks the file first, in NeXus terms: the signal's ``@target`` (NeXus's
record of where a linked field really lives) names the NXdetector, whose
``pixel_mask`` is the mask; the signal's ``@beamside_geometry`` names the
beamtime's PONI file, relative to the data file's folder. A reference read
from a file is treated like a link in it: it must stay inside what the user
may read. Files that say nothing (older demo data, other writers) fall back
to the usual places: ``/entry/instrument/detector/pixel_mask`` and
``<beamtime>/calib/*.poni`` a few folders up.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import numpy as np
import xarray as xr

from ._backend import access_policy
from ._errors import BeamsideError
from ._provenance import LINK_TARGET, SOURCE as SOURCE_ATTR

GEOMETRY_ATTR = "beamside_geometry"  # on the signal: its PONI file, relative to the data file's folder
TARGET_ATTR = LINK_TARGET  # NeXus: the path of the field a link points to
PIXEL_MASK = "pixel_mask"  # NXdetector's field: non-zero for pixels without usable counts
_FALLBACK_DETECTOR = "/entry/instrument/detector"


def find_poni(frames: xr.DataArray) -> Path | None:
    """The PONI geometry the frames' file names, else the beamtime's ``<beamtime>/calib/*.poni``."""
    source = frames.attrs.get(SOURCE_ATTR)
    if not source:
        return None
    named = frames.attrs.get(GEOMETRY_ATTR)
    if isinstance(named, str) and named.endswith(".poni"):
        try:
            _, boundary = access_policy(source)
            poni = boundary.check(os.path.join(os.path.dirname(source), named), f"@{GEOMETRY_ATTR} of {source!r}")
        except BeamsideError:  # not the user's to read: try the usual place
            poni = None
        if poni is not None and poni.is_file():
            return poni
    for folder in list(Path(source).parents)[:4]:  # <beamtime>/raw[/run]/file: a few levels up at most
        found = sorted(folder.glob("calib/*.poni"))
        if found:
            return found[0]
    return None


def pixel_mask_path(frames: xr.DataArray) -> str:
    """Where the detector's ``pixel_mask`` is: beside the signal's ``@target`` in its NXdetector."""
    target = frames.attrs.get(TARGET_ATTR)
    detector = posixpath.dirname(target) if isinstance(target, str) and target.startswith("/") else _FALLBACK_DETECTOR
    return posixpath.join(detector, PIXEL_MASK)


def find_pixel_mask(frames: xr.DataArray) -> np.ndarray | None:
    """The detector's NeXus ``pixel_mask`` from the frames' own file, if it has one."""
    source = frames.attrs.get(SOURCE_ATTR)
    if not source:
        return None
    from ._open import open as open_beamtime_file

    try:
        found = open_beamtime_file(source, dataset=pixel_mask_path(frames), chunks=None)
    except (BeamsideError, KeyError, OSError):  # no mask there, or not ours to read: show every pixel
        return None
    mask = found[next(iter(found.data_vars))].values
    return mask if mask.shape == tuple(frames.shape[-2:]) else None
