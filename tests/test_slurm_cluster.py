"""The private SLURM of tests/slurm.py for real: jobs run as their submitter, and the states a
future SLURM spawner polls (``scontrol show job``) for a finished, failed, cancelled and timed-out job.

One slurmctld and slurmd serve the whole run (the session fixture ``slurm``); each test's jobs run
as a beamside account made here and removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from beamside_hub.accounts import ensure_account

HUB_USER = "zz-slurm-job"


@pytest.fixture(scope="module")
def account(slurm):
    """A beamside account (``bs-zz-slurm-job``) with a job folder of its own in the cluster's folder."""
    home = slurm.folder / "jobs" / HUB_USER
    acct = ensure_account(HUB_USER, str(home))
    try:
        home.mkdir(mode=0o700)
        os.chown(home, acct.uid, acct.gid)
        yield acct, home
    finally:
        for command in ("userdel", "groupdel"):
            subprocess.run([command, acct.unix_name], capture_output=True)


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes running as ``uid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields and int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry.name))
    return pids


def parse_config(text: str) -> dict:
    """``scontrol show config``: one ``Name = value`` a line."""
    pairs = (line.split("=", 1) for line in text.splitlines() if " = " in line)
    return {name.strip(): value.strip() for name, value in pairs}


def submit(slurm, account, script: str, *options: str) -> int:
    acct, home = account
    return slurm.sbatch(script, "--output", str(home / "slurm-%j.out"), "--chdir", str(home), *options,
                        account=acct, cwd=str(home))


def test_node_is_idle_and_configured_by_this_run_only(slurm):
    assert slurm.node_state() == "idle"
    config = parse_config(slurm.run("scontrol", "show", "config").stdout)
    assert config["SLURM_CONF"] == str(slurm.conf)  # a system-wide slurm.conf is neither read nor written
    assert config["ClusterName"] == "beamside-test"
    assert config["StateSaveLocation"] == str(slurm.folder / "state")
    assert config["AuthInfo"] == f"socket={slurm.folder / 'munge' / 'munge.socket'}"


def test_job_runs_as_its_submitter(slurm, account):
    acct, home = account
    job = submit(slurm, account, "#!/bin/sh\nid -u\n")
    record = slurm.wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0")
    assert record["UserId"] == f"{acct.unix_name}({acct.uid})"
    out = home / f"slurm-{job}.out"
    assert out.read_text().strip() == str(acct.uid)
    assert out.stat().st_uid == acct.uid


def test_failed_job_shows_its_exit_code(slurm, account):
    job = submit(slurm, account, "#!/bin/sh\nexit 3\n")
    record = slurm.wait_for_job(job, {"COMPLETED", "FAILED"})
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "3:0")


def test_cancelled_job_is_cancelled_and_its_processes_are_gone(slurm, account):
    acct, home = account
    job = submit(slurm, account, "#!/bin/sh\necho started\nexec sleep 300\n")
    assert slurm.wait_for_job(job, {"RUNNING"})["JobState"] == "RUNNING"
    slurm.run("scancel", str(job), account=acct, cwd=str(home))  # the submitter may cancel their own job
    record = slurm.wait_for_job(job, {"CANCELLED"})
    assert record["JobState"] == "CANCELLED"
    deadline = time.monotonic() + 30
    while processes_of(acct.uid) and time.monotonic() < deadline:  # killed after the KillWait grace
        time.sleep(0.2)
    assert processes_of(acct.uid) == []


# A job over its time limit (TIMEOUT, reason TimeLimit) is tested through the hub, where it matters:
# tests/test_slurm_hub.py::test_walltime_expiry_is_told_at_the_next_start.
