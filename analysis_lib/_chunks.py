"""Read array regions from the bytes the probe located — fast, and without HDF5's lock.

HDF5 runs everything, decompression included, under one global lock, so
threads reading through h5py do not scale. For chunked datasets with filters
we can decode (bitshuffle/LZ4, LZ4, Zstd, deflate, shuffle, fletcher32) the
readers here ``os.pread`` each chunk's bytes and decode them in the calling
thread with decoders that release the GIL. Everything else (virtual datasets,
compact storage, filters we do not know) goes through h5py.

Readers are plain picklable objects holding paths and byte offsets, so a Dask
graph can carry them to worker processes; each process opens files itself.
"""

from __future__ import annotations

import ctypes
import glob
import os
import struct
import threading
import zlib

import numpy as np

from . import _audit
from ._errors import CorruptChunkError, DataError, TruncatedFileError, UnknownFilterError
from ._layout import BITSHUFFLE, DEFLATE, FLETCHER32, LZ4, SHUFFLE, ZSTD, StoredArray

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
# decoders
# ---------------------------------------------------------------------------
def _bitshuffle_lib():
    """bitshuffle's C entry point, called through ctypes: GIL released, output in place."""
    try:
        import bitshuffle

        so = glob.glob(os.path.join(os.path.dirname(bitshuffle.__file__), "ext*.so"))[0]
        fn = ctypes.CDLL(so).bshuf_decompress_lz4
    except (ImportError, IndexError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    return fn


_bshuf_decompress_lz4 = _bitshuffle_lib()
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
SUPPORTED_FILTERS = {DEFLATE, SHUFFLE, FLETCHER32, LZ4, ZSTD}
if _bshuf_decompress_lz4 is not None:
    SUPPORTED_FILTERS.add(BITSHUFFLE)


def can_decode(stored: StoredArray) -> bool:
    """True when every filter of ``stored`` has a decoder here (else read through h5py)."""
    for f in stored.filters:
        if f.id not in SUPPORTED_FILTERS:
            return False
        if f.id == BITSHUFFLE and len(f.params) > 4 and f.params[4] not in (0, 2):
            return False  # bitshuffle+zstd: left to the HDF5 plugin
    return np.dtype(stored.dtype).kind in "biuf"


class _Corrupt(Exception):
    """Raised inside a decoder; turned into CorruptChunkError with the chunk's position."""


def _check_bitshuffle_frames(buf: memoryview, start: int, nelem: int, esize: int, block: int) -> None:
    """Walk bitshuffle's block framing and insist it tiles the buffer exactly.

    bitshuffle trusts each block's stored compressed size; a corrupt size makes
    it read outside the buffer and crash the process. Checking the framing
    first turns that into an error (fuzzed: no crash in thousands of mutations).
    """
    pos, end = start, len(buf)
    nblocks, leftover = divmod(nelem, block)
    tail_block = (leftover // 8) * 8
    for _ in range(nblocks + (1 if tail_block else 0)):
        if pos + 4 > end:
            raise _Corrupt("bitshuffle block header past the end of the chunk")
        pos += 4 + _BE32.unpack_from(buf, pos)[0]
    pos += (leftover - tail_block) * esize  # the last < 8 elements are stored raw
    if pos != end:
        raise _Corrupt(f"bitshuffle blocks cover {pos - start} of {end - start} bytes")


def _decode_bitshuffle(data: bytes, params: tuple[int, ...], nbytes: int, out: np.ndarray | None):
    esize = params[2] if len(params) > 2 and params[2] else 1
    compression = params[4] if len(params) > 4 else 0
    if compression == 0:  # bitshuffle without compression: no header
        import bitshuffle

        if len(data) != nbytes or esize not in (1, 2, 4, 8):
            raise _Corrupt(f"{len(data)} bytes stored, {nbytes} expected")
        return bitshuffle.bitunshuffle(np.frombuffer(data, dtype=f"u{esize}")).view(np.uint8)
    if len(data) < 12:
        raise _Corrupt("bitshuffle header missing")
    total = _BE64.unpack_from(data, 0)[0]
    block_bytes = _BE32.unpack_from(data, 8)[0]
    if total != nbytes or block_bytes == 0 or block_bytes % esize:
        raise _Corrupt(f"bitshuffle header says {total} bytes in blocks of {block_bytes}; {nbytes} expected")
    nelem, block = nbytes // esize, block_bytes // esize
    buf = memoryview(data)
    _check_bitshuffle_frames(buf, 12, nelem, esize, block)
    target = out if out is not None else np.empty(nbytes, dtype=np.uint8)
    src = np.frombuffer(data, dtype=np.uint8)
    used = _bshuf_decompress_lz4(src.ctypes.data + 12, target.ctypes.data, nelem, esize, block)
    if used != len(data) - 12:
        raise _Corrupt(f"bitshuffle/LZ4 decoding failed (code {used})")
    return None if out is not None else target


def _decode_lz4(data: bytes, nbytes: int) -> bytes:
    """hdf5plugin's LZ4 filter: 8-byte size, 4-byte block size, then sized blocks."""
    import lz4.block

    if len(data) < 12:
        raise _Corrupt("LZ4 header missing")
    total = _BE64.unpack_from(data, 0)[0]
    block = _BE32.unpack_from(data, 8)[0]
    if total != nbytes or block == 0:
        raise _Corrupt(f"LZ4 header says {total} bytes; {nbytes} expected")
    parts, pos, remaining = [], 12, total
    while remaining:
        want = min(block, remaining)
        if pos + 4 > len(data):
            raise _Corrupt("LZ4 block header past the end of the chunk")
        size = _BE32.unpack_from(data, pos)[0]
        pos += 4
        piece = data[pos : pos + size]
        if len(piece) != size:
            raise _Corrupt("LZ4 block past the end of the chunk")
        parts.append(piece if size == want else lz4.block.decompress(piece, uncompressed_size=want))
        pos += size
        remaining -= want
    return b"".join(parts)


def _decode_zstd(data: bytes, nbytes: int) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data, max_output_size=nbytes)


def _inflate(data: bytes, nbytes: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, nbytes)
    if d.unconsumed_tail:
        raise _Corrupt("deflate stream longer than the chunk")
    return out


def _unshuffle(data: bytes, esize: int) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint8)
    n = arr.size // esize
    head = arr[: n * esize].reshape(esize, n).T.reshape(-1)
    return head.tobytes() + arr[n * esize :].tobytes()


def decode_chunk(data: bytes, stored: StoredArray, mask: int, out: np.ndarray) -> None:
    """Undo the filter pipeline of one chunk into ``out`` (a C-contiguous chunk-shaped array)."""
    nbytes = out.nbytes
    active = [f for i, f in enumerate(stored.filters) if not (mask >> i) & 1]
    if len(active) == 1 and active[0].id == BITSHUFFLE and out.flags.c_contiguous:
        if _decode_bitshuffle(data, active[0].params, nbytes, out.reshape(-1).view(np.uint8)) is None:
            return
    for f in reversed(active):
        if f.id == FLETCHER32:
            data = data[:-4]
        elif f.id == DEFLATE:
            data = _inflate(data, nbytes)
        elif f.id == SHUFFLE:
            data = _unshuffle(data, f.params[0] if f.params else out.dtype.itemsize)
        elif f.id == BITSHUFFLE:
            data = _decode_bitshuffle(data, f.params, nbytes, None).tobytes()
        elif f.id == LZ4:
            data = _decode_lz4(data, nbytes)
        elif f.id == ZSTD:
            data = _decode_zstd(data, nbytes)
        else:  # pragma: no cover - guarded by can_decode
            raise _Corrupt(f"no decoder for filter {f.name} ({f.id})")
    if len(data) != nbytes:
        raise _Corrupt(f"decodes to {len(data)} bytes, {nbytes} expected")
    out[...] = np.frombuffer(data, dtype=out.dtype).reshape(out.shape)


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
        except (_Corrupt, zlib.error, ValueError, RuntimeError) as exc:
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
