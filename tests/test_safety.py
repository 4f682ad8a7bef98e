"""Every route out of a beamtime is refused before a byte is returned.

HDF5 external links, virtual datasets and external raw storage can point at
any file the process can see; ``al.open`` must refuse each of them when it
leads outside the user's beamtimes (the hub adds OS-level isolation on top).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import xarray as xr

import analysis_lib as al
from analysis_lib.catalog import load_catalog

from .conftest import write_stack


@pytest.fixture
def root(facility):
    return load_catalog(facility).data_root


def open_as_alice(facility, path, **kwargs):
    return al.open(path, user="alice", catalog=facility, **kwargs)


def nexus_with(path, make_signal):
    """A NeXus file whose NXdata signal ``data`` is made by ``make_signal(nxdata)``."""
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["default"] = "data"
        nxdata = entry.create_group("data")
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = "data"
        make_signal(nxdata)
    return path


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_external_link_to_another_beamtime(facility, root, absolute):
    target = root / "p12/raw/scan.nxs"
    name = str(target) if absolute else "../../p12/raw/scan.nxs"
    path = nexus_with(root / "p1/raw/evil.nxs", lambda g: g.__setitem__("data", h5py.ExternalLink(name, "/entry/data/data")))
    with pytest.raises(al.AccessDenied, match="external link"):
        open_as_alice(facility, path)


def test_external_link_in_the_default_chain(facility, root):
    path = root / "p1/raw/evil_entry.nxs"
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        f["entry"] = h5py.ExternalLink(str(root / "p12/raw/scan.nxs"), "/entry")
    with pytest.raises(al.AccessDenied):
        open_as_alice(facility, path)


def test_external_link_prefix_confusion(facility, root):
    # "/data/p12" must not pass as being inside "/data/p1"
    path = nexus_with(
        root / "p1/raw/evil.nxs",
        lambda g: g.__setitem__("data", h5py.ExternalLink(str(root / "p1") + "2/raw/scan.nxs", "/entry/data/data")),
    )
    with pytest.raises(al.AccessDenied):
        open_as_alice(facility, path)


def test_external_link_through_a_symlinked_folder(facility, root):
    os.symlink(root / "p12", root / "p1/raw/shortcut")
    path = nexus_with(
        root / "p1/raw/evil.nxs", lambda g: g.__setitem__("data", h5py.ExternalLink("shortcut/raw/scan.nxs", "/entry/data/data"))
    )
    with pytest.raises(al.AccessDenied):
        open_as_alice(facility, path)


def test_external_link_inside_the_beamtime_is_followed(facility, root):
    path = nexus_with(root / "p1/raw/linked.nxs", lambda g: g.__setitem__("data", h5py.ExternalLink("scan.nxs", "/entry/data/data")))
    ds = open_as_alice(facility, path)
    with h5py.File(root / "p1/raw/scan.nxs") as f:
        expected = f["/entry/data/data"][()]
    np.testing.assert_array_equal(ds["data"].values, expected)
    assert ds["data"].attrs["beamside_source"] == str(root / "p1/raw/scan.nxs")


def _vds(path, source_file, shape=(4, 16, 12)):
    layout = h5py.VirtualLayout(shape=shape, dtype="uint32")
    layout[:] = h5py.VirtualSource(str(source_file), "/entry/data/data", shape=shape)
    return nexus_with(path, lambda g: g.create_virtual_dataset("data", layout, fillvalue=7))


def test_virtual_dataset_into_another_beamtime(facility, root):
    path = _vds(root / "p1/raw/vds.nxs", root / "p12/raw/scan.nxs")
    with pytest.raises(al.AccessDenied, match="virtual dataset"):
        open_as_alice(facility, path)


def test_virtual_dataset_with_relative_source_outside(facility, root):
    path = _vds(root / "p1/raw/vds.nxs", "../../p12/raw/scan.nxs")
    with pytest.raises(al.AccessDenied):
        open_as_alice(facility, path)


def test_virtual_dataset_with_missing_source_is_an_error_not_fill_values(facility, root):
    path = _vds(root / "p1/raw/vds.nxs", root / "p1/raw/gone.nxs")
    with pytest.raises(al.DataError, match="missing") as err:
        open_as_alice(facility, path)
    assert err.value.file == str(path) and err.value.dataset == "/entry/data/data"


def test_virtual_dataset_inside_the_beamtime_reads_its_source(facility, root):
    path = _vds(root / "p1/raw/vds.nxs", root / "p1/raw/scan.nxs")
    ds = open_as_alice(facility, path)
    with h5py.File(root / "p1/raw/scan.nxs") as f:
        np.testing.assert_array_equal(ds["data"].values, f["/entry/data/data"][()])


def test_external_raw_storage_in_another_beamtime(facility, root):
    secret = root / "p12/raw/secret.bin"
    np.arange(4 * 16 * 12, dtype=np.uint32).tofile(secret)
    path = nexus_with(
        root / "p1/raw/ext.nxs",
        lambda g: g.create_dataset("data", shape=(4, 16, 12), dtype="uint32", external=[(str(secret), 0, h5py.h5f.UNLIMITED)]),
    )
    with pytest.raises(al.AccessDenied, match="external storage"):
        open_as_alice(facility, path)


def test_external_raw_storage_inside_the_beamtime_is_read_without_hdf5(facility, root):
    raw = root / "p1/raw/frames.bin"
    values = np.arange(4 * 16 * 12, dtype=np.uint32).reshape(4, 16, 12)
    values.tofile(raw)
    path = nexus_with(
        root / "p1/raw/ext.nxs",
        lambda g: g.create_dataset("data", shape=(4, 16, 12), dtype="uint32", external=[("frames.bin", 0, values.nbytes)]),
    )
    ds = open_as_alice(facility, path)
    np.testing.assert_array_equal(ds["data"].values, values)
    np.testing.assert_array_equal(ds["data"][1:3, 2:9:2, 5].values, values[1:3, 2:9:2, 5])


def test_symlinked_file_and_folder(facility, root):
    os.symlink(root / "p12/raw/scan.nxs", root / "p1/raw/alias.nxs")
    os.symlink(root / "p12", root / "p1/other")
    for ref in ("bt-1/raw/alias.nxs", "bt-1/other/raw/scan.nxs", root / "p1/raw/alias.nxs"):
        with pytest.raises(al.AccessDenied):
            open_as_alice(facility, ref)


@pytest.mark.parametrize("ref", ["bt-1/../p12/raw/scan.nxs", "bt-2/raw/scan.nxs", "bt-3/raw/scan.nxs"])
def test_references_outside_the_users_beamtimes(facility, ref):
    with pytest.raises(al.AccessDenied):
        open_as_alice(facility, ref)


def test_xarray_engine_enforces_the_catalog_too(facility, root, monkeypatch):
    monkeypatch.setenv("BEAMSIDE_CATALOG", str(facility))
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    ds = xr.open_dataset(root / "p1/raw/scan.nxs", engine="nexus", chunks={})
    assert ds["data"].shape == (4, 16, 12)
    with pytest.raises(al.AccessDenied):
        xr.open_dataset(root / "p12/raw/scan.nxs", engine="nexus")


def test_without_a_catalog_links_stay_beside_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_stack(tmp_path / "b/scan.nxs", np.ones((2, 4, 4), dtype=np.uint16))
    path = nexus_with(tmp_path / "a/evil.nxs", lambda g: g.__setitem__("data", h5py.ExternalLink("../b/scan.nxs", "/entry/data/data")))
    with pytest.raises(al.AccessDenied):
        al.open(path)
