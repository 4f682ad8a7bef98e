"""Read array regions from the bytes the probe located — fast, and without HDF5's lock.

HDF5 runs everything, decompression included, under one global lock, so
threads reading through h5py do not scale. For chunked datasets with filters
we can decode (bitshuffle/LZ4, LZ4, Zstd, deflate, shuffle, fletcher32) the
readers here ``os.pread`` each chunk's bytes and decode them in the calling
thread with the decoders of :mod:`._filters`, which release the GIL.
Everything else (virtual datasets, compact storage, filters we do not know)
goes through h5py.

Readers are plain picklable objects holding paths and byte offsets, so a Dask
graph can carry them to worker processes; each process opens files itself.
"""

from __future__ import annotations

import os
import threading
import zlib

import numpy as np

from . import _audit
from ._errors import CorruptChunkError, DataError, TruncatedFileError, UnknownFilterError
from ._filters import BadChunk, can_decode, decode_chunk
from ._layout import StoredArray

# ---------------------------------------------------------------------------
# per-process file handles
# ---------------------------------------------------------------------------
_fd_lock = threading.Lock()
_fds: dict[tuple[int, str], int] = {}


def _fd(path: str) -> int:
    key = (os.getpid(), path)  # a forked worker must not share its parent's descriptors' offsets
    fd = _fds.get(key)
    if fd is None:
        with _fd_lock:
            fd = _fds.get(key)
            if fd is None:
                fd = _fds[key] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                _audit.record(path)
    return fd


def _pread(path: str, size: int, offset: int, dataset: str) -> bytes:
    data = os.pread(_fd(path), size, offset)
    if len(data) != size:
        raise TruncatedFileError(
            f"bytes {offset}..{offset + size} are past the end of the file (it was truncated after opening?)",
            file=path,
            dataset=dataset,
        )
    return data


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------
def _normalise(key, shape):
    """Turn a basic-indexing key into per-axis (start, stop, step) and the axes to drop."""
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    ranges, drop = [], []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step < 0:
                raise IndexError("negative steps are not supported by this reader")
            stop = max(stop, start)
        else:
            i = int(k)
            i = i + n if i < 0 else i
            if not 0 <= i < n:
                raise IndexError(f"index {k} out of range for axis {axis} of size {n}")
            start, stop, step = i, i + 1, 1
            drop.append(axis)
        ranges.append((start, stop, step))
    return ranges, tuple(drop)


def _finish(region, ranges, drop):
    steps = tuple(slice(None, None, st) for _, _, st in ranges)
    if any(st != 1 for _, _, st in ranges):
        region = region[steps]
    return region.squeeze(axis=drop) if drop else region


class ChunkedReader:
    """Reads regions of a chunked dataset from raw chunk bytes (``os.pread`` + decode)."""

    def __init__(self, stored: StoredArray):
        self.stored = stored
        self.shape = stored.shape
        self.dtype = np.dtype(stored.dtype)
        self._lookup = None

    def __getstate__(self):
        return {"stored": self.stored}

    def __setstate__(self, state):
        self.__init__(state["stored"])

    def _row_of(self):
        """Chunk grid position -> row of the chunk index (-1: never written)."""
        if self._lookup is None:
            s = self.stored
            grid_shape = tuple(-(-n // c) for n, c in zip(s.shape, s.chunks))
            lookup = np.full(grid_shape, -1, dtype=np.int64)
            if len(s.index.addr):
                lookup[tuple(s.index.grid.T)] = np.arange(len(s.index.addr))
            self._lookup = lookup
        return self._lookup

    def __getitem__(self, key):
        ranges, drop = _normalise(key, self.shape)
        s = self.stored
        out = np.empty([stop - start for start, stop, _ in ranges], dtype=self.dtype)
        if out.size == 0:
            return _finish(out, ranges, drop)
        lookup = self._row_of()
        chunks = s.chunks
        first = [start // c for (start, _, _), c in zip(ranges, chunks)]
        last = [(stop - 1) // c for (_, stop, _), c in zip(ranges, chunks)]
        scratch = None
        for pos in np.ndindex(*[b - a + 1 for a, b in zip(first, last)]):
            grid = tuple(a + p for a, p in zip(first, pos))
            lo = [g * c for g, c in zip(grid, chunks)]
            # the part of this chunk we need, in chunk and in output coordinates
            src = tuple(slice(max(r[0], l) - l, min(r[1], l + c) - l) for r, l, c in zip(ranges, lo, chunks))
            dst = tuple(slice(max(r[0], l) - r[0], min(r[1], l + c) - r[0]) for r, l, c in zip(ranges, lo, chunks))
            row = lookup[grid]
            if row < 0:
                out[dst] = s.fill_value
                continue
            whole = all(sl.start == 0 and sl.stop == c for sl, c in zip(src, chunks))
            target = out[dst]
            if not (whole and target.flags.c_contiguous):
                if scratch is None:
                    scratch = np.empty(chunks, dtype=self.dtype)
                target = scratch
            self._read_chunk(int(row), grid, target)
            if target is scratch:
                out[dst] = scratch[src]
        return _finish(out, ranges, drop)

    def whole_frames(self) -> bool:
        """True when every HDF5 chunk holds whole detector frames (the usual one-frame chunks)."""
        s = self.stored
        return len(s.shape) == 3 and tuple(s.chunks[1:]) == tuple(s.shape[1:])

    def frames(self, start: int, stop: int):
        """Yield frames ``start..stop-1`` one at a time, decoded into this thread's reused buffer.

        For reductions: a frame is reduced while it is still in cache, and no
        block of fresh (page-faulting) memory is allocated per task — measured
        as the largest single cost of reading into 100+ MiB Dask blocks.
        """
        s = self.stored
        depth = s.chunks[0]
        buffer = _scratch(s.chunks, self.dtype)
        lookup = self._row_of()
        for g in range(start // depth, (stop - 1) // depth + 1):
            row = lookup[(g, 0, 0)]
            if row < 0:
                buffer[...] = s.fill_value
            else:
                self._read_chunk(int(row), (g, 0, 0), buffer)
            first = g * depth
            for i in range(max(start, first), min(stop, first + depth)):
                yield buffer[i - first]

    def _read_chunk(self, row: int, grid, out: np.ndarray) -> None:
        s = self.stored
        addr, size, mask = int(s.index.addr[row]), int(s.index.size[row]), int(s.index.mask[row])
        data = _pread(s.file, size, addr, s.path)
        try:
            decode_chunk(data, s, mask, out)
        except (BadChunk, zlib.error, ValueError, RuntimeError) as exc:
            where = ", ".join(str(g * c) for g, c in zip(grid, s.chunks))
            raise CorruptChunkError(f"chunk at ({where}) is corrupt: {exc}", file=s.file, dataset=s.path) from None
        except Exception as exc:  # lz4/zstandard raise their own error types
            if type(exc).__module__.split(".")[0] in ("lz4", "zstandard", "_lz4", "zstd"):
                where = ", ".join(str(g * c) for g, c in zip(grid, s.chunks))
                raise CorruptChunkError(f"chunk at ({where}) is corrupt: {exc}", file=s.file, dataset=s.path) from None
            raise


_scratch_local = threading.local()


def _scratch(shape, dtype) -> np.ndarray:
    """A per-thread buffer of ``shape``, reused from call to call."""
    buf = getattr(_scratch_local, "buffer", None)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = _scratch_local.buffer = np.empty(shape, dtype=dtype)
    return buf


class SegmentReader:
    """Reads uncompressed C-ordered bytes laid out in one or more file segments.

    Serves contiguous datasets (one segment in the file itself) and external
    raw storage (segments in other files the probe has checked), without HDF5.
    """

    def __init__(self, stored: StoredArray):
        self.stored = stored
        self.shape = stored.shape
        self.dtype = np.dtype(stored.dtype)

    def _bytes(self, start: int, stop: int) -> bytes:
        parts, pos = [], 0
        for path, offset, size in self.stored.segments:
            a, b = max(start, pos), min(stop, pos + size)
            if a < b:
                parts.append(_pread(path, b - a, offset + a - pos, self.stored.path))
            pos += size
        data = b"".join(parts)
        if len(data) < stop - start:
            data += bytes(stop - start - len(data))  # HDF5 reads past short external files as zeros
        return data

    def __getitem__(self, key):
        ranges, drop = _normalise(key, self.shape)
        if not self.stored.segments:  # never written: all fill value
            out = np.full([b - a for a, b, _ in ranges], self.stored.fill_value, dtype=self.dtype)
            return _finish(out, ranges, drop)
        # read whole rows along the first axis, then cut the rest in memory
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize if self.shape else self.dtype.itemsize
        (a0, b0, _), rest = (ranges[0], ranges[1:]) if ranges else ((0, 1, 1), [])
        data = self._bytes(a0 * row_bytes, b0 * row_bytes)
        block = np.frombuffer(data, dtype=self.dtype).reshape((b0 - a0,) + tuple(self.shape[1:]) if self.shape else ())
        region = block[(slice(None),) + tuple(slice(a, b) for a, b, _ in rest)] if self.shape else block
        return _finish(np.array(region), ranges, drop)


_h5_lock = threading.Lock()
_h5_files: dict[tuple[int, str], object] = {}


class H5Reader:
    """Reads through h5py: virtual datasets, compact storage, filters without a decoder here.

    Slower (HDF5's global lock) but always right; the probe has already checked
    everything a virtual dataset can reach.
    """

    def __init__(self, stored: StoredArray):
        self.stored = stored
        self.shape = stored.shape
        self.dtype = np.dtype(stored.dtype)

    def __getitem__(self, key):
        import h5py
        import hdf5plugin  # noqa: F401  (registers detector filters in this process)

        s = self.stored
        k = (os.getpid(), s.file)
        with _h5_lock:
            f = _h5_files.get(k)
            if f is None:
                f = _h5_files[k] = h5py.File(s.file, "r")  # default locking: match handles the user opened
                _audit.record(s.file)
        ranges, drop = _normalise(key, self.shape)
        sel = tuple(slice(a, b, st) for a, b, st in ranges)
        try:
            region = f[s.path][sel] if sel else f[s.path][()]
        except OSError as exc:
            text = str(exc)
            cls = UnknownFilterError if "filter" in text.lower() and "not available" in text.lower() else CorruptChunkError
            raise cls(f"HDF5 could not read it: {text}", file=s.file, dataset=s.path) from None
        region = np.asarray(region)
        return region.squeeze(axis=drop) if drop else region


def reader_for(stored: StoredArray):
    """The fastest correct reader for a dataset's storage."""
    if stored.layout == "chunked" and stored.index is not None and can_decode(stored):
        return ChunkedReader(stored)
    if stored.layout in ("contiguous", "external"):
        return SegmentReader(stored)
    if stored.layout in ("chunked", "virtual", "compact"):
        return H5Reader(stored)
    raise DataError(f"unknown storage layout {stored.layout!r}", file=stored.file, dataset=stored.path)
