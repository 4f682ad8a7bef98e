"""The catalog decides who reads what: visibility, expiry, and path resolution by real path."""

from __future__ import annotations

import datetime as dt
import os
import pickle

import pytest
import yaml

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
    # a date: through that whole day, the facility's (local) day
    assert bt1.readable_by("dave", now=dt.datetime(2020, 1, 31, 23, 59).astimezone())
    assert not bt1.readable_by("dave", now=dt.datetime(2020, 2, 1, 0, 0).astimezone())
    with pytest.raises(al.AccessDenied, match="no longer"):
        al.resolve("bt-1/raw/scan.nxs", user="dave", catalog=facility)


def one_member(until: str) -> Catalog:
    """A catalog whose only beamtime has alice as a member ``until`` (YAML text, as an admin writes it)."""
    return Catalog.from_dict(yaml.safe_load(f"""
        data_root: /data
        beamtimes:
          - id: bt-7
            members:
              - {{user: alice, until: {until}}}
        """))


UTC = dt.timezone.utc


@pytest.mark.parametrize("until, last_allowed", [
    ("2027-01-31T12:00:00", dt.datetime(2027, 1, 31, 12, 0, tzinfo=UTC)),  # YAML datetime, naive: UTC
    ("2027-01-31T12:00:00+02:00", dt.datetime(2027, 1, 31, 10, 0, tzinfo=UTC)),  # YAML datetime with a zone
    ("'2027-01-31T12:00:00'", dt.datetime(2027, 1, 31, 12, 0, tzinfo=UTC)),  # an ISO string
    ("'2027-01-31T12:00:00Z'", dt.datetime(2027, 1, 31, 12, 0, tzinfo=UTC)),
])
def test_until_an_instant(until, last_allowed):
    bt = one_member(until).beamtimes[0]
    assert bt.readable_by("alice", now=last_allowed)
    assert not bt.readable_by("alice", now=last_allowed + dt.timedelta(seconds=1))
    assert bt.readable_by("alice", now=last_allowed.astimezone(dt.timezone(dt.timedelta(hours=-5))))


@pytest.mark.parametrize("until", ["2027-01-31", "'2027-01-31'"])
def test_until_a_day_as_date_or_string(until):
    bt = one_member(until).beamtimes[0]
    assert bt.members[0].until == dt.date(2027, 1, 31)
    assert bt.readable_by("alice", now=dt.datetime(2027, 1, 31, 23, 59, 59).astimezone())
    assert not bt.readable_by("alice", now=dt.datetime(2027, 2, 1, 0, 0).astimezone())


def test_until_an_instant_in_the_future_opens_files(facility):
    """The datetime form works end to end (it used to raise TypeError and lock the member out)."""
    text = facility.read_text().replace("- {user: alice, role: pi}", "- {user: alice, role: pi, until: 2999-01-31T12:00:00}")
    facility.write_text(text)
    root = load_catalog(facility).data_root
    assert al.resolve("bt-1/raw/scan.nxs", user="alice", catalog=facility) == root / "p1/raw/scan.nxs"
    assert ids(al.beamtimes("alice", catalog=facility)) == ["bt-1"]


@pytest.mark.parametrize("until", ["20270131", "soon", "'31.01.2027'", "[2027, 1, 31]", "true"])
def test_until_of_another_kind_is_a_catalog_error_naming_beamtime_and_member(until):
    with pytest.raises(al.CatalogError, match=r"bt-7.*members\[0\] \(alice\).*'until' must be a date"):
        one_member(until)


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
    """An edit is seen by the next call, even one that keeps the file's size within the filesystem's mtime tick."""
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]
    before = facility.stat()
    # same length ("alice" -> "erin" + one more newline), so only the modification time tells the edit apart
    text = facility.read_text().replace("{user: alice, role: pi}", "{user: erin, role: pi}") + "\n"
    facility.write_text(text)
    assert facility.stat().st_size == before.st_size
    # a coarse-grained filesystem (1 s or 2 s ticks) may give the edit the old mtime: set a new one explicitly
    os.utime(facility, ns=(before.st_atime_ns, before.st_mtime_ns + 3_000_000_000))
    assert ids(al.beamtimes("alice", catalog=str(facility))) == []
    # and back: the restored text is seen too, the mtime set backwards this time
    facility.write_text(text.replace("{user: erin, role: pi}", "{user: alice, role: pi}")[:-1])
    os.utime(facility, ns=(before.st_atime_ns, before.st_mtime_ns - 3_000_000_000))
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]


def catalog_of_paths(tmp_path, *paths: str) -> dict:
    return {"data_root": str(tmp_path), "beamtimes": [{"id": f"bt-{i}", "path": p} for i, p in enumerate(paths)]}


@pytest.mark.parametrize("outer, inner", [("p1", "p1/sub"), ("p1/sub", "p1"), ("a", "a/b/c")])
def test_a_beamtime_inside_another_is_refused(tmp_path, outer, inner):
    doc = catalog_of_paths(tmp_path, "p12", outer, "p3", inner)
    with pytest.raises(al.CatalogError, match="lies inside") as err:
        Catalog.from_dict(doc)
    ids_by_path = {outer: "bt-1", inner: "bt-3"}
    assert f"beamtime {ids_by_path[inner]!r}" in str(err.value) and f"beamtime {ids_by_path[outer]!r}" in str(err.value)


@pytest.mark.parametrize("second", ["p1", "p1/", "./p1"])
def test_two_beamtimes_on_one_folder_are_refused(tmp_path, second):
    doc = catalog_of_paths(tmp_path, "p1", "p2", second)
    with pytest.raises(al.CatalogError, match="beamtimes 'bt-0' and 'bt-2' have the same folder"):
        Catalog.from_dict(doc)


def test_a_symlink_cannot_hide_a_nested_beamtime(tmp_path):
    (tmp_path / "p1" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "p1" / "sub", tmp_path / "p2")
    with pytest.raises(al.CatalogError, match="'bt-1'.*lies inside.*'bt-0'"):
        Catalog.from_dict(catalog_of_paths(tmp_path, "p1", "p2"))


def test_side_by_side_folders_with_a_common_prefix_are_fine(tmp_path):
    cat = Catalog.from_dict(catalog_of_paths(tmp_path, "p1", "p12", "p1x/sub", "p2/p1"))
    assert ids(cat.beamtimes) == ["bt-0", "bt-1", "bt-2", "bt-3"]


# -- the catalog file broken while beamside runs: refused, saying where; fixed, it works again ----
def _rewrite(path, edit) -> None:
    """Apply ``edit`` (bytes → bytes) to the file, with a new mtime so the cache sees it whatever the tick."""
    before = path.stat()
    path.write_bytes(edit(path.read_bytes()))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 3_000_000_000))


@pytest.mark.parametrize("edit, line, words", [
    (lambda b: b.replace(b"{user: bob, role: pi}", b"{user: bob, role: pi"), 15, "not valid YAML"),
    (lambda b: b.replace(b"until: 2020-01-31", b"until: someday"), 9, "'until' must be a date"),
    (lambda b: b.replace(b"    path: p1\n", b"    path: p1\n    path: p3\n"), 6, "'path' appears twice"),
    (lambda b: b.split(b"\n", 1)[0] + b"\n", 1, "'beamtimes' is missing"),  # a copy cut short
    (lambda b: b.replace(b"title: industrial", b"title: industri\xe9l"), 16, "not UTF-8"),
    (lambda b: b"", None, "expected a mapping"),
])
def test_a_broken_catalog_refuses_naming_file_and_line_until_fixed(facility, edit, line, words):
    good = facility.read_bytes()
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]  # cached while good
    _rewrite(facility, edit)
    for ask in (lambda: al.beamtimes("alice", catalog=str(facility)),
                lambda: al.resolve("bt-1/raw/scan.nxs", user="alice", catalog=str(facility)),
                lambda: al.open("bt-1/raw/scan.nxs", user="alice", catalog=str(facility))):
        with pytest.raises(al.CatalogError, match=words) as err:
            ask()
        assert err.value.file == str(facility) and err.value.line == line
        assert str(err.value).startswith(f"catalog {str(facility)!r}" + (f", line {line}: " if line else ": "))
        assert pickle.loads(pickle.dumps(err.value)).line == line  # as it comes back from a Dask worker
    _rewrite(facility, lambda _: good)
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]


@pytest.mark.parametrize("replace", [os.remove, lambda p: (os.remove(p), os.mkdir(p))])
def test_an_unreadable_catalog_refuses_naming_the_file(facility, replace):
    good = facility.read_bytes()
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]
    replace(facility)
    with pytest.raises(al.CatalogError, match="cannot read it") as err:
        al.beamtimes("alice", catalog=str(facility))
    assert err.value.file == str(facility)
    if facility.is_dir():
        facility.rmdir()
    facility.write_bytes(good)
    assert ids(al.beamtimes("alice", catalog=str(facility))) == ["bt-1"]
