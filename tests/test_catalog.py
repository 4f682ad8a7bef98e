"""The catalog decides who reads what: visibility, expiry, and path resolution by real path."""

from __future__ import annotations

import datetime as dt
import os

import pytest

import analysis_lib as al
from analysis_lib.catalog import Catalog, load_catalog


def ids(beamtimes):
    return [bt.id for bt in beamtimes]


def test_each_user_sees_only_their_beamtimes(facility):
    assert ids(al.beamtimes("alice", catalog=facility)) == ["bt-1"]
    assert ids(al.beamtimes("bob", catalog=facility)) == ["bt-1", "bt-2"]
    assert ids(al.beamtimes("carol", catalog=facility)) == ["bt-3"]
    assert ids(al.beamtimes("mallory", catalog=facility)) == []


def test_current_user_comes_from_jupyterhub(facility, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "bob")
    monkeypatch.setenv("BEAMSIDE_CATALOG", str(facility))
    assert ids(al.beamtimes()) == ["bt-1", "bt-2"]


def test_until_is_honoured(facility):
    cat = load_catalog(facility)
    bt1 = cat.beamtimes[0]
    assert not bt1.readable_by("dave")
    assert bt1.readable_by("dave", today=dt.date(2020, 1, 31))  # the last day still counts
    assert not bt1.readable_by("dave", today=dt.date(2020, 2, 1))
    with pytest.raises(al.AccessDenied, match="no longer"):
        al.resolve("bt-1/raw/scan.nxs", user="dave", catalog=facility)


def test_confidential_beamtime_is_invisible_to_others(facility):
    with pytest.raises(al.AccessDenied) as secret:
        al.resolve("bt-3/raw/scan.nxs", user="alice", catalog=facility)
    with pytest.raises(al.AccessDenied) as missing:
        al.resolve("bt-99/raw/scan.nxs", user="alice", catalog=facility)
    # Same answer as for a beamtime that does not exist: not even the id leaks.
    assert str(secret.value).replace("bt-3", "X") == str(missing.value).replace("bt-99", "X")


def test_resolve_by_reference_and_absolute_path(facility):
    root = load_catalog(facility).data_root
    assert al.resolve("bt-1/raw/scan.nxs", user="alice", catalog=facility) == root / "p1/raw/scan.nxs"
    assert al.resolve(root / "p1/raw/scan.nxs", user="alice", catalog=facility) == root / "p1/raw/scan.nxs"
    with pytest.raises(al.AccessDenied):
        al.resolve(root / "p12/raw/scan.nxs", user="alice", catalog=facility)


def test_prefix_confusion_p1_never_matches_p12(facility):
    root = load_catalog(facility).data_root
    # alice reads p1; p12 starts with the same characters but is another beamtime
    with pytest.raises(al.AccessDenied):
        al.resolve(str(root / "p1") + "2/raw/scan.nxs", user="alice", catalog=facility)


@pytest.mark.parametrize("ref", ["bt-1/../p12/raw/scan.nxs", "bt-1/raw/../../p12/raw/scan.nxs", "bt-1/.."])
def test_dotdot_is_refused(facility, ref):
    with pytest.raises(al.AccessDenied, match=r"'\.\.'"):
        al.resolve(ref, user="alice", catalog=facility)


def test_dotdot_in_absolute_path_is_refused(facility):
    root = load_catalog(facility).data_root
    with pytest.raises(al.AccessDenied):
        al.resolve(f"{root}/p1/../p12/raw/scan.nxs", user="alice", catalog=facility)


def test_symlinked_file_and_folder_into_another_beamtime(facility):
    root = load_catalog(facility).data_root
    os.symlink(root / "p12/raw/scan.nxs", root / "p1/raw/link.nxs")
    os.symlink(root / "p12/raw", root / "p1/raw/elsewhere")
    for ref in ("bt-1/raw/link.nxs", "bt-1/raw/elsewhere/scan.nxs"):
        with pytest.raises(al.AccessDenied, match="outside"):
            al.resolve(ref, user="alice", catalog=facility)
    # bob reads both beamtimes, so the same links are fine for him
    assert al.resolve("bt-1/raw/link.nxs", user="bob", catalog=facility) == root / "p12/raw/scan.nxs"


def test_symlink_inside_the_same_beamtime_is_fine(facility):
    root = load_catalog(facility).data_root
    os.symlink("scan.nxs", root / "p1/raw/latest.nxs")
    assert al.resolve("bt-1/raw/latest.nxs", user="alice", catalog=facility) == root / "p1/raw/scan.nxs"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"beamtimes": []}, "data_root"),
        ({"data_root": "relative/path", "beamtimes": []}, "absolute"),
        ({"data_root": "/d", "beamtimes": [{"id": "a", "path": "../x"}]}, "without '..'"),
        ({"data_root": "/d", "beamtimes": [{"id": "a"}, {"id": "a"}]}, "twice"),
        ({"data_root": "/d", "beamtimes": [{"id": "a", "members": [{"user": "u", "until": "soon"}]}]}, "date"),
        ({"data_root": "/d", "beamtimes": [{"id": "a/b"}]}, "without '/'"),
    ],
)
def test_bad_catalogs_are_explained(doc, message):
    with pytest.raises(al.CatalogError, match=message):
        Catalog.from_dict(doc)


def test_no_catalog_configured_is_explained():
    with pytest.raises(al.CatalogError, match="BEAMSIDE_CATALOG"):
        al.beamtimes("alice")


def test_catalog_changes_take_effect_without_restart(facility):
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]
    text = facility.read_text().replace("{user: alice, role: pi}", "{user: erin, role: pi}")
    facility.write_text(text + "\n")
    assert ids(al.beamtimes("alice", catalog=str(facility))) == []
