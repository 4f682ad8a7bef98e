"""The hub's and the gateway's databases in a real PostgreSQL (``hub.db_url``, ``dask.db_url``).

A facility that runs the hub on a host of its own keeps its state in a database server rather
than in sqlite files beside it: one ``beamside up`` (embedded platform) here has both databases in a
throwaway PostgreSQL (``tests/postgres.py``), and a user's server and Dask cluster outlive a hub
restart as they do with sqlite. A database that cannot be reached stops ``beamside up`` with a
message that names the setting, not a hub that never answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from dask_gateway_server.backends.db_base import JobStatus

from .deploy import Deployment, free_ports
from .hubclient import Kernel
from .postgres import Postgres
from .test_hub import (
    ARTIFACTS,
    _gateway_answers,
    _hub_comes_back,
    _kept_cluster_computes,
    login,
    ok,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as the postgres account: needs root")


@pytest.fixture(scope="module")
def postgres():
    server = Postgres(("beamside_hub", "beamside_gateway")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dep(postgres):
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-hub-postgres-"))
    deployment = Deployment(folder, {"culler": {"enabled": False}, "hub": {"db_url": postgres.url("beamside_hub")},
                                     "dask": {"db_url": postgres.url("beamside_gateway")}})
    try:
        yield deployment.start()
    finally:
        deployment.stop()
        if (log := folder / "state" / "logs" / "jupyterhub.log").exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(log, ARTIFACTS / "jupyterhub-postgres.log")
        shutil.rmtree(folder, ignore_errors=True)


def _everything_logged(dep) -> str:
    logs = [dep.folder / "beamside-up.log", *(dep.folder / "state" / "logs").rglob("*.log")]
    return "".join(p.read_text(errors="replace") for p in logs if p.is_file())


def test_servers_and_clusters_live_in_postgres_and_outlive_a_hub_restart(dep, postgres):
    assert login(dep, "alice", dep.logins["alice"]).login_status == 302
    dep.hub.spawn("alice")
    alice = Kernel(dep.url, "alice", dep.hub.token("alice"))
    try:
        server_pid = ok(alice, "import os; print(os.getppid(), 6 * 7)").split()
        assert server_pid[1] == "42"
        name, total = ok(alice, """
import analysis_lib as al
kept = al.cluster(workers=1); kept.wait_for_workers(1, timeout=180)
print(kept.cluster.name, kept.submit(sum, [1, 2], pure=False).result())
""").split()
        assert total == "3"

        # the hub's and the gateway's records are rows in PostgreSQL, not files in the state folder
        assert postgres.query("beamside_hub", "SELECT u.name, s.server_id IS NOT NULL FROM users u "
                                              "JOIN spawners s ON s.user_id = u.id WHERE u.name = 'alice'") == [("alice", True)]
        assert postgres.query("beamside_gateway", "SELECT username, status FROM clusters WHERE name = %s",
                              (name,)) == [("alice", JobStatus.RUNNING.value)]

        old = dep.hub_pid
        os.kill(old, signal.SIGTERM)
        _hub_comes_back(dep, old)
        assert dep.hub.api("GET", "/users/alice").json()["servers"][""]["ready"]  # the new hub read it back
        assert ok(alice, "import os; print(os.getppid(), 6 * 7)").split() == server_pid  # the same server and kernel
        _gateway_answers(dep)
        _kept_cluster_computes(alice, name)
    finally:
        alice.close()
    state = dep.folder / "state"  # (users' homes hold their own: IPython's history)
    assert [p for p in state.rglob("*.sqlite") if (state / "homes") not in p.parents] == []
    assert postgres.password not in _everything_logged(dep)


@pytest.mark.parametrize("setting", ["hub.db_url", "dask.db_url"])
def test_an_unreachable_database_stops_beamside_up_naming_it(setting, tmp_path):
    port = free_ports(1)[0]  # nothing listens there
    section, key = setting.split(".")
    password = "not-for-the-log"
    dep = Deployment(tmp_path / "dep", {section: {key: f"postgresql://beamside:{password}@127.0.0.1:{port}/beamside"}})
    with pytest.raises(RuntimeError, match="beamside up exited"):
        dep.start()
    assert dep.proc.returncode == 1
    said = dep.output()
    assert f"{setting}: cannot connect to the database postgresql://beamside:***@127.0.0.1:{port}/beamside" in said
    assert "Connection refused" in said and password not in said
    assert not (tmp_path / "dep" / "state").exists()  # stopped before any work, not after it
