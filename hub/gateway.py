"""dask-gateway's backend for beamside: a user's scheduler and workers in that user's sandbox.

dask-gateway's LocalBackend already starts cluster processes as the user's
Unix account; this subclass maps hub names to beamside accounts, wraps each
command in the same bubblewrap sandbox as the user's notebook server (the
user's beamtimes read-only, the home and the cluster's working folder
writable), stops whole process groups, and enforces a per-user cluster limit.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.local import LocalBackend, wait_is_shutdown
from traitlets import Integer

from . import sandbox
from .accounts import drop_privileges, ensure_account


class BeamsideBackend(sandbox.Sandboxed, LocalBackend):
    """LocalBackend + beamside accounts, sandboxes and per-user limits."""

    max_clusters_per_user = Integer(2, config=True, help="How many clusters one user may run at once.")

    def _account(self, username):
        return ensure_account(username, str(self.home_of(username)))

    async def start_cluster(self, user, cluster_options):
        active = [c for c in await self.list_clusters(username=user.name) if c.status.name in ("PENDING", "RUNNING")]
        if len(active) >= self.max_clusters_per_user:
            raise PublicException(
                f"you already run {len(active)} Dask cluster(s), the limit is {self.max_clusters_per_user}; "
                "shut one down (cluster.shutdown()) or reuse it (gateway.connect(name))"
            )
        return await super().start_cluster(user, cluster_options)

    def set_file_permissions(self, paths, username):
        """Give the cluster's working folder (and its TLS files) to the user's account.

        dask-gateway 2026.3 passes its folders plus, through an upstream bug
        (``paths.extend(path)``), the single characters of the TLS file paths —
        among them ``"/"``: LocalBackend then chowns the root folder to the user.
        So only what lies inside the clusters folder is ever chowned here.
        """
        if not self.isolate:
            return
        account = self._account(username)
        root = os.path.realpath(self.clusters_directory) + os.sep
        inside = {os.path.realpath(p) for p in paths if isinstance(p, str) and os.path.isabs(p) and len(p) > 1}
        for folder in list(inside):
            if os.path.isdir(folder):
                inside.update(os.path.join(folder, name) for name in os.listdir(folder))
        for p in sorted(inside):
            if p.startswith(root):
                os.chown(p, account.uid, account.gid)

    def make_preexec_fn(self, cluster):
        workdir = cluster.state["workdir"]
        if not self.isolate:
            return lambda: os.chdir(workdir)
        return drop_privileges(self._account(cluster.username), workdir)

    def get_env(self, cluster):
        env = super().get_env(cluster)
        env.update(
            {
                "HOME": str(self.home_of(cluster.username)),
                "JUPYTERHUB_USER": cluster.username,
                # the nanny's default trim threshold makes glibc hand back every decode buffer
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_": "None",
                **self.sandbox_env(),
            }
        )
        return env

    def _sandboxed(self, cluster, cmd):
        if not self.isolate:
            return cmd
        account = self._account(cluster.username)
        self.home_of(cluster.username).mkdir(parents=True, exist_ok=True)
        workdir = Path(cluster.state["workdir"])
        return self.sandbox_argv(cluster.username, account.gid, writable=[workdir], workdir=workdir) + list(cmd)

    def get_scheduler_command(self, cluster):
        return self._sandboxed(cluster, super().get_scheduler_command(cluster))

    def get_worker_command(self, cluster, worker_name, scheduler_address=None):
        return self._sandboxed(cluster, super().get_worker_command(cluster, worker_name, scheduler_address))

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
