"""A private single-node SLURM for tests: munged, slurmctld and slurmd of their own, stopped by PID.

Everything lives in one folder made for the run: a munge key and socket, a generated
``slurm.conf``, the controller's state, the node's spool, the daemons' logs. Clients find it
through ``SLURM_CONF`` (``SlurmCluster.env``), so a system-wide SLURM or munge is neither used
nor disturbed. The daemons run in the foreground as children of the test process, so stopping
them is by PID and leaves nothing behind.

The node is another host as far as the network goes: slurmd (and so every job) runs in a network
namespace of its own, joined to the host by a veth pair — the host is ``HOST_IP``, the node
``NODE_IP``. The hub reaches servers and schedulers on the node's address, and jobs reach the hub
on the host's, as on a cluster whose nodes are separate machines; nothing of the host's loopback
is visible to a job.

SLURM 22.05 (Debian 12) has no bind-address option: slurmctld and slurmd listen on all
addresses, on free ports picked here, and every message is authenticated with this run's own
munge key.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .deploy import free_ports

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# The node's own network (addresses of the tests' private link, nowhere else routed).
HOST_IP, NODE_IP, PREFIX = "10.251.0.1", "10.251.0.2", 24
DAEMONS = ("munged", "slurmctld", "slurmd")
BINARIES = ("/usr/sbin/munged", "/usr/sbin/mungekey", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch")
SLURM_CONF = """\
# Generated for one test run by tests/slurm.py: nothing here is read by a system-wide SLURM.
ClusterName=beamside-test
SlurmctldHost={node}({host_ip})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
PlugStackConfig={folder}/plugstack.conf
# No cgroups: processes are tracked through /proc, limits are bookkeeping (enforced elsewhere).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Jobs share the node by cores and memory; without DefMemPerCPU a job without --mem takes it all.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
# Start jobs as soon as they are submitted (else on 3 s boundaries); a cancelled job is killed soon.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
KillWait=2
# More CPUs than the machine has, so three users' servers, schedulers and workers fit at once;
# config_overrides keeps slurmd from draining the node for the difference.
SlurmdParameters=config_overrides
NodeName={node} NodeHostname={hostname} NodeAddr={node_ip} CPUs=16 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=long Nodes={node} MaxTime=INFINITE State=UP
"""


class SlurmNotReady(RuntimeError):
    """The private SLURM did not come up; the message names the daemon and its log."""


@dataclass
class SlurmCluster:
    """A running private SLURM: its folder, its node and the environment its clients need."""

    folder: Path
    node: str
    env: dict
    procs: dict = field(default_factory=dict)  # daemon name -> Popen
    netns: str = ""  # the node's network namespace

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def log(self, daemon: str) -> Path:
        return self.folder / "log" / f"{daemon}.log"

    def run(self, *argv: str, account=None, check: bool = True, cwd=None, input: str | None = None):
        """A SLURM client command against this cluster, as root or as ``account`` (its uid and gid, no other groups)."""
        as_user, env = {}, dict(self.env)
        if account is not None:
            as_user = dict(user=account.uid, group=account.gid, extra_groups=[])
            env["HOME"] = str(cwd or self.folder)
        done = subprocess.run(list(argv), input=input, env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
                              **as_user)
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def sbatch(self, script: str, *options: str, account=None, cwd=None) -> int:
        """Submit ``script`` (a shell script's text) and return the job id."""
        done = self.run("sbatch", "--parsable", *options, account=account, cwd=cwd, input=script)
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        """The controller's record of a job (``scontrol show job``), as ``{field: value}``."""
        line = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout.strip()
        return parse_record(line)

    def wait_for_job(self, job_id: int, states: set, timeout: float = 60) -> dict:
        """Poll the job's record until its state is one of ``states``; its last record otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["JobState"] in states:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {record['JobState']} after {timeout} s, not in {sorted(states)}; "
                                   f"see {self.log('slurmctld')} and {self.log('slurmd')}")
            time.sleep(0.2)

    def node_state(self) -> str:
        """The controller's state of the node, lower case (``idle``, ``allocated``, ``drained``…).

        From ``scontrol show node``: sinfo was seen reporting ``mixed`` for a node the controller
        had as IDLE with nothing allocated (after many jobs had ended), and prints one line per
        partition the node is in."""
        done = self.run("scontrol", "show", "node", "--oneliner", self.node, check=False)
        state = parse_record(done.stdout.strip()).get("State", "") if done.returncode == 0 else ""
        return state.lower()

    def assert_drained(self, timeout: float = 60) -> None:
        """No job left and the node idle again, after a deployment stopped (this SLURM serves later modules)."""
        deadline = time.monotonic() + timeout
        while ((left := self.run("squeue", "--noheader", "--format", "%i %u %j %T %M").stdout.strip())
               or self.node_state() != "idle") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left and self.node_state() == "idle", \
            f"jobs left after the deployment stopped (node {self.node_state()}):\n{left}\n" \
            f"{self.run('scontrol', 'show', 'node').stdout}\n{self.run('squeue', '--states=all').stdout[-3000:]}"

    def stop(self, timeout: float = 30) -> None:
        """Cancel what is left of the jobs, then stop slurmd, slurmctld and munged by PID."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            if self._job_ids():
                self.run("scancel", "--full", "--quiet", *self._job_ids(), check=False)
            deadline = time.monotonic() + timeout
            while self._job_ids() and time.monotonic() < deadline:  # COMPLETING: job processes still being killed
                time.sleep(0.2)
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.netns:
            _remove_node_network(self.netns)
            self.netns = ""

    def _job_ids(self) -> list[str]:
        done = self.run("squeue", "--noheader", "--format", "%i", check=False)
        return done.stdout.split() if done.returncode == 0 else []


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=")


def parse_record(line: str) -> dict:
    """``Key=value Key2=value with spaces`` (scontrol's --oneliner) as a dict."""
    marks = list(_FIELD.finditer(line))
    return {m.group(1): line[m.end(): nxt.start() if nxt else len(line)].strip()
            for m, nxt in zip(marks, marks[1:] + [None])}


def missing_binaries() -> list[str]:
    return [path for path in BINARIES if not os.access(path, os.X_OK)]


def start_slurm(folder: Path | None = None, timeout: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in ``folder`` (a new one under /tmp by default) and wait
    until the node is idle. Raises :class:`SlurmNotReady` naming the daemon and its log."""
    folder = Path(folder or tempfile.mkdtemp(dir="/tmp", prefix="beamside-slurm-"))
    os.chmod(folder, 0o755)  # job accounts read slurm.conf and reach the munge socket
    for sub, mode in (("state", 0o700), ("spool", 0o755), ("run", 0o755), ("log", 0o700), ("munge", 0o755), ("jobs", 0o755)):
        (folder / sub).mkdir(mode=mode, exist_ok=True)
        os.chmod(folder / sub, mode)
    hostname = socket.gethostname()
    node = hostname.split(".")[0]
    munge = folder / "munge"
    ctld_port, slurmd_port = free_ports(2)
    (folder / "plugstack.conf").write_text("")
    (folder / "slurm.conf").write_text(SLURM_CONF.format(
        folder=folder, node=node, hostname=hostname, ctld_port=ctld_port, slurmd_port=slurmd_port,
        munge_socket=munge / "munge.socket", host_ip=HOST_IP, node_ip=NODE_IP))
    cluster = SlurmCluster(folder, node, env={**_client_env(), "SLURM_CONF": str(folder / "slurm.conf")})
    try:
        cluster.netns = _node_network()
        _start_munged(cluster, munge)
        cluster.procs["slurmctld"] = _daemon(cluster, "slurmctld", ["/usr/sbin/slurmctld", "-D", "-i"])
        # nsenter, not `ip netns exec`: that remounts /sys, without the cgroup file system slurmd needs
        cluster.procs["slurmd"] = _daemon(cluster, "slurmd", ["nsenter", f"--net=/run/netns/{cluster.netns}",
                                                              "/usr/sbin/slurmd", "-D", "-N", node])
        _wait_idle(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


_NETNS_PREFIX = "bs-slurm-node-"


def _node_network() -> str:
    """A network namespace for the node, its veth end ``NODE_IP``, the host's ``HOST_IP``.

    A namespace left by a run that was killed is removed first (its pid is in the name), as it
    would hold the same addresses."""
    for name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n"):
        name = name.split(" ")[0]
        if name.startswith(_NETNS_PREFIX) and not os.path.exists(f"/proc/{name[len(_NETNS_PREFIX):]}"):
            _remove_node_network(name)
    netns = f"{_NETNS_PREFIX}{os.getpid()}"
    host_end, node_end = f"bsh{os.getpid() % 100000}", f"bsn{os.getpid() % 100000}"
    for argv in (["ip", "netns", "add", netns],
                 ["ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end],
                 ["ip", "link", "set", node_end, "netns", netns],
                 ["ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", host_end],
                 ["ip", "link", "set", host_end, "up"],
                 ["ip", "-n", netns, "addr", "add", f"{NODE_IP}/{PREFIX}", "dev", node_end],
                 ["ip", "-n", netns, "link", "set", node_end, "up"],
                 ["ip", "-n", netns, "link", "set", "lo", "up"]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            _remove_node_network(netns)
            raise SlurmNotReady(f"the node's network: {' '.join(argv)} failed: {done.stderr.strip()}")
    return netns


def _remove_node_network(netns: str) -> None:
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True)  # takes both veth ends with it


def _client_env() -> dict:
    # A developer's own SLURM settings (SLURM_*, SBATCH_*, SQUEUE_*, ...) must not leak into the tests.
    return {k: v for k, v in os.environ.items() if not re.match(r"(SLURM|SBATCH|SALLOC|SRUN|SQUEUE|SINFO|SCANCEL)_", k)}


def _start_munged(cluster: SlurmCluster, munge: Path) -> None:
    """munged with a key, socket, pid, log and seed of this run's own, as the ``munge`` account."""
    pw = pwd.getpwnam("munge")
    os.chown(munge, pw.pw_uid, pw.pw_gid)
    key = munge / "munge.key"
    if not key.exists():
        subprocess.run(["/usr/sbin/mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    os.chown(key, pw.pw_uid, pw.pw_gid)
    os.chmod(key, 0o400)
    argv = ["/usr/sbin/munged", "--foreground", f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"]
    cluster.procs["munged"] = _daemon(cluster, "munged", argv, user=pw)
    _wait_for(cluster, "munged", lambda: (munge / "munge.socket").is_socket(), 15, munge / "munged.log")


def _daemon(cluster: SlurmCluster, name: str, argv: list[str], user=None) -> subprocess.Popen:
    as_user = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[]) if user is not None else {}
    out = open(cluster.folder / "log" / f"{name}.out", "ab")
    try:
        return subprocess.Popen(argv, env=cluster.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cluster.folder, start_new_session=True, **as_user)
    finally:
        out.close()


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    _wait_for(cluster, "slurmd", lambda: cluster.node_state() == "idle", timeout, cluster.log("slurmd"))


def _wait_for(cluster: SlurmCluster, daemon: str, ready, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise SlurmNotReady(f"{name} exited with {proc.returncode} while starting; {_logs(cluster, name)}")
        if time.monotonic() > deadline:
            raise SlurmNotReady(f"{daemon} not ready after {timeout} s (node state {cluster.node_state()!r}); "
                                f"{_logs(cluster, daemon)}")
        time.sleep(0.1)


def _logs(cluster: SlurmCluster, name: str) -> str:
    """Where a daemon's messages are, with their last lines (early errors go to its output, not its log)."""
    log = cluster.folder / "munge" / "munged.log" if name == "munged" else cluster.log(name)
    out = cluster.folder / "log" / f"{name}.out"
    return f"see {log} and {out}:\n" + "\n".join(_tail(path) for path in (log, out) if path.exists())


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({err})"


def beamside_settings(cluster: SlurmCluster) -> dict:
    """The settings of a `beamside up` whose servers and clusters are jobs of ``cluster``.

    Jobs reach the hub on the host's address and listen on their node's, which they and the hub
    look up in SLURM (``server_ip: node``, as on a cluster of many nodes).
    Servers ask for 1G (not the 4G default), so three users' servers and their Dask jobs fit on
    the one node; the hub polls the queue every half second and checks access every 2 s, so
    tests see a job's or a grant's change quickly.
    """
    return {
        "platform": "slurm",
        "slurm": {"conf": str(cluster.conf), "poll_every": 0.5, "memory": "1G", "max_cores": 4,
                  "walltime": "1:00:00", "max_walltime": "2:00:00", "hub_ip": HOST_IP, "server_ip": "node",
                  "partitions": ["long"]},
        "singleuser": {"access_check_every": 2},
    }


@pytest.fixture(scope="session")
def slurm():
    """One private SLURM for the whole run (as root, with Debian's slurmctld, slurmd and munge)."""
    if os.geteuid() != 0:
        pytest.skip("a private SLURM needs root (slurmd starts jobs as their submitters)")
    if missing_binaries():
        pytest.skip(f"SLURM or munge not installed ({', '.join(missing_binaries())}); .ci/setup.sh installs them as root")
    t0 = time.perf_counter()
    cluster = start_slurm()
    figures = {"private SLURM up, node idle (s)": round(time.perf_counter() - t0, 2)}
    yield cluster
    t0 = time.perf_counter()
    cluster.stop()
    figures["private SLURM jobs cancelled and daemons stopped (s)"] = round(time.perf_counter() - t0, 2)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "slurm-figures.json").write_text(json.dumps(figures, indent=1))
    shutil.rmtree(cluster.folder, ignore_errors=True)
