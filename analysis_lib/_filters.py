"""HDF5 filters in one place: their ids, which ones can be decoded here, and the decoders.

A chunk's bytes pass through the filter pipeline its dataset was written with
(bitshuffle/LZ4 on an Eiger, deflate, shuffle, ...). Three questions about
that pipeline used to be answered in three modules: which filter a dataset
uses (the probe), whether some plugin can decode it (the probe again) and
how to decode it without HDF5's global lock (the readers). They meet here so
that the list of filters beamside decodes itself and the list it accepts
cannot drift apart.

The decoders are on the hot path of every read: they are plain module-level
functions, called once per chunk, that release the GIL where the work is.
"""

from __future__ import annotations

import ctypes
import glob
import os
import struct
import zlib

import numpy as np

from ._errors import UnknownFilterError
from ._layout import Filter, StoredArray

# HDF5 filter ids (https://portal.hdfgroup.org/documentation/hdf5-docs/registered_filter_plugins.html)
DEFLATE, SHUFFLE, FLETCHER32 = 1, 2, 3
LZ4, BITSHUFFLE, ZSTD = 32004, 32008, 32015


# ---------------------------------------------------------------------------
# which filters a dataset uses, and whether they can be undone
# ---------------------------------------------------------------------------
def pipeline(dcpl) -> tuple[Filter, ...]:
    """The filter pipeline of a dataset creation property list (h5py's ``dset.id.get_create_plist()``)."""
    return tuple(
        Filter(int(fid), _name(fname), tuple(int(p) for p in params))
        for fid, _flags, params, fname in (dcpl.get_filter(i) for i in range(dcpl.get_nfilters()))
    )


def _name(fname) -> str:
    return fname.decode(errors="replace") if isinstance(fname, bytes) else str(fname)


def check_available(filters, where: dict) -> None:
    """Refuse a pipeline that neither beamside nor an installed HDF5 plugin can decode."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the detector filters HDF5 may use)

    for f in filters:
        if f.id not in SUPPORTED_FILTERS and not h5py.h5z.filter_avail(f.id):
            raise UnknownFilterError(
                f"compressed with HDF5 filter {f.id} ({f.name or 'unnamed'}), which no installed plugin decodes",
                **where,
            )


# ---------------------------------------------------------------------------
# decoders (no HDF5, no lock)
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


class BadChunk(Exception):
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
            raise BadChunk("bitshuffle block header past the end of the chunk")
        pos += 4 + _BE32.unpack_from(buf, pos)[0]
    pos += (leftover - tail_block) * esize  # the last < 8 elements are stored raw
    if pos != end:
        raise BadChunk(f"bitshuffle blocks cover {pos - start} of {end - start} bytes")


def _decode_bitshuffle(data: bytes, params: tuple[int, ...], nbytes: int, out: np.ndarray | None):
    esize = params[2] if len(params) > 2 and params[2] else 1
    compression = params[4] if len(params) > 4 else 0
    if compression == 0:  # bitshuffle without compression: no header
        import bitshuffle

        if len(data) != nbytes or esize not in (1, 2, 4, 8):
            raise BadChunk(f"{len(data)} bytes stored, {nbytes} expected")
        return bitshuffle.bitunshuffle(np.frombuffer(data, dtype=f"u{esize}")).view(np.uint8)
    if len(data) < 12:
        raise BadChunk("bitshuffle header missing")
    total = _BE64.unpack_from(data, 0)[0]
    block_bytes = _BE32.unpack_from(data, 8)[0]
    if total != nbytes or block_bytes == 0 or block_bytes % esize:
        raise BadChunk(f"bitshuffle header says {total} bytes in blocks of {block_bytes}; {nbytes} expected")
    nelem, block = nbytes // esize, block_bytes // esize
    buf = memoryview(data)
    _check_bitshuffle_frames(buf, 12, nelem, esize, block)
    target = out if out is not None else np.empty(nbytes, dtype=np.uint8)
    src = np.frombuffer(data, dtype=np.uint8)
    used = _bshuf_decompress_lz4(src.ctypes.data + 12, target.ctypes.data, nelem, esize, block)
    if used != len(data) - 12:
        raise BadChunk(f"bitshuffle/LZ4 decoding failed (code {used})")
    return None if out is not None else target


def _fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 (``H5_checksum_fletcher32``): big-endian 16-bit words, sums folded every 360
    words. Vectorised per block of 360; only the folds between blocks run in Python."""
    n = len(data) // 2
    words = np.frombuffer(data, dtype=">u2", count=n).astype(np.uint64)
    full, rest = divmod(n, 360)
    blocks = [words[: full * 360].reshape(full, 360)] if full else []
    sums = [(b.sum(axis=1), (b * np.arange(360, 0, -1, dtype=np.uint64)).sum(axis=1)) for b in blocks]
    pairs = list(zip(*(map(int, x) for x in sums[0]))) if sums else []
    if rest:
        tail = words[full * 360:]
        pairs.append((int(tail.sum()), int((tail * np.arange(rest, 0, -1, dtype=np.uint64)).sum())))
    length = [360] * full + ([rest] if rest else [])
    sum1 = sum2 = 0
    for (a, b), t in zip(pairs, length):
        sum2 += t * sum1 + b
        sum1 += a
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    if len(data) % 2:
        sum1 += data[-1] << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return ((sum2 << 16) | sum1) & 0xFFFFFFFF


def _check_fletcher32(data: bytes) -> bytes:
    """The chunk without its checksum, if the checksum holds (HDF5 also accepts the byte-swapped form
    that early versions wrote, H5Zfletcher32.c)."""
    if len(data) < 4:
        raise BadChunk("Fletcher-32 checksum missing")
    body, stored = data[:-4], int.from_bytes(data[-4:], "little")
    got = _fletcher32(body)
    swapped = int.from_bytes(bytes((got >> s) & 0xFF for s in (8, 0, 24, 16)), "little")
    if stored not in (got, swapped):
        raise BadChunk(f"Fletcher-32 checksum mismatch (stored {stored:#010x}, computed {got:#010x})")
    return body


def _decode_lz4(data: bytes, nbytes: int) -> bytes:
    """hdf5plugin's LZ4 filter: 8-byte size, 4-byte block size, then sized blocks."""
    import lz4.block

    if len(data) < 12:
        raise BadChunk("LZ4 header missing")
    total = _BE64.unpack_from(data, 0)[0]
    block = _BE32.unpack_from(data, 8)[0]
    if total != nbytes or block == 0:
        raise BadChunk(f"LZ4 header says {total} bytes; {nbytes} expected")
    parts, pos, remaining = [], 12, total
    while remaining:
        want = min(block, remaining)
        if pos + 4 > len(data):
            raise BadChunk("LZ4 block header past the end of the chunk")
        size = _BE32.unpack_from(data, pos)[0]
        pos += 4
        piece = data[pos : pos + size]
        if len(piece) != size:
            raise BadChunk("LZ4 block past the end of the chunk")
        try:
            parts.append(piece if size == want else lz4.block.decompress(piece, uncompressed_size=want))
        except lz4.block.LZ4BlockError as exc:  # its module is "_block": name it here, by type
            raise BadChunk(f"LZ4 block does not decode: {exc}") from None
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
        raise BadChunk("deflate stream longer than the chunk")
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
            data = _check_fletcher32(data)
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
            raise BadChunk(f"no decoder for filter {f.name} ({f.id})")
    if len(data) != nbytes:
        raise BadChunk(f"decodes to {len(data)} bytes, {nbytes} expected")
    out[...] = np.frombuffer(data, dtype=out.dtype).reshape(out.shape)
