"""beamside with ``platform: slurm`` against a real slurmctld and slurmd: user servers as SLURM jobs.

One private SLURM (``tests/slurm.py``) and one `beamside up` with ``platform: slurm`` serve the
module. Every server is a job of its user's own account, in the same sandbox as on one machine;
the job's life (queued, running, cancelled, ended early, SLURM not answering) is what the hub
reports and acts on.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from analysis_lib.catalog import Catalog

from .deploy import Deployment
from .hubclient import Kernel
from .slurm import NODE_IP, beamside_settings
from .test_hub import login, ok, outcome, path_of

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
figures: dict = {}


@pytest.fixture(scope="module")
def dep(slurm):
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-slurm-hub-"))
    os.chmod(folder, 0o755)
    deployment = Deployment(folder, {**beamside_settings(slurm), "culler": {"enabled": False}})
    t0 = time.perf_counter()
    deployment.start()
    figures["beamside up (slurm) to hub ready (s, incl. demo data)"] = round(time.perf_counter() - t0, 1)
    deployment.slurm = slurm
    yield deployment
    assert deployment.stop() == 0
    # nothing left: no job of any user in the queue, no process of the users' accounts
    wait_until(lambda: not slurm.run("squeue", "--noheader").stdout.strip(), 60, "every job gone after the stop")
    accounts = {"bs-alice", "bs-bob", "bs-carol"}
    wait_until(lambda: not [p for p in psutil.process_iter(["username", "status"])
                            if p.info["username"] in accounts and p.info["status"] != psutil.STATUS_ZOMBIE],
               30, "no process of the users' accounts after the stop")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "slurm-hub-figures.json").write_text(json.dumps(figures, indent=1))
    shutil.copy(folder / "state" / "logs" / "jupyterhub.log", ARTIFACTS / "jupyterhub-slurm-lifecycle.log")
    for log in (folder / "state" / "homes").glob("*/.beamside-server.log"):  # what each server job printed
        shutil.copy(log, ARTIFACTS / f"slurm-server-{log.parent.name}.log")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def catalog(dep) -> Catalog:
    return Catalog.load(dep.runtime["paths"]["catalog"])


def jobs_of(slurm, account: str, name: str = "") -> list[dict]:
    names = ["--name", name] if name else []
    out = slurm.run("squeue", "--noheader", "--user", account, *names, "--format", "%i|%T|%R|%j|%P").stdout.split()
    return [dict(zip(("id", "state", "reason", "name", "partition"), line.split("|"))) for line in out]


DASK_JOBS = "dask-gateway"  # the job name dask-gateway's SlurmBackend gives schedulers and workers


def spawn(dep, user: str) -> Kernel:
    figures[f"spawn to ready on SLURM, {user} (s)"] = round(dep.hub.spawn(user), 2)
    return Kernel(dep.url, user, dep.hub.token(user))


@pytest.fixture(scope="module")
def alice(dep):
    kernel = spawn(dep, "alice")
    yield kernel
    kernel.close()


def test_the_server_is_a_job_of_the_users_account_in_the_sandbox(dep, alice, catalog):
    jobs = jobs_of(dep.slurm, "bs-alice")
    assert [j["state"] for j in jobs] == ["RUNNING"]
    bob_file = path_of(catalog, "bt-1002")
    res = outcome(alice, f"""
import os, analysis_lib as al
res = {{"uid": os.getuid(), "job": os.environ.get("SLURM_JOB_ID"), "listdir": sorted(os.listdir({str(catalog.data_root)!r}))}}
res["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
res["homes"] = sorted(os.listdir({dep.runtime['paths']['homes']!r}))
try:
    open({bob_file!r}, "rb").read(8); res["bob"] = "READ"
except Exception as e:
    res["bob"] = type(e).__name__
ds = al.open("bt-1001/raw/scan_0001.nxs")
res["own"] = ds[next(iter(ds.data_vars))].shape[0]
""")
    assert res["uid"] == pwd.getpwnam("bs-alice").pw_uid
    assert res["job"] == jobs[0]["id"]
    assert res["listdir"] == ["bt-1001"] and res["bob"] == "FileNotFoundError" and res["own"] > 0
    assert res["cap_eff"] == "0000000000000000" and res["homes"] == ["alice"]
    listening = listening_of(dep, "bs-alice")
    # the server on the node's address, never 0.0.0.0; on the node's loopback only ipykernel's pipe
    # for output from forked subprocesses (messages without its random 16-byte key are dropped)
    assert NODE_IP in listening and set(listening) <= {NODE_IP, "127.0.0.1"}, listening


def listening_of(dep, account: str) -> list[str]:
    """The addresses ``account``'s processes listen on (TCP) on the node, which is a network of its own."""
    out = subprocess.run(["ip", "netns", "exec", dep.slurm.netns, "ss", "-Hltnp"], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        try:
            if any(psutil.Process(p).username() == account for p in pids):
                found.append(fields[3].rsplit(":", 1)[0])
        except psutil.NoSuchProcess:
            continue
    return found


# -- Dask clusters as SLURM jobs of the user's account -------------------------------------------
def test_a_gateway_cluster_is_slurm_jobs_of_the_user_in_the_sandbox(dep, alice, catalog):
    import h5py
    import numpy as np

    with h5py.File(path_of(catalog, "bt-1001")) as f:
        expected = f["/entry/data/data"][()].mean(axis=0)
    res = outcome(alice, f"""
import os, time, analysis_lib as al
t0 = time.perf_counter(); dask_client = al.cluster(workers=1); dask_client.wait_for_workers(1, timeout=180)
res = {{"start": time.perf_counter() - t0}}
def peek(path):
    try:
        open(path, "rb").read(8); return "READ"
    except Exception as e:
        return type(e).__name__
def job():
    return os.environ.get("SLURM_JOB_ID")
def caps():
    return [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
res["bob"] = dask_client.submit(peek, {path_of(catalog, 'bt-1002')!r}, pure=False).result()
res["own"] = dask_client.submit(peek, {path_of(catalog, 'bt-1001')!r}, pure=False).result()
res["listdir"] = dask_client.submit(lambda: sorted(os.listdir({str(catalog.data_root)!r})), pure=False).result()
res["uids"] = sorted(set(dask_client.run(os.getuid).values()))
res["ready"] = sorted(set(dask_client.run(lambda: ("analysis_lib.ops" in __import__("sys").modules, os.environ.get("MALLOC_TRIM_THRESHOLD_"))).values()))
res["caps"] = sorted(set(dask_client.run(caps).values()))
res["worker_jobs"] = sorted(set(dask_client.run(job).values()))
res["scheduler_job"] = dask_client.run_on_scheduler(job)
res["scheduler_uid"] = dask_client.run_on_scheduler(os.getuid)
res["sum"] = float(al.ops.mean_frame(al.open("bt-1001/raw/scan_0001.nxs")).compute().values.sum())
""")
    import pwd

    figures["gateway cluster with 1 worker on SLURM (s)"] = round(res["start"], 2)
    uid = pwd.getpwnam("bs-alice").pw_uid
    jobs = jobs_of(dep.slurm, "bs-alice", DASK_JOBS)
    try:
        assert sorted(j["id"] for j in jobs) == sorted([res["scheduler_job"], *res["worker_jobs"]]), (jobs, res)
        assert all(j["state"] == "RUNNING" for j in jobs) and len(res["worker_jobs"]) == 1
        assert res["uids"] == [uid] and res["scheduler_uid"] == uid and res["caps"] == ["0000000000000000"]
        assert res["ready"] == [[True, None]], res  # analysis_lib.contract.WORKER_ENV reached the worker job
        assert res["bob"] == "FileNotFoundError" and res["own"] == "READ" and res["listdir"] == ["bt-1001"]
        np.testing.assert_allclose(res["sum"], expected.sum(), rtol=1e-9)
        listening = listening_of(dep, "bs-alice")  # the server, the scheduler and the worker (and the kernel's pipe)
        assert listening.count(NODE_IP) >= 3 and set(listening) <= {NODE_IP, "127.0.0.1"}, listening
    finally:
        t0 = time.perf_counter()
        ok(alice, "dask_client.cluster.shutdown(); dask_client.close()")
        wait_until(lambda: not jobs_of(dep.slurm, "bs-alice", DASK_JOBS), 60, "alice's Dask jobs gone")
        figures["gateway cluster shutdown to no job left on SLURM (s)"] = round(time.perf_counter() - t0, 2)
    left = jobs_of(dep.slurm, "bs-alice")
    assert len(left) == 1 and left[0]["name"].startswith("beamside-server-"), left  # the server stays
    assert not os.listdir(Path(dep.runtime["paths"]["gateway_dir"]) / "clusters")  # its folder removed


def test_more_workers_or_cores_than_allowed_are_refused_on_slurm(dep, alice):
    res = outcome(alice, """
import warnings, analysis_lib as al
res = {}
try:
    al.cluster(workers=1, cores=64); res["cores"] = "STARTED"
except Exception as e:
    res["cores"] = str(e)
from dask_gateway import Gateway
with Gateway() as gw:
    res["clusters"] = [c.name for c in gw.list_clusters()]
    mine = [gw.new_cluster(), gw.new_cluster()]
    try:
        gw.new_cluster(); res["third"] = "STARTED"
    except Exception as e:
        res["third"] = str(e)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mine[0].scale(64)
    res["scale"] = [str(w.message) for w in seen]
    for c in mine:
        c.shutdown()
""")
    try:
        assert "worker_cores" in res["cores"] and "4" in res["cores"], res
        assert res["clusters"] == []  # the refused one never started
        assert "limit is 2" in res["third"], res
        assert any("64" in w and "4" in w for w in res["scale"]), res  # scaled to the limit, and told
    finally:
        wait_until(lambda: not jobs_of(dep.slurm, "bs-alice", DASK_JOBS), 60, "alice's Dask jobs gone")


def test_a_detached_slurm_cluster_outlives_the_server_not_the_users_access(dep, catalog):
    """A detached cluster's jobs outlive the user's server, until the user loses the beamtime its
    jobs mount (the gateway's reconcile loop cancels them). (Clusters tied to the session end with
    the server through UserServer, the same code on every platform.)"""
    # asking for memory explicitly (the deployment's default is 1G, tests.slurm.beamside_settings)
    figures["spawn to ready on SLURM, carol with 1G (s)"] = round(dep.hub.spawn("carol", memory="1G"), 2)
    kernel = Kernel(dep.url, "carol", dep.hub.token("carol"))
    try:
        name = outcome(kernel, """
from dask_gateway import Gateway
gw = Gateway(); opts = gw.cluster_options(); opts.detached = True
res = gw.new_cluster(opts, shutdown_on_close=False).name
""")
    finally:
        kernel.close()
    dep.hub.stop("carol")
    time.sleep(2 * 2)  # two of the gateway's checks (singleuser.access_check_every)
    assert [j["state"] for j in jobs_of(dep.slurm, "bs-carol", DASK_JOBS)] == ["RUNNING"]
    path = Path(dep.runtime["paths"]["catalog"])
    text = path.read_text()
    assert "{user: carol, role: industrial-mediator}" in text
    try:  # the user office ends carol's membership of bt-2001
        path.with_suffix(".new").write_text(text.replace("{user: carol,", "{user: nobody-else,"))
        os.replace(path.with_suffix(".new"), path)
        wait_until(lambda: not jobs_of(dep.slurm, "bs-carol", DASK_JOBS), 60, "carol's detached cluster cancelled")
    finally:
        path.with_suffix(".new").write_text(text)
        os.replace(path.with_suffix(".new"), path)
    assert f"stopping cluster {name} of carol: access to bt-2001 ended" in dep.hub_log()


def test_asking_for_more_than_the_limits_is_refused_before_submitting(dep):
    dep.hub.api("POST", "/users/bob")
    r = dep.hub.api("POST", "/users/bob/server", json={"cores": 64})
    assert r.status_code in (400, 500), r.text
    deadline = time.monotonic() + 30
    while dep.hub.api("GET", "/users/bob").json().get("pending") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "64 cores asked for; this hub allows 1 to 4 per server" in dep.hub_log()
    r = dep.hub.api("POST", "/users/bob/server", json={"partition": "gpu"})  # not one the admin offers
    assert r.status_code in (400, 500), r.text
    deadline = time.monotonic() + 30
    while dep.hub.api("GET", "/users/bob").json().get("pending") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "partition 'gpu' is not one this hub offers (the default, long)" in dep.hub_log()
    assert not jobs_of(dep.slurm, "bs-bob")


def progress_messages(dep, user: str, want: str, timeout: float = 60) -> list[str]:
    """The spawn page's progress messages (the hub's event stream) until one contains ``want``."""
    import requests

    seen = []
    deadline = time.monotonic() + timeout
    with requests.get(f"{dep.url}/hub/api/users/{user}/server/progress", headers=dep.hub.headers, stream=True,
                      timeout=timeout) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                seen.append(json.loads(line[5:]).get("message", ""))
                if want in seen[-1]:
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"no progress message with {want!r} in {timeout} s; saw {seen}")


def wait_until(check, timeout: float = 60, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or check} not true after {timeout} s")
        time.sleep(0.3)
    return value


def server_of(dep, user: str) -> dict | None:
    return dep.hub.api("GET", f"/users/{user}").json()["servers"].get("")


@pytest.fixture
def partition_down(dep):
    dep.slurm.run("scontrol", "update", "PartitionName=debug", "State=DOWN")
    yield
    dep.slurm.run("scontrol", "update", "PartitionName=debug", "State=UP")


def test_a_queued_server_shows_why_and_cancelling_the_spawn_cancels_the_job(dep, partition_down):
    dep.hub.api("POST", "/users/carol")
    assert dep.hub.api("POST", "/users/carol/server").status_code == 202  # still queued after the hub's 10 s
    job = wait_until(lambda: jobs_of(dep.slurm, "bs-carol"), what="carol's job")[0]
    assert job["state"] == "PENDING"
    seen = progress_messages(dep, "carol", "the partition is down")
    assert any(f"Job {job['id']} waiting in the queue of the default partition" in m for m in seen), seen
    dep.hub.stop("carol")
    wait_until(lambda: not jobs_of(dep.slurm, "bs-carol"), 30, "carol's job cancelled")


def test_a_job_that_ends_before_its_server_answers_ends_the_spawn_with_why(dep, partition_down):
    dep.hub.api("POST", "/users/carol")
    dep.hub.api("POST", "/users/carol/server")
    job = wait_until(lambda: jobs_of(dep.slurm, "bs-carol"), what="carol's job")[0]
    dep.slurm.run("scancel", job["id"])  # e.g. an admin's scancel, or the job's node gone
    wait_until(lambda: not dep.hub.api("GET", "/users/carol").json()["pending"] and not server_of(dep, "carol"),
               30, "carol's spawn ended")
    assert f"The server job {job['id']} ended before the server started: it was cancelled" in dep.hub_log()


def test_a_node_drained_mid_spawn_keeps_the_server_queued_until_it_resumes(dep):
    slurm = dep.slurm
    slurm.run("scontrol", "update", f"NodeName={slurm.node}", "State=DRAIN", "Reason=beamside-test")
    try:
        dep.hub.api("POST", "/users/carol")
        dep.hub.api("POST", "/users/carol/server")
        job = wait_until(lambda: jobs_of(slurm, "bs-carol"), what="carol's job")[0]
        seen = progress_messages(dep, "carol", "waiting in the queue")
        assert job["state"] == "PENDING" and server_of(dep, "carol") and not server_of(dep, "carol")["ready"], seen
    finally:
        slurm.run("scontrol", "update", f"NodeName={slurm.node}", "State=RESUME")
    wait_until(lambda: (server_of(dep, "carol") or {}).get("ready"), 120, "carol's server ready after the resume")
    dep.hub.stop("carol")


def test_squeue_failing_for_a_while_is_unknown_not_gone(dep, alice):
    job = jobs_of(dep.slurm, "bs-alice")[0]["id"]
    ctld = dep.slurm.procs["slurmctld"]
    before = dep.hub_log().count("state unknown")
    ctld.send_signal(signal.SIGSTOP)  # the controller stops answering: squeue times out
    try:
        wait_until(lambda: dep.hub_log().count("state unknown") > before, 90, "a poll that found SLURM silent")
    finally:
        ctld.send_signal(signal.SIGCONT)
    assert server_of(dep, "alice") and jobs_of(dep.slurm, "bs-alice")[0]["id"] == job
    assert ok(alice, "print(6 * 7)").strip() == "42"


def test_the_hub_restarted_reattaches_to_running_server_jobs(dep, alice):
    job = jobs_of(dep.slurm, "bs-alice")[0]["id"]
    old = dep.hub_pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: dep.hub_pid != old and "JupyterHub exited" in dep.output(), 60, "the supervisor's restart")
    wait_until(lambda: dep.hub.api("GET", "/users/alice").ok, 120, "the restarted hub")
    assert server_of(dep, "alice")["ready"] and jobs_of(dep.slurm, "bs-alice")[0]["id"] == job
    assert ok(alice, "print(6 * 7)").strip() == "42"


def test_a_running_job_cancelled_outside_the_hub_stops_the_server(dep):
    kernel = spawn(dep, "bob")
    kernel.close()
    job = jobs_of(dep.slurm, "bs-bob")[0]["id"]
    dep.slurm.run("scancel", job)
    wait_until(lambda: not server_of(dep, "bob"), 60, "bob's server seen stopped")
    assert f"the server job {job} of bob ended: it was cancelled" in dep.hub_log()


@pytest.mark.slow
def test_walltime_expiry_is_told_at_the_next_start(dep):
    kernel = spawn(dep, "bob")
    kernel.close()
    job = jobs_of(dep.slurm, "bs-bob")[0]["id"]
    dep.slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=1")  # one minute: SLURM's smallest
    wait_until(lambda: not server_of(dep, "bob"), 150, "bob's server ended by its time limit")
    assert f"the server job {job} of bob ended: its time limit was reached" in dep.hub_log()
    dep.slurm.run("scontrol", "update", "PartitionName=debug", "State=DOWN")  # the next start waits: time to read it
    try:
        dep.hub.api("POST", "/users/bob/server")
        seen = progress_messages(dep, "bob", "waiting in the queue")
    finally:
        dep.slurm.run("scontrol", "update", "PartitionName=debug", "State=UP")
    assert "Your last server ended: its time limit was reached." in seen, seen
    wait_until(lambda: (server_of(dep, "bob") or {}).get("ready"), 120, "bob's next server")
    dep.hub.stop("bob")



def test_the_spawn_form_offers_the_admins_partitions(dep):
    """Late in the module: JupyterHub remembers bob's options (partition long) for his next start."""
    # the spawn form offers what the admin set, and a partition picked there is where the job runs
    browser = login(dep, "bob", dep.logins["bob"])
    page = browser.get(f"{dep.url}/hub/spawn", timeout=30).content.decode()
    assert 'name="partition"' in page and ">long</option>" in page and "Cores (1–4)" in page, page[-2000:]
    r = browser.post(f"{dep.url}/hub/spawn", timeout=60, allow_redirects=False,
                     data={"partition": "long", "cores": "1", "memory": "1G", "walltime": "0:30:00",
                           "_xsrf": browser.cookies.get("_xsrf")})
    assert r.status_code in (302, 303), r.text[-500:]
    try:
        wait_until(lambda: (server_of(dep, "bob") or {}).get("ready"), 120, "bob's server from the spawn form")
        assert [(j["partition"], j["state"]) for j in jobs_of(dep.slurm, "bs-bob")] == [("long", "RUNNING")]
    finally:
        dep.hub.stop("bob")
        wait_until(lambda: not jobs_of(dep.slurm, "bs-bob"), 30, "bob's job gone")


# -- the idle culler, unchanged on this platform ----------------------------------------------------
CULL_TIMEOUT, CULL_EVERY = 20, 5


def test_the_idle_culler_ends_an_idle_server_job(slurm):
    """A deployment of its own with the culler at 20 s (the module's keeps it off, its servers idle
    between tests): bob's server job, idle once spawned, is cancelled by the culler, job and all."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-slurm-cull-"))
    os.chmod(folder, 0o755)
    deployment = Deployment(folder, {**beamside_settings(slurm), "dask": {"enabled": False},
                                     "culler": {"enabled": True, "timeout": CULL_TIMEOUT, "every": CULL_EVERY}})
    deployment.start()
    try:
        deployment.hub.spawn("bob")
        job = jobs_of(slurm, "bs-bob")
        assert [j["state"] for j in job] == ["RUNNING"], job
        t0 = time.perf_counter()
        wait_until(lambda: not deployment.hub.api("GET", "/users/bob").json()["servers"], 120,
                   f"the culler ending bob's idle server (timeout {CULL_TIMEOUT} s, every {CULL_EVERY} s)")
        figures["idle server job culled after (s, from ready)"] = round(time.perf_counter() - t0, 1)
        wait_until(lambda: not jobs_of(slurm, "bs-bob"), 30, "bob's culled server job gone from the queue")
        assert "Culling server bob" in deployment.hub_log()
    finally:
        assert deployment.stop() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(folder / "state" / "logs" / "jupyterhub.log", ARTIFACTS / "jupyterhub-slurm-culler.log")
        shutil.rmtree(folder, ignore_errors=True)
