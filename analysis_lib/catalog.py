"""The beamtime catalog: the one source of truth for who may read what.

At a facility the catalog is fed by the user-office system; here it is a YAML
file the admin points to with ``BEAMSIDE_CATALOG``. The hub reads it at spawn
time (which beamtimes to mount), the Dask gateway reads it for worker mounts,
and the library reads it again before opening anything (defence in depth).
All three use this module, never a copy of its rules.

Shape (admins write it by hand; keep it backward compatible)::

    data_root: /data
    beamtimes:
      - id: bt-1001
        title: "In-situ XRD of battery cathodes"
        path: bt-1001
        confidential: false
        members:
          - {user: alice, role: pi}
          - {user: carol, role: member, until: 2027-01-31}
          - {user: dan, role: member, until: 2027-01-31T12:00:00}

``until`` is a date (access through that whole day, in the facility's time
zone: the server's) or a date and time (access until that instant; without a
zone it is UTC), as YAML or as an ISO string.

Paths are compared as real paths, component by component: symlinks are
resolved first, ``..`` is refused outright, and ``/data/p1`` never matches
``/data/p12``. No two beamtimes may share a folder, nor may one lie inside
another's (``p1`` and ``p1/sub``): the catalog fails to load.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from ._errors import AccessDenied, CatalogError
from .contract import CATALOG_ENV, USER_ENV

__all__ = ["Beamtime", "Catalog", "Member", "current_user", "load_catalog"]

@dataclass(frozen=True)
class Member:
    """One user's membership of a beamtime, until a day (inclusive) or an instant, if at all.

    ``until`` is a :class:`datetime.date` (the last day of access) or a
    timezone-aware :class:`datetime.datetime` (the last instant), as
    :func:`_parse_until` makes them.
    """

    user: str
    role: str = "member"
    until: _dt.date | _dt.datetime | None = None

    def active(self, now: _dt.datetime) -> bool:
        """Whether the membership holds at ``now`` (timezone-aware)."""
        if self.until is None:
            return True
        if isinstance(self.until, _dt.datetime):  # a datetime is a date too: ask this first
            return now <= self.until
        return now.astimezone().date() <= self.until


@dataclass(frozen=True)
class Beamtime:
    """One proposal's data: an id, a folder under the data root, its members."""

    id: str
    title: str
    path: Path  # absolute, as written (data_root / path); see ``real_path``
    confidential: bool = False
    members: tuple[Member, ...] = ()

    @property
    def real_path(self) -> Path:
        """The folder with symlinks resolved: what access checks compare against."""
        return Path(os.path.realpath(self.path))

    def readable_by(self, user: str, now: _dt.datetime | None = None) -> bool:
        now = now or _dt.datetime.now(_dt.timezone.utc)
        return any(m.user == user and m.active(now) for m in self.members)

    def role_of(self, user: str) -> str | None:
        return next((m.role for m in self.members if m.user == user), None)


@dataclass(frozen=True)
class Catalog:
    """All beamtimes of a facility (or of a demo), loaded from the catalog file."""

    data_root: Path
    beamtimes: tuple[Beamtime, ...] = ()
    source: Path | None = field(default=None, compare=False)

    # -- loading ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: object, source: Path | None = None) -> "Catalog":
        """The catalog in ``doc`` (as :meth:`load` reads it, or a plain dict), else a
        :class:`CatalogError` naming ``source`` and, for a file, the line."""
        refuse = _Refusal(source)
        if not isinstance(doc, dict):
            raise refuse("expected a mapping with 'data_root' and 'beamtimes'", doc)
        root = doc.get("data_root")
        if not isinstance(root, str) or not os.path.isabs(root):
            raise refuse(f"'data_root' must be an absolute path, got {root!r}", doc)
        if doc.get("beamtimes") is None:  # also a file cut short after its first line: not "nobody reads anything"
            raise refuse("'beamtimes' is missing: list the beamtimes, or write 'beamtimes: []' for none", doc)
        entries = doc["beamtimes"]
        if not isinstance(entries, list):
            raise refuse("'beamtimes' must be a list", doc)
        seen: set[str] = set()
        beamtimes, lines = [], {}
        for i, entry in enumerate(entries):
            bt = _parse_beamtime(entry, Path(root), f"beamtimes[{i}]", refuse)
            if bt.id in seen:
                raise refuse(f"beamtime id {bt.id!r} appears twice", entry)
            seen.add(bt.id)
            beamtimes.append(bt)
            lines[bt.id] = entry
        _refuse_shared_folders(beamtimes, lambda reason, bt: refuse(reason, lines[bt.id]))
        return cls(Path(root), tuple(beamtimes), source)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Catalog":
        """Read the catalog file (``BEAMSIDE_CATALOG`` when no path is given).

        Anything wrong with the file is a :class:`CatalogError` with the file and, where the
        text itself is wrong, the line: never an access decision from a file half read.
        """
        path = path or os.environ.get(CATALOG_ENV)
        if not path:
            raise CatalogError(
                f"no beamtime catalog: set {CATALOG_ENV} to the catalog file the facility provides"
            )
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"cannot read it ({exc.strerror})", file=path) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError("not UTF-8 text", file=path, line=raw[:exc.start].count(b"\n") + 1) from None
        try:
            doc = yaml.load(text, Loader=_CatalogLoader)  # a SafeLoader: plain data only
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = ", ".join(str(p) for p in (exc.context, exc.problem) if p)
            raise CatalogError(f"not valid YAML: {problem} (column {mark.column + 1})" if mark else
                               f"not valid YAML: {problem}", file=path, line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise CatalogError(f"not valid YAML ({exc})", file=path) from None
        return cls.from_dict(doc, path)

    # -- questions -------------------------------------------------------------
    def readable(self, user: str, now: _dt.datetime | None = None) -> list[Beamtime]:
        """The beamtimes ``user`` may read now (or at ``now``), in catalog order."""
        return [bt for bt in self.beamtimes if bt.readable_by(user, now)]

    def view_for(self, user: str) -> dict:
        """The catalog as ``user`` may see it (a catalog document itself): only their beamtimes, only
        their own membership; confidential ids of others never appear. What a user's sandbox or pod
        holds instead of the facility's catalog."""
        beamtimes = []
        for bt in self.readable(user):
            beamtimes.append({
                "id": bt.id,
                "title": bt.title,
                "path": os.path.relpath(bt.path, self.data_root),
                "confidential": bt.confidential,
                "members": [{"user": m.user, "role": m.role, **({"until": m.until} if m.until else {})}
                            for m in bt.members if m.user == user],
            })
        return {"data_root": str(self.data_root), "beamtimes": beamtimes}

    def find(self, beamtime_id: str, user: str) -> Beamtime:
        """The beamtime ``beamtime_id`` if ``user`` may read it, else ``AccessDenied``.

        A confidential beamtime the user does not belong to gets the very same
        answer as one that does not exist: not even its id leaks.
        """
        for bt in self.beamtimes:
            if bt.id != beamtime_id:
                continue
            if bt.readable_by(user):
                return bt
            if not bt.confidential:
                raise AccessDenied(f"user {user!r} is not (or no longer) a member of beamtime {bt.id!r}")
        raise AccessDenied(f"no beamtime {beamtime_id!r} that user {user!r} may read")

    def beamtime_of(self, path: str | os.PathLike) -> Beamtime | None:
        """The beamtime whose folder holds ``path`` (by real path), if any."""
        real = Path(os.path.realpath(path))
        for bt in self.beamtimes:
            if real.is_relative_to(bt.real_path):
                return bt
        return None

    def inside_data(self, path: str | os.PathLike) -> bool:
        """True when ``path`` (by real path) lies under the data root or any beamtime."""
        real = Path(os.path.realpath(path))
        roots = [Path(os.path.realpath(self.data_root))] + [bt.real_path for bt in self.beamtimes]
        return any(real.is_relative_to(r) for r in roots)

    def resolve(self, ref: str | os.PathLike, user: str) -> Path:
        """The real path of ``ref`` if ``user`` may read it, else ``AccessDenied``.

        ``ref`` is ``"<beamtime-id>/<path inside it>"`` or an absolute path.
        """
        text = os.fspath(ref)
        if ".." in PurePosixPath(text).parts:
            raise AccessDenied(f"{text!r}: '..' is not allowed in data references")
        if os.path.isabs(text):
            real = Path(os.path.realpath(text))
            for bt in self.readable(user):
                if real.is_relative_to(bt.real_path):
                    return real
            raise AccessDenied(f"{text!r} is not inside a beamtime that user {user!r} may read")
        beamtime_id, _, rest = text.partition("/")
        bt = self.find(beamtime_id, user)
        real = Path(os.path.realpath(bt.path / rest))
        # The real path (after symlinks) must still lie in a beamtime the user reads.
        if real.is_relative_to(bt.real_path) or any(
            real.is_relative_to(other.real_path) for other in self.readable(user)
        ):
            return real
        raise AccessDenied(f"{text!r} leads outside beamtime {bt.id!r} (to a place user {user!r} may not read)")


class _Refusal:
    """Makes the :class:`CatalogError` for a part of the document: the file, and the line that
    part starts on when it was read from one (:class:`_Located`)."""

    def __init__(self, source: Path | None):
        self.source = source

    def __call__(self, reason: str, part: object = None) -> CatalogError:
        return CatalogError(reason, file=self.source, line=getattr(part, "line", None))


def _parse_beamtime(entry: object, root: Path, where: str, refuse: _Refusal) -> Beamtime:
    if not isinstance(entry, dict):
        raise refuse(f"{where}: expected a mapping", entry)
    bt_id = entry.get("id")
    if not isinstance(bt_id, str) or not bt_id or "/" in bt_id or bt_id in (".", ".."):
        raise refuse(f"{where}: 'id' must be a non-empty name without '/', got {bt_id!r}", entry)
    rel = entry.get("path", bt_id)
    if not isinstance(rel, str) or os.path.isabs(rel) or ".." in PurePosixPath(rel).parts or not rel.strip("./"):
        raise refuse(f"{where} ({bt_id}): 'path' must be relative to data_root without '..', got {rel!r}", entry)
    members = []
    for j, m in enumerate(entry.get("members") or []):
        if not isinstance(m, dict) or not isinstance(m.get("user"), str):
            raise refuse(f"{where} ({bt_id}), members[{j}]: expected {{user: NAME, role: ROLE}}", m if isinstance(m, dict) else entry)
        who = f"{where} ({bt_id}), members[{j}] ({m['user']})"
        members.append(Member(m["user"], str(m.get("role", "member")), _parse_until(m.get("until"), who, refuse, m)))
    return Beamtime(
        id=bt_id,
        title=str(entry.get("title", "")),
        path=root / rel,
        confidential=bool(entry.get("confidential", False)),
        members=tuple(members),
    )


def _refuse_shared_folders(beamtimes: list[Beamtime], refuse) -> None:
    """One folder, one beamtime: refuse two beamtimes on the same folder, or one inside another.

    Access is "the real path lies in a folder of a beamtime the user reads", so
    with ``p1`` and ``p1/sub`` every member of the first would read the second.
    Real paths are compared by whole components (``p1`` never holds ``p12``).
    Sorted by components, a folder is directly followed by the first folder
    inside it, so comparing neighbours finds every case.
    """
    by_folder = sorted(((bt.real_path, bt) for bt in beamtimes), key=lambda pair: pair[0].parts)
    for (outer_path, outer), (inner_path, inner) in zip(by_folder, by_folder[1:]):
        if inner_path == outer_path:
            raise refuse(
                f"beamtimes {outer.id!r} and {inner.id!r} have the same folder {str(outer_path)!r}; "
                "give each beamtime its own folder", inner
            )
        if inner_path.is_relative_to(outer_path):
            raise refuse(
                f"the folder of beamtime {inner.id!r} ({str(inner_path)!r}) lies inside that of beamtime "
                f"{outer.id!r} ({str(outer_path)!r}), so members of {outer.id!r} would read {inner.id!r}; "
                "give each beamtime its own folder, side by side", inner
            )


def _parse_until(value: object, where: str, refuse: _Refusal, member: object) -> _dt.date | _dt.datetime | None:
    """A member's ``until``: a date, or a datetime made timezone-aware (naive is UTC).

    YAML gives a ``date`` for ``2027-01-31`` and a ``datetime`` for
    ``2027-01-31T12:00:00``; quoted, both arrive as strings.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            value = _dt.date.fromisoformat(text)
        except ValueError:
            try:
                value = _dt.datetime.fromisoformat(text)
            except ValueError:
                value = text
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value.astimezone(_dt.timezone.utc)
    if isinstance(value, _dt.date):
        return value
    raise refuse(
        f"{where}: 'until' must be a date like 2027-01-31 or a date and time like 2027-01-31T12:00:00 "
        f"(UTC unless it names a zone), got {value!r}", member
    )


class _Located(dict):
    """A mapping read from the catalog file, with the line it starts on (for the errors)."""

    line: int | None = None


class _CatalogLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that every mapping remembers its line and a key written twice in
    one mapping is refused: YAML would keep the last one silently, so a second ``members:`` an
    admin pasted below the first would replace it."""


def _construct_mapping(loader: _CatalogLoader, node: yaml.MappingNode) -> _Located:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may override, by design
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} appears twice in one mapping (first on line {seen[key]})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    mapping = _Located(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_CatalogLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def current_user(user: str | None = None) -> str:
    """Who is asking: explicit, else ``JUPYTERHUB_USER``, else the Unix login name."""
    return user or os.environ.get(USER_ENV) or getpass.getuser()


_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int], Catalog]] = {}


def load_catalog(catalog: "Catalog | str | os.PathLike | None" = None) -> Catalog:
    """The catalog object for ``catalog`` (an object, a path, or ``BEAMSIDE_CATALOG``).

    Re-read whenever the file changes, so a membership the user office removes
    takes effect without restarting anything.
    """
    if isinstance(catalog, Catalog):
        return catalog
    path = catalog or os.environ.get(CATALOG_ENV)
    if not path:
        return Catalog.load(None)  # raises the helpful CatalogError
    key = os.path.abspath(path)
    try:
        st = os.stat(key)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return Catalog.load(key)
    with _cache_lock:
        hit = _cache.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
    loaded = Catalog.load(key)
    with _cache_lock:
        _cache[key] = (stamp, loaded)
    return loaded
