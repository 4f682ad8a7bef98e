"""The pyFAI integrator cache: one integrator per geometry per process, one integration at a time.

pyFAI keeps its integration engine (the CSR matrix of a geometry) inside the
integrator, and building it costs more than integrating a frame, so each
process builds one per geometry and keeps it. :mod:`.ops` (reductions on
Dask workers) and the viewer (profiles in the notebook's kernel) share it: a
second cache would build the engine twice and break the one-at-a-time rule
below.
"""

from __future__ import annotations

import json
import os
import threading

_integrators: dict = {}
_integrators_lock = threading.Lock()
# pyFAI's integration engine is shared state: concurrent integrate1d calls on one integrator
# returned other frames' profiles (130 of 200 in one run), and one integrator per thread
# crashed (double free). One integrator per process, one integration at a time; pyFAI's own
# OpenMP loop still uses every core.
_integrate_lock = threading.Lock()


def _geometry_key(poni) -> str:
    if isinstance(poni, (str, os.PathLike)):
        path = os.path.realpath(os.path.expanduser(os.fspath(poni)))
        try:
            return f"file:{path}:{os.stat(path).st_mtime_ns}"
        except FileNotFoundError:
            raise FileNotFoundError(f"PONI file {os.fspath(poni)!r} does not exist") from None
    if isinstance(poni, dict):
        return "dict:" + json.dumps(poni, sort_keys=True, default=str)
    raise TypeError("poni must be a PONI file path or a pyFAI geometry dict")


def integrator(poni):
    """The pyFAI integrator for ``poni``, built once per worker process and reused.

    pyFAI caches its integration engine (the CSR matrix) inside the integrator:
    rebuilding it per chunk would cost more than integrating. Call it under
    ``_integrate_lock`` (see there).
    """
    import pyFAI

    key = _geometry_key(poni)
    with _integrators_lock:
        ai = _integrators.get(key)
        if ai is None:
            if isinstance(poni, dict):
                from pyFAI.integrator.azimuthal import AzimuthalIntegrator

                ai = AzimuthalIntegrator()
                ai.set_config(dict(poni))
            else:
                ai = pyFAI.load(os.path.expanduser(os.fspath(poni)))
            _integrators[key] = ai
    return ai


def integrate1d(poni, image, npt: int, unit: str, mask=None, **kwargs):
    """pyFAI's ``integrate1d`` with this process's integrator for ``poni``, one call at a time."""
    ai = integrator(poni)
    with _integrate_lock:
        return ai.integrate1d(image, npt, unit=unit, mask=mask, **kwargs)
