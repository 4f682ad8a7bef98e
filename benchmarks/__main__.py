"""``python -m benchmarks``: analysis_lib's reductions against the machine's limits and the usual baselines.

Every measurement runs in a fresh interpreter (see :mod:`benchmarks._methods`);
rounds interleave all methods, in a rotated order, and the table shows medians
over rounds (peak memory: the worst round). The page cache is warmed once and
never dropped: reading from the page cache is the regime measured here, as on a
facility node where the scan was just written or read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _data
from ._methods import vm_hwm

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """One row of the table: a method of :mod:`benchmarks._methods` with its options."""

    key: str
    label: str
    group: str  # limits | mean | sums | radial
    method: str
    args: tuple[str, ...] = ()
    env: dict = field(default_factory=dict, hash=False, compare=False)


def plan(cores: int, diagnose: bool) -> list[Run]:
    one = {"OMP_NUM_THREADS": "1"}
    runs = [
        Run("pagecache", "page-cache read (os.preadv, 64 MiB blocks)", "limits", "pagecache_read"),
        Run("decode1", "bitshuffle/LZ4 decode, 1 thread", "limits", "decode", ("--threads", "1"), one),
        Run("decodeN", f"bitshuffle/LZ4 decode, {cores} threads", "limits", "decode", ("--threads", str(cores)), one),
        Run("reduce", "reductions, 1 thread", "limits", "reduce"),
        Run("naive_mean", "h5py frame loop: acc += dset[i] (float64)", "mean", "h5py_loop_mean"),
        Run("dask_mean", "dask.from_array(h5py, 16 frames).mean, threads", "mean", "dask_h5py_mean"),
        Run("xr_mean", "xarray h5netcdf (16 frames) .mean, threads", "mean", "xarray_h5netcdf_mean"),
        Run("al_mean", "al.ops.mean_frame, threaded", "mean", "al_mean"),
        Run("al_mean_w2", "al.ops.mean_frame, al.cluster(workers=2, cores=1)", "mean", "al_mean", ("--workers", "2")),
        Run("al_mean_w1", "al.ops.mean_frame, al.cluster(workers=1, cores=1)", "mean", "al_mean", ("--workers", "1")),
        Run("naive_sums", "h5py frame loop: dset[i].sum()", "sums", "h5py_loop_sums"),
        Run("dask_sums", "dask.from_array(h5py, 16 frames).sum(axis=(1,2))", "sums", "dask_h5py_sums"),
        Run("xr_sums", "xarray h5netcdf (16 frames) .sum(row, col)", "sums", "xarray_h5netcdf_sums"),
        Run("al_stats", "al.ops.frame_stats, threaded", "sums", "al_stats"),
        Run("al_stats_w2", "al.ops.frame_stats, al.cluster(workers=2, cores=1)", "sums", "al_stats", ("--workers", "2")),
        Run("al_stats_w1", "al.ops.frame_stats, al.cluster(workers=1, cores=1)", "sums", "al_stats", ("--workers", "1")),
        Run("pyfai", "pyFAI integrate1d loop over h5py frames, 1 process", "radial", "pyfai_loop"),
        Run("al_radial", "al.ops.radial_profile, threaded", "radial", "al_radial"),
    ]
    if diagnose:
        runs += [
            Run("decode1_omp", "decode, 1 thread, OpenMP default (diagnostic)", "limits", "decode", ("--threads", "1"), {"OMP_NUM_THREADS": None}),
            Run("decodeN_omp", f"decode, {cores} threads, OpenMP default (diagnostic)", "limits", "decode", ("--threads", str(cores)), {"OMP_NUM_THREADS": None}),
            Run("al_mean_omp1", "al mean_frame, threaded, OMP_NUM_THREADS=1 (diagnostic)", "mean", "al_mean", (), one),
            Run("al_mean_c8", "al mean_frame, threaded, chunks 8 frames (diagnostic)", "mean", "al_mean", ("--al-chunk", "8")),
            Run("al_mean_c8_omp1", "al mean_frame, threaded, 8 frames, OMP=1 (diagnostic)", "mean", "al_mean", ("--al-chunk", "8"), one),
            Run("al_stats_omp1", "al frame_stats, threaded, OMP_NUM_THREADS=1 (diagnostic)", "sums", "al_stats", (), one),
            Run("al_stats_c8_omp1", "al frame_stats, threaded, 8 frames, OMP=1 (diagnostic)", "sums", "al_stats", ("--al-chunk", "8"), one),
            Run("pyfai_omp1", "pyFAI loop, OMP_NUM_THREADS=1 (diagnostic)", "radial", "pyfai_loop", (), one),
            Run("al_radial_sync", "al radial_profile, scheduler synchronous (diagnostic)", "radial", "al_radial", ("--scheduler", "synchronous")),
        ]
    return runs


# ---------------------------------------------------------------------------
# running one measurement
# ---------------------------------------------------------------------------
def _tree_memory(root, hwm: dict) -> int:
    """Σ PSS in bytes of ``root`` and all its descendants; records each one's VmHWM in ``hwm``.

    PSS splits pages shared between processes (libraries, fork) among them, so
    the sum is what the tree costs the machine. VmHWM is monotonic, so any
    sample after a process's peak sees it.
    """
    import psutil

    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    pss = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
            peak = vm_hwm(p.pid)
        except OSError:
            continue
        hwm[p.pid] = max(hwm.get(p.pid, 0), peak)
    return pss


def run_one(run: Run, common: list[str], timeout: float) -> dict:
    import psutil

    env = dict(os.environ)
    for k, v in run.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    with tempfile.TemporaryDirectory(prefix="beamside-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        log = open(os.path.join(tmp, "log"), "w+")
        cmd = [sys.executable, "-m", "benchmarks._methods", run.method, *common, *run.args, "--out", out]
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_pss, hwm = 0, {}
        while proc.poll() is None:
            peak_pss = max(peak_pss, _tree_memory(proc, hwm))
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(out):
            log.seek(0)
            tail = log.read()[-2000:]
            return {"error": f"exit code {proc.returncode}: {tail}", "wall": wall}
        with open(out) as fh:
            result = json.load(fh)
    hwm[proc.pid] = max(hwm.get(proc.pid, 0), result.pop("hwm_self"))  # exact, read by the process itself
    result.update(wall=wall, tree_pss=peak_pss, max_process_hwm=max(hwm.values()))
    return result


# ---------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------
def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model


def machine_info() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    import h5py

    model = cpu_model()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        mem = float("nan")

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    packages = ["numpy", "h5py", "hdf5plugin", "bitshuffle", "dask", "distributed", "xarray", "h5netcdf", "pyFAI", "beamside"]
    return [
        f"cores {cores()} (usable by this process), CPU {model}, RAM {mem:.1f} GB, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, HDF5 {h5py.version.hdf5_version}, "
        + ", ".join(f"{p} {v(p)}" for p in packages),
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; the bitshuffle wheel's decoder is OpenMP-parallel",
    ]


def _cpu_busy() -> float:
    """Seconds of CPU time the whole machine has spent busy since boot (all cores)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _our_cpu() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class Row:
    run: Run
    results: list[dict]

    @property
    def ok(self):
        return [r for r in self.results if "error" not in r]

    def median(self, fn):
        return _median([fn(r) for r in self.ok])

    @property
    def gbps(self):
        return self.median(lambda r: r["bytes"] / r["seconds"] / 1e9 if r["bytes"] else None)

    @property
    def fps(self):
        return self.median(lambda r: r["frames"] / r["seconds"] if r["frames"] else None)

    @property
    def cpu_per_gb(self):
        """CPU seconds (all threads, all processes of the method) per GB of frames."""
        return self.median(lambda r: r["cpu"] / (r["bytes"] / 1e9) if r["bytes"] else None)

    @property
    def cpu_per_frame(self):
        return self.median(lambda r: r["cpu"] / r["frames"] if r["frames"] else None)

    @property
    def spread(self):
        """(max − min) / median of the per-round rates: how noisy the rounds were."""
        rates = [r["frames"] / r["seconds"] for r in self.ok if r["frames"]]
        return (max(rates) - min(rates)) / statistics.median(rates) if len(rates) > 1 else None

    @property
    def max_proc_rss(self):
        return max((r["max_process_hwm"] for r in self.ok), default=None)

    @property
    def tree_pss(self):
        return max((r["tree_pss"] for r in self.ok), default=None)

    def extra(self, key):
        return self.median(lambda r: r["extra"].get(key))


def limits(rows: dict[str, Row], ratio: float, ncores: int) -> dict:
    """The machine's limits from the limit rows; None where a row is missing."""
    L = {"ratio": ratio, "cores": ncores}
    if "pagecache" in rows and rows["pagecache"].ok:
        L["read_compressed"] = rows["pagecache"].median(lambda r: r["extra"]["compressed_bytes"] / r["seconds"] / 1e9)
        L["read_uncompressed"] = L["read_compressed"] * ratio
        L["cpu_read"] = rows["pagecache"].median(lambda r: r["extra"]["compressed_bytes"] / r["cpu"] / 1e9) * ratio
    if "decode1" in rows and rows["decode1"].ok:
        L["decode1"] = rows["decode1"].gbps
        L["cpu_decode1"] = 1 / rows["decode1"].cpu_per_gb
    if "decodeN" in rows:
        L["decodeN"] = rows["decodeN"].gbps
    if "reduce" in rows and rows["reduce"].ok:
        names = rows["reduce"].ok[0]["extra"]["rates"]
        L["reduce"] = {n: rows["reduce"].median(lambda r, n=n: r["extra"]["rates"][n]) for n in names}
        L["cpu_reduce"] = {n: rows["reduce"].median(lambda r, n=n: r["extra"]["cpu_rates"][n]) for n in names}
    if all(k in L for k in ("read_uncompressed", "decode1", "reduce")):
        red, cred = L["reduce"], L["cpu_reduce"]

        def serial(*rates):
            return ncores / sum(1 / r for r in rates)

        def cpu(*rates):  # CPU seconds per GB: the work itself, whoever else uses the machine
            return sum(1 / r for r in rates)

        L["mean"] = serial(L["read_uncompressed"], L["decode1"], red["f64_accumulate"])
        L["sums"] = serial(L["read_uncompressed"], L["decode1"], red["u64_frame_sum"])
        L["stats"] = serial(L["read_uncompressed"], L["decode1"], red["u64_frame_sum"], red["frame_min"], red["frame_max"])
        L["optimistic"] = min(L["decode1"] * ncores, red["f64_accumulate"] * ncores, L["read_uncompressed"])
        L["cpu_mean"] = cpu(L["cpu_read"], L["cpu_decode1"], cred["f64_accumulate"])
        L["cpu_sums"] = cpu(L["cpu_read"], L["cpu_decode1"], cred["u64_frame_sum"])
    return L


def check_results(rows: dict[str, Row]) -> dict[str, str]:
    """Rows whose answer differs from the plain loop's: a fast wrong answer is no result."""
    bad = {}
    refs = {"mean": "naive_mean", "sums": "naive_sums", "radial": "pyfai"}
    for key, row in rows.items():
        ref = rows.get(refs.get(row.run.group, ""))
        if ref is None or not ref.ok or key == ref.run.key:
            continue
        want = ref.ok[0]["check"]
        for r in row.ok:
            got = r["check"]
            if isinstance(want, list):
                wrong = sum(abs(g - w) > 1e-5 * max(abs(w), 1.0) for g, w in zip(got, want))
                if wrong or len(got) != len(want):
                    bad[key] = f"{wrong} of {len(want)} profiles differ from pyFAI's"
            elif isinstance(want, int):
                if got != want:
                    bad[key] = f"sum {got} != {want}"
            elif abs(got - want) > 1e-9 * abs(want):
                bad[key] = f"checksum {got!r} != {want!r}"
    return bad


def _fmt(x, spec=".2f", none="—"):
    return none if x is None else format(x, spec)


def report(rows: dict[str, Row], L: dict, bad: dict, print_=print) -> None:
    mb = 1e6
    naive = {"mean": "naive_mean", "sums": "naive_sums", "radial": "pyfai"}
    xr = {"mean": "xr_mean", "sums": "xr_sums"}
    lim = {"mean": L.get("mean"), "sums": L.get("sums")}
    cpu_lim = {"mean": L.get("cpu_mean"), "sums": L.get("cpu_sums")}

    print_("\nMachine limits (medians)")
    if "read_compressed" in L:
        print_(
            f"  {'page-cache read':<34} {L['read_compressed']:6.2f} GB/s of compressed bytes"
            f" (= {L['read_uncompressed']:.1f} GB/s of frames at {L['ratio']:.2f}:1)"
        )
    for k, label in (("decode1", "decode, 1 thread"), ("decodeN", f"decode, {L['cores']} threads"),
                     ("decode1_omp", "decode, 1 thread, OpenMP default"), ("decodeN_omp", f"decode, {L['cores']} threads, OpenMP default")):
        if k in rows and rows[k].gbps:
            print_(f"  {label:<34} {rows[k].gbps:6.2f} GB/s of frames (OMP_NUM_THREADS={rows[k].ok[0]['extra']['omp']})")
    for name, rate in L.get("reduce", {}).items():
        print_(f"  {name:<34} {rate:6.2f} GB/s of uint32 frames, 1 thread")
    if "mean" in L:
        print_(
            "  Each core must read, decode and reduce every byte itself, so per core the times add up:\n"
            "    limit = cores / (1/read + 1/decode_1thread + 1/reduce_1thread)   [GB/s of frames]\n"
            f"    mean frame (reduce = float64 accumulate): {L['mean']:.2f} GB/s\n"
            f"    frame sums (reduce = uint64 frame sum):   {L['sums']:.2f} GB/s\n"
            f"    frame_stats' sum+min+max (informational):  {L['stats']:.2f} GB/s\n"
            f"    optimistic min(decode×cores, reduce×cores, read) = {L['optimistic']:.2f} GB/s"
            " (only if stages overlapped on different cores)\n"
            "  The same work in CPU seconds per GB (1/read + 1/decode + 1/reduce, from CPU-time rates), which other\n"
            "  users' load hardly changes: mean frame "
            f"{L['cpu_mean']:.2f} CPU s/GB, frame sums {L['cpu_sums']:.2f} CPU s/GB (column 'CPU eff' = this / measured)"
        )

    header = (
        f"  {'method':<58} {'GB/s':>6} {'frames/s':>8} {'spread':>6} {'CPU s/GB':>8} {'RSS MB':>7} {'tree MB':>7}"
        f" {'×naive':>6} {'×xarray':>7} {'×limit':>6} {'CPU eff':>7}  notes"
    )
    titles = {"mean": "Mean frame", "sums": "Per-frame sums (frame_stats: sum, mean, min, max)", "radial": "Radial profiles (npt=1000, q_nm^-1)"}
    for group in ("mean", "sums", "radial"):
        members = [r for r in rows.values() if r.run.group == group]
        if not members:
            continue
        print_(f"\n{titles[group]}")
        print_(header)
        for row in members:
            if not row.ok:
                print_(f"  {row.run.label:<58} FAILED: {row.results[0].get('error', '')[:300]}")
                continue
            rate = row.fps if group == "radial" else row.gbps
            ref_naive = rows.get(naive.get(group, ""))
            ref_xr = rows.get(xr.get(group, ""))

            def ratio(ref):
                if ref is None or not ref.ok:
                    return None
                other = ref.fps if group == "radial" else ref.gbps
                return rate / other if other else None

            notes = []
            for k, what in (("open_s", "open"), ("cluster_start_s", "cluster start"), ("warmup_s", "warm-up"), ("setup_s", "set-up")):
                val = row.extra(k)
                if val is not None:
                    notes.append(f"{what} {val:.1f} s")
            if row.extra("dask_chunk_frames"):
                notes.append(f"{row.extra('dask_chunk_frames'):.0f} frames/chunk")
            if row.run.key in bad:
                notes.insert(0, f"WRONG RESULT: {bad[row.run.key]}")
            l, cl = lim.get(group), cpu_lim.get(group)
            cpu = row.cpu_per_frame * 1e3 if group == "radial" else row.cpu_per_gb
            print_(
                f"  {row.run.label:<58} {_fmt(row.gbps):>6} {_fmt(row.fps, '.0f'):>8} {_fmt(row.spread and 100 * row.spread, '.0f'):>5}%"
                f" {_fmt(cpu):>8} {_fmt(row.max_proc_rss and row.max_proc_rss / mb, '.0f'):>7} {_fmt(row.tree_pss and row.tree_pss / mb, '.0f'):>7}"
                f" {_fmt(ratio(ref_naive)):>6} {_fmt(ratio(ref_xr)):>7} {_fmt(l and row.gbps / l):>6} {_fmt(cl and cpu and cl / cpu):>7}"
                f"  {'; '.join(notes)}"
            )
    print_(
        "\n  GB/s: uncompressed frame bytes per second of the timed part (set-up in notes). spread: (max−min)/median over rounds.\n"
        "  RSS MB: peak RSS (VmHWM) of the largest single process of the method: itself, a Dask worker or al.open's probe.\n"
        "  tree MB: peak of Σ PSS over the whole process tree (sampled every 50 ms; shared pages counted once).\n"
        "  ×naive: vs the h5py frame loop (radial: vs the pyFAI loop, frames/s). ×limit: vs the machine limit above."
    )


def targets(rows: dict[str, Row], L: dict, bad: dict, print_=print) -> None:
    def rate(key):
        row = rows.get(key)
        return row.gbps if row is not None and row.ok else None

    lines = []

    def target(text, value, bar):
        if value is None:
            lines.append(f"  [ n/a ] {text}: not measured")
        else:
            lines.append(f"  [{'met' if value >= bar else 'MISSED':^5}] {text}: {value:.2f} (bar {bar:g})")

    for key, lim, what in (("al_mean", "mean", "mean_frame"), ("al_stats", "sums", "frame_stats")):
        target(f"{what} threaded ≥ 0.9 × measured limit", rate(key) and L.get(lim) and rate(key) / L[lim], 0.9)
    for key, ref, what in (("al_mean_w2", "naive_mean", "mean_frame"), ("al_stats_w2", "naive_sums", "frame_stats")):
        target(f"{what} with 2 worker processes ≥ naive loop", rate(key) and rate(ref) and rate(key) / rate(ref), 1.0)
    for key, ref, bar, what in (("al_mean", "xr_mean", 1.8, "mean_frame"), ("al_stats", "xr_sums", 2.5, "frame_stats")):
        target(f"{what} threaded ≈ {bar}× xarray+h5netcdf", rate(key) and rate(ref) and rate(key) / rate(ref), bar)
    for key in ("al_mean", "al_mean_w2", "al_stats", "al_stats_w2"):
        lim = "mean" if "mean" in key else "sums"
        row = rows.get(key)
        if row is None or not row.ok:
            continue
        v = rate(key) and L.get(lim) and rate(key) / L[lim]
        eff = L.get(f"cpu_{lim}") and L[f"cpu_{lim}"] / row.cpu_per_gb
        lines.append(f"  [ info] {key}: ×limit {_fmt(v)}, CPU efficiency {_fmt(eff)} (load-independent form of the 0.9 bar)")
    al_rows = [r for r in rows.values() if r.run.method.startswith("al_") and r.ok]
    if al_rows:
        worst = max(al_rows, key=lambda r: r.tree_pss or 0)
        worst_proc = max(al_rows, key=lambda r: r.max_proc_rss or 0)
        ok = (worst.tree_pss or 0) <= 1e9 and (worst_proc.max_proc_rss or 0) <= 1e9
        lines.append(
            f"  [{'met' if ok else 'MISSED':^5}] peak memory ≤ 1 GB for analysis_lib: worst process tree {worst.tree_pss / 1e6:.0f} MB"
            f" ({worst.run.key}), worst single process {worst_proc.max_proc_rss / 1e6:.0f} MB ({worst_proc.run.key})"
        )
    wrong = [k for k in bad if k.startswith("al_")]
    lines.append(
        f"  [{'met' if not wrong else 'MISSED':^5}] analysis_lib's results equal the plain loops'"
        + (f": wrong in {', '.join(wrong)}" if wrong else "")
    )
    print_("\nTargets (informational; timings never fail this command)")
    for line in lines:
        print_(line)


# ---------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default=None, help="uncompressed size of the frame stack (default 4GB; 0.5GB with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of every method (default 3; 1 with --quick)")
    p.add_argument("--data", default=str(REPO / "bench-data"), help="where the stack is cached (default: bench-data/ in the repo)")
    p.add_argument("--quick", action="store_true", help="a ~0.5 GB smoke run, one round")
    p.add_argument("--radial-frames", type=int, default=200, help="frames integrated by the radial-profile rows")
    p.add_argument("--diagnose", action="store_true", help="add diagnostic rows (OpenMP threads, chunk sizes, schedulers)")
    p.add_argument("--only", help="comma-separated row keys to run (e.g. naive_mean,al_mean)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before one measurement is stopped")
    a = p.parse_args(argv)
    size = _data.parse_size(a.size or ("0.5GB" if a.quick else "4GB"))
    rounds = a.rounds or (1 if a.quick else 3)
    ncores = cores()

    print("command: " + " ".join(shlex.quote(x) for x in [sys.executable, "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])]))
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S')}, load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    for line in machine_info():
        print(line)
    frames = _data.frames_for(size)
    data_dir = Path(os.path.abspath(os.path.expanduser(a.data)))
    subprocess.run([sys.executable, "-m", "benchmarks._data", "--data", str(data_dir), "--frames", str(frames)], cwd=REPO, check=True)
    path, poni = _data.stack_path(data_dir, frames, 0), _data.poni_path(data_dir)
    file_size = path.stat().st_size
    ratio = frames * _data.FRAME_BYTES / file_size
    print(
        f"stack: {path} — {frames} frames of {_data.FRAME_SHAPE[0]}×{_data.FRAME_SHAPE[1]} uint32, one per chunk, bitshuffle/LZ4;"
        f" {frames * _data.FRAME_BYTES / 1e9:.2f} GB uncompressed, {file_size / 1e9:.3f} GB on disk ({ratio:.2f}:1)"
    )
    # Warm the page cache once; nothing is dropped afterwards.
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(64 << 20)
        pos = 0
        while (n := os.preadv(fd, [buf], pos)) > 0:
            pos += n
    finally:
        os.close(fd)
    print("page cache: warmed once, never dropped (page-cache bandwidth is the regime measured)")

    runs = plan(ncores, a.diagnose)
    if a.only:
        keep = set(a.only.split(","))
        unknown = keep - {r.key for r in runs}
        if unknown:
            p.error(f"unknown row keys {sorted(unknown)}; known: {', '.join(r.key for r in runs)}")
        runs = [r for r in runs if r.key in keep]
    common = ["--file", str(path), "--poni", str(poni), "--radial-frames", str(a.radial_frames)]
    rows = {r.key: Row(r, []) for r in runs}
    busy0, ours0, t_start = _cpu_busy(), _our_cpu(), time.perf_counter()
    for rnd in range(rounds):
        order = runs[rnd % len(runs):] + runs[: rnd % len(runs)]  # rotate: no method always runs first
        print(f"round {rnd + 1}/{rounds} (load average {os.getloadavg()[0]:.2f}):", end="", flush=True)
        for run in order:
            result = run_one(run, common, a.timeout)
            rows[run.key].results.append(result)
            mark = "!" if "error" in result else ""
            print(f" {run.key}{mark}", end="", flush=True)
        print()
    elapsed = time.perf_counter() - t_start
    others = (_cpu_busy() - busy0 - (_our_cpu() - ours0)) / elapsed
    print(
        f"finished {time.strftime('%H:%M:%S')} after {elapsed:.0f} s; load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())};"
        f" other processes used {max(others, 0):.2f} of {ncores} cores on average"
        + (" — the machine was busy: absolute numbers are low, ratios within a round are fairer" if others > 0.2 else "")
    )

    L = limits(rows, ratio, ncores)
    bad = check_results(rows)
    report(rows, L, bad)
    targets(rows, L, bad)

    out_dir = data_dir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "command": sys.argv, "frames": frames, "file": str(path), "file_size": file_size, "limits": L,
        "rows": {k: {"label": r.run.label, "results": r.results} for k, r in rows.items()},
    }, indent=1, default=str))
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
