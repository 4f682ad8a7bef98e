"""Start and stop a real embedded deployment (`beamside up`) for tests: free ports, 127.0.0.1, stopped by PID."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .hubclient import Hub, Kernel

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first true value, asked every half second; the test fails after ``timeout`` s
    (a deadline, generous on a shared machine, never a timing being tested)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} not seen within {timeout} s")


def deployment_for_module(name: str, figures: dict, settings: dict | None = None, users: tuple[str, ...] = ()):
    """For a module fixture: a deployment of its own (culler off: nothing stops mid-test) with ``users``'
    servers started; at the end it is stopped, the module's ``figures`` written to
    ``test-artifacts/<name>-figures.json`` and its folder removed."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix=f"beamside-{name}-"))
    deployment = Deployment(folder, {"culler": {"enabled": False}, **(settings or {})}).start()
    for user in users:
        deployment.hub.spawn(user)
    yield deployment
    deployment.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}-figures.json").write_text(json.dumps(figures, indent=1))
    shutil.rmtree(folder, ignore_errors=True)


def user_kernel(dep, user: str):
    """For a module fixture: ``user``'s server started, a kernel in it, closed at the end."""
    dep.hub.spawn(user)
    kernel = Kernel(dep.url, user, dep.hub.token(user))
    yield kernel
    kernel.close()


class Deployment:
    """One `beamside up` process with its own state folder and ports."""

    def __init__(self, folder: Path, settings: dict | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)  # user accounts must pass through to their homes
        hub, hub_api, proxy_api, gw, gw_api, sched = free_ports(6)
        base = {
            "hub": {"state_dir": str(self.folder / "state"), "port": hub, "hub_port": hub_api, "proxy_api_port": proxy_api},
            "data": {"demo_size": "100MB"},
            "dask": {"port": gw, "api_port": gw_api, "scheduler_port": sched},
        }
        for section, values in (settings or {}).items():
            if isinstance(values, dict):
                base.setdefault(section, {}).update(values)
            else:  # a top-level setting (platform)
                base[section] = values
        self.config = self.folder / "config.yaml"
        self.config.write_text(yaml.safe_dump(base))
        self.url = f"http://127.0.0.1:{hub}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> Deployment:
        log = open(self.folder / "beamside-up.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "analysis_lib.cli", "up", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beamside up exited:\n{self.output()}\n--- hub log ---\n{self.hub_log()[-4000:]}")
            if "JupyterHub is up" in self.output():
                break
            time.sleep(0.3)
        else:
            raise TimeoutError(f"beamside up not ready:\n{self.output()}")
        self.runtime = json.loads((self.folder / "state" / "runtime.json").read_text())
        self.hub = Hub(self.url, self.runtime["secrets"]["supervisor_token"])
        return self

    def output(self) -> str:
        return (self.folder / "beamside-up.log").read_text(errors="replace")

    def hub_log(self) -> str:
        path = self.folder / "state" / "logs" / "jupyterhub.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def logins(self) -> dict:
        return self.runtime.get("demo_logins", {})

    def processes_of(self, user: str) -> list:
        """The running processes of ``user``'s Unix account that belong to this deployment (the
        account may also run another deployment's: they share the machine's accounts)."""
        import psutil
        from beamside_hub.accounts import unix_name

        uid, here = pwd.getpwnam(unix_name(user)).pw_uid, str(self.folder)
        found = []
        for p in psutil.process_iter(["uids", "cmdline", "cwd", "status"]):
            info = p.info
            if (info["uids"] and info["uids"].real == uid and info["status"] != psutil.STATUS_ZOMBIE
                    and here in f"{info['cwd']} {' '.join(info['cmdline'] or [])}"):
                found.append(p)
        return found

    @property
    def hub_pid(self) -> int:
        return int((self.folder / "state" / "hub.pid").read_text())  # written by the supervisor

    def stop(self, timeout: float = 120) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return -9
