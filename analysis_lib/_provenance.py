"""Provenance: what a result came from, what was done to it, and what it read.

The one room for the attributes beamside puts on opened and reduced data. The
backend marks what it opens with :data:`SOURCE` (the real file), every
reduction appends its step to :data:`STEPS` and keeps :data:`BYTES_READ`
(the bytes of frames read on-site), ``al.save`` turns them into
``/entry/process`` instead of plain attributes, and :func:`data_stayed_here`
turns them into the sentence a remote user wants.

Light on purpose: the CLI and the guarded probe import this without xarray.
"""

from __future__ import annotations

import json

SOURCE = "beamside_source"  # the real path of the file a variable or result came from
STEPS = "beamside_steps"  # JSON list of {"op", "parameters"}, oldest first
BYTES_READ = "beamside_bytes_read"  # bytes of frames a result read on-site
DATASET = "beamside_dataset"  # the HDF5 path of the stored dataset behind a variable
GROUP = "beamside_group"  # the NXdata group a Dataset was opened from
REF = "beamside_ref"  # the beamtime reference a remote reduction was asked for

# Not copied to a saved file as plain attributes: al.save writes them to /entry/process.
PROCESS_ONLY = (SOURCE, STEPS)
# NeXus ``@target``: where a linked field really lives. True of the source's signal, never of a
# result computed from it (``correct`` and ``bin`` keep the frames' attrs), so al.save drops it.
LINK_TARGET = "target"
NOT_SAVED = (*PROCESS_ONLY, LINK_TARGET)


def record_step(result, frames, op: str, parameters: dict):
    """Attach to ``result`` what ``frames`` came from, the step ``op`` did, and the bytes it read."""
    steps = json.loads(frames.attrs.get(STEPS, "[]"))
    steps.append({"op": op, "parameters": parameters})
    # a chain of ops (correct, then bin) read the file once: keep the first figure
    attrs = {STEPS: json.dumps(steps), BYTES_READ: int(frames.attrs.get(BYTES_READ, frames.nbytes))}
    if frames.attrs.get(SOURCE):
        attrs[SOURCE] = frames.attrs[SOURCE]
    result.attrs.update(attrs)
    for v in getattr(result, "data_vars", {}).values():  # a Dataset's variables carry it too
        v.attrs.update(attrs)
    return result


def bytes_read(result) -> int:
    """The bytes of frames ``result`` read on-site (0 when it does not say)."""
    return int(result.attrs.get(BYTES_READ, 0))


def data_stayed_here(result) -> str:
    """"read 4.3 GB on-site, result 4.2 MB" — the bytes a reduction kept at the facility."""
    read = bytes_read(result)
    size = int(result.nbytes)
    ratio = f" ({read / size:,.0f}× smaller)" if size and read > size else ""
    return f"read {_human(read)} on-site, result {_human(size)}{ratio}: the data stayed here"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover
