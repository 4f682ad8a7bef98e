"""SLURM: a user's notebook server as a batch job of the user's own account, in the user's sandbox.

batchspawner's ``SlurmSpawner`` submits, watches and cancels the job; this
module keeps what beamside adds on every platform (:class:`~beamside_hub.spawner.UserServer`:
the account, the home, the beamtimes and their revocation, attached Dask
clusters) and fixes what batchspawner 1.3 gets wrong for a facility:

- the server listens where the admin says (``slurm.server_ip``: an address, or
  ``node`` for each job's node's own, :mod:`beamside_hub.slurm_node`), never on
  the ``0.0.0.0`` that batchspawner's ``start()`` resets ``ip`` to (``self.ip =
  self.traits()["ip"].default_value``);
- a job that ends before its server answers ends the spawn with the job's
  state and reason, instead of waiting for a port forever (batchspawner #253;
  its fix, PR #254, is in no release);
- a failing ``squeue`` is "unknown", not "job gone": only SLURM's own "Invalid
  job id" means gone (batchspawner #315 orphans servers otherwise);
- the spawn page shows the job's queue state and reason ("waiting for
  resources in partition debug"); the cores, memory and time the user asks for
  are checked against the admin's limits before anything is submitted;
- commands run as the user's account through ``runuser`` (the hub is root),
  not through a sudo rule the admin would have to write;
- the hub's ``/api/batchspawner`` takes the server's port and nothing else
  (:class:`ServerPortReport`): batchspawner's own handler sets any spawner
  attribute a server's token names, ``exec_prefix`` included — a shell
  prefix root runs.

Inside the job, the server runs in the same bubblewrap sandbox as on one
machine (:mod:`beamside_hub.sandbox`): only the user's beamtimes, read-only;
the home writable; no capabilities. The nodes must see the same paths as the
hub's host (the venv, beamside's code, the homes, the sandboxes folder, the
data root): on a cluster, shared file systems.
"""

from __future__ import annotations

import asyncio
import html
import re
import shlex

from batchspawner import JobStatus, SlurmSpawner
from batchspawner.api import BatchSpawnerAPIHandler
from batchspawner.batchspawner import format_template
from dask.utils import parse_bytes
from jupyterhub.apihandlers import APIHandler, default_handlers
from tornado import web
from traitlets import Dict, Float, Unicode, default

from .settings import walltime
from .slurm_node import NODE, node_address, node_ip_line
from .spawner import UserServer

# squeue's long states: a job that is none of these is gone (or never was)
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"}
RUNNING = {"RUNNING", "COMPLETING"}
ENDED_WHY = {  # what an ended job's state means for the user
    "TIMEOUT": "its time limit was reached",
    "CANCELLED": "it was cancelled",
    "FAILED": "it failed",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "it ran out of memory",
    "PREEMPTED": "it was preempted",
    "BOOT_FAIL": "its node did not boot",
    "DEADLINE": "its deadline passed",
    "COMPLETED": "the server exited",
}
GONE = re.compile(r"Invalid job id specified")
OPTIONS = ("partition", "cores", "memory", "walltime")  # what a user may ask for (spawn form, REST)


class SpawnFailed(web.HTTPError):
    """A spawn that cannot succeed, with the message JupyterHub shows the user (and returns over REST)."""

    def __init__(self, status: int, message: str):
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.jupyterhub_message = message


class SpawnRefused(SpawnFailed):
    """The user asked for more than the admin allows (cores, memory, time): 400, nothing submitted."""

    def __init__(self, message: str):
        super().__init__(400, message)


def walltime_seconds(text: str) -> int:
    """``[days-]hours:minutes:seconds`` (what the settings and the form use) in seconds."""
    try:
        return walltime(text)
    except ValueError as exc:
        raise SpawnRefused(str(exc)) from None


BATCH_SCRIPT = """#!/bin/bash
#SBATCH --job-name=beamside-server-{{username}}
#SBATCH --output={{homedir}}/.beamside-server.log
#SBATCH --open-mode=append
#SBATCH --chdir={{homedir}}
#SBATCH --export={{keepvars}}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={{nprocs}}
#SBATCH --mem={{memory}}
#SBATCH --time={{runtime}}
{% if partition %}#SBATCH --partition={{partition}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}
echo "beamside: server job $SLURM_JOB_ID on $(hostname) for {{username}}"
{% if node_ip_line %}{{node_ip_line}}
export JUPYTERHUB_SERVICE_URL="http://$node_ip:0/${JUPYTERHUB_SERVICE_URL#http://*/}"
{% endif %}exec {{cmd}}
"""


class BeamsideSlurmSpawner(UserServer, SlurmSpawner):
    """batchspawner's SlurmSpawner + beamside's user server (account, sandbox, revocation)."""

    batch_script = Unicode(BATCH_SCRIPT, config=True)
    # batchspawner's start() resets ip to this default: loopback, never 0.0.0.0 (see the module's docstring)
    ip = Unicode("127.0.0.1", config=True, help="Where the server listens on its node (slurm.server_ip; 'node': its NodeAddr).")
    exec_prefix = Unicode("/usr/sbin/runuser -u {username} --", config=True)
    req_srun = Unicode("", config=True)  # the server is the batch step itself: one process tree, one sandbox
    batch_submit_cmd = Unicode("{bin}/sbatch --parsable", config=True)
    batch_query_cmd = Unicode("{bin}/squeue -h -j {job_id} --states=all -o '%T|%B|%R'", config=True)
    batch_cancel_cmd = Unicode("{bin}/scancel {job_id}", config=True)
    slurm_bin_dir = Unicode("/usr/bin", config=True, help="Where sbatch, squeue and scancel are (slurm.bin_dir).")
    slurm_env = Dict(config=True, help="Environment for SLURM's commands (SLURM_CONF), also given to the server.")
    limits = Dict(config=True, help="The most a user may ask for: cores, memory, walltime (the slurm.max_ settings), "
                                    "and the partitions offered (slurm.partition, then slurm.partitions).")
    defaults = Dict(config=True, help="What a server gets unless the user asks otherwise: partition, cores, memory, walltime.")
    startup_poll_interval = Float(2.0, config=True)
    last_end = ""  # why the user's last server ended, told at the next start

    @default("req_username")
    def _unix_name(self):
        account = self._account()
        return account.unix_name if account else self.user.name

    @default("req_homedir")
    def _homedir(self):
        return str(self.home)

    # -- what the user asks for ----------------------------------------------------------
    @default("options_form")
    def _form(self):
        d, m = self.defaults, self.limits
        partitions = m.get("partitions") or [""]
        choose = "" if len(partitions) < 2 else (
            '<label for="partition">Partition</label><select class="form-control" name="partition" id="partition">'
            + "".join(f'<option value="{html.escape(p)}"{" selected" if p == d.get("partition", "") else ""}>'
                      f'{html.escape(p or "default")}</option>' for p in partitions)
            + "</select>")
        return choose + (
            f'<label for="cores">Cores (1–{m["cores"]})</label>'
            f'<input class="form-control" type="number" name="cores" id="cores" min="1" max="{m["cores"]}" value="{d["cores"]}">'
            f'<label for="memory">Memory (up to {m["memory"]})</label>'
            f'<input class="form-control" name="memory" id="memory" value="{d["memory"]}">'
            f'<label for="walltime">Time (hours:minutes:seconds, up to {m["walltime"]})</label>'
            f'<input class="form-control" name="walltime" id="walltime" value="{d["walltime"]}">'
        )

    def options_from_form(self, formdata):
        return {key: formdata[key][0] for key in OPTIONS if key in formdata and (formdata[key][0] or key == "partition")}

    @default("apply_user_options")
    def _apply_options_hook(self):
        return _apply_job_request

    def job_request(self) -> dict:
        """The cores, memory and time of the next job: the user's options within the admin's limits."""
        options = {"partition": "", **self.defaults, **(self.user_options or {})}
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise SpawnRefused(f"unknown server options {', '.join(sorted(unknown))}; known: {', '.join(OPTIONS)}")
        partitions = self.limits.get("partitions") or [""]
        if options["partition"] not in partitions:
            offered = ", ".join(p or "the default" for p in partitions)
            raise SpawnRefused(f"partition {options['partition']!r} is not one this hub offers ({offered})")
        try:
            cores = int(options["cores"])
            memory = parse_bytes(str(options["memory"]))
        except (TypeError, ValueError) as exc:
            raise SpawnRefused(f"cores must be a whole number and memory a size such as 4G ({exc})") from None
        limits = self.limits
        if not 1 <= cores <= int(limits["cores"]):
            raise SpawnRefused(f"{cores} cores asked for; this hub allows 1 to {limits['cores']} per server")
        if not 0 < memory <= parse_bytes(str(limits["memory"])):
            raise SpawnRefused(f"{options['memory']} of memory asked for; this hub allows up to {limits['memory']} per server")
        seconds = walltime_seconds(options["walltime"])
        if not 0 < seconds <= walltime_seconds(limits["walltime"]):
            raise SpawnRefused(f"time {options['walltime']} asked for; this hub allows up to {limits['walltime']} per server")
        minutes = max(1, -(-seconds // 60))  # sbatch counts whole minutes
        return {"nprocs": str(cores), "memory": f"{max(1, memory // 2**20)}M", "runtime": str(minutes),
                "partition": options["partition"]}

    # -- the job ---------------------------------------------------------------------------
    def get_req_subvars(self):
        line = node_ip_line(f"{self.slurm_bin_dir}/scontrol") if self.ip == NODE else ""
        return {**super().get_req_subvars(), "bin": self.slurm_bin_dir, "node_ip_line": line}

    async def listen_address(self) -> str:
        """Where the server listens: ``slurm.server_ip``, or with ``node`` its node's NodeAddr."""
        if self.ip != NODE:
            return self.ip
        host = self.state_gethost()
        record = await self.run_command(f"{self.slurm_bin_dir}/scontrol show node {shlex.quote(host)} --oneliner")
        address = node_address(record)
        if not address:
            raise SpawnFailed(500, f"SLURM has no address for node {host!r} of server job {self.job_id}")
        return address

    def get_env(self):
        env = super().get_env()
        env.update(self.slurm_env)
        return env

    def cmd_formatted_for_batch(self):
        account = self._account()
        venv_bin = self.cmd[0].rsplit("/", 1)[0]
        argv = [*self.sandbox_argv(account), f"{venv_bin}/batchspawner-singleuser", *self.cmd, *self.get_args()]
        return shlex.join(argv)

    async def run_command(self, cmd, input=None, env=None):
        return await super().run_command(cmd, input=input, env={**(env or self.get_env()), **self.slurm_env})

    async def query_job_status(self):
        """RUNNING, PENDING, NOTFOUND, or UNKNOWN when SLURM could not say (never "gone" on an error)."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        subvars = {**self.get_req_subvars(), "job_id": self.job_id}
        cmd = f"{format_template(self.exec_prefix, **subvars)} {format_template(self.batch_query_cmd, **subvars)}"
        try:
            self.job_status = await self.run_command(cmd)
        except RuntimeError as exc:  # stderr of squeue: only SLURM's "Invalid job id" means gone
            message = str(exc.args[0] if exc.args else exc)
            self.job_status = ""
            if GONE.search(message):
                return JobStatus.NOTFOUND
            self.log.warning("squeue could not report job %s of %s (%s): state unknown", self.job_id,
                             self.user.name, message.strip()[:200])
            return JobStatus.UNKNOWN
        state = self.job_state()
        if state in RUNNING:
            return JobStatus.RUNNING
        if state in PENDING:
            return JobStatus.PENDING
        return JobStatus.NOTFOUND

    def job_state(self) -> str:
        return self.job_status.split("|", 1)[0].strip() if self.job_status else ""

    def job_reason(self) -> str:
        parts = self.job_status.split("|")
        return parts[2].strip().strip("()") if len(parts) > 2 else ""  # squeue writes "(Resources)"

    def state_gethost(self):
        parts = self.job_status.split("|")
        return parts[1].strip() if len(parts) > 1 else ""

    def ended_why(self) -> str:
        state = self.job_state()
        why = ENDED_WHY.get(state, f"it ended ({state or 'no longer known to SLURM'})")
        reason = self.job_reason()
        return f"{why}{f' ({reason})' if reason and reason not in ('None', state, 'TimeLimit') else ''}"

    async def start(self):
        """Submit the job, follow it in the queue, and end the spawn as soon as the job does."""
        self.prepare_user()
        self.port = 0
        if self.server:
            self.server.port = 0
        await self.submit_batch_script()
        if not self.job_id:
            raise RuntimeError("SLURM did not accept the server job (no job id from sbatch); see the hub's log")
        while self.port == 0:  # set by batchspawner's API handler when the server reports its port
            status = await self.query_job_status()
            if status == JobStatus.NOTFOUND:
                why = self.ended_why()
                job = self.job_id
                self.clear_state()
                raise SpawnFailed(500, f"The server job {job} ended before the server started: {why}. "
                                       "Its output is in ~/.beamside-server.log.")
            await asyncio.sleep(self.startup_poll_interval)
        self.last_end = ""  # told on this start's progress page; a fresh start has nothing to tell
        self.db.commit()
        ip = await self.listen_address()
        self.log.info("server job %s of %s listening on %s:%s", self.job_id, self.user.name, ip, self.port)
        return ip, self.port

    async def poll(self):
        """As batchspawner's, but an unknown state keeps the server, and why a job ended is kept."""
        if not self.job_id:
            return 0
        status = await self.query_job_status()
        if status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
            return await self.poll_access()
        self.last_end = self.ended_why()
        self.log.warning("the server job %s of %s ended: %s", self.job_id, self.user.name, self.last_end)
        self.clear_state()
        return 1

    async def _end_now(self) -> None:
        await self.cancel_batch_job()

    # why the last server ended outlives the spawner object (JupyterHub makes a new one per start)
    def get_state(self):
        state = super().get_state()
        if self.last_end:
            state["last_end"] = self.last_end
        return state

    def load_state(self, state):
        super().load_state(state)
        self.last_end = state.get("last_end", "")

    async def progress(self):
        if self.last_end:
            yield {"message": f"Your last server ended: {self.last_end}."}
        told = ""
        while True:
            state, message = self.job_state(), ""
            if state in PENDING:
                where = f"partition {self.req_partition}" if self.req_partition else "the default partition"
                reason = self.job_reason()
                why = _REASONS.get(reason.split(",")[0], reason)
                message = f"Job {self.job_id} waiting in the queue of {where}" + (f": {why}" if why else "")
            elif state in RUNNING:
                yield {"message": f"Job {self.job_id} running on {self.state_gethost()}: starting the server"}
                return
            if message and message != told:  # each change once, not a line a second
                yield {"message": message}
                told = message
            await asyncio.sleep(1)


class ServerPortReport(APIHandler):
    """``POST /hub/api/batchspawner`` from ``batchspawner-singleuser``: the port its server listens on.

    Replaces batchspawner 1.3's handler (``batchspawner/api.py``), which does ``setattr(spawner,
    key, value)`` for every key of the body that the spawner has, authenticated only by the token
    every server holds in its environment. From a notebook, a user could then rewrite
    ``exec_prefix`` or ``batch_cancel_cmd`` (shell commands the hub runs as root), ``cmd``, ``ip``
    or the admin's ``limits``. Here the body is ``{"port": n}`` and nothing else, accepted once,
    while that server is starting; anything else is refused and logged.
    """

    @web.authenticated
    def post(self):
        token = self.get_auth_token()
        spawner = next((s for s in self.current_user.spawners.values() if s.api_token == token), None)
        body = self.get_json_body()
        port = body.get("port") if isinstance(body, dict) else None
        if spawner is None or not isinstance(spawner, BeamsideSlurmSpawner):
            raise web.HTTPError(403, "only a server job reports its port, with its own token")
        if set(body or {}) != {"port"} or type(port) is not int or not 1 <= port <= 65535:
            self.log.warning("refused a port report for %s's server naming %s", spawner.user.name, sorted(body or {}))
            raise web.HTTPError(400, 'the server reports {"port": <1..65535>} and nothing else')
        if spawner.pending != "spawn" or spawner.port:
            self.log.warning("refused a second port report for %s's server", spawner.user.name)
            raise web.HTTPError(409, "this server has already reported its port")
        spawner.port = port
        self.set_status(201)
        self.finish({"message": "port recorded"})


# batchspawner appended its handler to JupyterHub's API routes when imported: put ours in its place.
default_handlers[:] = [(route, ServerPortReport if handler is BatchSpawnerAPIHandler else handler)
                       for route, handler in default_handlers]


def _apply_job_request(spawner: BeamsideSlurmSpawner, user_options: dict) -> None:
    """JupyterHub's apply_user_options hook (5.3+): the job's cores, memory and time, checked against
    the limits before anything is submitted. A refused request is not remembered for the next start
    (JupyterHub keeps the last options otherwise, and a start without options would repeat them)."""
    try:
        request = spawner.job_request()
    except SpawnRefused:
        spawner.orm_spawner.user_options = {}
        spawner.db.commit()
        raise
    spawner.req_nprocs, spawner.req_memory, spawner.req_runtime = request["nprocs"], request["memory"], request["runtime"]
    spawner.req_partition = request["partition"]


_REASONS = {  # squeue's reasons, as a user reads them
    "Resources": "waiting for resources",
    "Priority": "other jobs come first",
    "ReqNodeNotAvail": "the nodes it needs are not available (drained or down)",
    "PartitionDown": "the partition is down",
    "QOSMaxCpuPerUserLimit": "you already use the most cores you may",
    "AssocGrpCpuLimit": "your account's core limit is reached",
    "JobHeldAdmin": "held by an administrator",
    "BeginTime": "not to start yet",
    "Dependency": "waiting for another job",
}
