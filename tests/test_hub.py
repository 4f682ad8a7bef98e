"""A deployment for real: JupyterHub, the node proxy, sandboxed servers, dask-gateway — on each platform.

Every test here runs twice: on the embedded platform (servers and Dask processes on this machine)
and on SLURM (the same, as jobs of a private slurmctld/slurmd, ``tests/slurm.py``). A new way to
run servers gets the same isolation attacks as the old one: symlinks, HDF5 external links and
virtual datasets into other beamtimes, other users' servers, clusters and tokens.

One `beamside up` per platform serves the module (free ports on 127.0.0.1, stopped by PID at the
end, which must leave no process behind). Users come from the demo catalog: alice (bt-1001), bob
(bt-1001 and bt-1002), carol (bt-2001, confidential).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import requests

from analysis_lib.catalog import Catalog

from .deploy import Deployment
from .hubclient import Kernel
from .slurm import beamside_settings

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
GATEWAY_SCOPE = "access:services!service=dask-gateway"
figures: dict = {}


@pytest.fixture(scope="module", params=["embedded", "slurm"])
def dep(request):
    platform = request.param
    settings = {"culler": {"enabled": False}}
    if platform == "slurm":
        settings.update(beamside_settings(request.getfixturevalue("slurm")))
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix=f"beamside-hub-{platform}-"))
    os.chmod(folder, 0o755)  # user accounts pass through to their homes
    deployment = Deployment(folder, settings)
    deployment.platform = platform
    t0 = time.perf_counter()
    deployment.start()
    figure(deployment, "beamside up to hub ready (s, incl. demo data)", round(time.perf_counter() - t0, 1))
    yield deployment
    deployment.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "hub-figures.json").write_text(json.dumps(figures, indent=1))
    shutil.copy(folder / "state" / "logs" / "jupyterhub.log", ARTIFACTS / f"jupyterhub-{platform}.log")
    shutil.rmtree(folder, ignore_errors=True)
    if platform == "slurm":  # nothing of this deployment left in the queue (the SLURM serves later modules)
        request.getfixturevalue("slurm").assert_drained()


def figure(dep, name: str, value) -> None:
    """One measured figure of this run, per platform (test-artifacts/hub-figures.json)."""
    figures.setdefault(dep.platform, {})[name] = value


@pytest.fixture(scope="module")
def catalog(dep) -> Catalog:
    return Catalog.load(dep.runtime["paths"]["catalog"])


def path_of(catalog: Catalog, beamtime: str, rel: str = "raw/scan_0001.nxs") -> str:
    return str(next(bt for bt in catalog.beamtimes if bt.id == beamtime).path / rel)


def _kernel_of(dep, user):
    figure(dep, f"spawn to ready, {user} (s)", round(dep.hub.spawn(user), 2))
    kernel = Kernel(dep.url, user, dep.hub.token(user))
    yield kernel
    kernel.close()


@pytest.fixture(scope="module")
def alice(dep):
    yield from _kernel_of(dep, "alice")


@pytest.fixture(scope="module")
def bob(dep):
    yield from _kernel_of(dep, "bob")


def ok(kernel: Kernel, code: str) -> str:
    out = kernel.run(code)
    assert out["status"] == "ok", f"{out['error']}\n{out['stderr']}"
    return out["stdout"]


def outcome(kernel: Kernel, code: str) -> dict:
    """Run ``code`` that leaves a dict in ``res``; return it."""
    return json.loads(ok(kernel, code + "\nimport json as _j; print(_j.dumps(res))").strip().splitlines()[-1])


# -- login ------------------------------------------------------------------------------------
def login(dep, user: str, password: str) -> requests.Session:
    s = requests.Session()
    s.get(f"{dep.url}/hub/login", timeout=30)
    r = s.post(f"{dep.url}/hub/login", data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=30)
    s.login_status = r.status_code
    return s


def test_each_user_logs_in_with_their_own_password(dep):
    logins = dep.logins
    assert set(logins) >= {"alice", "bob", "carol", "admin"} and len(set(logins.values())) == len(logins)
    s = login(dep, "alice", logins["alice"])
    assert s.login_status == 302
    r = s.get(f"{dep.url}/hub/api/user", headers={"X-XSRFToken": s.cookies.get("_xsrf")}, timeout=30)
    assert r.status_code == 200 and r.json()["name"] == "alice"
    assert login(dep, "alice", logins["bob"]).login_status == 403  # another user's password
    assert login(dep, "alice", "").login_status == 403


def test_passwords_are_stored_hashed_and_private(dep):
    path = Path(dep.runtime["paths"]["passwords_file"])
    text = path.read_text()
    assert all(p not in text for p in dep.logins.values())
    assert re.search(r"alice: scrypt\$", text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- a user's server and their cluster ---------------------------------------------------------
def test_notebook_reduces_demo_data_on_the_gateway_cluster(dep, alice, catalog):
    source = path_of(catalog, "bt-1001")
    with h5py.File(source) as f:
        expected = f["/entry/data/data"][()].mean(axis=0)
    out = ok(alice, """
import time, numpy as np, analysis_lib as al
print(sorted(b.id for b in al.beamtimes()))
t0 = time.perf_counter(); client = al.cluster(workers=2); client.wait_for_workers(2, timeout=180)
print("cluster", time.perf_counter() - t0)
def arrived_ready():
    import os, sys
    return "analysis_lib.ops" in sys.modules, os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("SILX_OPENCL")
print("workers-ready", sorted(set(client.run(arrived_ready).values())))
mean = al.ops.mean_frame(al.open("bt-1001/raw/scan_0001.nxs")).compute()
np.save("/tmp/mean.npy", mean.values)
print("workers-uids", sorted(set(client.run(__import__("os").getuid).values())))
print(al.ops.data_stayed_here(mean))
client.cluster.shutdown(); client.close()
print(repr(np.load("/tmp/mean.npy").sum()))
""")
    lines = out.splitlines()
    assert lines[0] == "['bt-1001']"
    figure(dep, "gateway cluster with 2 workers (s)", round(float(lines[1].split()[1]), 2))
    # the gateway's workers got analysis_lib.contract.WORKER_ENV, and silx's "no OpenCL here"
    assert lines[2] == "workers-ready [(True, None, '0')]"
    assert "the data stayed here" in out
    np.testing.assert_allclose(float(lines[-1].split("(")[-1].rstrip(")")), expected.sum(), rtol=1e-9)
    worker_uids = json.loads(lines[3].split(" ", 1)[1])
    assert worker_uids and 0 not in worker_uids


def test_root_folder_keeps_its_owner_after_clusters_ran(dep, alice):
    # dask-gateway's LocalBackend has chowned "/" to the user through an upstream bug: so this test runs a
    # cluster of its own (not trusting that other tests ran one first) and checks "/" while and after it runs
    res = outcome(alice, """
import os, analysis_lib as al
root_client = al.cluster(workers=2); root_client.wait_for_workers(2, timeout=180)
res = {"worker_uids": sorted(set(root_client.run(os.getuid).values())), "sum": root_client.submit(sum, [1, 2]).result()}
""")
    try:
        running = os.stat("/")
        assert res["sum"] == 3 and res["worker_uids"] and 0 not in res["worker_uids"]
    finally:
        ok(alice, "root_client.cluster.shutdown(); root_client.close()")
    after = os.stat("/")
    assert (running.st_uid, running.st_gid) == (0, 0)
    assert (after.st_uid, after.st_gid) == (0, 0)


# -- isolation ---------------------------------------------------------------------------------
def test_user_sees_only_their_beamtimes(dep, alice, catalog):
    home = f"{dep.runtime['paths']['homes']}/alice"
    bob_file, carol_file = path_of(catalog, "bt-1002"), path_of(catalog, "bt-2001")
    res = outcome(alice, f"""
import os, h5py, numpy as np
import analysis_lib as al
res = {{"uid": os.getuid(), "listdir": sorted(os.listdir({str(catalog.data_root)!r}))}}
res["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
res["homes"] = sorted(os.listdir({dep.runtime['paths']['homes']!r}))
res["state_visible"] = os.path.exists({dep.runtime['paths']['passwords_file']!r}) or os.path.exists({dep.runtime['paths']['audit_log']!r})
def attempt(name, fn):
    try:
        fn(); res[name] = "READ"
    except Exception as e:
        res[name] = type(e).__name__
for target, tag in (({bob_file!r}, "bob"), ({carol_file!r}, "carol")):
    attempt(f"open-{{tag}}", lambda: open(target, "rb").read(8))
    attempt(f"h5py-{{tag}}", lambda: h5py.File(target, "r"))
    attempt(f"al-{{tag}}", lambda: al.open(target))
link = {home!r} + "/link.nxs"
os.symlink({bob_file!r}, link)
attempt("symlink", lambda: open(link, "rb").read(8))
with h5py.File({home!r} + "/ext.h5", "w") as f:
    f["x"] = h5py.ExternalLink({bob_file!r}, "/entry/data/data")
attempt("external-link", lambda: h5py.File({home!r} + "/ext.h5", "r")["x"][0])
layout = h5py.VirtualLayout(shape=(2, 1062, 1028), dtype="uint32")
layout[:] = h5py.VirtualSource({bob_file!r}, "/entry/data/data", shape=(2, 1062, 1028))
with h5py.File({home!r} + "/vds.h5", "w") as f:
    f.create_virtual_dataset("x", layout, fillvalue=0)
with h5py.File({home!r} + "/vds.h5", "r") as f:
    res["vds-nonzero"] = int(np.count_nonzero(f["x"][()]))
res["other-processes"] = [open(f"/proc/{{p}}/cmdline").read().replace("\\0", " ")[:80]
                          for p in os.listdir("/proc") if p.isdigit() and "bob" in open(f"/proc/{{p}}/cmdline").read()]
res["catalog"] = open(os.environ["BEAMSIDE_CATALOG"]).read()
""")
    assert res["uid"] != 0 and res["cap_eff"] == "0000000000000000"
    assert res["listdir"] == ["bt-1001"]
    assert res["homes"] == ["alice"] and res["state_visible"] is False
    for tag in ("bob", "carol"):
        assert res[f"open-{tag}"] == "FileNotFoundError"
        assert res[f"h5py-{tag}"] == "FileNotFoundError"
        assert res[f"al-{tag}"] == "AccessDenied"
    assert res["symlink"] == "FileNotFoundError"
    assert res["external-link"] == "KeyError"  # HDF5 cannot find the target file at all
    assert res["vds-nonzero"] == 0  # only fill values: bob's frames are not there to read
    assert res["other-processes"] == []
    assert "bt-2001" not in res["catalog"] and "bt-1002" not in res["catalog"]


def test_dask_tasks_see_only_the_users_beamtimes(dep, alice, catalog):
    res = outcome(alice, f"""
import analysis_lib as al
client = al.cluster(workers=1); client.wait_for_workers(1, timeout=180)
def peek(path):
    import os
    try:
        open(path, "rb").read(8); return "READ"
    except Exception as e:
        return type(e).__name__
res = {{"bob": client.submit(peek, {path_of(catalog, 'bt-1002')!r}).result(),
        "own": client.submit(peek, {path_of(catalog, 'bt-1001')!r}).result()}}
client.cluster.shutdown(); client.close()
""")
    assert res == {"bob": "FileNotFoundError", "own": "READ"}


def test_users_cannot_reach_each_others_servers(dep, alice, bob):
    alice_token = dep.hub.token("alice")
    h = {"Authorization": f"token {alice_token}"}
    for path in ("/user/bob/api/status", "/user/bob/api/kernels", "/user/bob/api/contents"):
        assert requests.get(f"{dep.url}{path}", headers=h, timeout=30).status_code == 403, path
    assert requests.get(f"{dep.url}/user/alice/api/status", headers=h, timeout=30).status_code == 200
    assert requests.get(f"{dep.url}/hub/api/users/bob", headers=h, timeout=30).status_code in (403, 404)
    s = login(dep, "alice", dep.logins["alice"])
    assert s.get(f"{dep.url}/user/bob/api/kernels", timeout=30, allow_redirects=False).status_code in (302, 403)


def test_viewer_and_dask_panel_routes_load_on_first_use_and_keep_their_guard(dep, alice, catalog):
    """The server parts of jupyterlab-h5web and dask-labextension are imported by their first
    request, not at start (beamside_hub.user_server): h5py is not in the server's memory until
    then. Deferred, they answer as before, behind the server's own authentication and inside the
    sandbox: no token and another user's token are refused, bob's beamtime is not there."""
    server = next(p for p in dep.processes_of("alice")
                  if "beamside-singleuser" in " ".join(p.cmdline()) and "bwrap" not in p.cmdline()[0])
    assert "python" in server.cmdline()[0], server.cmdline()

    def h5py_loaded() -> bool:
        return any("h5py" in m.path for m in server.memory_maps())

    assert not h5py_loaded(), "h5py was loaded when the server started"
    mine = {"Authorization": f"token {dep.hub.token('alice')}"}
    dep.hub.api("POST", "/users/bob")  # (exists already unless this test runs alone)
    bobs = {"Authorization": f"token {dep.hub.token('bob')}"}
    own, other = path_of(catalog, "bt-1001"), path_of(catalog, "bt-1002")
    meta = f"{dep.url}/user/alice/h5web/meta"
    r = requests.get(meta, params={"file": own, "path": "/"}, headers=mine, timeout=60)
    assert r.status_code == 200 and r.json()["kind"] == "group", (r.status_code, r.text[:300])
    assert h5py_loaded()
    for headers in ({}, bobs):
        refused = requests.get(meta, params={"file": own, "path": "/"}, headers=headers, timeout=30, allow_redirects=False)
        assert refused.status_code in (302, 403), (refused.status_code, refused.text[:200])
    hidden = requests.get(meta, params={"file": other, "path": "/"}, headers=mine, timeout=30)
    assert hidden.status_code == 404, (hidden.status_code, hidden.text[:300])
    clusters = requests.get(f"{dep.url}/user/alice/dask/clusters", headers=mine, timeout=60)
    assert clusters.status_code == 200 and isinstance(clusters.json(), list), (clusters.status_code, clusters.text[:300])
    assert requests.get(f"{dep.url}/user/alice/dask/clusters", headers=bobs, timeout=30,
                        allow_redirects=False).status_code in (302, 403)


def test_a_session_starts_without_noise(dep, alice):
    """What a scientist sees first: pyFAI's import (silx looking for OpenCL) prints nothing on the
    kernel's stderr, and JupyterLab's defaults ask about no news feed and check for no updates
    (beamside_hub.user_server's overrides.json), as the settings API gives them to the browser."""
    out = alice.run("import pyFAI, pyFAI.integrator.azimuthal, silx.opencl.common as c; print(c.pyopencl)")
    assert out["status"] == "ok" and out["stdout"].strip() == "None", out
    assert "pyOpenCl" not in out["stderr"] and "WARNING" not in out["stderr"], out["stderr"]
    headers = {"Authorization": f"token {dep.hub.token('alice')}"}
    r = requests.get(f"{dep.url}/user/alice/lab/api/settings/@jupyterlab/apputils-extension:notification",
                     headers=headers, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    defaults = {name: spec.get("default") for name, spec in r.json()["schema"]["properties"].items()}
    assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults


def test_gateway_clusters_are_private_and_limited(dep, alice, bob):
    bob_cluster = ok(bob, """
import analysis_lib as al
bob_client = al.cluster(workers=1)
print(bob_client.cluster.name)
""").strip()
    res = outcome(alice, """
from dask_gateway import Gateway
with Gateway() as gw:
    res = {"listed": [c.name for c in gw.list_clusters()]}
""")
    # alice's own token, straight at the gateway's API: bob's cluster is not hers to see or stop
    api = f"{dep.url}/services/dask-gateway/api/v1/clusters/{bob_cluster}"
    h = {"Authorization": f"jupyterhub {dep.hub.token('alice')}"}
    assert requests.get(api, headers=h, timeout=30).status_code in (403, 404)
    assert requests.delete(api, headers=h, timeout=30).status_code in (403, 404)
    limit = outcome(alice, """
import analysis_lib as al
from dask_gateway import Gateway
with Gateway() as gw:
    mine = [gw.new_cluster(), gw.new_cluster()]
    try:
        gw.new_cluster(); res = {"third": "STARTED"}
    except Exception as e:
        res = {"third": str(e)}
    for c in mine:
        c.shutdown()
""")
    assert bob_cluster not in res["listed"]
    assert bob_cluster in ok(bob, "print(bob_client.cluster.name, bob_client.submit(sum, [1, 2]).result())")
    assert "limit is 2" in limit["third"]
    ok(bob, "bob_client.cluster.shutdown(); bob_client.close()")


def test_a_worker_killed_mid_reduction_gives_the_same_result(dep, alice):
    import psutil

    marker = f"bs-victim-{os.getpid() % 10000}"  # the victim worker's process name, seen from the host
    before = outcome(alice, f"""
import os, time, numpy as np, analysis_lib as al
frames = al.open("bt-1001/raw/scan_0001.nxs", chunks={{"y": 1}})["data"]
expected = al.ops.frame_stats(frames).compute(scheduler="threads")
def slow(block):
    time.sleep(4)  # long enough that the kill below lands while tasks run
    return block
kill_client = al.cluster(workers=2); kill_client.wait_for_workers(2, timeout=180)
slowed = frames.copy(data=frames.data.map_blocks(slow, dtype=frames.dtype))
kill_future = kill_client.compute(al.ops.frame_stats(slowed))
victim = sorted(kill_client.scheduler_info()["workers"])[0]
def mark():
    with open("/proc/self/comm", "w") as f:
        f.write({marker!r})
kill_client.run(mark, workers=[victim])
deadline = time.time() + 60
while not kill_client.processing([victim])[victim] and time.time() < deadline:
    time.sleep(0.05)
res = {{"victim": victim, "processing": len(kill_client.processing([victim])[victim]), "done": kill_future.done()}}
""")
    assert before["processing"] > 0 and before["done"] is False, before  # the victim holds work of this reduction
    victims = [p for p in psutil.process_iter(["name"]) if p.info["name"] == marker]
    assert len(victims) == 1, victims
    victim_pid = victims[0].pid
    try:
        killed = outcome(alice, """
async def die():
    os._exit(1)
kill_client.run(die, workers=[victim], wait=False)
deadline = time.time() + 60
while victim in kill_client.scheduler_info()["workers"] and time.time() < deadline:
    time.sleep(0.05)
res = {"lost": victim not in kill_client.scheduler_info()["workers"], "done_when_lost": kill_future.done()}
""")
        # the scheduler lost the worker while the reduction was still running
        assert killed == {"lost": True, "done_when_lost": False}, killed
        deadline = time.time() + 30
        while time.time() < deadline and _alive(victim_pid, marker):
            time.sleep(0.1)
        assert not _alive(victim_pid, marker), f"worker process {victim_pid} outlived its kill"
        after = outcome(alice, """
result = kill_future.result(timeout=300)
res = {"same": bool((result["sum"].values == expected["sum"].values).all() and (result["max"].values == expected["max"].values).all()),
       "workers": len(kill_client.scheduler_info()["workers"])}
""")
        assert after["same"] is True, after
    finally:
        ok(alice, "kill_client.cluster.shutdown(); kill_client.close()")


def _alive(pid: int, name: str) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.name() == name and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_audit_log_records_who_opened_what(dep, alice):
    ok(alice, "import analysis_lib as al; al.open('bt-1001/raw/scan_0002.nxs')")
    log = Path(dep.runtime["paths"]["audit_log"])
    assert stat.S_IMODE(log.stat().st_mode) == 0o640 and log.stat().st_uid == 0
    deadline = time.time() + 10
    while time.time() < deadline:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        hits = [e for e in entries if e["path"].endswith("bt-1001/raw/scan_0002.nxs")]
        if hits:
            break
        time.sleep(0.2)
    assert hits and hits[0]["user"] == "alice" and hits[0]["beamtime"] == "bt-1001" and hits[0]["time"]
    # every line names a real user, from the kernel (the opener's uid, or the socket's peer); a process
    # that exited before its open was read is kept by pid, without a name
    users_seen = {e["user"] for e in entries if "path" in e and e["user"] is not None}
    assert users_seen <= {"alice", "bob", "carol"}, users_seen


# -- scripts from outside -----------------------------------------------------------------------
def test_remote_script_with_a_gateway_scoped_token(dep, catalog, tmp_path):
    token = dep.hub.token("alice", scopes=[GATEWAY_SCOPE])
    proxy = f"gateway://127.0.0.1:{dep.runtime['settings']['dask']['scheduler_port']}"
    env = {k: v for k, v in os.environ.items() if k not in ("BEAMSIDE_CATALOG", "JUPYTERHUB_USER")}
    env["BEAMSIDE_TOKEN"] = token
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(REPO / "examples/scripts/remote_reduce.py"), "--hub", dep.url, "--proxy-address", proxy,
         "-o", str(tmp_path / "mean.nxs")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    figure(dep, "remote script: connect + reduce + save (s)", round(time.perf_counter() - t0, 2))
    assert run.returncode == 0, run.stderr
    assert token not in run.stdout + run.stderr
    read, received = (int(v.replace(",", "")) for v in re.search(r"bytes read on-site: ([\d,]+) / bytes received: ([\d,]+)", run.stdout).groups())
    assert read >= 4 * received  # a handful of demo frames in, one mean frame out
    with h5py.File(path_of(catalog, "bt-1001")) as f:
        expected = f["/entry/data/data"][()].mean(axis=0)
    with h5py.File(tmp_path / "mean.nxs") as f:
        np.testing.assert_allclose(f["/entry/result/mean_frame"][()], expected)
    # the same token can do nothing else
    h = {"Authorization": f"token {token}"}
    assert requests.get(f"{dep.url}/hub/api/users", headers=h, timeout=30).status_code == 403
    assert requests.post(f"{dep.url}/hub/api/users/alice/server", headers=h, timeout=30).status_code == 403
    assert requests.get(f"{dep.url}/user/alice/api/status", headers=h, timeout=30).status_code == 403


def test_token_file_must_be_private(tmp_path, monkeypatch):
    from analysis_lib import remote

    monkeypatch.delenv("BEAMSIDE_TOKEN", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / ".config/beamside/token"
    path.parent.mkdir(parents=True)
    path.write_text("secret-token\n")
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        remote.read_token()
    path.chmod(0o600)
    assert remote.read_token() == "secret-token"


# -- lifecycle --------------------------------------------------------------------------------------
def test_clusters_end_with_the_server_unless_detached(dep):
    dep.hub.spawn("carol")
    kernel = Kernel(dep.url, "carol", dep.hub.token("carol"))
    try:
        names = ok(kernel, """
from dask_gateway import Gateway
gw = Gateway()
# both outlive this kernel (shutdown_on_close=False); only the detached one outlives the server
attached = gw.new_cluster(shutdown_on_close=False)
opts = gw.cluster_options(); opts.detached = True
detached = gw.new_cluster(opts, shutdown_on_close=False)
print(attached.name, detached.name)
""").split()
    finally:
        kernel.close()
    dep.hub.stop("carol")
    token = dep.hub.token("carol", scopes=[GATEWAY_SCOPE])
    from dask_gateway import Gateway, JupyterHubAuth

    proxy = f"gateway://127.0.0.1:{dep.runtime['settings']['dask']['scheduler_port']}"
    with Gateway(f"{dep.url}/services/dask-gateway", proxy_address=proxy, auth=JupyterHubAuth(token)) as gw:
        running = {c.name for c in gw.list_clusters()}
        assert names[0] not in running and names[1] in running
        gw.stop_cluster(names[1])


def _hub_comes_back(dep, old: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if dep.hub_pid != old and dep.hub.api("GET", "/").ok:
                return
        except (requests.RequestException, ValueError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail("the hub did not come back")


def _gateway_answers(dep) -> None:
    deadline = time.time() + 60  # the hub's API answers a moment before it has started its services
    while time.time() < deadline:
        try:
            if requests.get(f"{dep.url}/services/dask-gateway/api/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail("the gateway did not come back with the hub")


def _start_kept_cluster(alice) -> str:
    return ok(alice, """
import analysis_lib as al
kept = al.cluster(workers=1); kept.wait_for_workers(1, timeout=180)
print(kept.cluster.name)
""").strip()


def _kept_cluster_computes(alice, name: str) -> None:
    """The cluster started before the hub went down is still there and computes (a new client: the
    old one's connection went through the gateway's proxy, which restarted with the gateway)."""
    res = outcome(alice, f"""
from dask_gateway import Gateway
gw = Gateway()
again = gw.connect({name!r}).get_client()
res = {{"sum": again.submit(sum, [1, 2], pure=False).result(timeout=120), "listed": [c.name for c in gw.list_clusters()]}}
again.cluster.shutdown(); again.close()
""")
    assert res["sum"] == 3 and name in res["listed"], res


def test_hub_restart_keeps_user_servers_and_their_clusters(dep, alice):
    before = ok(alice, "import os; print(os.getppid())")
    name = _start_kept_cluster(alice)
    old = dep.hub_pid
    os.kill(old, signal.SIGTERM)
    _hub_comes_back(dep, old)
    assert ok(alice, "import os; print(os.getppid())") == before  # same server process, same kernel
    r = requests.get(f"{dep.url}/user/alice/api/status", headers={"Authorization": f"token {dep.hub.token('alice')}"}, timeout=30)
    assert r.status_code == 200
    _gateway_answers(dep)
    _kept_cluster_computes(alice, name)


def _gateways(dep) -> list[int]:
    import psutil

    found = []  # the servers (their proxy, a child, has the same environment)
    for p in psutil.process_iter():
        try:
            env, argv = p.environ(), " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if (env.get("JUPYTERHUB_SERVICE_NAME") == "dask-gateway" and "dask-gateway-server" in argv
                and env.get("JUPYTERHUB_API_URL") == dep.runtime["addresses"]["hub_api_url"]):
            found.append(p.pid)
    return found


def test_a_hub_killed_outright_comes_back_with_one_working_gateway(dep, alice):
    """SIGKILL (the OOM killer) leaves the hub's services running; the next hub's gateway would
    fail on its ports and mark every cluster stopped. The supervisor ends them first, and the
    clusters they ran carry on under the next gateway."""
    assert len(_gateways(dep)) == 1
    name = _start_kept_cluster(alice)
    old = dep.hub_pid
    os.kill(old, signal.SIGKILL)
    _hub_comes_back(dep, old)
    _gateway_answers(dep)
    _kept_cluster_computes(alice, name)
    res = outcome(alice, """
import analysis_lib as al
after_kill = al.cluster(workers=1); after_kill.wait_for_workers(1, timeout=180)
res = {"sum": after_kill.submit(sum, [1, 2], pure=False).result()}
after_kill.cluster.shutdown(); after_kill.close()
""")
    assert res == {"sum": 3}
    assert len(_gateways(dep)) == 1


def test_a_servers_token_cannot_rewrite_how_root_runs_it(dep):
    """batchspawner's /hub/api/batchspawner sets any spawner attribute a server's token names;
    exec_prefix and batch_cancel_cmd are shell commands root runs (squeue while it runs, scancel
    on stop). From a fresh server (a restarted hub no longer matches older servers' tokens)."""
    victim = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-victim-"))  # root's, 0700: no user writes here
    marker = victim / "root-ran-this"
    dep.hub.spawn("carol")
    kernel = Kernel(dep.url, "carol", dep.hub.token("carol"))
    try:
        res = outcome(kernel, f"""
import os, requests
url = os.environ["JUPYTERHUB_API_URL"] + "/batchspawner"
auth = {{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}}
touch = "touch {marker};"
res = {{}}
for name, body in (("rewrite", {{"exec_prefix": touch + " /usr/sbin/runuser -u {{username}} --",
                                 "batch_cancel_cmd": touch, "batch_query_cmd": touch,
                                 "cmd": ["/bin/sh", "-c", touch], "ip": "0.0.0.0"}}),
                   ("port and more", {{"port": 2222, "exec_prefix": touch}}),
                   ("port again", {{"port": 2222}})):
    res[name] = requests.post(url, headers=auth, json=body, timeout=30).status_code
""")
        kernel.close()
        dep.hub.stop("carol")  # on SLURM: scancel prefixed by exec_prefix, then squeue until the job is gone
        assert not marker.exists(), "a user's request made root run a command"
        if dep.platform == "embedded":
            assert res == {"rewrite": 404, "port and more": 404, "port again": 404}, res  # no such route at all
        else:
            assert res == {"rewrite": 400, "port and more": 400, "port again": 409}, res
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_stopping_leaves_no_process_behind(dep, alice):
    """Last: beamside stops everything, a detached cluster too (a hub restart keeps clusters; a stop does not)."""
    import psutil

    ok(alice, """
from dask_gateway import Gateway
gw = Gateway(); opts = gw.cluster_options(); opts.detached = True
left_running = gw.new_cluster(opts, shutdown_on_close=False); left_running.scale(1)
left_running.get_client().wait_for_workers(1, timeout=180)
""")
    assert dep.stop() == 0
    state = str(dep.folder / "state")

    def left() -> list:
        found = []
        for p in psutil.process_iter(["pid", "username", "cmdline", "cwd", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and (
                        state in " ".join(p.info["cmdline"] or []) or str(p.info["cwd"] or "").startswith(state)):
                    found.append((p.pid, p.info["username"], " ".join(p.info["cmdline"] or [])[:100]))
            except psutil.NoSuchProcess:
                continue
        return found

    # on SLURM, a cancelled job's processes get SIGTERM, then SIGKILL after KillWait (2 s here)
    deadline = time.monotonic() + 15
    while left() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert left() == []
