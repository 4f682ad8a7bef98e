"""Who may read what, and what may be written: the one access policy.

:class:`Policy` is asked by everything that decides access — the library
before it opens or saves, the hub's sandboxes for their bind mounts, the
Kubernetes pods for their ``subPath`` mounts, the gateway for its clusters
and for revocation — so a rule changes in one place. ``al.beamtimes`` and
``al.resolve`` ask it the way a notebook does.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import AccessDenied
from .catalog import Beamtime, Catalog, current_user, load_catalog


class Policy:
    """Access decided from one catalog (the facility's, or a user's own view of it)."""

    def __init__(self, catalog: Catalog | str | os.PathLike | None = None):
        self.catalog = load_catalog(catalog)

    def beamtimes(self, user: str) -> list[Beamtime]:
        """What ``user`` may read now."""
        return self.catalog.readable(user)

    def granted(self, user: str) -> list[str]:
        """The ids of :meth:`beamtimes`, sorted: what a running server or cluster was given."""
        return sorted(bt.id for bt in self.beamtimes(user))

    def resolve(self, ref: str | os.PathLike, user: str) -> Path:
        """The real path behind ``ref`` if ``user`` may read it, else :class:`AccessDenied`."""
        return self.catalog.resolve(ref, user)

    def boundary(self, user: str) -> "Boundary":
        """Where ``user``'s reads may lead (links, virtual datasets, external storage)."""
        return Boundary(bt.real_path for bt in self.beamtimes(user))

    def mounts(self, user: str) -> list[tuple[Path, Path]]:
        """(real folder, where it appears) for each beamtime ``user`` may read: a sandbox's or pod's data view."""
        return [(bt.real_path, Path(bt.path)) for bt in self.beamtimes(user)]

    def view_for(self, user: str) -> dict:
        """The catalog ``user`` may see (:meth:`Catalog.view_for`)."""
        return self.catalog.view_for(user)

    def may_write(self, folder: str | os.PathLike) -> bool:
        """Results may go anywhere but into beamtime data (judged by real path)."""
        return not self.catalog.inside_data(folder)


def beamtimes(user: str | None = None, *, catalog: Catalog | str | None = None) -> list[Beamtime]:
    """The beamtimes the current user (or ``user``) may read now."""
    return Policy(catalog).beamtimes(current_user(user))


def resolve(ref: str | os.PathLike, *, user: str | None = None, catalog: Catalog | str | None = None) -> Path:
    """The real path behind ``"bt-1001/raw/scan.nxs"`` (or an absolute path).

    Raises :class:`~analysis_lib.AccessDenied` unless the current user may read it.
    """
    return Policy(catalog).resolve(ref, current_user(user))


class Boundary:
    """The part of the file system a read may reach: a set of real folders.

    Everything that can lead a read elsewhere — HDF5 external links, virtual
    dataset sources, external raw storage — is checked against one boundary,
    decided in one place. In a user's session the boundary is the user's
    beamtimes; without a catalog it is the folder of the file being opened.
    """

    def __init__(self, roots):
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)

    def __repr__(self):
        return f"Boundary({[str(r) for r in self.roots]})"

    def check(self, path: str | os.PathLike, what: str) -> Path:
        """The real path of ``path`` if it lies inside, else ``AccessDenied`` naming ``what``."""
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(r) for r in self.roots):
            raise AccessDenied(f"{what} leads to {str(path)!r}, outside the beamtimes you may read")
        return real
