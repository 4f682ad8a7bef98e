"""Where a dataset's bytes are stored: chunks, contiguous bytes, external raw files, VDS sources.

The readers (:mod:`._chunks`) read bytes at offsets without asking HDF5, so
the probe's child records those offsets here, and checks everything a read
could reach before it is ever read: each chunk and segment lies within its
file (a truncated copy fails now, not mid-reduction), external raw files and
virtual-dataset sources lie within the user's boundary and exist (HDF5 would
silently return fill values), the element type is numeric, the declared
sizes are within ``beamside.limits``, and some decoder exists for the
filters. Runs in the guarded child only.
"""

from __future__ import annotations

import os

from ._errors import DataError, NexusStructureError, TooLargeError, TruncatedFileError
from ._filters import check_available, pipeline
from ._layout import ChunkIndex, StoredArray
from ._walk import MAX_LINK_DEPTH, Walker


class StorageLocator(Walker):
    """A :class:`Walker` that also says where each dataset's bytes lie."""

    def stored(self, dset, f, depth: int = 0) -> StoredArray:
        h5py = self.h5py
        where = {"file": f.filename, "dataset": dset.name}
        dtype = dset.dtype
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise DataError(f"unsupported element type {dtype} (numbers only)", **where)
        nbytes = int(dset.size) * dtype.itemsize if dset.shape else dtype.itemsize
        if nbytes > self.limits["dataset-bytes"]:
            raise TooLargeError(
                f"declares {nbytes} bytes (shape {dset.shape}), beyond beamside.limits.dataset-bytes", **where
            )
        dcpl = dset.id.get_create_plist()
        layout = dcpl.get_layout()
        fill = dset.fillvalue
        base = dict(
            file=os.path.realpath(f.filename),
            path=dset.name,
            shape=tuple(int(n) for n in dset.shape),
            dtype=dtype.str,
            fill_value=fill.item() if hasattr(fill, "item") else fill,
        )
        if dset.is_virtual:
            self._check_virtual(dset, f, depth)
            return StoredArray(layout="virtual", **base)
        if dset.external:
            return StoredArray(layout="external", segments=self._external_storage(dset, f), **base)
        if layout == h5py.h5d.CHUNKED:
            chunks = tuple(int(c) for c in dset.chunks)
            chunk_bytes = int(_prod(chunks)) * dtype.itemsize
            if chunk_bytes > self.limits["chunk-bytes"]:
                raise TooLargeError(f"one chunk {chunks} is {chunk_bytes} bytes, beyond beamside.limits.chunk-bytes", **where)
            filters = pipeline(dcpl)
            check_available(filters, where)
            return StoredArray(
                layout="chunked", chunks=chunks, filters=filters, index=self._chunk_index(dset, f, chunks), **base
            )
        if layout == h5py.h5d.CONTIGUOUS:
            offset = dset.id.get_offset()
            if offset is not None:
                self._check_within_file(f, offset + nbytes, **where)
            return StoredArray(layout="contiguous", segments=(() if offset is None else ((base["file"], offset, nbytes),)), **base)
        return StoredArray(layout="compact", **base)

    def _chunk_index(self, dset, f, chunks) -> ChunkIndex:
        import numpy as np

        grid, addr, size, mask = [], [], [], []

        def visit(info):
            grid.append([o // c for o, c in zip(info.chunk_offset, chunks)])
            addr.append(info.byte_offset)
            size.append(info.size)
            mask.append(info.filter_mask)

        try:
            dset.id.chunk_iter(visit)
        except (AttributeError, NotImplementedError):  # older HDF5: one call per chunk
            for i in range(dset.id.get_num_chunks()):
                visit(dset.id.get_chunk_info(i))
        index = ChunkIndex(
            np.asarray(grid, dtype=np.int64).reshape(-1, len(chunks)),
            np.asarray(addr, dtype=np.uint64),
            np.asarray(size, dtype=np.uint64),
            np.asarray(mask, dtype=np.uint32),
        )
        if len(addr):
            end = int((index.addr + index.size).max())
            self._check_within_file(f, end, file=f.filename, dataset=dset.name)
        return index

    def _check_within_file(self, f, end: int, *, file, dataset):
        size = os.path.getsize(f.filename)
        if end > size:
            raise TruncatedFileError(
                f"the file is {size} bytes but its data reach byte {end}: an incomplete copy or an interrupted write",
                file=file,
                dataset=dataset,
            )

    def _external_storage(self, dset, f) -> tuple[tuple[str, int, int], ...]:
        segments = []
        for name, offset, size in dset.external:
            name = name.decode() if isinstance(name, bytes) else name
            # HDF5 may take a relative name from the working directory or from
            # the file's folder: every candidate that exists must be allowed,
            # and we read from the file's folder one.
            candidates = [name] if os.path.isabs(name) else [os.path.join(os.path.dirname(f.filename), name), name]
            for c in candidates:
                if os.path.exists(c):
                    self.boundary.check(c, f"external storage of dataset {dset.name!r}")
            chosen = next((c for c in candidates if os.path.exists(c)), None)
            if chosen is None:
                raise DataError(f"its external storage file {name!r} does not exist", file=f.filename, dataset=dset.name)
            segments.append((os.path.realpath(chosen), int(offset), int(size)))
        return tuple(segments)

    def _check_virtual(self, dset, f, depth: int):
        if depth > MAX_LINK_DEPTH:
            raise NexusStructureError("virtual datasets nested too deep", file=f.filename, dataset=dset.name)
        here = os.path.dirname(f.filename)
        for vmap in dset.virtual_sources():
            name = vmap.file_name
            if "%" in name:
                raise DataError(
                    f"virtual dataset source pattern {name!r} is not supported (its files cannot be checked)",
                    file=f.filename,
                    dataset=dset.name,
                )
            if name == ".":
                src_file = f
            else:
                candidates = [name] if os.path.isabs(name) else [os.path.join(here, name), name]
                for env in ("HDF5_VDS_PREFIX",):
                    if os.environ.get(env) and not os.path.isabs(name):
                        candidates.append(os.path.join(os.environ[env], name))
                existing = [c for c in candidates if os.path.exists(c)]
                for c in existing:
                    self.boundary.check(c, f"virtual dataset {dset.name!r}")
                if not existing:
                    raise DataError(
                        f"virtual dataset source file {name!r} is missing (HDF5 would silently return fill values)",
                        file=f.filename,
                        dataset=dset.name,
                    )
                src_file = self.open_file(existing[0])
            src, src_f = self.get(src_file, vmap.dset_name, depth + 1)
            if not isinstance(src, self.h5py.Dataset):
                raise DataError(f"virtual dataset source {vmap.dset_name!r} is not a dataset", file=f.filename, dataset=dset.name)
            self.stored(src, src_f, depth + 1)  # nested checks: links, VDS, external storage


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out
