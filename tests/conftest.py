"""Shared fixtures: real HDF5/NeXus files written under pytest's temporary folders."""

from __future__ import annotations

import textwrap

import h5py
import hdf5plugin
import numpy as np
import pytest

from .slurm import slurm  # noqa: F401  (session fixture: a private single-node SLURM, started on first use)


def write_stack(path, frames: np.ndarray, *, compression=None, chunks=True, axes=None, extra=None):
    """A minimal NeXus file: /entry/data NXdata whose signal ``data`` is ``frames``."""
    compression = hdf5plugin.Bitshuffle(cname="lz4") if compression is None else compression
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        nxdata = entry.create_group("data")
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = "data"
        if chunks is True:
            chunks = (1,) + frames.shape[1:]
        kwargs = dict(compression) if compression else {}
        dset = nxdata.create_dataset("data", data=frames, chunks=chunks, **kwargs)
        dset.attrs["units"] = "counts"
        if axes:
            nxdata.attrs["axes"] = [name for name, _ in axes] + ["."] * (frames.ndim - len(axes))
            for name, values in axes:
                nxdata[name] = values
                nxdata[name].attrs["units"] = "mm"
        if extra:
            extra(f)
    return path


@pytest.fixture(autouse=True)
def _no_ambient_catalog(monkeypatch):
    """Tests choose their catalog explicitly; a developer's own setting must not leak in."""
    monkeypatch.delenv("BEAMSIDE_CATALOG", raising=False)
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)


@pytest.fixture
def facility(tmp_path):
    """A data root with three beamtimes and a catalog: alice and bob share bt-1, bob alone has bt-2,
    carol has the confidential bt-3; dave's membership of bt-1 has expired."""
    root = tmp_path / "data"
    for bt in ("p1", "p12", "p3"):
        (root / bt / "raw").mkdir(parents=True)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        textwrap.dedent(
            f"""\
            data_root: {root}
            beamtimes:
              - id: bt-1
                title: shared beamtime
                path: p1
                members:
                  - {{user: alice, role: pi}}
                  - {{user: bob, role: member}}
                  - {{user: dave, role: member, until: 2020-01-31}}
              - id: bt-2
                title: bob's beamtime
                path: p12
                members:
                  - {{user: bob, role: pi}}
              - id: bt-3
                title: industrial
                path: p3
                confidential: true
                members:
                  - {{user: carol, role: industrial-mediator}}
            """
        )
    )
    frames = np.arange(4 * 16 * 12, dtype=np.uint32).reshape(4, 16, 12)
    for bt in ("p1", "p12", "p3"):
        write_stack(root / bt / "raw" / "scan.nxs", frames + (0 if bt == "p1" else 1000))
    return catalog
