"""``python -m benchmarks.load``: a real embedded deployment under many users at once.

Starts ``beamside up`` (free ports on 127.0.0.1, isolation on, culler off: as a facility runs
it) on demo beamtimes written for the run, whose catalog makes every load user a member of
bt-1001, and measures what a user feels and what the machine pays:

1. **burst**: N users ask for their servers at once (REST, the supervisor's token); the time from
   each user's first request to the hub's "ready" event (the progress stream the spawn page
   watches), failures, HTTP 429s (the hub's ``concurrent_spawn_limit``; the user retries after the
   ``Retry-After`` the hub sends, which counts in their time), starts per second, and the hub API's
   latency meanwhile (a thread asking for a user's model every 0.2 s);
2. **idle memory**: with those N servers idle, Σ RSS and PSS of every process of the users' Unix
   accounts, per user, and of the deployment's own processes (hub, proxy, gateway …);
3. **reducing at once**: K of them reduce the demo scan in their kernels at the same moment
   (``al.ops.mean_frame``), each result checked bit for bit against one reference computed here
   with h5py and numpy;
4. **staggered arrivals**: fresh users arriving at 0.5 and at 1 user/s (the previous phase's
   servers stopped first), spawn-to-ready of each.

Not a test: it never fails on a timing. It prints a table with the targets of issue 13 and the
stock JupyterHub figures beside the measurements and writes everything (machine, settings, raw
times) as JSON with ``--json``. Everything it started is stopped by PID at the end, on Ctrl-C too,
and its temporary folder removed; the ``bs-user…`` Unix accounts the hub made stay, as after the
tests (a later run reuses them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import requests
import yaml

from tests.deploy import Deployment
from tests.hubclient import Kernel

from .__main__ import cores, cpu_model

SCAN = "bt-1001/raw/scan_0001.nxs"
SIGNAL = "/entry/data/data"  # the scan's NXdata signal, as the demo writes it
PROBE_EVERY = 0.2  # seconds between two requests of the API-latency probe

# The reduction each user runs; the last line it prints is its answer. Imports are done before
# the clock starts (a warm-up cell), so the time is al.open + the reduction.
WARM_UP = "import hashlib, json, time\nimport numpy as np\nimport analysis_lib as al"
REDUCE = f"""\
t0 = time.perf_counter()
ds = al.open({SCAN!r})
m = al.compute(al.ops.mean_frame(ds["data"]), progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "frames": int(m.attrs["frames"]),
                  "sha256": hashlib.sha256(np.ascontiguousarray(m.values)).hexdigest()}}))
"""

# Issue 13: stock JupyterHub + JupyterLab on a 2-core machine, and what beamside aims for.
STOCK = {
    "burst_all_ready": "~170 s (100 users)",
    "starts_per_s": "~0.55 /s",
    "stagger_1": "median 23 s after 30",
    "idle_rss": "~131 MB RSS",
}
TARGET = {
    "burst_all_ready": "all ready (N=40)",
    "burst_failures": "0 (N=40)",
    "api_p95": "< 1 s (N=40)",
    "stagger_1": "p95 ≤ 10 s (60 s)",
    "reduce_failures": "0 (K=15)",
    "reduce_ratio": "≤ 2× (K=15)",
    "idle_memory": "≤ 150 MB",
}


# ---------------------------------------------------------------------------
# the deployment
# ---------------------------------------------------------------------------
def user_names(first: int, count: int) -> list[str]:
    """Hub users ``user000`` …: already safe Unix names, so their accounts are ``bs-user000`` …"""
    return [f"user{i:03d}" for i in range(first, first + count)]


def write_facility(folder: Path, size: str, members: list[str]) -> Path:
    """Demo beamtimes under ``folder`` with a catalog in which ``members`` may read bt-1001.

    Laid out as a facility's storage is: the catalog beside the data root, not inside a beamtime
    (``beamside up`` refuses a catalog a sandbox would see); the folders readable by the users'
    accounts, which the sandboxes bind read-only.
    """
    from analysis_lib.demo import write_demo_data

    old = os.umask(0o022)
    try:
        catalog = write_demo_data(folder, size)
        doc = yaml.safe_load(catalog.read_text())
        for bt in doc["beamtimes"]:
            if bt["id"] == SCAN.split("/")[0]:
                bt["members"] = [{"user": u, "role": "member"} for u in members]
        part = catalog.with_suffix(".part")
        part.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(part, catalog)
    finally:
        os.umask(old)
    return catalog


def reference(catalog: Path) -> dict:
    """The mean frame of the scan, computed once with h5py and numpy as ``ops.mean_frame`` defines
    it (exact integer sums of the uint32 counts, then ÷ frames): its SHA-256 must match bit for bit."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filter)
    import numpy as np

    root = Path(yaml.safe_load(catalog.read_text())["data_root"])
    with h5py.File(root / SCAN, "r") as f:
        frames = f[SIGNAL][...]
    assert frames.dtype.kind == "u", frames.dtype  # counts: the sum is exact, so the bits are too
    n = int(np.prod(frames.shape[:-2]))
    mean = frames.reshape(n, *frames.shape[-2:]).sum(axis=0, dtype=np.uint64).astype(np.float64) / n
    return {"frames": n, "sha256": hashlib.sha256(np.ascontiguousarray(mean)).hexdigest()}


# ---------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0–100): a value that was measured, never interpolated."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median": statistics.median(values) if values else None,
            "p95": percentile(values, 95), "max": max(values) if values else None}


# ---------------------------------------------------------------------------
# spawning
# ---------------------------------------------------------------------------
@dataclass
class Spawn:
    """One user's spawn as the user sees it: from the first request to the hub's ready event."""

    user: str
    seconds: float | None = None  # spawn-to-ready; None: it failed
    status_429: int = 0  # refusals before the hub took the request
    waited_429: float = 0.0  # seconds spent waiting as Retry-After said
    error: str = ""
    started: float = 0.0  # the first request (perf_counter; in the phase's JSON: since the phase began)
    ready_at: float | None = None


def _ready_event(hub, user: str, deadline: float) -> tuple[bool, str]:
    """Follow the server's progress stream until "ready" or "failed" (as the spawn page does)."""
    url = f"{hub.url}/hub/api/users/{user}/server/progress"
    while time.perf_counter() < deadline:
        try:
            with requests.get(url, headers=hub.headers, stream=True, timeout=(30, 60)) as r:
                if r.status_code != 200:
                    model = hub.api("GET", f"/users/{user}").json()
                    server = model["servers"].get("")
                    if server and server.get("ready"):
                        return True, ""
                    return False, f"progress: {r.status_code} {r.text[:200]}"
                for line in r.iter_lines(decode_unicode=True):
                    if not line or not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        return True, ""
                    if event.get("failed"):
                        return False, event.get("message", "spawn failed")
                    if time.perf_counter() > deadline:
                        break
        except requests.RequestException as exc:  # a dropped stream: look again
            last = f"progress stream: {exc}"
            time.sleep(0.5)
            if time.perf_counter() > deadline:
                return False, last
    return False, "not ready before the harness's deadline"


def spawn_one(hub, user: str, timeout: float) -> Spawn:
    s = Spawn(user, started=time.perf_counter())
    deadline = s.started + timeout
    try:
        while True:
            r = hub.api("POST", f"/users/{user}/server")
            if r.status_code != 429:
                break
            s.status_429 += 1
            wait = min(float(r.headers.get("Retry-After") or 5), max(0.0, deadline - time.perf_counter()))
            s.waited_429 += wait
            time.sleep(wait)
            if time.perf_counter() >= deadline:
                s.error = f"still refused (429) after {timeout:.0f} s"
                return s
        if r.status_code not in (201, 202):
            s.error = f"POST server: {r.status_code} {r.text[:200]}"
            return s
        ok, why = (True, "") if r.status_code == 201 and _is_ready(hub, user) else _ready_event(hub, user, deadline)
    except requests.RequestException as exc:
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if ok:
        s.ready_at = time.perf_counter()
        s.seconds = s.ready_at - s.started
    else:
        s.error = why
    return s


def _is_ready(hub, user: str) -> bool:
    server = hub.api("GET", f"/users/{user}").json()["servers"].get("")
    return bool(server and server.get("ready"))


class ApiProbe:
    """A thread asking the hub for one user's model every 0.2 s: the API's latency while loaded."""

    def __init__(self, hub, user: str):
        self.hub, self.user = hub, user
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = self.hub.api("GET", f"/users/{self.user}").status_code == 200
            except requests.RequestException:
                ok = False
            took = time.perf_counter() - t0
            if ok:
                self.latencies.append(took)
            else:
                self.errors += 1
            self._stop.wait(max(0.0, PROBE_EVERY - took))

    def result(self) -> dict:
        return {"requests": len(self.latencies) + self.errors, "errors": self.errors,
                "p95": percentile(self.latencies, 95), "median": percentile(self.latencies, 50),
                "max": max(self.latencies, default=None)}


def _run_threads(jobs: list, start_at: list[float] | None = None) -> list:
    """Run each ``jobs[i]()`` in a daemon thread (started at ``start_at[i]``, perf_counter, if
    given); their results in order. Daemon threads: Ctrl-C is not held up by a waiting spawn."""
    results: list = [None] * len(jobs)

    def run(i):
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for i, t in enumerate(threads):
        if start_at:
            time.sleep(max(0.0, start_at[i] - time.perf_counter()))
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return results


def spawn_phase(dep, users: list[str], rate: float | None, timeout: float) -> dict:
    """Spawn ``users`` at once (``rate`` None) or one every 1/``rate`` s; the API probed throughout."""
    t0 = time.perf_counter()
    start_at = None if rate is None else [t0 + i / rate for i in range(len(users))]
    with ApiProbe(dep.hub, users[0]) as probe:
        spawns: list[Spawn] = _run_threads([lambda u=u: spawn_one(dep.hub, u, timeout) for u in users], start_at)
    for s in spawns:  # times in the JSON: seconds since the phase began
        s.started -= t0
        s.ready_at = None if s.ready_at is None else s.ready_at - t0
    ok = [s for s in spawns if s.seconds is not None]
    last = max((s.ready_at for s in ok), default=None)
    return {
        "users": len(users), "rate": rate,
        "spawn_to_ready": summary([s.seconds for s in ok]),
        "failures": len(spawns) - len(ok),
        "status_429": sum(s.status_429 for s in spawns),
        "users_refused_429": sum(1 for s in spawns if s.status_429),
        "all_ready_after": last if last is not None and len(ok) == len(spawns) else None,
        "starts_per_s": len(ok) / last if last else None,
        "api": probe.result(),
        "errors": {s.user: s.error for s in spawns if s.error},
        "spawns": [asdict(s) for s in spawns],
    }


def stop_servers(hub, users: list[str], timeout: float = 300) -> None:
    """Stop ``users``' servers and wait until the hub has none of them left."""
    for u in users:
        hub.api("DELETE", f"/users/{u}/server")
    left, deadline = set(users), time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = {u for u in left if hub.api("GET", f"/users/{u}").json()["servers"]}
        if left:
            time.sleep(1)
    if left:
        raise TimeoutError(f"servers of {', '.join(sorted(left))} still running after {timeout} s")


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------
def _memory(proc) -> tuple[int, int | None]:
    """(RSS, PSS) of one process in bytes; PSS None where the kernel does not give it."""
    info = proc.memory_full_info()
    return info.rss, getattr(info, "pss", None)


def users_memory(users: list[str]) -> dict:
    """Σ RSS and PSS of every process of the users' Unix accounts (server, sandbox, kernels)."""
    import pwd

    import psutil
    from beamside_hub.accounts import unix_name

    uids = {pwd.getpwnam(unix_name(u)).pw_uid: u for u in users}
    per_user = {u: {"rss": 0, "pss": 0, "processes": 0} for u in users}
    pss_known = True
    for p in psutil.process_iter(["uids"]):
        user = uids.get(p.info["uids"].real) if p.info["uids"] else None
        if user is None:
            continue
        try:
            rss, pss = _memory(p)
        except psutil.Error:
            continue
        per_user[user]["rss"] += rss
        per_user[user]["processes"] += 1
        if pss is None:
            pss_known = False
        else:
            per_user[user]["pss"] += pss
    n = len(users)
    return {
        "users": n,
        "rss_per_user": sum(m["rss"] for m in per_user.values()) / n,
        "pss_per_user": sum(m["pss"] for m in per_user.values()) / n if pss_known else None,
        "rss_max_user": max(m["rss"] for m in per_user.values()),
        "processes_per_user": sum(m["processes"] for m in per_user.values()) / n,
        "per_user": per_user,
    }


def _role(cmdline: list[str], pid: int, dep) -> str:
    text = " ".join(cmdline)
    if pid == dep.proc.pid:
        return "beamside up (supervisor)"
    if pid == dep.hub_pid:
        return "hub (JupyterHub)"
    for needle, role in (("configurable-http-proxy", "proxy (configurable-http-proxy)"),
                         ("dask-gateway", "gateway (dask-gateway-server)"), ("dask_gateway", "gateway (dask-gateway-server)"),
                         ("audit", "audit service"), ("idle_culler", "idle culler"), ("idle-culler", "idle culler")):
        if needle in text:
            return role
    return "other"


def deployment_memory(dep) -> dict:
    """RSS and PSS of the deployment's own processes: ``beamside up`` and every root process below it."""
    import psutil

    top = psutil.Process(dep.proc.pid)
    roles: dict[str, dict] = {}
    for p in [top, *top.children(recursive=True)]:
        try:
            if p.uids().real != 0:  # a user's process (its server, sandbox, kernels)
                continue
            rss, pss = _memory(p)
            role = _role(p.cmdline(), p.pid, dep)
        except psutil.Error:
            continue
        r = roles.setdefault(role, {"rss": 0, "pss": 0, "processes": 0})
        r["rss"] += rss
        r["pss"] += pss or 0
        r["processes"] += 1
    return roles


def memory_phase(dep, users: list[str], settle: float) -> dict:
    """Idle servers' memory, the median of three samples taken after ``settle`` seconds."""
    time.sleep(settle)
    samples = []
    for i in range(3):
        samples.append(users_memory(users))
        if i < 2:
            time.sleep(2)
    samples.sort(key=lambda m: m["rss_per_user"])
    out = samples[1]
    out["deployment"] = deployment_memory(dep)
    out["start_cpu"] = servers_cpu(dep, users)
    return out


def servers_cpu(dep, users: list[str]) -> dict | None:
    """CPU-seconds each server used from its start until now, idle since (its cgroup's account:
    sandbox, server, nothing of the hub's); None without cgroups."""
    from beamside_hub.accounts import unix_name
    from beamside_hub.limits import SERVER, Cgroups, top_for

    cgroups = Cgroups.detect(top_for(dep.runtime["paths"]["state"]))
    if cgroups is None:
        return None
    seconds = [cgroups.group(unix_name(u), SERVER).cpu_seconds() for u in users]
    return summary(seconds)


# ---------------------------------------------------------------------------
# reducing at once
# ---------------------------------------------------------------------------
def reduce_phase(dep, users: list[str], ref: dict) -> dict:
    """``users`` reduce the scan in their kernels at the same moment; each answer checked."""
    kernels: dict[str, Kernel | str] = {}

    def open_kernel(u):
        try:
            k = Kernel(dep.url, u, dep.hub.token(u))
            out = k.run(WARM_UP)
            if out["status"] != "ok":
                return f"warm-up: {out['error']}"
            return k
        except Exception as exc:  # noqa: BLE001 - any failure of one user is a row, not the end of the run
            return f"kernel: {type(exc).__name__}: {exc}"

    for u, k in zip(users, _run_threads([lambda u=u: open_kernel(u) for u in users])):
        kernels[u] = k
    ready = [u for u in users if isinstance(kernels[u], Kernel)]
    barrier = threading.Barrier(len(ready)) if ready else None

    def reduce(u) -> dict:
        kernel = kernels[u]
        barrier.wait()
        t0 = time.perf_counter()
        try:
            out = kernel.run(REDUCE, timeout=900)
        except Exception as exc:  # noqa: BLE001
            return {"user": u, "error": f"{type(exc).__name__}: {exc}"}
        wall = time.perf_counter() - t0
        if out["status"] != "ok":
            return {"user": u, "error": out["error"] or out["stderr"][-300:], "wall": wall}
        answer = json.loads(out["stdout"].strip().splitlines()[-1])
        wrong = answer["sha256"] != ref["sha256"] or answer["frames"] != ref["frames"]
        return {"user": u, "seconds": answer["seconds"], "wall": wall,
                **({"error": "result differs from the reference"} if wrong else {})}

    try:
        results = _run_threads([lambda u=u: reduce(u) for u in ready])
    finally:
        for k in kernels.values():
            if isinstance(k, Kernel):
                k.close()
    results += [{"user": u, "error": kernels[u]} for u in users if u not in ready]
    times = [r["seconds"] for r in results if "error" not in r]
    median = statistics.median(times) if times else None
    return {
        "users": len(users), "scan": SCAN, "reference": ref,
        "seconds": summary(times),
        "slowest_over_median": max(times) / median if median else None,
        "failures": sum(1 for r in results if "error" in r),
        "errors": {r["user"]: r["error"] for r in results if "error" in r},
        "results": results,
    }


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------
def _s(x, unit=" s", spec=".1f"):
    return "—" if x is None else f"{format(x, spec)}{unit}"


def _three(d: dict) -> str:
    return f"{_s(d['median'], '')} / {_s(d['p95'], '')} / {_s(d['max'])}"


def _mb(x) -> str:
    return _s(x and x / 1e6, " MB", ".0f")


def _or_default(slots) -> str:
    """The start slots as set, or the embedded default."""
    from beamside_hub.start_queue import default_slots

    return str(slots) if slots is not None else f"{default_slots()} (default: two per core)"


def report(result: dict, print_=print) -> None:
    rows: list[tuple[str, str, str, str]] = []
    title = []
    mach, st = result["machine"], result.get("settings", {})
    resolved = st.get("resolved", {})
    print_(f"\nmachine: {mach['cores']} cores ({mach['cpu']}), RAM {mach['ram_bytes'] / 1e9:.1f} GB, load average at start "
           f"{mach['load_average_at_start'][0]:.2f}; JupyterHub {mach['jupyterhub']}")
    if resolved:
        print_(f"deployment: {st['isolation']}, network {st['network']}, culler "
               f"{'on' if resolved['culler']['enabled'] else 'off'}, concurrent_spawn_limit "
               f"{_or_default(resolved['hub']['concurrent_spawn_limit'])}; {st['limits'] or 'no per-user limits'}")

    def section(name):
        rows.append((name, "", "", ""))
        title.append(len(rows) - 1)

    b = result.get("burst")
    if b:
        section(f"Burst: {b['users']} users ask at once")
        rows += [
            ("all ready after", _s(b["all_ready_after"]), TARGET["burst_all_ready"], STOCK["burst_all_ready"]),
            ("spawn-to-ready median / p95 / max", _three(b["spawn_to_ready"]), "", ""),
            ("failures", str(b["failures"]), TARGET["burst_failures"], ""),
            ("HTTP 429 (users refused, retried)", f"{b['status_429']} ({b['users_refused_429']})", "", ""),
            ("starts per second", _s(b["starts_per_s"], " /s", ".2f"), "", STOCK["starts_per_s"]),
            ("hub API p95 during the burst",
             f"{_s(b['api']['p95'], ' s', '.3f')} ({b['api']['requests']} req, {b['api']['errors']} err)",
             TARGET["api_p95"], ""),
        ]
    m = result.get("memory")
    if m:
        section(f"Memory: {m['users']} servers idle")
        rows += [
            ("per idle user, PSS (RSS)", f"{_mb(m['pss_per_user'])} ({_mb(m['rss_per_user'])})",
             TARGET["idle_memory"], STOCK["idle_rss"]),
            ("processes per user", _s(m["processes_per_user"], "", ".1f"), "", ""),
        ]
        if m.get("start_cpu"):
            rows.append(("CPU-seconds of one server, start to idle (median / max)",
                         f"{_s(m['start_cpu']['median'], ' s', '.2f')} / {_s(m['start_cpu']['max'], ' s', '.2f')}",
                         "", "~3.6 s"))
        deployment = m["deployment"]
        pss, rss = (sum(d[k] for d in deployment.values()) for k in ("pss", "rss"))
        rows.append(("the deployment's own processes, PSS (RSS)", f"{_mb(pss)} ({_mb(rss)})", "", ""))
        for role, d in sorted(deployment.items()):
            rows.append((f"  {role}", f"{_mb(d['pss'])} ({_mb(d['rss'])})", "", ""))
    r = result.get("reduce")
    if r:
        section(f"Reducing at once: {r['users']} users, mean_frame of {r['scan']} ({r['reference']['frames']} frames)")
        rows += [
            ("time per user median / p95 / max", _three(r["seconds"]), "", ""),
            ("slowest / median", _s(r["slowest_over_median"], "×", ".2f"), TARGET["reduce_ratio"], ""),
            ("failures (wrong results included)", str(r["failures"]), TARGET["reduce_failures"], ""),
        ]
    for st in result.get("staggered", []):
        section(f"Staggered: {st['users']} users arriving at {st['rate']:g} user/s")
        rows += [
            ("spawn-to-ready median / p95 / max", _three(st["spawn_to_ready"]),
             TARGET["stagger_1"] if st["rate"] == 1 else "", STOCK["stagger_1"] if st["rate"] == 1 else ""),
            ("failures; HTTP 429", f"{st['failures']}; {st['status_429']}", "", ""),
            ("hub API p95", _s(st["api"]["p95"], " s", ".3f"), "", ""),
        ]
    body = [row for i, row in enumerate(rows) if i not in title]
    w = [max(len(row[c]) for row in body) for c in range(3)]
    w[2] = max(w[2], len("target (issue 13)"))
    print_(f"\n  {'':<{w[0]}}  {'measured':>{w[1]}}  {'target (issue 13)':<{w[2]}}  stock JupyterHub")
    for i, (name, measured, target, stock) in enumerate(rows):
        print_(f"\n{name}" if i in title else f"  {name:<{w[0]}}  {measured:>{w[1]}}  {target:<{w[2]}}  {stock}".rstrip())
    phases = [("burst", b), ("reduce", r), *((f"staggered {st['rate']:g}/s", st) for st in result.get("staggered", []))]
    for label, phase in phases:
        for user, error in sorted(((phase or {}).get("errors") or {}).items())[:5]:
            print_(f"  {label} failure, {user}: {error[:200]}")
    print_(
        "\n  spawn-to-ready: from a user's first POST /users/<name>/server (429 waits included) to the hub's ready\n"
        "  event. PSS splits shared pages among processes (what users cost the machine together); stock's\n"
        "  figure is RSS. Targets apply at the sizes in brackets; stock: JupyterHub + JupyterLab, 2 cores (issue 13)."
    )


# ---------------------------------------------------------------------------
# machine and main
# ---------------------------------------------------------------------------
def machine() -> dict:
    from importlib.metadata import version

    import psutil

    return {"cores": cores(), "cpu": cpu_model(), "ram_bytes": psutil.virtual_memory().total,
            "kernel": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "jupyterhub": version("jupyterhub"), "jupyter_server": version("jupyter_server"),
            "load_average_at_start": os.getloadavg()}


def _setting(text: str) -> tuple[str, str, object]:
    key, _, value = text.partition("=")
    section, _, name = key.partition(".")
    if not (section and name and _):
        raise argparse.ArgumentTypeError(f"{text!r}: expected section.key=value, e.g. hub.concurrent_spawn_limit=40")
    return section, name, yaml.safe_load(value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, required=True, help="N: users of the burst and of the idle-memory count")
    p.add_argument("--reducers", type=int, help="K: users reducing at once (default min(15, N))")
    p.add_argument("--rates", default="0.5,1", help="arrival rates of the staggered phases, users/s ('' for none)")
    p.add_argument("--duration", type=float, help="seconds of each staggered phase (default: N users each)")
    p.add_argument("--demo-size", default="100MB", help="bytes of demo frames (bt-1001's first scan gets 45%%)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a user waits for a server before it counts as failed")
    p.add_argument("--settle", type=float, default=10, help="seconds servers idle before their memory is read")
    p.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a deployment setting (YAML value), e.g. hub.concurrent_spawn_limit=40; repeatable")
    p.add_argument("--json", type=Path, help="write every measurement, the machine and the settings here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, state) for a look")
    args = p.parse_args(argv)
    if args.users < 1:
        p.error("--users must be at least 1")
    args.reducers = min(15, args.users) if args.reducers is None else args.reducers
    if not 0 <= args.reducers <= args.users:
        p.error("--reducers must be between 0 and --users (they reduce on the burst's servers)")
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    return args


def settings_for(catalog: Path, extra: list) -> dict:
    """What a facility runs: isolation required (bubblewrap, private networks), the culler off
    for the run (it would stop idle servers mid-measurement), every other setting its default."""
    settings = {"data": {"catalog": str(catalog)}, "singleuser": {"isolation": "bubblewrap"},
                "culler": {"enabled": False}}
    for section, key, value in extra:
        settings.setdefault(section, {})[key] = value
    return settings


def run(args, folder: Path, say) -> dict:
    n = args.users
    stagger_sizes = [max(1, round(rate * args.duration)) if args.duration else n for rate in args.rates]
    everyone = user_names(0, n + sum(stagger_sizes))
    say(f"writing demo beamtimes ({args.demo_size}) and a catalog of {len(everyone)} users under {folder} …")
    catalog = write_facility(folder / "facility", args.demo_size, everyone)
    ref = reference(catalog)
    dep = Deployment(folder / "deployment", settings_for(catalog, args.settings))
    result = {"started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        say("starting beamside up …")
        dep.start()
        result["settings"] = {"given": yaml.safe_load(dep.config.read_text()), "resolved": _shown(dep.runtime["settings"]),
                              **{k: dep.runtime.get(k) for k in ("isolate", "isolation", "network", "limits", "platform")}}
        r = dep.hub.api("POST", "/users", json={"usernames": everyone})
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating users: {r.status_code} {r.text[:300]}")

        burst = everyone[:n]
        result["accounts_existing_before"] = sum(1 for u in everyone if _account_exists(u))
        say(f"burst: {n} spawns at once …")
        result["burst"] = spawn_phase(dep, burst, None, args.timeout)
        running = [s["user"] for s in result["burst"]["spawns"] if s["seconds"] is not None]
        if running:
            say(f"memory: {len(running)} idle servers (after {args.settle:g} s) …")
            result["memory"] = memory_phase(dep, running, args.settle)
        reducers = running[: args.reducers]
        if reducers:
            say(f"reducing: {len(reducers)} users at once …")
            result["reduce"] = reduce_phase(dep, reducers, ref)
        say("stopping the burst's servers …")
        stop_servers(dep.hub, burst)

        result["staggered"], first = [], n
        for rate, size in zip(args.rates, stagger_sizes):
            users = everyone[first:first + size]
            first += size
            say(f"staggered: {size} users at {rate:g}/s …")
            phase = spawn_phase(dep, users, rate, args.timeout)
            result["staggered"].append(phase)
            stop_servers(dep.hub, users)
    finally:
        say("stopping beamside up …")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave it running
        code = dep.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say(f"beamside up stopped (exit code {code})")
    result["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return result


def _account_exists(user: str) -> bool:
    """Whether the user's Unix account is there already (a first spawn also creates it)."""
    import pwd

    from beamside_hub.accounts import unix_name

    try:
        pwd.getpwnam(unix_name(user))
    except KeyError:
        return False
    return True


def _shown(settings: dict) -> dict:
    """The resolved settings without what may hold a password (database URLs, the OIDC secret)."""
    shown = json.loads(json.dumps(settings))
    for section, key in (("hub", "db_url"), ("dask", "db_url")):
        if shown.get(section, {}).get(key):
            shown[section][key] = "(set)"
    shown.get("auth", {}).get("oidc", {}).pop("client_secret", None)
    return shown


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (in the background)
    signal.signal(signal.SIGTERM, _terminate)  # stopped from outside: clean up as on Ctrl-C

    def say(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-load-"))
    os.chmod(folder, 0o755)  # the users' accounts pass through to their homes and the beamtimes
    try:
        result = run(args, folder, say)
    except KeyboardInterrupt:
        say("interrupted: the deployment is stopped")
        return 130
    finally:
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
