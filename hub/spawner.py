"""The spawner: a user's notebook server as that user's own Unix account, in that user's sandbox.

At spawn time it reads the catalog (the library's own code, not a copy),
creates the user's account and home on first login, copies the worked
examples there, writes the user's filtered catalog, and starts
``jupyterhub-singleuser`` (as ``beamside-singleuser``, :mod:`beamside_hub.user_server`) inside a bubblewrap sandbox that holds only the
user's beamtimes (see :mod:`beamside_hub.sandbox`). Servers survive a hub
restart; stopping one signals its whole process group, so kernels and
anything they started go too. When a server stops, the user's Dask clusters
stop with it unless they were started detached (for a script's job).

A server's mounts are fixed when it starts, so every poll compares the
beamtimes it was started with against the catalog: a server whose user lost
one is stopped (the next start mounts only what is left). Its standard
streams are never root's: stdin is /dev/null, output goes to a per-user log
that root creates on a file descriptor of its own logs folder.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SpawnException
from jupyterhub.utils import wait_for_http_server
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Integer, Unicode

from analysis_lib import CatalogError, Policy
from analysis_lib.catalog import load_catalog
from analysis_lib.contract import DETACHED, MEMORY_LIMIT_ENV

from . import limits, rootfs, sandbox
from .accounts import Account, ensure_account, unix_name
from .start_queue import StartQueue, hub_queue

_PREPARATION = ThreadPoolExecutor(1, thread_name_prefix="beamside-prepare")  # root's work before each start


class UserServer(sandbox.Sandboxed):
    """What every beamside spawner adds to JupyterHub's, wherever the server runs (a local process, a
    SLURM job): the user's account and home, the sandbox's environment, the beamtimes the server was
    started with and the revocation check on every poll, and the user's attached Dask clusters ending
    with the server. Subclasses say how to end a server at once (:meth:`_end_now`)."""

    examples_dir = Unicode("", config=True, help="Worked examples copied into each new user's home on first login.")
    gateway_api_url = Unicode("", config=True, help="dask-gateway's API, used to end a user's clusters when the server stops.")
    logs_dir = Unicode("", config=True, help="Root's folder for each user's server output (<account>.log, root-only).")
    granted: list[str] = []  # the beamtimes the running server was started with

    # -- who and where -------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.home_of(self.user.name)

    def _account(self) -> Account | None:
        return ensure_account(self.user.name, str(self.home)) if self.isolate else None

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

    def prepare_user(self) -> Account | None:
        """Before a start: the catalog reads (else :meth:`refused`), the account and home exist, and
        the beamtimes granted now are noted."""
        try:
            granted = self._granted()
        except CatalogError as exc:
            raise self.refused(exc) from None
        account = self._account()
        sandbox.ensure_home(Path(self.homes_dir), self.user.name, account, self.examples_dir or None)
        self.granted = granted
        return account

    def refused(self, exc: CatalogError) -> SpawnException:
        """A start refused because the facility's catalog cannot be read: fail closed, and say on the
        spawn page which file and line (not a traceback, not "unhandled error"). Running servers keep
        going (:meth:`poll_access`); the next start after the file is fixed works."""
        message = (f"Your server cannot start while the facility's beamtime catalog is broken: {exc}. "
                   "Please tell the facility; servers already running are not affected.")
        refusal = SpawnException(message, reason="catalog", status_code=503)
        refusal.jupyterhub_message = message  # the progress page shows this, not the status code
        return refusal

    async def _end_now(self) -> None:
        raise NotImplementedError

    # -- access that ended -------------------------------------------------------------
    def _granted(self) -> list[str]:
        return Policy(self.catalog).granted(self.user.name)

    def get_state(self):
        state = super().get_state()
        if self.granted:
            state["beamtimes"] = self.granted
        return state

    def load_state(self, state):
        super().load_state(state)
        self.granted = list(state.get("beamtimes") or [])

    def clear_state(self):
        super().clear_state()
        self.granted = []

    async def poll(self):
        """Running, and still allowed everything it mounts? A revoked beamtime stops the server."""
        status = await super().poll()
        return status if status is not None else await self.poll_access()

    async def poll_access(self):
        """For a running server: None while its user may still read every beamtime it mounts, else it
        is ended (:meth:`_end_now`) and 1."""
        if not self.isolate or not self.granted:
            return None
        try:
            lost = set(self.granted) - set(self._granted())
            account = self._account()
            sandbox.write_user_files(load_catalog(self.catalog), account, Path(self.sandboxes_dir))
        except Exception as exc:  # a broken catalog keeps running servers and their last view; new starts refuse
            self.log.warning("could not check %s's access against the catalog (the server keeps its beamtimes "
                             "and its catalog view until the file is fixed): %s", self.user.name, exc)
            return None
        if not lost:
            return None
        self.log.warning("stopping the server of %s: access to %s ended", self.user.name, ", ".join(sorted(lost)))
        await self._end_now()
        return 1

    async def stop(self, now=False):
        await self._end_attached_clusters()
        await super().stop(now=now)

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
                if not (report.get("options") or {}).get(DETACHED):
                    await client.fetch(
                        HTTPRequest(f"{self.gateway_api_url}/v1/clusters/{name}", method="DELETE", headers=headers,
                                    request_timeout=10)
                    )
                    self.log.info("stopped Dask cluster %s of %s with their server", name, self.user.name)
        except Exception as exc:  # the server must stop even if the gateway is down
            self.log.warning("could not end the Dask clusters of %s: %s", self.user.name, exc)


class BeamsideSpawner(UserServer, LocalProcessSpawner):
    """LocalProcessSpawner + per-user account + bubblewrap sandbox built from the catalog + the
    user's cgroups (:mod:`beamside_hub.limits`), which keep ``mem_limit`` and ``cpu_limit``
    (JupyterHub's local spawner only passes them on)."""

    start_slots = Integer(0, config=True, help="How many servers start at once; the others wait in order, "
                          "seeing their place (0: no queue). beamside turns JupyterHub's concurrent_spawn_limit off for it.")
    start_queue_file = Unicode("", config=True, help="Where the hub keeps the start queue for admins (`beamside queue`).")
    _group: limits.Group | None = None  # the server's cgroup while it starts
    _prepared_in = 0.0  # seconds of root's preparation of the last start

    def make_preexec_fn(self, name):
        account = self._account()
        if account is None:
            home = str(self.home)

            def preexec():
                os.chdir(home)

            return preexec
        return self.preexec_for(account, str(self.home), self._group)

    def load_state(self, state):
        """When the hub (re)starts it loads every user's spawner: one with no server on record whose
        server cgroup still holds processes was started by a hub killed before it could record it
        (SIGKILL mid-start). Nobody can reach or stop that server: it is ended here."""
        super().load_state(state)
        if not self.pid and self.isolate:
            cgroups = limits.Cgroups.detect(self.cgroup_top)
            group = cgroups.group(unix_name(self.user.name), limits.SERVER) if cgroups else None
            if group is not None and group.pids():
                self.log.warning("ending the server of %s that a hub killed mid-start left unrecorded", self.user.name)
                group.remove()
                cgroups.remove_user_if_empty(unix_name(self.user.name))

    def get_env(self):
        env = super().get_env()
        limit = min((x for x in (self.mem_limit, self.user_memory_limit) if x), default=None)
        if limit:  # the limit that holds first, for the library's notice and JupyterLab's usage display
            env[MEMORY_LIMIT_ENV] = str(limit)
        return env

    # -- start: a turn in the start queue, then the sandbox --------------------------------
    @property
    def start_queue(self) -> StartQueue:
        """The hub's one queue of starts (made with the first spawner)."""
        return hub_queue(self.start_slots, self.start_queue_file)

    async def run_pre_spawn_hook(self):
        """Wait for a turn to start (JupyterHub calls this before ``start``, outside its
        ``start_timeout``: waiting in line is not a slow start)."""
        queue = self.start_queue
        if queue.full():
            self.log.info("%s waits to start: %d ahead (%d start at once)", self._log_name, len(queue.waiting()),
                          queue.slots)
        await queue.wait_turn(self._log_name)
        result = super().run_pre_spawn_hook()
        if inspect.isawaitable(result):
            await result

    async def progress(self):
        """While waiting in line, the spawn page shows the place and an estimate (each change once)."""
        told = None
        while (message := self.start_queue.message(self._log_name)) is not None:
            if message != told:
                yield {"progress": 5, "message": message}
                told = message
            await asyncio.sleep(1)

    async def start(self):
        started = False
        try:
            ip_port = await self._start_in_sandbox()
            launched = time.perf_counter()
            if await self._until_it_answers(*ip_port):
                self.log.info("%s's server answered %.1f s after it was launched", self._log_name,
                              time.perf_counter() - launched)
            else:  # JupyterHub's own wait then reports the exit or the timeout to the user
                self.log.warning("%s's server did not answer within %.0f s of its launch (exited or still starting)",
                                 self._log_name, time.perf_counter() - launched)
            started = True
            return ip_port
        finally:  # the turn ends when the server answers (its start's CPU is spent) or fails
            self.start_queue.end_turn(self._log_name, started=started)

    async def _until_it_answers(self, ip: str, port: int) -> bool:
        """Wait until the new server answers HTTP (then JupyterHub's own wait is short: True), or exits or
        the start's time is up (False).

        Twice a second: is the process alive, and does its port take a TCP connection (the server
        listens once its extensions are loaded)? Only then one HTTP request. Forty servers starting
        at once otherwise cost the hub an HTTP attempt each three times a second, and an access check
        each second (poll), while the CPU is what everyone waits for."""
        url = f"http://{ip}:{port}{self.server.base_url if self.server else '/'}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        while loop.time() < deadline and await LocalProcessSpawner.poll(self) is None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=1)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.5)
                continue
            writer.close()
            try:
                await wait_for_http_server(url, timeout=max(1.0, deadline - loop.time()))
            except TimeoutError:
                return False
            return True
        return False

    async def _start_in_sandbox(self):
        base_cmd, base_popen = list(self.cmd), dict(self.popen_kwargs)
        # Root's preparation (account, home, catalog view, cgroup, network namespace: files and
        # subprocesses) runs off the hub's event loop, one start at a time: during a burst of logins
        # the hub keeps answering its API and pages.
        loop = asyncio.get_running_loop()
        asked = loop.time()
        log_fd, argv, address = await loop.run_in_executor(_PREPARATION, self._prepare_sandbox)
        self.log.info("%s's start prepared in %.2f s (%.2f s of it root's work)", self._log_name,
                      loop.time() - asked, self._prepared_in)
        self.popen_kwargs = {**base_popen, "stdin": subprocess.DEVNULL,
                             **({"stdout": log_fd, "stderr": subprocess.STDOUT} if log_fd is not None else {})}
        if argv is not None:
            self.cmd = argv + base_cmd
        if address:  # in the user's own network namespace, reached through its link
            self.ip = address
        try:
            return await super().start()
        finally:
            self.cmd, self.popen_kwargs, self._group = base_cmd, base_popen, None
            if log_fd is not None:
                os.close(log_fd)

    def _prepare_sandbox(self):
        """The account, home and log; the server's cgroup (``self._group``, for the preexec), the
        sandbox's command line and the user's address. Runs in the preparation thread."""
        began = time.perf_counter()
        try:
            return self._prepare_sandbox_now()
        finally:
            self._prepared_in = time.perf_counter() - began

    def _prepare_sandbox_now(self):
        account = self.prepare_user()
        log_fd = self._open_log(account)
        if account is None:
            return log_fd, None, None
        try:
            self._group = self.fresh_group(account, limits.SERVER,
                                           limits.Limit(memory=self.mem_limit or None, cpu=self.cpu_limit or None))
            try:
                argv = self.sandbox_argv(account, group=self._group)
            except CatalogError as exc:  # broken since prepare_user read it
                raise self.refused(exc) from None
            return log_fd, argv, self.user_address(account)
        except BaseException:
            if log_fd is not None:
                os.close(log_fd)
            raise

    def _open_log(self, account) -> int | None:
        """The user's server log, appended to; root's folder and file, opened without following links."""
        if not (self.logs_dir and account is not None):
            return None
        folder = Path(self.logs_dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with rootfs.root_dir(folder) as logs:
            return rootfs.create_file(logs, f"{account.unix_name}.log", mode=0o600, append=True)

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

    async def _end_now(self) -> None:
        await self._signal(signal.SIGKILL)

    async def stop(self, now=False):
        self.start_queue.end_turn(self._log_name, started=False)  # a start given up while holding a turn
        pid = self.pid
        await super().stop(now=now)
        # The sandbox's outer process may go first; whatever is left of the group goes now.
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        account = self._account()
        if account is not None:  # and whatever left the group (setsid) goes with the server's cgroup
            await asyncio.to_thread(self.end_group, account, limits.SERVER)
