"""dask-gateway's backends for beamside: a user's scheduler and workers in that user's sandbox.

:class:`BeamsideClusters` is what every backend whose processes run on Linux
hosts as the user's account shares (the local one here, the SLURM one in
:mod:`beamside_hub.slurm_gateway`); :class:`BeamsideBackend` is the embedded
mode's, processes on the hub's host.

dask-gateway's LocalBackend already starts cluster processes as the user's
Unix account; this subclass maps hub names to beamside accounts, wraps each
command in the same bubblewrap sandbox as the user's notebook server (the
user's beamtimes read-only, the home and the cluster's working folder
writable), stops whole process groups, and enforces a per-user cluster limit.

The cluster's folder is root's: its TLS files and the processes' logs are
created there by root, on file descriptors, where the user cannot rename or
replace anything (upstream, the folder and its ``logs/`` belong to the user
and root opens ``logs/<name>.log`` by path — a symlink the user puts there
makes root create a file anywhere). The user's writable place is its
``work/`` subfolder. A cluster whose user lost a beamtime, or that is older
than ``max_cluster_age``, is stopped by a reconcile loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa
from dask_gateway_server.backends import db_base
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.local import LocalBackend, wait_is_shutdown
from traitlets import Float, Integer, Unicode

from analysis_lib import CatalogError, Policy
from analysis_lib.contract import USER_ENV, WORKER_ENV

from . import limits, rootfs, sandbox
from .accounts import ensure_account

_WORK = "work"  # the user's own part of a cluster's folder
_LOGS = "logs"


def _tables_that_fit_postgresql() -> None:
    """dask-gateway-server's tables as PostgreSQL can hold them (``dask.db_url: postgresql://…``).

    Upstream only ever ran them on sqlite, whose integers have 64 bits and whose types are
    names only: on PostgreSQL ``clusters.token``'s ``BINARY(140)`` is no type at all (the
    ``CREATE TABLE`` fails) and a start or stop time, in milliseconds since 1970, overflows a
    32-bit ``INTEGER`` (every new cluster fails). Changed before the gateway creates the tables;
    on sqlite the new types mean what the old ones did, and existing tables stay as they are.
    """
    db_base.clusters.c.token.type = sa.LargeBinary()
    for table in (db_base.clusters, db_base.workers):
        for column in ("start_time", "stop_time"):
            table.c[column].type = sa.BigInteger()


_tables_that_fit_postgresql()


class BeamsideClusters(sandbox.Sandboxed):
    """What beamside adds to any dask-gateway backend whose processes run on Linux hosts as the
    user's account (here: :class:`BeamsideBackend`; on SLURM:
    :class:`beamside_hub.slurm_gateway.BeamsideSlurmBackend`): accounts, the root-owned cluster
    folder, the sandbox around every scheduler and worker, the per-user cluster limit, and the
    reconcile loop that ends clusters whose user lost a beamtime or that are too old."""

    max_clusters_per_user = Integer(2, config=True, help="How many clusters one user may run at once.")
    max_cluster_age = Float(0, config=True, help="Seconds after which a cluster is stopped even if busy (0: never).")
    reconcile_period = Float(30, config=True, help="Seconds between checks of running clusters against the catalog.")
    stopping_marker = Unicode("", config=True, help="The file beamside's supervisor makes when beamside itself stops.")
    cluster_memory_limit = Integer(0, config=True, help="Bytes one cluster's scheduler and workers may use together, "
                                   "kept by the local backend's cgroups (0: no cap; SLURM jobs have their own).")

    def _account(self, username):
        return ensure_account(username, str(self.home_of(username)))

    async def start_cluster(self, user, cluster_options):
        active = [c for c in await self.list_clusters(username=user.name) if c.status.name in ("PENDING", "RUNNING")]
        if len(active) >= self.max_clusters_per_user:
            raise PublicException(
                f"you already run {len(active)} Dask cluster(s), the limit is {self.max_clusters_per_user}; "
                "shut one down (cluster.shutdown()) or reuse it (gateway.connect(name))"
            )
        try:
            self._granted(user.name)
        except CatalogError as exc:  # fail closed, and tell the user why (dask-gateway hides other errors)
            raise PublicException(f"no new Dask cluster while the facility's beamtime catalog is broken: {exc}; "
                                  "please tell the facility (running clusters are not affected)") from None
        return await super().start_cluster(user, cluster_options)

    # -- the cluster's folder: root's, with the user's work/ inside -------------------------------
    def make_cluster_folder(self, cluster) -> str:
        """``<clusters>/<name>/`` (root, group of the user, 0750) with ``.certs/`` and ``logs/`` (root's,
        readable by the user) and ``work/`` (the user's, the processes' working folder)."""
        account = self._account(cluster.username)
        clusters = Path(self.clusters_directory)
        clusters.mkdir(parents=True, exist_ok=True)
        os.chmod(clusters, 0o711)  # users pass through to their own cluster's folder only
        with rootfs.root_dir(clusters) as top:
            folder, _ = rootfs.make_dir(top, cluster.name, mode=0o750, gid=account.gid)
            try:
                certs, _ = rootfs.make_dir(folder, ".certs", mode=0o750, gid=account.gid)
                try:
                    for name, data in (("dask.crt", cluster.tls_cert), ("dask.pem", cluster.tls_key)):
                        os.close(rootfs.create_file(certs, name, mode=0o640, gid=account.gid, data=data))
                finally:
                    os.close(certs)
                os.close(rootfs.make_dir(folder, _LOGS, mode=0o750, gid=account.gid)[0])
                os.close(rootfs.make_dir(folder, _WORK, mode=0o700, uid=account.uid, gid=account.gid)[0])
            finally:
                os.close(folder)
        return str(clusters / cluster.name)

    def cluster_folder(self, cluster) -> Path:
        return Path(cluster.state["workdir"])

    def get_env(self, cluster):
        env = super().get_env(cluster)
        env.update(
            {
                "HOME": str(self.home_of(cluster.username)),
                USER_ENV: cluster.username,
                **WORKER_ENV,
                **self.sandbox_env(),
            }
        )
        return env

    def _sandboxed(self, cluster, cmd):
        if not self.isolate:
            return cmd
        account = self._account(cluster.username)
        sandbox.ensure_home(Path(self.homes_dir), cluster.username, account)
        folder = self.cluster_folder(cluster)
        return self.sandbox_argv(account, readonly=[folder], writable=[folder / _WORK], workdir=folder / _WORK) + list(cmd)

    def _listen_on(self, cluster, cmd: list[str]) -> list[str]:
        """Upstream binds every listener to ``default_host`` (loopback, a class attribute); in a
        private network the user's own address is where the gateway's proxy reaches them."""
        if not self.isolate:
            return cmd
        address = self.user_address(self._account(cluster.username))
        if not address:
            return cmd
        return [a.replace(self.default_host, address, 1) if a.startswith(self.default_host) else a for a in cmd]

    def worker_host(self, cluster) -> str | None:
        """Where workers listen (None: where distributed picks, on the route to the scheduler)."""
        return self.user_address(self._account(cluster.username)) if self.isolate else None

    def get_scheduler_command(self, cluster):
        return self._sandboxed(cluster, self._listen_on(cluster, super().get_scheduler_command(cluster)))

    def get_worker_command(self, cluster, worker_name, scheduler_address=None):
        # Workers' own dashboards are unauthenticated and nobody needs them: the scheduler's is
        # reached through the gateway's authenticated proxy.
        cmd = super().get_worker_command(cluster, worker_name, scheduler_address) + ["--no-dashboard"]
        address = self.worker_host(cluster)
        if address:
            cmd += ["--host", address]
        return self._sandboxed(cluster, cmd)

    # -- access ends: revoked beamtimes, maximum age ------------------------------------------
    def _granted(self, username: str) -> list[str]:
        return Policy(self.catalog).granted(username)

    async def do_start_cluster(self, cluster):
        granted = self._granted(cluster.username)
        async for state in super().do_start_cluster(cluster):
            yield {**state, "beamtimes": granted}

    def cluster_must_end(self, cluster, now: float | None = None) -> str | None:
        """Why ``cluster`` may run no longer (None: it may): a beamtime its processes mount was
        revoked (their mounts are fixed at start), or it is older than ``max_cluster_age``.
        A catalog that cannot be read raises :class:`CatalogError` (after the age check)."""
        too_old = self._too_old(cluster, now)
        if too_old:
            return too_old
        lost = set(cluster.state.get("beamtimes") or ()) - set(self._granted(cluster.username))
        if lost:
            return f"access to {', '.join(sorted(lost))} ended"
        return None

    def _too_old(self, cluster, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        if self.max_cluster_age and now - cluster.start_time / 1000 > self.max_cluster_age:
            return f"older than {self.max_cluster_age:.0f} s (dask.max_age)"
        return None

    async def setup(self, app):
        await super().setup(app)
        self.task_pool.spawn(self._reconcile_loop())

    async def cleanup(self):
        """dask-gateway stops every cluster when it stops (``stop_clusters_on_shutdown``), and the
        gateway, a service of the hub, stops with every hub restart: users' computations would end
        with an admin's restart or a hub crash. Only when beamside itself stops (the supervisor's
        marker) do clusters stop with it; otherwise the next gateway finds them in its database and
        carries on (as the hub does with servers)."""
        self.stop_clusters_on_shutdown = not self.stopping_marker or os.path.exists(self.stopping_marker)
        await super().cleanup()

    async def _reconcile_loop(self):
        while True:
            await asyncio.sleep(self.reconcile_period)
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing must end the loop; the next round retries
                self.log.warning("could not check clusters against the catalog: %s", exc)

    async def _reconcile(self) -> None:
        """One round: end the clusters that may run no longer. With a broken catalog, running clusters
        keep their beamtimes (as servers do) but the age limit still holds for each of them."""
        broken = None
        for cluster in self.db.active_clusters():
            try:
                why = self.cluster_must_end(cluster)
            except CatalogError as exc:
                why, broken = self._too_old(cluster), exc
            if why:
                self.log.warning("stopping cluster %s of %s: %s", cluster.name, cluster.username, why)
                await self.stop_cluster(cluster.name, failed=True)
        if broken:
            self.log.warning("could not check clusters' beamtimes (they keep them until the file is fixed): %s", broken)


class BeamsideBackend(BeamsideClusters, LocalBackend):
    """LocalBackend + beamside accounts, sandboxes and per-user limits: processes on this host, each
    cluster's in a cgroup of its own inside its user's (:mod:`beamside_hub.limits`)."""

    def _group_name(self, cluster) -> str:
        return f"dask-{cluster.name}"

    def cluster_group(self, cluster) -> limits.Group | None:
        """The cluster's cgroup (made with its first process, shared by the rest; None: no cgroups)."""
        cgroups = self._cgroups()
        if cgroups is None:
            return None
        account = self._account(cluster.username)
        return cgroups.part_group(account.unix_name, account.gid, self._group_name(cluster), self.user_limit(),
                                  limits.Limit(memory=self.cluster_memory_limit or None))

    async def do_stop_cluster(self, cluster):
        await super().do_stop_cluster(cluster)
        if self.isolate:
            await asyncio.to_thread(self.end_group, self._account(cluster.username), self._group_name(cluster))

    def setup_working_directory(self, cluster):
        """The root-owned cluster folder (:meth:`BeamsideClusters.make_cluster_folder`)."""
        if not self.isolate:
            return super().setup_working_directory(cluster)
        return self.make_cluster_folder(cluster)

    def set_file_permissions(self, paths, username):
        """Nothing to give away: :meth:`setup_working_directory` sets every owner on creation.

        (Upstream chowns each path here, and through a bug in dask-gateway 2026.3,
        ``paths.extend(path)``, also the single characters of the TLS paths — ``"/"`` among them.)
        """
        if not self.isolate:
            return

    async def start_process(self, cluster, cmd, env, name):
        """Start one scheduler or worker with its output in ``logs/<name>.log``, created by root on the
        folder's fd with no-follow flags, and no stdin of root's."""
        if not self.isolate:
            return await super().start_process(cluster, cmd, env, name)
        account = self._account(cluster.username)
        group = await asyncio.to_thread(self.cluster_group, cluster)
        with rootfs.root_dir(Path(cluster.state["workdir"]) / _LOGS) as logs:
            fd = rootfs.create_file(logs, f"{name}.log", mode=0o640, gid=account.gid)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, preexec_fn=self.make_preexec_fn(cluster, group), start_new_session=True, env=env,
                stdin=subprocess.DEVNULL, stdout=fd, stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            os.close(fd)
        return proc.pid

    def make_preexec_fn(self, cluster, group: limits.Group | None = None):
        workdir = cluster.state["workdir"]
        if not self.isolate:
            return lambda: os.chdir(workdir)
        return self.preexec_for(self._account(cluster.username), os.path.join(workdir, _WORK), group)

    async def stop_process(self, pid):
        """Stop the sandbox's whole process group: SIGINT, then SIGTERM, then SIGKILL."""
        for sig, timeout in ((signal.SIGINT, self.sigint_timeout), (signal.SIGTERM, self.sigterm_timeout),
                             (signal.SIGKILL, self.sigkill_timeout)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            if await wait_is_shutdown(pid, timeout):
                break
        try:  # the sandbox's outer process may go first; whatever is left of the group goes now
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
