"""A login flood against a real `beamside up` (security review, issue 17, finding 11).

A deployment of its own (no gateway, no culler): the flood locks 127.0.0.1
out of password logins for a while, which would disturb the logins of
``test_hub.py``. 40 concurrent wrong-password POSTs to /hub/login, through
the proxy, while the hub's API is asked for its version: the API must still
answer, and the throttle must refuse part of the flood. Latencies go into the
figures printed at the end (no timing is asserted).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .deploy import Deployment

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
FLOOD = 40
figures: dict = {}


@pytest.fixture(scope="module")
def dep():
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-flood-"))
    os.chmod(folder, 0o755)
    deployment = Deployment(folder, {"dask": {"enabled": False}, "culler": {"enabled": False},
                                     "data": {"demo_size": "60MB"}})
    try:
        deployment.start()
        yield deployment
    finally:
        rc = deployment.stop()
        print("\n[login flood figures]", json.dumps(figures))
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "hub-login-flood-figures.json").write_text(json.dumps(figures, indent=1))
        if (folder / "state" / "logs" / "jupyterhub.log").exists():
            shutil.copy(folder / "state" / "logs" / "jupyterhub.log", ARTIFACTS / "hub-login-flood-jupyterhub.log")
        shutil.rmtree(folder, ignore_errors=True)
        assert rc == 0, f"beamside up exited with {rc} on SIGTERM"


def login_form(dep) -> requests.Session:
    s = requests.Session()
    s.get(f"{dep.url}/hub/login", timeout=30)
    return s


def post_login(s: requests.Session, dep, user: str, password: str) -> requests.Response:
    return s.post(f"{dep.url}/hub/login", data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf")},
                  allow_redirects=False, timeout=120)


def test_login_flood_is_throttled_and_the_hub_keeps_answering(dep):
    # Half the flood guesses alice's password, half guesses made-up names: both throttles are hit.
    users = ["alice" if i % 2 else f"nobody{i}" for i in range(FLOOD)]
    sessions = [login_form(dep) for _ in range(FLOOD)]
    start = threading.Barrier(FLOOD + 1)

    def attempt(i):
        start.wait()
        t0 = time.perf_counter()
        r = post_login(sessions[i], dep, users[i], f"wrong-{i}")
        return r.status_code, r.text, time.perf_counter() - t0

    with ThreadPoolExecutor(FLOOD) as pool:
        futures = [pool.submit(attempt, i) for i in range(FLOOD)]
        start.wait()
        time.sleep(0.05)  # the POSTs are on their way
        t0 = time.perf_counter()
        api = requests.get(f"{dep.url}/hub/api/", timeout=60)
        figures["hub API during the flood (s)"] = round(time.perf_counter() - t0, 3)
        figures["flood still running when the API answered"] = sum(not f.done() for f in futures)
        results = [f.result() for f in futures]

    assert api.status_code == 200 and "version" in api.json(), api.text[:300]
    codes = [code for code, _, _ in results]
    figures["answers"] = {str(c): codes.count(c) for c in sorted(set(codes))}
    figures["slowest login answer (s)"] = round(max(t for _, _, t in results), 3)
    assert set(codes) <= {403, 429}, figures["answers"]  # nobody got in
    throttled = [text for code, text, _ in results if code == 429]
    assert throttled, f"no login was throttled: {figures['answers']}"
    assert any("Too many failed logins" in t or "Too many logins at once" in t for t in throttled), throttled[0][:1000]

    # How many of the flood's guesses at alice got as far as a password check depends on the
    # machine's load (the rest were refused at the door); a few more in a row lock her name.
    for i in range(6):
        if post_login(login_form(dep), dep, "alice", f"again-{i}").status_code == 429:
            break
    else:
        pytest.fail("six more wrong passwords in a row for alice were never throttled")
    # Now alice's name is locked, even with her own password, and says so.
    r = post_login(login_form(dep), dep, "alice", dep.logins["alice"])
    assert r.status_code == 429 and "Too many failed logins" in r.text, (r.status_code, r.text[:1000])
    assert "Too many failed logins" in dep.hub_log() or "login refused" in dep.hub_log()
