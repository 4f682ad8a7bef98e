"""Faults that lose nothing, on a real embedded deployment: a catalog file broken while beamside
runs, the public proxy killed outright, the hub killed during a burst of starts, a user's Dask
scheduler dying.

One `beamside up` serves the module (free ports on 127.0.0.1, stopped by PID at the end), with
access checked every 2 s so that a broken catalog meets the servers' polls and the gateway's
reconcile loop within the test. Users come from the demo catalog: alice (bt-1001), bob (bt-1001
and bt-1002).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import requests

from .deploy import Deployment, user_kernel, wait_for
from .test_hub import _gateway_answers, _hub_comes_back, login, ok, outcome

CHECK_EVERY = 2  # singleuser.access_check_every of this deployment (s)
DEADLINE = 90  # generous: the machine is shared


@pytest.fixture(scope="module")
def dep():
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-faults-"))
    os.chmod(folder, 0o755)  # user accounts pass through to their homes
    deployment = Deployment(folder, {"culler": {"enabled": False},
                                     "singleuser": {"access_check_every": CHECK_EVERY}})
    deployment.start()
    yield deployment
    deployment.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(dep):
    yield from user_kernel(dep, "alice")


OPEN_SCAN = """
import analysis_lib as al
res = {"frames": dict(al.open("bt-1001/raw/scan_0001.nxs").sizes),
       "view": open(__import__("os").environ["BEAMSIDE_CATALOG"]).read()}
"""

NEW_CLUSTER = """
from dask_gateway import Gateway
try:
    Gateway().new_cluster().shutdown()
    res = {"error": None}
except Exception as exc:
    res = {"error": str(exc)}
"""


def test_a_broken_catalog_refuses_new_servers_and_clusters_and_keeps_running_ones(dep, alice):
    catalog = Path(dep.runtime["paths"]["catalog"])
    good = catalog.read_bytes()
    before = outcome(alice, OPEN_SCAN)
    assert "bt-1001" in before["view"] and "bt-1002" not in before["view"]
    log_start = len(dep.hub_log())
    broken_line = len(good.decode().splitlines()) + 1
    try:
        # An edit gone wrong: plain YAML would keep this second 'beamtimes' and nobody would read anything.
        catalog.write_bytes(good + b"beamtimes: []\n")
        # A new server is refused on the spawn page, saying which file and line; no traceback.
        bob = login(dep, "bob", dep.logins["bob"])
        page = bob.get(f"{dep.url}/hub/spawn", timeout=60)
        assert page.status_code == 503, page.text[:2000]
        assert str(catalog) in page.text and f"line {broken_line}" in page.text, page.text[:3000]
        assert "Traceback" not in page.text and "Unhandled error" not in page.text
        assert not dep.hub.api("GET", "/users/bob").json()["servers"]
        # Running servers are polled against the broken file (every CHECK_EVERY s) and keep going:
        # their beamtimes, their catalog view as it was (not wider, not empty), al.open working.
        wait_for(lambda: "could not check alice's access" in dep.hub_log()[log_start:], DEADLINE,
                 "a poll of alice's server meeting the broken catalog")
        during = outcome(alice, OPEN_SCAN)
        assert during == before
        # No new Dask cluster either, with the reason from the gateway.
        refused = outcome(alice, NEW_CLUSTER)["error"]
        assert refused and "catalog is broken" in refused and str(catalog) in refused, refused
        assert dep.hub.api("GET", "/users/alice").json()["servers"][""]["ready"]
    finally:
        catalog.write_bytes(good)
    # Fixed, and without a restart: bob's server starts, alice's is as it was.
    dep.hub.spawn("bob")
    assert outcome(alice, OPEN_SCAN) == before
    dep.hub.stop("bob")


def test_a_killed_proxy_comes_back_with_the_routes_to_running_servers(dep, alice):
    pid_file = Path(dep.folder) / "state" / "proxy.pid"
    old = int(pid_file.read_text())
    token = dep.hub.token("alice")
    status = f"{dep.url}/user/alice/api/status"

    def reachable() -> bool:
        try:
            r = requests.get(status, headers={"Authorization": f"token {token}"}, timeout=5)
        except requests.RequestException:
            return False
        return r.status_code == 200 and "kernels" in r.json()

    assert reachable()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: pid_file.read_text().strip() not in ("", str(old)), DEADLINE, "a new proxy")
    wait_for(reachable, DEADLINE, "alice's server reachable through the public URL again")
    alice._connect()  # the old websocket went with the old proxy; the kernel itself kept running
    assert ok(alice, "print(6 * 7)").strip() == "42"


def test_a_hub_killed_during_a_burst_of_starts_leaves_every_server_running_or_cleanly_stopped(dep, alice):
    """SIGKILL while three servers start: after the supervisor's restart each of them is either
    ready and reachable, or stopped with no process of it left (none orphaned); alice's keeps going."""
    import threading
    import time

    users = ["bob", "carol", "admin"]
    for user in users:
        dep.hub.api("POST", f"/users/{user}")

    def start(user):
        try:
            dep.hub.api("POST", f"/users/{user}/server", timeout=60)
        except requests.RequestException:  # the hub died under the request
            pass

    threads = [threading.Thread(target=start, args=(u,)) for u in users]
    [t.start() for t in threads]
    wait_for(lambda: any(dep.processes_of(u) for u in users), DEADLINE, "a server process starting")
    time.sleep(1)  # some sandboxes made, some servers not answering yet
    old = dep.hub_pid
    os.kill(old, signal.SIGKILL)
    [t.join() for t in threads]
    _hub_comes_back(dep, old)

    seen = {}

    def settled(user):
        server = dep.hub.api("GET", f"/users/{user}").json()["servers"].get("")
        left = [" ".join(p.cmdline())[:120] for p in dep.processes_of(user)]
        seen[user] = (server, left)
        if server is None:
            return not left  # stopped: nothing of it left
        return server.get("ready") and not server.get("pending")

    for user in users:
        try:
            wait_for(lambda u=user: settled(u), DEADLINE, f"{user}'s server ready or cleanly stopped")
        except pytest.fail.Exception:
            pytest.fail(f"{user}'s server neither ready nor cleanly stopped: {seen.get(user)}\n{dep.hub_log()[-3000:]}")
        if dep.hub.api("GET", f"/users/{user}").json()["servers"].get(""):
            token = dep.hub.token(user)
            r = requests.get(f"{dep.url}/user/{user}/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
            assert r.status_code == 200, (user, r.status_code)
        dep.hub.stop(user)
        wait_for(lambda u=user: not dep.processes_of(u), DEADLINE, f"{user}'s processes gone after stopping")
    alice._connect()
    assert ok(alice, "print(6 * 7)").strip() == "42"
    _gateway_answers(dep)  # the restarted hub's gateway, for the next test


def test_a_dead_scheduler_is_a_clear_error_and_a_new_cluster_works(alice):
    res = outcome(alice, """
import os, time
from dask_gateway import Gateway
gw = Gateway()
doomed = gw.new_cluster(); doomed.scale(1)
client = doomed.get_client(); client.wait_for_workers(1, timeout=180)
name = doomed.name
try:
    client.run_on_scheduler(os._exit, 1)  # the scheduler process ends under the call
except Exception:
    pass
t0 = time.time()
import analysis_lib as al, dask.array as da
try:
    al.compute(da.ones(10, chunks=5).sum(), progress=False)
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
waited = time.time() - t0
deadline = time.time() + 60
while name in [c.name for c in gw.list_clusters()] and time.time() < deadline:
    time.sleep(0.5)
listed = name in [c.name for c in gw.list_clusters()]
client.close()
fresh = gw.new_cluster(); fresh.scale(1)
c2 = fresh.get_client(); c2.wait_for_workers(1, timeout=180)
res = {"error": error, "waited": waited, "still_listed": listed, "fresh": c2.submit(sum, [1, 2]).result(timeout=120)}
c2.close(); fresh.shutdown()
""")
    assert res["error"].startswith("ClusterLost: the Dask cluster this ran on is gone"), res
    assert "al.cluster()" in res["error"] and res["waited"] < 120, res
    assert res["still_listed"] is False and res["fresh"] == 3, res
    print("dead scheduler:", res)
