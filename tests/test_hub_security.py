"""Attacks on a real deployment: each test does what a hostile user (or a careless default) would.

A review found places where root acts on paths users control and defaults that failed open; every
test here performs one of those attacks against real processes (`beamside up`, JupyterHub, the
gateway, bubblewrap sandboxes, the users' own Unix accounts) and fails on the code before the fix.

Two deployments: the demo one (alice, bob, carol on generated beamtimes) and a "facility" one
with a catalog this module owns, so that it can revoke access while servers run.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from beamside_hub import auth

from .deploy import Deployment, wait_for
from .hubclient import Kernel
from .test_hub import ok, outcome

REPO = Path(__file__).resolve().parent.parent


def _folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    os.chmod(folder, 0o755)  # user accounts pass through to their homes
    return folder


@pytest.fixture(scope="module")
def demo():
    dep = Deployment(_folder("beamside-sec-"), {"culler": {"enabled": False}}).start()
    yield dep
    dep.stop()


@pytest.fixture
def alice(demo):
    """A fresh kernel per test: an idle websocket dies after the server's ping timeout (90 s), and
    some tests here take longer than that between two uses of a kernel."""
    demo.hub.spawn("alice")
    kernel = Kernel(demo.url, "alice", demo.hub.token("alice"))
    yield kernel
    kernel.close()


def _root_only_folder() -> Path:
    target = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-victim-"))
    os.chmod(target, 0o700)
    (target / "precious").write_text("root's\n")
    return target


# -- 1. the gateway's logs folder ------------------------------------------------------------------
def test_root_creates_no_worker_log_through_a_users_symlink(demo, alice):
    """A user swaps the cluster's logs folder for a symlink; the next worker's log must not land there."""
    target = _root_only_folder()
    res = outcome(alice, f"""
from dask_gateway import Gateway
gw = Gateway()
cluster = gw.new_cluster()
client = cluster.get_client()
def swap(target):
    import os
    here = os.getcwd()
    folder = os.path.dirname(here) if os.path.basename(here) == "work" else here
    logs = os.path.join(folder, "logs")
    try:
        os.rename(logs, logs + ".mine")
        os.symlink(target, logs)
        return "SWAPPED"
    except OSError as e:
        return type(e).__name__
res = {{"swap": client.run_on_scheduler(swap, {str(target)!r})}}
cluster.scale(1)
client.wait_for_workers(1, timeout=180)
res["worker"] = client.submit(lambda: 1 + 1).result()
cluster.shutdown()
""")
    assert res["worker"] == 2  # the cluster still works
    assert res["swap"] != "SWAPPED"
    assert sorted(os.listdir(target)) == ["precious"]


def test_cluster_folder_is_roots_and_only_work_is_the_users(demo, alice):
    import pwd

    res = outcome(alice, """
from dask_gateway import Gateway
import os
gw = Gateway()
cluster = gw.new_cluster()
client = cluster.get_client()
res = {"cwd": client.run_on_scheduler(os.getcwd)}
""")
    try:
        work = Path(res["cwd"])
        folder = work.parent
        uid = pwd.getpwnam("bs-alice").pw_uid
        assert work.name == "work" and work.stat().st_uid == uid
        for path in (folder, folder / "logs", folder / ".certs", *(folder / "logs").iterdir(), *(folder / ".certs").iterdir()):
            st = path.lstat()
            assert st.st_uid == 0 and not st.st_mode & 0o022, path  # root's, writable by root alone
    finally:
        ok(alice, "cluster.shutdown(); client.close()")


# -- 2. the home chown race ------------------------------------------------------------------------
_SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
home, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.chdir(home)
os.makedirs("a", exist_ok=True)
for i in range(50):
    open(f"a/f{i}", "w").close()
if not os.path.islink("b"):
    os.symlink(target, "b")
end = time.time() + seconds
while time.time() < end:
    libc.renameat2(AT_FDCWD, b"a", AT_FDCWD, b"b", RENAME_EXCHANGE)
"""


def test_restarts_never_chown_files_outside_the_home(demo):
    """A surviving user process swaps a folder in the home with a symlink to a root folder in a loop
    while the server restarts: root must not hand any file of that folder to the user."""
    import pwd

    demo.hub.spawn("bob")
    account = pwd.getpwnam("bs-bob")
    home = Path(demo.runtime["paths"]["homes"]) / "bob"
    target = _root_only_folder()
    for i in range(50):
        (target / f"f{i}").write_text("root's\n")
    os.chmod(target, 0o755)  # the user may look, never own

    def as_bob():
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    swapper = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(home), str(target), "120"], preexec_fn=as_bob,
                               stdin=subprocess.DEVNULL)
    try:
        for _ in range(8):
            demo.hub.stop("bob")
            demo.hub.spawn("bob")
    finally:
        swapper.kill()
        swapper.wait()
    owners = {p.name: p.lstat().st_uid for p in [target, *target.iterdir()]}
    assert set(owners.values()) == {0}, {k: v for k, v in owners.items() if v}
    demo.hub.stop("bob")


# -- 5. standard streams ---------------------------------------------------------------------------
_FDS = """
def fds(pid="self"):
    import os, stat
    out = {}
    for n in (0, 1, 2):
        try:
            st = os.stat(f"/proc/{pid}/fd/{n}")
            out[n] = [st.st_dev, st.st_ino, st.st_rdev, stat.S_ISCHR(st.st_mode)]
        except OSError as e:
            out[n] = type(e).__name__
    return out
"""


def test_user_processes_hold_none_of_roots_streams(demo, alice):
    res = outcome(alice, _FDS + """
import os
from dask_gateway import Gateway
res = {"kernel": fds(), "server": fds(os.getppid())}
gw = Gateway()
cluster = gw.new_cluster()
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=180)
res["worker"] = list(client.run(fds).values())[0]
res["scheduler"] = client.run_on_scheduler(fds)
cluster.shutdown()
""")
    roots = set()
    for path in (demo.folder / "state" / "logs" / "jupyterhub.log", demo.folder / "beamside-up.log"):
        st = os.stat(path)
        roots.add((st.st_dev, st.st_ino))
    null = os.stat("/dev/null").st_rdev
    for proc, fds in res.items():
        if proc != "kernel":  # a kernel's stdin is its server's pipe
            assert fds["0"][3] and fds["0"][2] == null, (proc, "stdin is not /dev/null")
        for n in ("0", "1", "2"):
            assert (fds[n][0], fds[n][1]) not in roots, (proc, n, "holds root's own log")
            assert not fds[n][3] or fds[n][2] == null, (proc, n, "holds a terminal")
    # the server's output went to its user's own log, made by root, readable by root alone
    log = demo.folder / "state" / "logs" / "users" / "bs-alice.log"
    assert log.exists() and log.stat().st_uid == 0 and stat.S_IMODE(log.stat().st_mode) == 0o600


# -- 6. other users' dashboards ------------------------------------------------------------------
def test_another_users_dashboards_and_ports_are_unreachable(demo, alice):
    """Bob's kernel tries every address alice's Dask processes listen on (dashboard, scheduler, the
    scheduler's gateway API) and her server's port; none answers, while her own kernel reaches them."""
    demo.hub.spawn("carol")
    carol = Kernel(demo.url, "carol", demo.hub.token("carol"))
    try:
        targets = outcome(alice, """
from dask_gateway import Gateway
import os
gw = Gateway()
cluster = gw.new_cluster()
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=180)
def listening(dask_scheduler):
    import psutil
    return sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("tcp") if c.status == "LISTEN"})
res = {"scheduler": client.run_on_scheduler(listening), "server": os.environ["JUPYTERHUB_SERVICE_URL"]}
""")
        ports = targets["scheduler"] + [targets["server"].split("//", 1)[1].split("/", 1)[0]]
        assert ports and not any(t.startswith(("0.0.0.0", "[::]")) for t in targets["scheduler"]), targets
        probe = """
import socket
def reach(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close(); return "OPEN"
    except OSError as e:
        return type(e).__name__
"""
        own = outcome(alice, probe + f"res = {{t: reach(t) for t in {ports!r}}}")
        other = outcome(carol, probe + f"res = {{t: reach(t) for t in {ports!r}}}")
        assert set(own.values()) == {"OPEN"}, own
        assert "OPEN" not in other.values(), (targets, other)
    finally:
        carol.close()
        ok(alice, "cluster.shutdown(); client.close()")
        demo.hub.stop("carol")


# -- 8. the audit trail ------------------------------------------------------------------------------
def _audit_entries(demo) -> list[dict]:
    return [json.loads(line) for line in Path(demo.runtime["paths"]["audit_log"]).read_text().splitlines()]


def test_reads_that_skip_the_library_are_audited_by_the_kernel(demo, alice):
    from analysis_lib.catalog import Catalog

    bt = next(b for b in Catalog.load(demo.runtime["paths"]["catalog"]).beamtimes if b.id == "bt-1001")
    files = sorted(str(p) for p in (bt.real_path / "raw").glob("*.nxs"))[-2:]
    ok(alice, f"""
import h5py
open({files[0]!r}, "rb").read(8)          # plain Python, no analysis_lib
h5py.File({files[1]!r}, "r").close()      # h5py straight
""")

    def seen():
        hits = {e["path"]: e for e in _audit_entries(demo) if e.get("via") == "open" and e.get("user") == "alice"}
        return all(f in hits for f in files) and hits

    hits = wait_for(seen, 20, "kernel-recorded opens of alice's files")
    assert {hits[f]["beamtime"] for f in files} == {"bt-1001"}


def test_audit_flood_is_rate_limited_and_counted(demo, alice):
    res = outcome(alice, """
import json, os, socket, time
s = socket.socket(socket.AF_UNIX); s.connect(os.environ["BEAMSIDE_AUDIT_SOCKET"])
t0 = time.time()
for i in range(20000):
    s.sendall(json.dumps({"path": f"/made/up/{i}"}).encode() + b"\\n")
s.close()
res = {"seconds": time.time() - t0}
""")
    time.sleep(2.5)  # the dropped-entries summary is written every second
    entries = _audit_entries(demo)
    written = [e for e in entries if e.get("user") == "alice" and str(e.get("path", "")).startswith("/made/up/")]
    dropped = sum(e["dropped"] for e in entries if e.get("user") == "alice" and "dropped" in e)
    assert len(written) < 20000 and len(written) <= 2000 + 50 * (res["seconds"] + 5), len(written)
    assert len(written) + dropped == 20000  # what was refused is counted, not lost silently


def test_audit_log_rotates_at_its_size_cap(tmp_path):
    from beamside_hub.audit import AuditLog

    catalog = _facility_catalog(tmp_path / "f")
    log = AuditLog(str(tmp_path / "audit.log"), str(catalog), max_bytes=4000, keep=2)
    for i in range(300):
        log.write(54321, f"/data/p1/file{i}")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.log"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all((tmp_path / n).stat().st_size < 4000 + 400 for n in names)
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o640


# -- 10. the sandbox's /etc ------------------------------------------------------------------------
def test_sandbox_etc_names_no_other_user_and_holds_no_secrets(demo, alice):
    res = outcome(alice, """
import os
res = {"passwd": open("/etc/passwd").read(), "group": open("/etc/group").read(),
       "visible": [p for p in ("/etc/shadow", "/etc/ssh", "/etc/sudoers", "/etc/subuid") if os.path.exists(p)],
       "machine_id": open("/etc/machine-id").read(), "hosts": open("/etc/hosts").read(),
       "user": __import__("getpass").getuser()}
""")
    assert res["user"] == "bs-alice"
    assert "bs-bob" not in res["passwd"] + res["group"] and "bs-carol" not in res["passwd"]
    assert res["visible"] == []
    # the sandbox's own machine id (the desktop's D-Bus needs one), never the host's, which identifies it
    assert len(res["machine_id"].strip()) == 32 and res["machine_id"] != Path("/etc/machine-id").read_text()
    assert "\tbeamside\n" in res["hosts"]  # its own host name resolves (TigerVNC's vncserver asks)


def _up_fails(folder: Path, settings: dict, env: dict | None = None) -> str:
    dep = Deployment(folder, settings)
    run = subprocess.run([sys.executable, "-m", "analysis_lib.cli", "up", "--config", str(dep.config)],
                         capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert run.returncode != 0, run.stdout
    assert "JupyterHub is up" not in run.stdout
    return run.stderr


def _facility_catalog(folder: Path) -> Path:
    data = folder / "data"
    for bt in ("p1", "p12"):
        (data / bt / "raw").mkdir(parents=True)
    os.chmod(folder, 0o755)
    for p in (data, data / "p1", data / "p12", data / "p1" / "raw", data / "p12" / "raw"):
        os.chmod(p, 0o755)
    catalog = folder / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""\
        data_root: {data}
        beamtimes:
          - {{id: bt-1, title: shared, path: p1, members: [{{user: alice, role: pi}}, {{user: bob, role: member}}]}}
          - {{id: bt-2, title: bob's, path: p12, members: [{{user: bob, role: pi}}]}}
        """))
    return catalog


def test_settings_inside_a_sandbox_visible_path_are_refused():
    venv_config = Path(sys.prefix) / f"beamside-test-{os.getpid()}.yaml"
    dep = Deployment(_folder("beamside-vis-"), {})
    venv_config.write_text(dep.config.read_text())
    try:
        run = subprocess.run([sys.executable, "-m", "analysis_lib.cli", "up", "--config", str(venv_config)],
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        venv_config.unlink()
    assert run.returncode != 0 and "every user's sandbox sees" in run.stderr, run.stderr


# -- 3. isolation fails closed ---------------------------------------------------------------------
def test_no_isolation_possible_means_no_start(tmp_path):
    catalog = _facility_catalog(tmp_path / "facility")
    no_bwrap = {**os.environ, "PATH": "/nonexistent"}  # bubblewrap cannot be found
    for settings in ({"data": {"catalog": str(catalog)}}, {}):
        err = _up_fails(tmp_path / f"d{len(settings)}", settings, env=no_bwrap)
        assert "cannot isolate users here" in err and "bubblewrap" in err, err


def test_unisolated_demo_is_refused_with_a_catalog_and_as_root(tmp_path):
    catalog = _facility_catalog(tmp_path / "facility")
    err = _up_fails(tmp_path / "a", {"data": {"catalog": str(catalog)}, "singleuser": {"isolation": "none"}})
    assert "only for a demo" in err, err
    err = _up_fails(tmp_path / "b", {"singleuser": {"isolation": "none"}})
    assert "as root" in err, err


# -- 4 and 7: a facility deployment: no demo users, revocation reaches running sessions ---------------
@pytest.fixture(scope="module")
def facility():
    folder = _folder("beamside-fac-")
    catalog = _facility_catalog(folder)
    dep = Deployment(folder, {"data": {"catalog": str(catalog)}, "culler": {"enabled": False},
                              "singleuser": {"access_check_every": 2}})
    dep.catalog = catalog
    dep.start()
    yield dep
    dep.stop()


def test_a_facility_catalog_gets_no_demo_users_and_no_admin(facility):
    assert facility.logins == {}
    assert "password:" not in facility.output()
    assert not Path(facility.runtime["paths"]["passwords_file"]).exists()
    users = facility.hub.api("GET", "/users").json()
    assert [u["name"] for u in users if u["admin"]] == []
    assert not {"alice", "bob", "carol", "admin"} & {u["name"] for u in users}


def test_revoked_access_reaches_running_servers_and_clusters(facility):
    facility.hub.spawn("bob")
    facility.hub.spawn("alice")
    bob = Kernel(facility.url, "bob", facility.hub.token("bob"))
    alice = Kernel(facility.url, "alice", facility.hub.token("alice"))
    data = json.loads(json.dumps(str(facility.catalog.parent / "data")))
    try:
        assert ok(bob, f"import os; print(sorted(os.listdir({data!r})))").strip() == "['p1', 'p12']"
        cluster = ok(bob, """
from dask_gateway import Gateway
gw = Gateway()
opts = gw.cluster_options(); opts.detached = True
c = gw.new_cluster(opts, shutdown_on_close=False)
print(c.name)
""").strip()
        # the user office ends bob's membership of bt-2 and renames bt-1
        text = facility.catalog.read_text()
        text = text.replace("- {id: bt-2, title: bob's, path: p12, members: [{user: bob, role: pi}]}",
                            "- {id: bt-2, title: bob's, path: p12, members: [{user: carol, role: pi}]}")
        text = text.replace("title: shared", "title: renamed")
        tmp = facility.catalog.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, facility.catalog)

        def bob_stopped():
            return not facility.hub.api("GET", "/users/bob").json()["servers"]

        wait_for(bob_stopped, 60, "bob's server stopping")
        # alice keeps her server, and her running sandbox reads the new catalog
        wait_for(lambda: "renamed" in ok(alice, "print(open(__import__('os').environ['BEAMSIDE_CATALOG']).read())"),
              30, "the new catalog inside alice's sandbox")
        token = facility.hub.token("bob", scopes=["access:services!service=dask-gateway"])
        from dask_gateway import Gateway, JupyterHubAuth

        proxy = f"gateway://127.0.0.1:{facility.runtime['settings']['dask']['scheduler_port']}"
        with Gateway(f"{facility.url}/services/dask-gateway", proxy_address=proxy, auth=JupyterHubAuth(token)) as gw:
            wait_for(lambda: cluster not in {c.name for c in gw.list_clusters()}, 60, "bob's detached cluster stopping")
        facility.hub.spawn("bob")
        again = Kernel(facility.url, "bob", facility.hub.token("bob"))
        try:
            assert ok(again, f"import os; print(sorted(os.listdir({data!r})))").strip() == "['p1']"
        finally:
            again.close()
    finally:
        bob.close()
        alice.close()


def test_demo_logins_are_made_once(tmp_path, monkeypatch):
    """In-process: the first prepare makes and returns passwords, a second shows none, and a deleted
    demo user is not re-created."""
    from beamside_hub import embedded

    passwords = tmp_path / "passwords.yaml"
    first = embedded._demo_logins(passwords)
    assert set(first) == set(embedded.DEMO_USERS)
    assert all(auth.check_password(first[u], auth.read_passwords(passwords)[u]) for u in first)
    entries = auth.read_passwords(passwords)
    del entries["admin"]
    passwords.write_text(__import__("yaml").safe_dump(entries))
    assert embedded._demo_logins(passwords) == {}
    assert "admin" not in auth.read_passwords(passwords)


def test_facility_deployment_needs_named_admins(tmp_path):
    from beamside_hub.configure import configure_hub
    from beamside_hub.runtime import Addresses, Paths, Runtime
    from beamside_hub.settings import Settings
    from traitlets.config import Config

    t = str(tmp_path)
    runtime = Runtime(settings=Settings.from_yaml(None), demo=False, isolate=True,
                      paths=Paths(state=t, catalog=t, passwords_file=t, venv=t, homes=t, sandboxes=t, audit_socket=t,
                                  audit_log=t, gateway_config=t, gateway_dir=t),
                      addresses=Addresses(*(f"http://127.0.0.1:{port}" for port in range(9000, 9006))),
                      secrets={k: "x" for k in ("proxy_token", "gateway_token", "supervisor_token", "crypt_key")})
    c = Config()
    configure_hub(c, runtime, sys.executable)
    assert c.Authenticator.admin_users == set()
    c = Config()
    configure_hub(c, runtime.replace(demo=True), sys.executable)
    assert c.Authenticator.admin_users == {"admin"}


@pytest.mark.parametrize("by_handle", [True, False], ids=["folder-handles", "descriptors"])
def test_kernel_watch_names_opens_through_bind_mounts_and_ignores_the_rest(tmp_path, by_handle):
    """The kernel's watch (both of its modes) names a file opened through a sandbox's bind mount by
    its full host path, and reports nothing for opens outside the data root (software, homes)."""
    from beamside_hub import audit
    from beamside_hub.sandbox import find_bwrap

    data, elsewhere = tmp_path / "data", tmp_path / "software"
    (data / "bt-1" / "raw").mkdir(parents=True)
    elsewhere.mkdir()
    wanted, other = data / "bt-1" / "raw" / "scan_7.nxs", elsewhere / "module.py"
    wanted.write_bytes(b"frames")
    other.write_bytes(b"code")
    watch = audit.OpenWatch(str(data))
    if not by_handle:  # the older mode, as on a kernel or filesystem without folder handles
        os.close(watch.fd)
        watch.by_handle, watch.fd = False, watch._watch(0)
    assert watch.by_handle is by_handle
    try:
        for _ in range(3):  # the second and third opens of the folder come from the folder cache
            subprocess.run([find_bwrap(), "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
                            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
                            "--ro-bind", str(data / "bt-1"), "/beamtime", "--ro-bind", str(elsewhere), "/sw",
                            "cat", "/beamtime/raw/scan_7.nxs", "/sw/module.py"], check=True, capture_output=True)
        seen = wait_for(lambda: [p for _, p in watch.read()] or None, 10, "the kernel's open events")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            seen += [p for _, p in watch.read()]
            time.sleep(0.1)
    finally:
        os.close(watch.fd)
        os.close(watch.root_fd)
    assert seen.count(str(wanted)) == 3, seen
    assert set(seen) == {str(wanted)}, seen
