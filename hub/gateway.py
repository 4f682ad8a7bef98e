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
from traitlets import Bool, Integer, List, Unicode

from analysis_lib.catalog import load_catalog

from . import sandbox
from .accounts import drop_privileges, ensure_account


class BeamsideBackend(LocalBackend):
    """LocalBackend + beamside accounts, sandboxes and per-user limits."""

    catalog = Unicode(config=True, help="The facility's beamtime catalog (YAML).")
    homes_dir = Unicode(config=True, help="Folder holding every user's home.")
    sandboxes_dir = Unicode(config=True, help="Folder for per-user sandbox files (filtered catalogs).")
    isolate = Bool(True, config=True, help="Run cluster processes in per-user accounts and bubblewrap sandboxes.")
    software_paths = List(Unicode(), config=True, help="Read-only paths every sandbox needs.")
    audit_socket = Unicode("", config=True, help="Unix socket of the audit service.")
    max_clusters_per_user = Integer(2, config=True, help="How many clusters one user may run at once.")

    def _account(self, username):
        return ensure_account(username, str(Path(self.homes_dir) / username))

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
        home = str(Path(self.homes_dir) / cluster.username)
        env.update(
            {
                "HOME": home,
                "JUPYTERHUB_USER": cluster.username,
                "BEAMSIDE_CATALOG": sandbox.IN_SANDBOX_CATALOG if self.isolate else self.catalog,
                # the nanny's default trim threshold makes glibc hand back every decode buffer
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_": "None",
            }
        )
        if self.audit_socket:
            env["BEAMSIDE_AUDIT_SOCKET"] = sandbox.IN_SANDBOX_AUDIT if self.isolate else self.audit_socket
        return env

    def _sandboxed(self, cluster, cmd):
        if not self.isolate:
            return cmd
        account = self._account(cluster.username)
        catalog = load_catalog(self.catalog)
        user_catalog = sandbox.write_user_catalog(
            catalog, cluster.username, Path(self.sandboxes_dir) / cluster.username / "catalog.yaml", account.gid
        )
        home = Path(self.homes_dir) / cluster.username
        home.mkdir(parents=True, exist_ok=True)
        spec = sandbox.SandboxSpec(
            home=home,
            data_root=catalog.data_root,
            beamtimes=sandbox.beamtime_mounts(catalog, cluster.username),
            software=[Path(p) for p in self.software_paths],
            catalog=user_catalog,
            audit_socket=Path(self.audit_socket) if self.audit_socket else None,
            writable=[Path(cluster.state["workdir"])],
            workdir=Path(cluster.state["workdir"]),
        )
        return sandbox.bwrap_argv(spec, sandbox.find_bwrap() or "bwrap") + list(cmd)

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
