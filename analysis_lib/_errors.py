"""The errors beamside raises, in one place.

Every error a user can meet says which file, which dataset and what is wrong,
so that a scientist on the other side of Europe can act on it without asking
the facility. ``AccessDenied`` is a ``PermissionError`` and ``DataError`` a
``ValueError`` so that generic handlers keep working.
"""

from __future__ import annotations


class BeamsideError(Exception):
    """Base class of every error raised on purpose by beamside."""


class AccessDenied(BeamsideError, PermissionError):
    """The user may not read (or write) this path, beamtime or object."""


class CatalogError(BeamsideError, ValueError):
    """The beamtime catalog file is missing, unreadable or not in the documented shape.

    ``file`` and ``line`` (from 1, when known) say where, so that the admin fixes the right
    line and the user on the spawn page knows it is the facility's file, not their notebook.
    """

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None):
        self.reason = reason
        self.file = None if file is None else str(file)
        self.line = line
        where = []
        if self.file:
            where.append(f"catalog {self.file!r}")
        if line:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def __reduce__(self):
        return (_rebuild_catalog_error, (type(self), self.reason, self.file, self.line))


def _rebuild_catalog_error(cls, reason, file, line):
    return cls(reason, file=file, line=line)


class NoSpaceError(BeamsideError, OSError):
    """A result could not be saved: its file system is full (or the user's quota is used up).

    Nothing was written: no partial file, and an earlier result of the same name is unchanged.
    ``file`` is the result's path; ``errno`` stays the system's (``ENOSPC`` or ``EDQUOT``).
    """

    def __init__(self, message: str, file: str | None = None, code: int | None = None):
        super().__init__(message)
        self.file = file
        self.errno = code

    def __reduce__(self):
        return (type(self), (str(self), self.file, self.errno))


class ClusterLost(BeamsideError, RuntimeError):
    """The Dask cluster a computation ran on is gone (its scheduler stopped or cannot be reached):
    nothing of that computation is coming back; a new cluster (``al.cluster()``) can run it again."""


class DataError(BeamsideError, ValueError):
    """A file cannot be read as the data it claims to be.

    ``file`` and ``dataset`` say where; ``reason`` says what is wrong. The
    message puts all three together so a traceback alone is enough.
    """

    def __init__(self, reason: str, *, file: str | None = None, dataset: str | None = None):
        self.reason = reason
        self.file = None if file is None else str(file)
        self.dataset = dataset
        where = []
        if self.file:
            where.append(f"file {self.file!r}")
        if dataset:
            where.append(f"dataset {dataset!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def __reduce__(self):
        # Keep file/dataset when the error travels back from a Dask worker.
        return (_rebuild_data_error, (type(self), self.reason, self.file, self.dataset))


def _rebuild_data_error(cls, reason, file, dataset):
    return cls(reason, file=file, dataset=dataset)


class NotHDF5Error(DataError):
    """The file is not HDF5 at all (wrong signature)."""


class TruncatedFileError(DataError):
    """The file ends before data it declares (an interrupted copy or write)."""


class CorruptChunkError(DataError):
    """A stored chunk does not decode to the size and layout it declares."""


class UnknownFilterError(DataError):
    """A dataset is compressed with a filter this installation cannot decode."""


class TooLargeError(DataError):
    """A dataset, chunk or attribute declares more bytes than the configured budget."""


class NexusStructureError(DataError):
    """NeXus attributes (``@default``, ``@signal``, ``@axes`` …) are missing or broken."""


class ProbeFailedError(DataError):
    """Inspecting the file hung or crashed the HDF5 library (the probe was stopped)."""
