"""What a file holds and where its bytes are — described apart from reading it.

The probe (:mod:`analysis_lib._probe`) inspects a file in a separate process
and returns a :class:`FileDescription`; the readers (:mod:`._chunks`) and the
xarray backend (:mod:`._backend`) only consume these plain structures. Keeping
them plain is what lets a Dask task carry "file X, bytes 4096..9000, decode
with bitshuffle/LZ4" to a worker instead of an open HDF5 handle.
"""

from __future__ import annotations

import base64
import io
from dataclasses import asdict, dataclass, field

import numpy as np

@dataclass(frozen=True)
class Filter:
    """One step of an HDF5 filter pipeline, in the order it was applied on write."""

    id: int
    name: str
    params: tuple[int, ...] = ()


@dataclass
class ChunkIndex:
    """Where each stored chunk of a chunked dataset lies in its file.

    ``grid[i]`` is the chunk's position in chunk units, ``addr[i]``/``size[i]``
    its byte range, ``mask[i]`` the HDF5 filter mask (bit k set: filter k was
    skipped for this chunk). Chunks never written are absent (fill value).
    """

    grid: np.ndarray  # (n, ndim) int64
    addr: np.ndarray  # (n,) uint64
    size: np.ndarray  # (n,) uint64
    mask: np.ndarray  # (n,) uint32

    def to_json(self) -> str:
        buf = io.BytesIO()
        np.savez(buf, grid=self.grid, addr=self.addr, size=self.size, mask=self.mask)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    @classmethod
    def from_json(cls, text: str) -> "ChunkIndex":
        with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as z:
            return cls(z["grid"], z["addr"], z["size"], z["mask"])


@dataclass
class StoredArray:
    """An HDF5 dataset's storage: enough to read it without asking HDF5 for metadata.

    ``layout`` is ``"chunked"``, ``"contiguous"``, ``"external"`` (raw bytes in
    other files: ``segments``), ``"compact"`` or ``"virtual"``. The last two
    are read through h5py; the probe has already checked where they lead.
    """

    file: str  # real path of the file that holds the dataset
    path: str  # the dataset's path inside that file (links already followed)
    shape: tuple[int, ...]
    dtype: str
    layout: str
    chunks: tuple[int, ...] | None = None
    filters: tuple[Filter, ...] = ()
    fill_value: float | int | bool = 0
    segments: tuple[tuple[str, int, int], ...] = ()  # (file, offset, size) for contiguous/external
    index: ChunkIndex | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Variable:
    """A data variable or coordinate: named dims, attributes, and either storage or values."""

    name: str
    dims: tuple[str, ...]
    attrs: dict
    stored: StoredArray | None = None
    values: list | None = None  # small coordinates are read by the probe


@dataclass
class FileDescription:
    """What :func:`analysis_lib.open` shows of a file: the signal, its axes, where they came from."""

    file: str
    group: str  # the NXdata group (or the dataset's parent for plain HDF5)
    variables: list[Variable]
    coords: list[Variable]
    attrs: dict

    def to_json_dict(self) -> dict:
        def var(v: Variable) -> dict:
            d = asdict(v)
            if v.stored is not None:
                d["stored"]["index"] = v.stored.index.to_json() if v.stored.index is not None else None
            return d

        return {
            "file": self.file,
            "group": self.group,
            "variables": [var(v) for v in self.variables],
            "coords": [var(v) for v in self.coords],
            "attrs": self.attrs,
        }

    @classmethod
    def from_json_dict(cls, doc: dict) -> "FileDescription":
        def var(d: dict) -> Variable:
            stored = d.get("stored")
            if stored is not None:
                index = stored.pop("index", None)
                stored = StoredArray(
                    **{
                        **stored,
                        "shape": tuple(stored["shape"]),
                        "chunks": tuple(stored["chunks"]) if stored["chunks"] else None,
                        "filters": tuple(Filter(f["id"], f["name"], tuple(f["params"])) for f in stored["filters"]),
                        "segments": tuple(tuple(s) for s in stored["segments"]),
                        "index": ChunkIndex.from_json(index) if index else None,
                    }
                )
            return Variable(d["name"], tuple(d["dims"]), d["attrs"], stored, d.get("values"))

        return cls(
            doc["file"],
            doc["group"],
            [var(v) for v in doc["variables"]],
            [var(v) for v in doc["coords"]],
            doc["attrs"],
        )
