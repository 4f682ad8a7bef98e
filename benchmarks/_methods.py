"""One measurement per process: ``python -m benchmarks._methods METHOD --file F --out R.json``.

The orchestrator (:mod:`benchmarks.__main__`) starts a fresh interpreter for
every measurement, so page-cache state is shared (warm) but Python heaps,
HDF5 caches, thread pools and peak RSS are not. Each method returns the
seconds of its timed part, the bytes and frames it covered and a checksum the
orchestrator compares across methods (a fast wrong answer is not a result).
Set-up that a user pays once per session (opening the file, starting a
cluster, building pyFAI's engine) is timed apart, in ``extra``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

import numpy as np

from ._data import DATASET, FRAME_BYTES, FRAME_SHAPE

METHODS = {}


def vm_hwm(pid) -> int:
    """Peak RSS in bytes of process ``pid`` (or "self") since its exec: /proc/PID/status VmHWM."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def method(name):
    def register(fn):
        METHODS[name] = fn
        return fn

    return register


class clock:
    """Wall and CPU seconds (all threads of this process) of a ``with`` block.

    CPU time is the robust figure on a shared machine: other users' processes
    stretch wall time, hardly the CPU work a method needs.
    """

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _result(c: clock, frames, *, check=None, nbytes=None, extra_cpu=0.0, **extra):
    return {
        "seconds": c.wall,
        "cpu": c.cpu + extra_cpu,
        "frames": frames,
        "bytes": frames * FRAME_BYTES if nbytes is None else nbytes,
        "check": check,
        "extra": extra,
    }


def _h5(path):
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)

    f = h5py.File(path, "r")
    return f, f[DATASET]


# ---------------------------------------------------------------------------
# machine limits
# ---------------------------------------------------------------------------
@method("pagecache_read")
def pagecache_read(a):
    """The whole (cached) file with os.preadv into one reused 64 MiB buffer."""
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    fd = os.open(a.file, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        os.preadv(fd, [view], 0)  # fault the buffer in before timing
        with clock() as c:
            pos = 0
            while pos < size:
                n = os.preadv(fd, [view], pos)
                if n <= 0:
                    break
                pos += n
    finally:
        os.close(fd)
    return _result(c, 0, nbytes=0, compressed_bytes=pos)


def _raw_chunks(path, count):
    """The first ``count`` chunks' stored bytes, read with pread from the chunk index."""
    f, d = _h5(path)
    with f:
        infos = [d.id.get_chunk_info(i) for i in range(min(count, d.id.get_num_chunks()))]
    fd = os.open(path, os.O_RDONLY)
    try:
        return [np.frombuffer(os.pread(fd, i.size, i.byte_offset), np.uint8) for i in infos]
    finally:
        os.close(fd)


@method("decode")
def decode(a):
    """bitshuffle/LZ4 decoding alone: chunks already in memory, each thread into its own reused frame.

    Calls the same C entry point analysis_lib uses (the bitshuffle wheel's
    ``bshuf_decompress_lz4``, GIL released by ctypes). The orchestrator sets
    OMP_NUM_THREADS: the wheel's decoder is OpenMP-parallel over blocks.
    """
    from concurrent.futures import ThreadPoolExecutor

    from analysis_lib._filters import _bshuf_decompress_lz4 as bshuf

    raws = _raw_chunks(a.file, a.decode_chunks)
    nelem = FRAME_BYTES // 4
    threads = a.threads
    outs = [np.ones(FRAME_BYTES, np.uint8) for _ in range(threads)]

    def work(t):
        out = outs[t].ctypes.data
        for raw in raws[t::threads]:
            block = struct.unpack_from(">I", raw, 8)[0] // 4
            if bshuf(raw.ctypes.data + 12, out, nelem, 4, block) != raw.size - 12:
                raise RuntimeError("bitshuffle/LZ4 decode failed")

    passes = 2
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # warm-up pass
        with clock() as c:
            for _ in range(passes):
                list(pool.map(work, range(threads)))
    return _result(c, len(raws) * passes, threads=threads, omp=os.environ.get("OMP_NUM_THREADS", "unset"))


@method("reduce")
def reduce(a):
    """The reductions alone, one thread, on decoded frames (uint32) already in memory.

    A pool of 4 frames (17 MB) cycles, so data come from L3/DRAM as they do
    right after decoding a frame. Also times Dask-style block reductions and
    the cost of a fresh large block versus a reused one (RECIPES §7 pitfall 4).
    """
    f, d = _h5(a.file)
    with f:
        pool = [d[i] for i in range(4)]
    n = 200
    acc64 = np.zeros(FRAME_SHAPE, np.float64)
    accu = np.zeros(FRAME_SHAPE, np.uint64)
    ops = {
        "f64_accumulate": lambda fr: np.add(acc64, fr, out=acc64),
        "u64_accumulate": lambda fr: np.add(accu, fr, out=accu),
        "u64_frame_sum": lambda fr: fr.sum(dtype=np.uint64),
        "frame_min": lambda fr: fr.min(),
        "frame_max": lambda fr: fr.max(),
    }
    rates, cpu_rates = {}, {}
    for name, op in ops.items():
        for fr in pool:
            op(fr)
        with clock() as c:
            for i in range(n):
                op(pool[i % 4])
        rates[name], cpu_rates[name] = n * FRAME_BYTES / c.wall / 1e9, n * FRAME_BYTES / c.cpu / 1e9
    # What analysis_lib's graph does per Dask block of k frames.
    k = a.block_frames
    block = np.stack([pool[i % 4] for i in range(k)])
    reps = max(2, n // k)
    for name, op in {
        f"block{k}_sum_axis0_u64": lambda b: b.sum(axis=0, dtype=np.uint64),
        f"block{k}_frame_sums_u64": lambda b: b.reshape(k, -1).sum(axis=-1, dtype=np.uint64),
    }.items():
        op(block)
        with clock() as c:
            for _ in range(reps):
                op(block)
        rates[name], cpu_rates[name] = reps * block.nbytes / c.wall / 1e9, reps * block.nbytes / c.cpu / 1e9
    # Fresh vs reused output block: writing decoded frames into new memory pays page faults.
    reused = np.empty_like(block)
    for name, make in {f"copy_into_fresh_block{k}": lambda: np.empty_like(block), f"copy_into_reused_block{k}": lambda: reused}.items():
        with clock() as c:
            for _ in range(reps):
                out = make()
                np.copyto(out, block)
                del out
        rates[name], cpu_rates[name] = reps * block.nbytes / c.wall / 1e9, reps * block.nbytes / c.cpu / 1e9
    c.wall = c.cpu = 1.0
    return _result(c, 0, nbytes=0, rates=rates, cpu_rates=cpu_rates, block_frames=k)


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
@method("h5py_loop_mean")
def h5py_loop_mean(a):
    f, d = _h5(a.file)
    with f:
        n = d.shape[0]
        acc = np.zeros(FRAME_SHAPE, np.float64)
        with clock() as c:
            for i in range(n):
                acc += d[i]
            mean = acc / n
    return _result(c, n, check=float(mean.sum()))


@method("h5py_loop_sums")
def h5py_loop_sums(a):
    f, d = _h5(a.file)
    with f:
        n = d.shape[0]
        with clock() as c:
            sums = np.array([d[i].sum() for i in range(n)])
    return _result(c, n, check=int(sums.sum()))


def _dask_h5py(a):
    import dask.array as da

    f, d = _h5(a.file)
    return f, da.from_array(d, chunks=(a.baseline_chunk,) + FRAME_SHAPE)


@method("dask_h5py_mean")
def dask_h5py_mean(a):
    f, x = _dask_h5py(a)
    with f:
        with clock() as c:
            mean = x.mean(axis=0).compute(scheduler="threads")
    return _result(c, x.shape[0], check=float(mean.sum()), dask_chunk_frames=a.baseline_chunk)


@method("dask_h5py_sums")
def dask_h5py_sums(a):
    f, x = _dask_h5py(a)
    with f:
        with clock() as c:
            sums = x.sum(axis=(1, 2)).compute(scheduler="threads")
    return _result(c, x.shape[0], check=int(sums.sum()), dask_chunk_frames=a.baseline_chunk)


def _xarray(a):
    import hdf5plugin  # noqa: F401
    import xarray as xr

    # The file's root holds no variables: h5netcdf must be pointed at the NXdata group.
    t0 = time.perf_counter()
    ds = xr.open_dataset(
        a.file, engine="h5netcdf", group=os.path.dirname(DATASET), phony_dims="sort", chunks={"phony_dim_0": a.baseline_chunk}
    )
    return ds["data"], time.perf_counter() - t0


@method("xarray_h5netcdf_mean")
def xarray_h5netcdf_mean(a):
    v, t_open = _xarray(a)
    with clock() as c:
        mean = v.mean("phony_dim_0").values
    return _result(c, v.shape[0], check=float(mean.sum()), open_s=t_open, dask_chunk_frames=a.baseline_chunk)


@method("xarray_h5netcdf_sums")
def xarray_h5netcdf_sums(a):
    v, t_open = _xarray(a)
    with clock() as c:
        sums = v.sum(("phony_dim_1", "phony_dim_2")).values
    return _result(c, v.shape[0], check=int(sums.sum()), open_s=t_open, dask_chunk_frames=a.baseline_chunk)


# ---------------------------------------------------------------------------
# analysis_lib
# ---------------------------------------------------------------------------
def _al_open(a):
    import analysis_lib as al

    t0 = time.perf_counter()
    chunks = "auto" if not a.al_chunk else {"frame": a.al_chunk}
    ds = al.open(a.file, chunks=chunks)
    return al, ds, time.perf_counter() - t0


def _al_reduce(al, ds, op):
    if op == "mean":
        return float(al.ops.mean_frame(ds).values.sum())
    stats = al.ops.frame_stats(ds).compute()
    return int(stats["sum"].values.sum())


def _al(a, op):
    al, ds, t_open = _al_open(a)
    frames = ds["data"]
    extra = {"open_s": t_open, "dask_chunk_frames": frames.data.chunksize[0]}
    if not a.workers:
        with clock() as c:
            check = _al_reduce(al, ds, op)
        return _result(c, frames.shape[0], check=check, **extra)
    t0 = time.perf_counter()
    client = al.cluster(workers=a.workers, cores=1)
    extra["cluster_start_s"] = time.perf_counter() - t0
    try:
        # Workers import the reductions while they start (analysis_lib.contract.WORKER_CONFIG: in
        # cluster start) and open the file on their first task: a once-per-session cost.
        t0 = time.perf_counter()
        _al_reduce(al, ds.isel(frame=slice(0, 2 * a.workers)), op)
        extra["warmup_s"] = time.perf_counter() - t0
        before = client.run(time.process_time)
        with clock() as c:
            check = _al_reduce(al, ds, op)
        after = client.run(time.process_time)
        worker_cpu = sum(after[w] - before[w] for w in after if w in before)
    finally:
        client.close()
        client.cluster.close()
    return _result(c, frames.shape[0], check=check, workers=a.workers, extra_cpu=worker_cpu, **extra)


@method("al_mean")
def al_mean(a):
    return _al(a, "mean")


@method("al_stats")
def al_stats(a):
    return _al(a, "stats")


# ---------------------------------------------------------------------------
# radial profiles
# ---------------------------------------------------------------------------
NPT, UNIT = 1000, "q_nm^-1"


@method("pyfai_loop")
def pyfai_loop(a):
    """What a user writes without beamside: read a frame with h5py, integrate it, repeat."""
    import pyFAI

    t0 = time.perf_counter()
    ai = pyFAI.load(a.poni)
    f, d = _h5(a.file)
    with f:
        ai.integrate1d(d[0], NPT, unit=UNIT)  # builds pyFAI's engine: once per session
        setup = time.perf_counter() - t0
        n = min(a.radial_frames, d.shape[0])
        profiles = np.empty((n, NPT))
        with clock() as c:
            for i in range(n):
                profiles[i] = ai.integrate1d(d[i], NPT, unit=UNIT).intensity
    return _result(c, n, check=profiles.sum(axis=1).tolist(), setup_s=setup)


@method("al_radial")
def al_radial(a):
    al, ds, t_open = _al_open(a)
    n = min(a.radial_frames, ds.sizes["frame"])
    t0 = time.perf_counter()
    profiles = al.ops.radial_profile(ds["data"].isel(frame=slice(0, n)), a.poni, npt=NPT, unit=UNIT)
    setup = time.perf_counter() - t0  # includes building pyFAI's engine (one probe integration)
    with clock() as c:
        values = profiles.compute(scheduler=a.scheduler).values
    return _result(c, n, check=values.sum(axis=1).tolist(), open_s=t_open, setup_s=setup, dask_chunk_frames=ds["data"].data.chunksize[0])


# ---------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks._methods")
    p.add_argument("method", choices=sorted(METHODS))
    p.add_argument("--file", required=True)
    p.add_argument("--poni")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="0: threaded scheduler, else al.cluster(workers=N, cores=1)")
    p.add_argument("--decode-chunks", type=int, default=200)
    p.add_argument("--block-frames", type=int, default=30)
    p.add_argument("--baseline-chunk", type=int, default=16)
    p.add_argument("--al-chunk", type=int, default=0, help="0: al.open's chunks='auto', else frames per Dask chunk")
    p.add_argument("--radial-frames", type=int, default=200)
    p.add_argument("--scheduler", default=None, help="Dask scheduler for al_radial (default: Dask's default)")
    a = p.parse_args(argv)
    result = METHODS[a.method](a)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from
    # the (v)forking parent, so a small process started by a big one reports
    # the parent's peak. VmHWM belongs to this process image alone.
    result["hwm_self"] = vm_hwm("self")
    with open(a.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
