"""The spawner: a user's notebook server as that user's own Unix account, in that user's sandbox.

At spawn time it reads the catalog (the library's own code, not a copy),
creates the user's account and home on first login, copies the worked
examples there, writes the user's filtered catalog, and starts
``jupyterhub-singleuser`` inside a bubblewrap sandbox that holds only the
user's beamtimes (see :mod:`beamside_hub.sandbox`). Servers survive a hub
restart; stopping one signals its whole process group, so kernels and
anything they started go too. When a server stops, the user's Dask clusters
stop with it unless they were started detached (for a script's job).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Unicode

from . import sandbox
from .accounts import Account, drop_privileges, ensure_account


class BeamsideSpawner(sandbox.Sandboxed, LocalProcessSpawner):
    """LocalProcessSpawner + per-user account + bubblewrap sandbox built from the catalog."""

    examples_dir = Unicode("", config=True, help="Worked examples copied into each new user's home on first login.")
    gateway_api_url = Unicode("", config=True, help="dask-gateway's API, used to end a user's clusters when the server stops.")

    # -- who and where -------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.home_of(self.user.name)

    def _account(self) -> Account | None:
        return ensure_account(self.user.name, str(self.home)) if self.isolate else None

    def make_preexec_fn(self, name):
        account = self._account()
        if account is None:
            home = str(self.home)

            def preexec():
                os.chdir(home)

            return preexec
        return drop_privileges(account, str(self.home))

    def user_env(self, env):
        account = self._account()
        env["USER"] = account.unix_name if account else self.user.name
        env["HOME"] = str(self.home)
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self):
        env = super().get_env()
        home = str(self.home)
        env.update(
            {
                # kernel sockets (ipc) need a short path; /run is the sandbox's own tmpfs
                "JUPYTER_RUNTIME_DIR": "/run/jupyter" if self.isolate else f"{home}/.local/share/jupyter/runtime",
                "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
                "JUPYTER_CONFIG_DIR": f"{home}/.jupyter",
                "IPYTHONDIR": f"{home}/.ipython",
                "MPLCONFIGDIR": f"{home}/.config/matplotlib",
                **self.sandbox_env(),
            }
        )
        return env

    # -- start -----------------------------------------------------------------------
    def _prepare_home(self, account: Account | None) -> None:
        home = self.home
        fresh = not home.exists()
        home.mkdir(parents=True, exist_ok=True)
        if fresh and self.examples_dir and os.path.isdir(self.examples_dir):
            shutil.copytree(self.examples_dir, home / "examples", dirs_exist_ok=True)
        if account is not None:
            for root, dirs, files in os.walk(home):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, account.uid, account.gid)
            os.chmod(home, 0o700)

    async def start(self):
        account = self._account()
        self._prepare_home(account)
        base_cmd = list(self.cmd)
        if account is not None:
            self.cmd = self.sandbox_argv(self.user.name, account.gid) + base_cmd
        try:
            return await super().start()
        finally:
            self.cmd = base_cmd

    # -- stop ------------------------------------------------------------------------
    async def _signal(self, sig):
        """Signal the server's whole process group: the sandbox and everything in it."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def stop(self, now=False):
        await self._end_attached_clusters()
        pid = self.pid
        await super().stop(now=now)
        # The sandbox's outer process may go first; whatever is left of the group goes now.
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def _end_attached_clusters(self):
        """Stop the user's Dask clusters unless started with ``detached=True`` (a script's job)."""
        if not (self.gateway_api_url and self.api_token):
            return
        client = AsyncHTTPClient()
        headers = {"Authorization": f"jupyterhub {self.api_token}"}
        try:
            resp = await client.fetch(HTTPRequest(f"{self.gateway_api_url}/v1/clusters/", headers=headers, request_timeout=10))
            clusters = json.loads(resp.body)
            for name, report in clusters.items():
                if not (report.get("options") or {}).get("detached"):
                    await client.fetch(
                        HTTPRequest(f"{self.gateway_api_url}/v1/clusters/{name}", method="DELETE", headers=headers,
                                    request_timeout=10)
                    )
                    self.log.info("stopped Dask cluster %s of %s with their server", name, self.user.name)
        except Exception as exc:  # the server must stop even if the gateway is down
            self.log.warning("could not end the Dask clusters of %s: %s", self.user.name, exc)

