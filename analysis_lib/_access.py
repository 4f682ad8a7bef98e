"""Who may read what, asked the way a notebook asks it (``al.beamtimes``, ``al.resolve``)."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import AccessDenied
from .catalog import Beamtime, Catalog, current_user, load_catalog


def beamtimes(user: str | None = None, *, catalog: Catalog | str | None = None) -> list[Beamtime]:
    """The beamtimes the current user (or ``user``) may read now."""
    return load_catalog(catalog).readable(current_user(user))


def resolve(ref: str | os.PathLike, *, user: str | None = None, catalog: Catalog | str | None = None) -> Path:
    """The real path behind ``"bt-1001/raw/scan.nxs"`` (or an absolute path).

    Raises :class:`~analysis_lib.AccessDenied` unless the current user may read it.
    """
    return load_catalog(catalog).resolve(ref, current_user(user))


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
