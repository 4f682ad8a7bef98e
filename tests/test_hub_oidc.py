"""Login through a real OpenID Connect provider, end to end, without a browser.

One module-scoped fixture runs the mock provider (PyPI ``oidc-provider-mock``
0.3.4, installed by ``.ci/setup.sh`` into ``.tooling/oidc-venv``) on a free
port of 127.0.0.1, and a real ``beamside up`` whose ``auth.type`` is ``oidc``
(GenericOAuthenticator: username from ``preferred_username``, hub groups from
the ``groups`` claim, ``facility-users`` may log in, ``bt-admins`` are admins),
with the idle culler set to a 20 s timeout. Both are stopped by PID at the end.

The provider knows two users: grace (facility-users, bt-admins) and mallory
(in no allowed group). Grace is in no beamtime of the demo catalog.
The tests run in file order; the culling test comes last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import requests

from .deploy import Deployment, free_ports
from .hubclient import Kernel

REPO = Path(__file__).resolve().parent.parent
PROVIDER = REPO / ".tooling" / "oidc-venv" / "bin" / "oidc-provider-mock"
ARTIFACTS = REPO / "test-artifacts"
CULL_TIMEOUT, CULL_EVERY = 20, 5

USERS = [
    {"sub": "grace", "preferred_username": "grace", "email": "grace@example.org",
     "groups": ["facility-users", "bt-admins"]},
    {"sub": "mallory", "preferred_username": "mallory", "email": "mallory@example.org",
     "groups": ["visitors"]},
]
figures: dict = {}


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"({path}: {exc})"


def logs(dep: Deployment) -> str:
    """The end of the hub's log, for failure messages."""
    path = dep.folder / "state" / "logs" / "jupyterhub.log"
    return f"\n--- {path} (end) ---\n{_tail(path)}"


def _start_provider(folder: Path) -> tuple[subprocess.Popen, str]:
    if not os.access(PROVIDER, os.X_OK):
        pytest.fail(
            f"the OIDC test provider is missing: {PROVIDER} not found or not executable.\n"
            "Run `bash .ci/setup.sh` (it installs oidc-provider-mock==0.3.4 into .tooling/oidc-venv).",
            pytrace=False,
        )
    (port,) = free_ports(1)
    argv = [str(PROVIDER), "--host", "127.0.0.1", "--port", str(port)]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    log_path = folder / "oidc-provider.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"oidc-provider-mock exited ({proc.returncode}):\n{_tail(log_path)}", pytrace=False)
        try:
            if requests.get(f"{url}/.well-known/openid-configuration", timeout=2).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    _stop_provider(proc)
    pytest.fail(f"oidc-provider-mock did not answer on {url} within 60 s:\n{_tail(log_path)}", pytrace=False)


def _stop_provider(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(15)


@pytest.fixture(scope="module")
def dep():
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-oidc-"))
    os.chmod(folder, 0o755)  # user accounts must pass through to their homes
    provider = deployment = None
    try:
        provider, provider_url = _start_provider(folder)
        deployment = Deployment(folder, {
            "auth": {
                "type": "oidc",
                "admin_users": [],
                "oidc": {
                    "authorize_url": f"{provider_url}/oauth2/authorize",
                    "token_url": f"{provider_url}/oauth2/token",
                    "userdata_url": f"{provider_url}/userinfo",
                    "client_id": "beamside-test",
                    "client_secret": "beamside-test-secret",
                    "username_claim": "preferred_username",
                    "groups_claim": "groups",
                    "allowed_groups": ["facility-users"],
                    "admin_groups": ["bt-admins"],
                },
            },
            "dask": {"enabled": False},
            "culler": {"enabled": True, "timeout": CULL_TIMEOUT, "every": CULL_EVERY},
            "data": {"demo_size": "60MB"},
        })
        deployment.provider_url = provider_url
        t0 = time.perf_counter()
        try:
            deployment.start()
        except Exception as exc:
            pytest.fail(f"beamside up did not start: {exc}{logs(deployment)}", pytrace=False)
        figures["beamside up to hub ready (s, incl. 60MB demo data)"] = round(time.perf_counter() - t0, 1)
        yield deployment
    finally:
        rc = deployment.stop() if deployment is not None else 0
        if provider is not None:
            _stop_provider(provider)
        hub_log = _tail(folder / "state" / "logs" / "jupyterhub.log")
        ARTIFACTS.mkdir(exist_ok=True)  # kept for CI: the figures and both logs
        if figures:
            print("\n[oidc figures]", json.dumps(figures))
            (ARTIFACTS / "hub-oidc-figures.json").write_text(json.dumps(figures, indent=1))
        for src, name in (("state/logs/jupyterhub.log", "hub-oidc-jupyterhub.log"),
                          ("oidc-provider.log", "hub-oidc-provider.log")):
            if (folder / src).exists():
                shutil.copy(folder / src, ARTIFACTS / name)
        shutil.rmtree(folder, ignore_errors=True)
    assert rc == 0, f"beamside up exited with {rc} on SIGTERM\n{hub_log}"


def oidc_login(dep: Deployment, sub: str) -> tuple[requests.Session, requests.Response]:
    """Log in as ``sub`` the way a browser does: hub -> provider's form -> POST -> back to the hub."""
    s = requests.Session()
    r = s.get(f"{dep.url}/hub/oauth_login", timeout=30)
    assert r.status_code == 200, f"{r.status_code} from {r.url}\n{r.text[:500]}{logs(dep)}"
    assert r.url.startswith(f"{dep.provider_url}/oauth2/authorize?"), f"not sent to the provider: {r.url}"
    assert "beamside-test" in r.text and f'value="{sub}"' in r.text, r.text[:1000]  # the client and the predefined user
    r = s.post(r.url, data={"sub": sub}, timeout=120)
    return s, r


def xsrf(session: requests.Session) -> str:
    """The hub's ``_xsrf`` cookie (JupyterHub checks it on API calls authenticated by cookie)."""
    values = [c.value for c in session.cookies if c.name == "_xsrf" and c.path.startswith("/hub")]
    assert values, f"no _xsrf cookie for /hub/ in {[(c.name, c.path) for c in session.cookies]}"
    return values[0]


def user_model(dep: Deployment, name: str) -> dict:
    r = dep.hub.api("GET", f"/users/{name}")
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    return r.json()


def wait_until_settled(dep: Deployment, name: str, timeout: float = 180) -> dict:
    """The user's model once no spawn or stop is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = user_model(dep, name)
        server = model["servers"].get("")
        if not model.get("pending") and (not server or server.get("ready")):
            return model
        time.sleep(0.25)
    raise TimeoutError(f"{name}'s server still pending after {timeout} s{logs(dep)}")


def test_oidc_login_end_to_end_maps_name_groups_and_admin(dep):
    t0 = time.perf_counter()
    s, r = oidc_login(dep, "grace")
    figures["oidc login, hub -> provider -> hub (s)"] = round(time.perf_counter() - t0, 2)
    landed = urlparse(r.url)
    assert r.status_code == 200, f"{r.status_code} at {r.url}\n{r.text[:500]}{logs(dep)}"
    assert f"{landed.scheme}://{landed.netloc}" == dep.url, f"did not come back to the hub: {r.url}"
    assert landed.path.startswith(("/hub/spawn", "/hub/home", "/user/grace/")), f"landed on {r.url}"

    # The hub's own API with the login cookie (and the XSRF token JupyterHub wants with cookies).
    me = s.get(f"{dep.url}/hub/api/user", headers={"X-XSRFToken": xsrf(s)}, timeout=30)
    assert me.status_code == 200, f"{me.status_code} {me.text[:300]}"
    assert me.json()["name"] == "grace"
    # Without the login cookie the same call is refused.
    assert requests.get(f"{dep.url}/hub/api/user", timeout=30).status_code == 403

    # Groups from the provider's `groups` claim; admin from membership of bt-admins.
    model = user_model(dep, "grace")
    assert {"facility-users", "bt-admins"} <= set(model["groups"]), model
    assert model["admin"] is True, model

    # Logging in starts grace's server (the hub's default). Let that settle, then stop it so the
    # spawn test below times a spawn of its own.
    model = wait_until_settled(dep, "grace")
    if model["servers"]:
        figures["oidc login -> server ready (s)"] = round(time.perf_counter() - t0, 2)
        dep.hub.stop("grace")


def test_user_outside_the_allowed_groups_is_refused(dep):
    _, r = oidc_login(dep, "mallory")
    assert urlparse(r.url).path == "/hub/oauth_callback", r.url
    assert r.status_code == 403, f"{r.status_code} at {r.url}\n{r.text[:500]}"
    assert "not currently authorized" in r.text or "not allowed" in r.text.lower(), r.text[:1000]
    assert dep.hub.api("GET", "/users/mallory").status_code == 404  # no hub user was made
    assert "mallory" in dep.hub_log()  # the refusal is logged


def test_oidc_user_server_spawns_and_runs_code(dep):
    seconds = dep.hub.spawn("grace")
    figures["spawn to ready, grace (s)"] = round(seconds, 2)
    t0 = time.perf_counter()
    kernel = Kernel(dep.url, "grace", dep.hub.token("grace"))
    try:
        figures["kernel start + connect (s)"] = round(time.perf_counter() - t0, 2)
        out = kernel.run('import os; print(os.environ["JUPYTERHUB_USER"])')
        assert out["status"] == "ok", out
        assert out["stdout"] == "grace\n", out
        # grace is in no beamtime of the demo catalog: she sees none.
        out = kernel.run("import analysis_lib as al; print(repr(al.beamtimes()))")
        assert out["status"] == "ok", out
        assert out["stdout"] == "[]\n", out
        if dep.runtime["isolate"]:  # her own Unix account, not root
            out = kernel.run("import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name)")
            assert out["stdout"] == "bs-grace\n", out
    finally:
        kernel.close()


def server_processes(dep: Deployment, name: str) -> list[psutil.Process]:
    """The processes of ``name``'s running server: its sandbox (bwrap binds the user's home) and all below it.

    (The supervisor's token cannot read server state under OIDC, so the pid is found from the process table.)
    """
    home = f"{dep.runtime['paths']['homes']}/{name}"
    roots = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and p.info["cmdline"][0].endswith("bwrap")
             and home in p.info["cmdline"] and "beamside-singleuser" in " ".join(p.info["cmdline"])]
    return [q for root in roots for q in (root, *root.children(recursive=True))]


def test_idle_culler_stops_an_idle_server(dep):
    """Last: the culler stops grace's now idle server within timeout + period (+ slack), processes and all."""
    if not user_model(dep, "grace")["servers"]:  # e.g. this test run alone
        dep.hub.spawn("grace")
    procs = server_processes(dep, "grace")
    assert any("beamside-singleuser" in " ".join(p.cmdline()) for p in procs), procs
    t0 = time.perf_counter()
    deadline = t0 + 90
    while time.perf_counter() < deadline:
        if not user_model(dep, "grace")["servers"]:
            break
        time.sleep(1)
    else:
        pytest.fail(f"grace's idle server still runs 90 s later (culler timeout {CULL_TIMEOUT} s, every {CULL_EVERY} s)"
                    f"{logs(dep)}")
    figures["idle server culled after (s, from kernel closed)"] = round(time.perf_counter() - t0, 1)
    assert "Culling server grace" in dep.hub_log(), logs(dep)
    # Gone for real, not only from the hub's records: the server, its sandbox and its kernels.
    _, alive = psutil.wait_procs(procs, timeout=20)
    left = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {p.username()} {' '.join(p.cmdline())[:150]}")
        except psutil.NoSuchProcess:
            pass
    assert not left, "the hub dropped grace's server but its processes still run:\n" + "\n".join(left)
