"""The one door to the fast path: ``reduce_frames(frames, kernel)``.

A :class:`Kernel` describes a reduction once: the numpy work on a block of
frames (or one frame), the shape and dtype of what it gives, and how partial
results combine. :func:`reduce_frames` runs it one of two ways and gives the
same numbers either way:

- **streaming**, when the frames are untouched frames of the ``nexus`` backend
  whose HDF5 chunks hold whole frames: one task per Dask block decodes frame
  by frame into a reused buffer (:meth:`._chunks.ChunkedReader.frames`) and
  reduces each frame while it is in cache, instead of materialising 100+ MiB
  blocks;
- **generic**, on any Dask array: ``map_blocks`` (per-frame kernels) or a Dask
  reduction over the frame axes (whole-stack kernels).

How the door knows the frames are untouched: it reads the Dask graph. When
xarray chunks a lazily indexed backend variable (``xr.open_dataset(...,
chunks=...)``, which ``al.open`` is, or ``Dataset.chunk`` of an unchunked
one), ``dask.array.from_array`` gives a graph of exactly two layers: the
array's own blockwise layer and ``original-<name>``, which holds xarray's
adapter chain around our ``NexusBackendArray``. Any later operation (a
slice, ``frames + 0``, a rechunk) adds a layer, so "two layers, and the
original is ours with a full key" means "these are the file's frames as
stored". This was chosen over a registry keyed by the array's name (or a
reader carried in ``encoding``) because it needs no bookkeeping by whoever
chunks the data, survives pickling, and cannot go stale: the proof is the
graph that will be computed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import dask.array as da
import numpy as np


@dataclass(frozen=True)
class Kernel:
    """A reduction of frame stacks, described once for both paths.

    Per-frame kernels (``merge is None``) give ``tail``-shaped values for each
    frame: ``block(block_of_frames, *args)`` maps ``(..., rows, cols)`` to
    ``(..., *tail)``; ``frame(frame, *args)`` does one frame on the streaming
    path (default: ``block`` of a one-frame block). Whole-stack kernels fold
    every frame into one image with ``merge`` (``np.add``, ``np.maximum``),
    accumulating in ``dtype``; partial results combine with the same ufunc.
    """

    dtype: np.dtype
    block: Callable | None = None
    frame: Callable | None = None
    tail: tuple[int, ...] = ()
    merge: np.ufunc | None = None
    args: tuple = field(default=())

    def one_frame(self, frame: np.ndarray):
        if self.frame is not None:
            return self.frame(frame, *self.args)
        return self.block(frame[np.newaxis], *self.args)[0]


# The Dask reduction that does what each merge ufunc does, on the generic path.
_DASK_REDUCTION = {np.add: "sum", np.maximum: "max", np.minimum: "min"}


def reduce_frames(data: da.Array, kernel: Kernel) -> da.Array:
    """``kernel`` over the frame stack ``data`` (frames first, image last), lazily.

    Per-frame kernels give ``data.shape[:-2] + kernel.tail``; whole-stack
    kernels an image. Streams from the file when :func:`streaming_reader`
    allows it, else runs on the Dask array as it is.
    """
    reader = streaming_reader(data)
    lead = data.ndim - 2
    if kernel.merge is not None:
        if reader is not None:
            parts = _per_block(reader, data, _fold_frames, lambda n: reader.shape[1:], kernel)
            return getattr(da.stack(parts), _DASK_REDUCTION[kernel.merge])(axis=0)
        method = _DASK_REDUCTION[kernel.merge]
        axes = tuple(range(lead))
        return getattr(data, method)(axis=axes, dtype=kernel.dtype) if method == "sum" else getattr(data, method)(axis=axes)
    if reader is not None:
        return da.concatenate(_per_block(reader, data, _frame_values, lambda n: (n, *kernel.tail), kernel))
    if len(data.chunks[-1]) > 1 or len(data.chunks[-2]) > 1:
        data = data.rechunk({lead: -1, lead + 1: -1})  # per-frame work needs whole images in every block
    drop = list(range(lead, data.ndim))
    return data.map_blocks(
        kernel.block,
        *kernel.args,
        drop_axis=drop,
        new_axis=list(range(lead, lead + len(kernel.tail))),
        chunks=data.chunks[:lead] + tuple((n,) for n in kernel.tail),
        dtype=kernel.dtype,
        meta=np.empty((0,) * (lead + len(kernel.tail)), dtype=kernel.dtype),
    )


def streaming_reader(data) -> object | None:
    """The backend's reader behind ``data`` if it is an untouched ``nexus`` array the streaming path can read, else None."""
    from xarray.core import indexing

    from ._backend import NexusBackendArray
    from ._chunks import ChunkedReader

    if not isinstance(data, da.Array):
        return None
    original = f"original-{data.name}"
    layers = data.dask.layers
    if set(layers) != {data.name, original}:
        return None
    array = layers[original].get(original)
    while isinstance(array, (indexing.ImplicitToExplicitIndexingAdapter, indexing.CopyOnWriteArray, indexing.MemoryCachedArray)):
        array = array.array
    if not isinstance(array, indexing.LazilyIndexedArray) or not _whole(array.key, array.array.shape):
        return None
    backend = array.array
    if not isinstance(backend, NexusBackendArray) or not isinstance(backend.reader, ChunkedReader):
        return None
    reader = backend.reader
    if reader.whole_frames() and data.shape == reader.shape and len(data.chunks[1]) == len(data.chunks[2]) == 1:
        return reader
    return None


def _whole(key, shape) -> bool:
    return all(isinstance(k, slice) and k.indices(n) == (0, n, 1) for k, n in zip(key.tuple, shape))


def _per_block(reader, data: da.Array, fn, shape_of, kernel: Kernel) -> list[da.Array]:
    """One task per Dask block of frames: ``fn(reader, start, stop, kernel)``; reader and kernel are one shared key each."""
    import dask

    shared, task_kernel = dask.delayed(reader, pure=True), dask.delayed(kernel, pure=True)
    bounds = np.cumsum((0,) + data.chunks[0])
    return [
        da.from_delayed(dask.delayed(fn, pure=True)(shared, int(a), int(b), task_kernel), shape=shape_of(int(b - a)), dtype=kernel.dtype)
        for a, b in itertools.pairwise(bounds)
    ]


def _fold_frames(reader, start: int, stop: int, kernel: Kernel) -> np.ndarray:
    frames = reader.frames(start, stop)
    if kernel.merge.identity is not None:
        total = np.zeros(reader.shape[1:], dtype=kernel.dtype)  # calloc: pages zeroed lazily, as before the door
        if kernel.merge.identity != 0:
            total[...] = kernel.merge.identity
    elif stop > start:
        total = np.array(next(frames), dtype=kernel.dtype)
    else:
        raise ValueError(f"no frame to fold with {kernel.merge.__name__}, which has no identity")
    for frame in frames:
        kernel.merge(total, frame, out=total)
    return total


def _frame_values(reader, start: int, stop: int, kernel: Kernel) -> np.ndarray:
    out = np.empty((stop - start, *kernel.tail), dtype=kernel.dtype)
    for i, frame in enumerate(reader.frames(start, stop)):
        out[i] = kernel.one_frame(frame)
    return out
