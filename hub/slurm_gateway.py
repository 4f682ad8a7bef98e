"""dask-gateway on SLURM: a user's scheduler and each worker as batch jobs of the user's own account.

dask-gateway's ``SlurmBackend`` submits one job per scheduler and per worker,
follows them with ``squeue`` and ends them with ``scancel``; this subclass
keeps everything beamside adds to the local backend
(:class:`~beamside_hub.gateway.BeamsideClusters`: accounts, the root-owned
cluster folder, the same bubblewrap sandbox as the user's server, the per-user
cluster limit, revocation and maximum age) and changes what upstream does for
a hub that runs as root:

- ``sbatch`` and ``scancel`` run as the user's account through ``runuser``
  with an explicit environment (``SLURM_CONF`` among it), not through
  ``sudo -nHu USER dask-gateway-jobqueue-launcher`` with an empty one: root
  needs no sudo rule, and the launcher's job — making a staging folder in the
  user's home and writing the cluster's TLS key there, as the user — is done
  by root beforehand, in the cluster's root-owned folder (the user can read
  the key, never replace it);
- schedulers and workers listen on ``slurm.server_ip`` (loopback when the hub
  shares the node, else the node's address), never on upstream's ``0.0.0.0``;
- the batch script's command is shell-quoted and ``exec``'d (upstream joins
  the words with spaces), so the job's process is the sandbox itself.

The nodes must see the cluster folder at the same path as the hub's host
(``<state>/gateway/clusters`` on a shared file system), as they see the venv,
the homes and the sandboxes folder for the user's server.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from pathlib import Path

from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend
from traitlets import Dict, Unicode

from .gateway import _WORK, BeamsideClusters
from .slurm_node import NODE, node_ip_line


class BeamsideSlurmBackend(BeamsideClusters, SlurmBackend):
    """SlurmBackend + beamside accounts, sandboxes and per-user limits: processes as SLURM jobs."""

    # upstream's is a class attribute, "0.0.0.0": every scheduler and worker port on every address
    default_host = Unicode("127.0.0.1", config=True,
                           help="Where schedulers and workers listen on their node (slurm.server_ip; 'node': its NodeAddr).")
    clusters_directory = Unicode(config=True, help="Root's folder of cluster folders, seen at the same path on every node.")
    slurm_env = Dict(config=True, help="Environment for SLURM's commands (SLURM_CONF).")
    runuser = Unicode("/usr/sbin/runuser", config=True, help="Runs sbatch and scancel as the user's account.")

    # -- the cluster's folder (root's, made before anything is submitted) ------------------------
    def cluster_folder(self, cluster) -> Path:
        return Path(self.clusters_directory) / cluster.name  # the scheduler's job is written before any state

    def get_staging_directory(self, cluster):
        """The jobs' working folder and where their output goes: the user's ``work/``."""
        return str(self.cluster_folder(cluster) / _WORK)

    def get_tls_paths(self, cluster):
        certs = self.cluster_folder(cluster) / ".certs"
        return str(certs / "dask.crt"), str(certs / "dask.pem")

    async def do_start_cluster(self, cluster):
        workdir = self.make_cluster_folder(cluster)
        async for state in super().do_start_cluster(cluster):
            yield {**state, "workdir": workdir}

    async def do_stop_cluster(self, cluster):
        await super().do_stop_cluster(cluster)
        # shutil.rmtree works on descriptors (no-follow): a link the user put in work/ leads nowhere
        await asyncio.to_thread(shutil.rmtree, self.cluster_folder(cluster), ignore_errors=True)

    # -- the jobs -----------------------------------------------------------------------------------
    def worker_host(self, cluster) -> str | None:
        return self.default_host

    def get_scheduler_command(self, cluster):
        return self._on_the_node(super().get_scheduler_command(cluster))

    def get_worker_command(self, cluster, worker_name, scheduler_address=None):
        return self._on_the_node(super().get_worker_command(cluster, worker_name, scheduler_address))

    def _on_the_node(self, argv: list[str]) -> list[str]:
        """The job's shell line: ``exec`` the sandboxed command; with ``slurm.server_ip: node`` its
        listeners (``--host node``, ``node:0``) on the node's NodeAddr, looked up on the node."""
        argv = [shlex.quote(a) for a in argv]
        if self.default_host != NODE:
            return ["exec", *argv]
        here = '"$node_ip"'
        argv = [here if a == NODE else here + a[len(NODE):] if a.startswith(NODE + ":") else a for a in argv]
        return [node_ip_line(os.path.join(os.path.dirname(self.status_command), "scontrol")), "exec", *argv]

    def get_env(self, cluster):
        return {**super().get_env(cluster), **self.slurm_env}  # scontrol in the job finds this SLURM

    def get_status_cmd_env(self, job_ids):
        cmd, env = super().get_status_cmd_env(job_ids)
        return cmd, {**env, **self.slurm_env}

    async def do_as_user(self, user, action, cmd, env, stdin=None, staging_dir=None, files=None):
        """``cmd`` (sbatch or scancel) as ``user``'s account, with ``env`` and SLURM's own settings.

        ``staging_dir`` and ``files`` (upstream's launcher writes the TLS files into the user's
        home) are not used: the cluster's folder and its TLS files are root's, made by
        :meth:`do_start_cluster` before the scheduler's job is submitted, and removed by
        :meth:`do_stop_cluster`.
        """
        account = self._account(user)
        proc = await asyncio.create_subprocess_exec(
            self.runuser, "-u", account.unix_name, "--", *cmd,
            env={**env, **self.slurm_env}, cwd="/",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate(stdin.encode() if stdin is not None else None)
        self.log.debug("%s for %s: %s -> %d", action, user, cmd[0], proc.returncode)
        return proc.returncode, stdout.decode("utf8", "replace"), stderr.decode("utf8", "replace")
