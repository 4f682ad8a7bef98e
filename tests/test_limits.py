"""Per-user limits kept by the kernel (cgroups), in a real embedded deployment.

One `beamside up` with limits set: alice's server and kernels may use 1 GiB and one core
(``singleuser``), all her processes 4 GB and 1.5 cores, 300 processes and threads (``limits``).
The attacks are a user's own code in her kernel: allocating past the limit, spinning every core,
a fork flood, trying to leave or loosen her group. Root reads the groups' files to check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
import websocket
from beamside_hub.accounts import unix_name
from beamside_hub.limits import SERVER, Cgroups, top_for

from .deploy import Deployment, user_kernel
from .hubclient import Kernel

SERVER_MEMORY = 2**30
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
pytestmark = pytest.mark.skipif(Cgroups.detect() is None, reason="this machine mounts no cgroup controllers")


@pytest.fixture(scope="module")
def dep():
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-limits-"))
    os.chmod(folder, 0o755)  # user accounts pass through to their homes
    d = Deployment(folder, {
        "singleuser": {"mem_limit": "1G", "cpu_limit": 1.0},
        "limits": {"memory": "4 G", "cpu": 1.5, "processes": 300},
        "hub": {"concurrent_spawn_limit": 1},  # one start at a time: the others queue
        "culler": {"enabled": False},
    }).start()
    yield d
    d.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(folder / "state" / "logs" / "jupyterhub.log", ARTIFACTS / "jupyterhub-limits.log")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(dep):
    yield from user_kernel(dep, "alice")


def ok(kernel: Kernel, code: str, timeout: float = 120) -> str:
    out = kernel.run(code, timeout=timeout)
    assert out["status"] == "ok", f"{out['error']}\n{out['stderr']}"
    return out["stdout"]


def groups(dep) -> Cgroups:
    """The machine's cgroups, at this deployment's own folder."""
    return Cgroups.detect(top_for(dep.runtime["paths"]["state"]))


def alive(pid: int) -> bool:
    """Running (a zombie its parent has not reaped yet has ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def limit_of(folder: Path) -> int:
    return int((folder / "memory.limit_in_bytes").read_text())


def about(value: int, expected: int) -> bool:
    return expected - 4096 < value <= expected  # the kernel rounds a limit down to whole pages


def memory_group_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") or controllers == "":
            return path
    return ""


def test_the_banner_says_what_keeps_the_limits(dep):
    assert "per-user limits (cgroup v" in dep.output()


def test_every_process_of_the_user_is_in_her_group_with_her_limits(dep, alice):
    account = unix_name("alice")
    ok(alice, "import analysis_lib as al")
    mine = dep.processes_of("alice")
    assert mine, "alice runs no process"
    where = {(p.pid, " ".join(p.cmdline())[:80]): memory_group_of(p.pid) for p in mine}
    top = groups(dep).top
    assert all(path == f"/{top}/{account}/{SERVER}" for path in where.values()), where
    server = groups(dep).group(account, SERVER)
    assert {p.pid for p in mine} <= server.pids()
    memory = server.memory_folder
    assert limit_of(memory) == SERVER_MEMORY
    assert about(limit_of(memory.parent), 4_000_000_000)
    cpu = Path(str(memory).replace("/memory/", "/cpu/"))
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"
    assert (cpu.parent / "cpu.cfs_quota_us").read_text().strip() == "150000"


def test_the_user_cannot_leave_or_loosen_her_group(alice):
    out = ok(alice, """
import os, json
res = {"sys": os.path.exists("/sys/fs/cgroup"), "own": open("/proc/self/cgroup").read().split(":")[-1].strip()}
try:
    open("/run/beamside/memory/memory.limit_in_bytes", "w").write("-1"); res["write"] = "written"
except OSError as e:
    res["write"] = type(e).__name__
res["readable"] = "oom_kill" in open("/run/beamside/memory/memory.oom_control").read()
print(json.dumps(res))
""")
    res = json.loads(out.strip().splitlines()[-1])
    assert res == {"sys": False, "own": "/", "write": "OSError", "readable": True}, res


def test_a_kernel_over_its_memory_is_stopped_alone_and_the_user_is_told(dep, alice):
    account = unix_name("alice")
    server = groups(dep).group(account, SERVER)
    before = server.oom_kills()
    quiet_kernel = ok(alice, "import os; print(os.getpid())")
    greedy = Kernel(dep.url, "alice", dep.hub.token("alice"))
    try:
        greedy.ws.settimeout(10)  # the reply never comes: silence ends the wait
        try:
            out = greedy.run("hog = bytearray(1536 * 2**20)\nprint('still here')", timeout=60)
        except (TimeoutError, OSError, websocket.WebSocketException):
            out = None  # the kernel died under the cell
        assert out is None or "still here" not in out["stdout"], out
        assert server.oom_kills() == before + 1
        # the other kernel and the server are untouched
        assert ok(alice, "print(os.getpid())") == quiet_kernel
        r = requests.get(f"{dep.url}/user/alice/api/status", headers=alice.headers, timeout=30)
        assert r.status_code == 200
        # the greedy kernel was restarted by the server; its next cell says why
        greedy.ws.close()
        greedy._connect()
        out = greedy.run("print('after')", timeout=120)
        assert out["stdout"].strip() == "after"
        assert "memory limit of 1.0 GiB" in out["stderr"], out
        again = greedy.run("print('once')", timeout=60)
        assert "memory limit" not in again["stderr"]  # told once, not at every cell
    finally:
        greedy.close()


def test_a_busy_user_gets_no_more_than_her_cores(dep, alice):
    server = groups(dep).group(unix_name("alice"), SERVER)
    start_cpu, start = server.cpu_seconds(), time.monotonic()
    ok(alice, """
import multiprocessing as mp, time
def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
ps = [mp.get_context("fork").Process(target=spin, args=(4,)) for _ in range(3)]
[p.start() for p in ps]; [p.join() for p in ps]
""")
    used, wall = server.cpu_seconds() - start_cpu, time.monotonic() - start
    # three spinning processes would use every core of the machine; the server's group may use one
    assert used <= 1.0 * wall * 1.05 + 0.2, (used, wall)


def test_a_fork_flood_stops_at_the_users_process_limit(dep, alice):
    out = ok(alice, """
import subprocess
started, error = [], None
try:
    for _ in range(400):
        started.append(subprocess.Popen(["sleep", "60"]))
except OSError as e:
    error = type(e).__name__
for p in started:
    p.kill(); p.wait()
print(len(started), error)
""")
    count, error = out.split()
    assert error == "BlockingIOError" and int(count) < 300, out
    assert ok(alice, "print('fine')").strip() == "fine"


def test_a_dask_cluster_has_its_own_group_inside_the_users(dep, alice):
    account = unix_name("alice")
    name = ok(alice, """
from dask_gateway import Gateway
gw = Gateway(); cluster = gw.new_cluster(); cluster.scale(1)
client = cluster.get_client(); client.wait_for_workers(1, timeout=180)
print(cluster.name)
""", timeout=300).strip().splitlines()[-1]
    group = groups(dep).group(account, f"dask-{name}")
    pids = group.pids()
    assert len(pids) >= 2  # a scheduler, a worker (with their sandboxes)
    assert about(limit_of(group.memory_folder), 8_000_000_000 + 2_000_000_000)  # dask.max_memory + a worker's, for the scheduler
    ok(alice, "cluster.shutdown()", timeout=120)
    deadline = time.monotonic() + 30
    while group.memory_folder.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not group.memory_folder.exists()
    assert not any(alive(p) for p in pids)


def _progress(dep, user: str) -> list[dict]:
    """The spawn's progress events, as the spawn page gets them, until ready or failed."""
    events = []
    with dep.hub.api("GET", f"/users/{user}/server/progress", stream=True, timeout=300) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    return events


def test_a_burst_of_starts_queues_and_shows_each_user_her_place(dep, alice):
    """With one start at a time, three users at once: none is turned away (no HTTP 429), the last
    sees how many are ahead, all get their server."""
    from concurrent.futures import ThreadPoolExecutor

    users = ["bob", "carol", "admin"]
    for user in users:
        dep.hub.api("POST", f"/users/{user}")

    def arrive(user):
        """Ask for the server and follow its progress from the start, as the spawn page does."""
        with ThreadPoolExecutor(1) as asking:
            code = asking.submit(lambda: dep.hub.api("POST", f"/users/{user}/server", timeout=120).status_code)
            time.sleep(0.5)
            events = _progress(dep, user)
            return code.result(), events

    def queue() -> dict:
        """What the admin's `beamside queue --json` says."""
        out = subprocess.run([sys.executable, "-m", "analysis_lib.cli", "queue", "--config", str(dep.config), "--json"],
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)

    reports, arriving = [], threading.Event()

    def watch():
        while not arriving.is_set():
            reports.append(queue())
            time.sleep(0.2)

    with ThreadPoolExecutor(len(users) + 1) as pool:
        watching = pool.submit(watch)
        arrived = dict(zip(users, pool.map(arrive, users)))
        arriving.set()
        watching.result()
    codes = [code for code, _ in arrived.values()]
    assert all(code in (201, 202) for code in codes), codes
    progress = {user: events for user, (_, events) in arrived.items()}
    waited = [u for u, events in progress.items() if any("Waiting for a free slot" in e.get("message", "") for e in events)]
    assert waited, progress
    assert all(events[-1].get("ready") for events in progress.values()), progress
    for user in users:
        assert dep.hub.api("GET", f"/users/{user}").json()["servers"][""]["ready"]
        dep.hub.stop(user)
    # the admin saw the line: one starting, the others waiting in order, then nobody
    seen = [r for r in reports if r["waiting"]]
    assert seen, reports[-3:]
    assert all(r["slots"] == 1 and len(r["starting"]) <= 1 for r in reports), reports
    assert any([w["place"] for w in r["waiting"]] == list(range(1, len(r["waiting"]) + 1)) and r["starting"]
               for r in seen), seen
    assert {w["user"] for r in seen for w in r["waiting"]} <= set(users)
    assert all(r["hub_pid"] == dep.hub_pid for r in reports)
    final = queue()
    assert not final["starting"] and not final["waiting"] and final["recent_start_seconds"] > 0, final


def test_a_stopped_server_leaves_no_group(dep, alice):
    account = unix_name("alice")
    dep.hub.stop("alice")
    for folder in groups(dep).group(account).folders:
        assert not folder.exists(), folder
