"""A throwaway PostgreSQL server for tests: the Debian binaries, run as the ``postgres`` account.

Its data folder and Unix socket live in one temporary folder; it listens on a free port of
127.0.0.1 only, and is stopped by its PID. The ``postgres`` superuser logs in over the socket
(peer authentication, as the package's own clusters do); the role the deployment uses needs
its password over TCP, as it would against a facility's database server.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .deploy import free_ports

ACCOUNT = "postgres"  # made by Debian's postgresql-common


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found under /usr/lib/postgresql: run `make setup` (as root)")
    return found[-1]


class Postgres:
    """One server with one login role (``role``, its ``password``) owning the ``databases`` it made."""

    def __init__(self, databases: tuple[str, ...], role: str = "beamside"):
        self.databases, self.role = databases, role
        self.password = secrets.token_urlsafe(16)
        self.folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="beamside-pg-"))
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    def url(self, database: str) -> str:
        return f"postgresql://{self.role}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, user=ACCOUNT, group=pwd.getpwnam(ACCOUNT).pw_gid, extra_groups=[], cwd=self.folder,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, capture_output=True, text=True,
                              check=True, **kwargs)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """``sql`` run by the superuser over the socket; its rows, unaligned and without headers."""
        return self._as_postgres(_bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.folder),
                                 "-p", str(self.port), "-U", ACCOUNT, "-d", database, "-c", sql).stdout

    def start(self, timeout: float = 60) -> Postgres:
        account = pwd.getpwnam(ACCOUNT)
        os.chown(self.folder, account.pw_uid, account.pw_gid)
        data = self.folder / "data"
        self._as_postgres(_bin("initdb"), "-D", str(data), "-U", ACCOUNT, "--auth-local=peer",
                          "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
        with open(self.folder / "postgres.log", "ab") as log:  # the server keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [_bin("postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off", "-c", "max_connections=50"],
                user=ACCOUNT, group=account.pw_gid, extra_groups=[], cwd=self.folder, env={"LC_ALL": "C.UTF-8"},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while subprocess.run([_bin("pg_isready"), "-q", "-h", str(self.folder), "-p", str(self.port)], check=False).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{(self.folder / 'postgres.log').read_text()[-3000:]}")
            time.sleep(0.2)
        self.psql(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'")
        for name in self.databases:
            self.psql(f"CREATE DATABASE {name} OWNER {self.role}")
        return self

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        """``sql`` run as the deployment's role, over TCP with its password (what the hub does)."""
        import psycopg

        with psycopg.connect(self.url(database), connect_timeout=10) as conn:
            return conn.execute(sql, params).fetchall()

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, not waited for), then SIGKILL; the folder goes."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
