"""``beamside up``: the whole deployment on one machine, supervised.

Prepares the state folder (secrets, demo data and catalog, demo logins),
decides whether users can be isolated here, writes the runtime file, then runs
JupyterHub (which starts the proxy, the Dask gateway, the idle culler and the
audit service) and restarts it if it dies — user servers keep running across
such a restart. Ctrl-C or SIGTERM stops user servers, the hub, the proxy and
anything left in the users' sandboxes: no orphan process.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import analysis_lib

from . import auth, limits, network, sandbox
from .platform import platform_named, stopping_marker
from .runtime import Paths, Runtime
from .settings import Settings

DEMO_USERS = ("alice", "bob", "carol", "admin")
REPO = Path(analysis_lib.__file__).resolve().parent.parent
HUB_PACKAGE = Path(__file__).resolve().parent


def _say(text: str) -> None:
    print(f"[beamside] {text}", flush=True)


def _secret(folder: Path, name: str, make=lambda: secrets.token_hex(32)) -> str:
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
    return path.read_text().strip()


def _find_chp() -> str:
    for candidate in (os.environ.get("BEAMSIDE_CHP"), REPO / ".tooling/chp/node_modules/.bin/configurable-http-proxy",
                      shutil.which("configurable-http-proxy")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise SystemExit("configurable-http-proxy not found: run `make setup` (it installs it under .tooling/)")


def _traversable_by_others(path: Path) -> Path | None:
    """The first folder on the way to ``path`` that other users cannot enter, if any."""
    for parent in [*reversed(path.resolve().parents), path.resolve()]:
        if parent.is_dir() and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def decide_isolation(mode: str, software: list[str], *, demo: bool) -> tuple[bool, str]:
    """Isolated, or why not. Fails closed: user code never runs unisolated by accident.

    ``auto`` and ``bubblewrap`` isolate or stop with the reason. An unisolated deployment is only
    what ``isolation: none`` asks for explicitly, only with demo data, and never as root (every
    user's code would run as root).
    """
    if mode == "none":
        if not demo:
            raise SystemExit("singleuser.isolation: none is only for a demo with generated data; with a facility "
                             "catalog (data.catalog) users must be isolated")
        if os.geteuid() == 0:
            raise SystemExit("singleuser.isolation: none would run every user's code as root: run `beamside up` "
                             "as an ordinary user for an unisolated demo, or drop the setting to isolate users")
        return False, "disabled in the settings (singleuser.isolation: none)"
    ok, why = sandbox.can_isolate()
    if ok:
        for p in software:
            blocked = _traversable_by_others(Path(p))
            if blocked:
                ok, why = False, (f"users' accounts cannot reach {p}: {blocked} is not searchable by others. Clone "
                                  f"beamside where other users can enter (e.g. under /opt or /srv), or `chmod o+x {blocked}`")
                break
    if not ok:
        raise SystemExit(f"beamside cannot isolate users here: {why}. (For a demo without isolation, as an ordinary "
                         "user and with demo data only: singleuser.isolation: none)")
    return ok, why


def _refuse_if_visible(paths: Paths, settings_file: str | None, beamtimes: list[Path]) -> None:
    """Stop if the settings, the catalog or the state lie where users' sandboxes see them (a bound path)."""
    bound = [Path("/usr"), *(Path("/etc") / n for n in sandbox.ETC_ALLOWED), *map(Path, paths.software), *beamtimes]
    for what, place in (("the settings file", settings_file), ("the catalog", paths.catalog),
                        ("the state folder", paths.state), ("the passwords file", paths.passwords_file)):
        if not place:
            continue
        real = Path(os.path.realpath(place))
        for b in bound:
            b = Path(os.path.realpath(b))
            if real == b or b in real.parents:
                raise SystemExit(f"{what} {place} lies inside {b}, which every user's sandbox sees: move it "
                                 "to a folder users cannot read (e.g. /srv/beamside)")


def check_database(setting: str, url: str | None, timeout: int = 10) -> None:
    """Stop unless the external database ``url`` (the setting named ``setting``) answers.

    Without this, a wrong ``hub.db_url`` shows only as "JupyterHub did not start", and a wrong
    ``dask.db_url`` as a hub whose gateway never comes up. The message shows the URL without its
    password; the connection gives up after ``timeout`` seconds rather than hang on a lost host.
    """
    if not url or url.startswith("sqlite"):  # the state folder's own file: made when first used
        return
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:  # its message repeats the URL, password and all
        raise SystemExit(f"{setting} is not a database URL (e.g. postgresql://user:password@host:5432/name)") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool,
                                  connect_args={"connect_timeout": timeout} if parsed.get_backend_name() == "postgresql" else {})
        with engine.connect():
            pass
    except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as exc:
        raise SystemExit(f"{setting}: no driver for {shown} here ({exc}); for PostgreSQL: "
                         "pip install 'beamside[postgres]'") from None
    except sa.exc.DBAPIError as exc:
        raise SystemExit(f"{setting}: cannot connect to the database {shown}: {str(exc.orig).strip()}") from None


def prepare(config: str | None, overrides: dict | None = None) -> Runtime:
    """Resolve settings into the runtime file; create state, secrets, demo data and logins."""
    s = Settings.from_yaml(config, overrides)
    check_database("hub.db_url", s.hub.db_url)
    if s.dask.enabled:
        check_database("dask.db_url", s.dask.db_url)
    os.umask(0o077)  # state, secrets and databases are root's alone unless a mode says otherwise
    state = Path(s.hub.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o711)  # users may pass through to their homes, never list
    secret_dir = state / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    software = sorted({sys.prefix, str(REPO / "analysis_lib"), str(HUB_PACKAGE)})
    homes, sandboxes, gateway_dir = state / "homes", state / "sandboxes", state / "gateway"
    for folder in (homes, sandboxes, gateway_dir):  # users pass through to their own part only
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o711)
    (gateway_dir / "db").mkdir(mode=0o700, exist_ok=True)
    (state / "run").mkdir(exist_ok=True)
    os.chmod(state / "run", 0o711)
    (state / "logs").mkdir(mode=0o700, exist_ok=True)
    demo = not s.data.catalog
    isolate, why = decide_isolation(s.singleuser.isolation, [*software, str(homes)], demo=demo)
    limits_said = limits.describe(s) if isolate and s.platform == "local" else ""
    catalog = s.data.catalog
    if demo:
        from analysis_lib.demo import write_demo_data

        _say(f"writing demo beamtimes ({s.data.demo_size}) under {state / 'demo'} …")
        old_umask = os.umask(0o022)  # users' accounts read the demo beamtimes
        try:
            catalog = str(write_demo_data(state / "demo", s.data.demo_size))
        finally:
            os.umask(old_umask)
    paths = Paths(
        state=str(state), catalog=catalog, passwords_file=s.auth.passwords_file, venv=sys.prefix, chp=_find_chp(),
        software=software, examples=str(REPO / "examples"), homes=str(homes), sandboxes=str(sandboxes),
        audit_socket=str(state / "run" / "audit.sock"), audit_log=str(state / "audit.log"),
        gateway_dir=str(gateway_dir), gateway_config=str(HUB_PACKAGE / "dask_gateway_config.py"),
    )
    from analysis_lib.catalog import load_catalog

    _refuse_if_visible(paths, config, [bt.real_path for bt in load_catalog(paths.catalog).beamtimes])
    for db in state.glob("*.sqlite"):  # made before umask 077 was set: hub databases hold OAuth secrets
        os.chmod(db, 0o600)
    platform = platform_named(s.platform)
    private = isolate and s.singleuser.network == "private" and platform.can_have_private_network
    if private:
        network.ensure_internal_address()
    secret_values = {name: _secret(secret_dir, name)
                     for name in ("proxy_token", "gateway_token", "supervisor_token", "crypt_key")}
    secret_values["gateway_db_key"] = _secret(
        secret_dir, "gateway_db_key", lambda: __import__("base64").b64encode(secrets.token_bytes(32)).decode()
    )
    runtime = Runtime(
        settings=s,
        paths=paths,
        addresses=platform.derive_addresses(s, private),
        secrets=secret_values,
        platform=platform.name,
        network="private" if private else "host",
        isolate=isolate,
        isolation=why,
        limits=limits_said,
        demo=demo,
        demo_logins=_demo_logins(Path(paths.passwords_file)) if s.auth.type == "passwords" and demo else {},
    )
    return runtime.save(str(state / "runtime.json"))


def _demo_logins(passwords_file: Path) -> dict:
    """Random passwords for the demo users, made once: when the passwords file is first created.

    Only their hashes are kept; the plain passwords are shown once, in the first banner (and held
    in the root-only runtime file of that start). A demo user an admin deleted stays deleted.
    """
    if passwords_file.exists():
        return {}
    logins = {user: secrets.token_urlsafe(12) for user in DEMO_USERS}
    for user, password in logins.items():
        auth.set_password(passwords_file, user, password)
    return logins


class Supervisor:
    """Runs JupyterHub, restarts it if it dies, and stops everything on request."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.state = Path(runtime.paths.state)
        self.hub: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.stopping = False

    @property
    def url(self) -> str:
        hub = self.runtime.settings.hub
        return f"http://{hub.ip}:{hub.port}"

    def start_proxy(self) -> None:
        """The public proxy runs beside the hub, not under it: a hub restart leaves every route,
        and every open notebook or kernel connection, in place (as on Kubernetes)."""
        hub = self.runtime.settings.hub
        log = _open_log(self.state / "logs", "proxy.log")
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.runtime.secrets["proxy_token"]}
        self.proxy = subprocess.Popen(
            [self.runtime.paths.chp, "--ip", hub.ip, "--port", str(hub.port),
             "--api-ip", "127.0.0.1", "--api-port", str(hub.proxy_api_port),
             "--error-target", f"{self.runtime.addresses.hub_bind_url}/hub/error", "--log-level", "warn"],
            cwd=self.state, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        (self.state / "proxy.pid").write_text(str(self.proxy.pid))

    def start_relay(self) -> None:
        """Users' processes reach the gateway's scheduler proxy on the internal address (their own
        namespace's route to the host, or the hub host's address on the cluster network for SLURM
        jobs); it listens on the public one (for scripts from outside), so the supervisor relays."""
        hub, dask = self.runtime.settings.hub, self.runtime.settings.dask
        internal = self.runtime.addresses.gateway_tcp.rsplit(":", 1)[0]
        if dask.enabled and hub.ip not in ("0.0.0.0", "", internal):
            network.start_relay((internal, dask.scheduler_port), (hub.ip, dask.scheduler_port))

    def start_hub(self) -> None:
        log = _open_log(self.state / "logs", "jupyterhub.log")
        env = {**os.environ, "BEAMSIDE_RUNTIME": self.runtime.file}
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        self.hub = subprocess.Popen(
            [str(Path(sys.prefix) / "bin" / "jupyterhub"), "-f", str(HUB_PACKAGE / "jupyterhub_config.py")],
            cwd=self.state, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        (self.state / "hub.pid").write_text(str(self.hub.pid))

    def restore_routes(self, timeout: float = 30) -> None:
        """A new proxy knows no routes, and the hub re-adds them only on its activity check (every
        ``last_activity_interval``, minutes): ask it now (``POST /proxy``, the check itself). Until the
        new proxy listens the request fails, so it is retried; a hub that is down restores every route
        when it starts anyway."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping and self.proxy.poll() is None:
            try:
                restored = self.api("POST", "/proxy").ok
            except requests.RequestException:  # the hub is not answering (yet)
                restored = False
            if restored:
                return
            time.sleep(0.3)
        _say(f"the hub did not restore the proxy's routes in {timeout:.0f} s; it will on its next check")

    def api(self, method: str, path: str, **kwargs):
        import requests

        token = self.runtime.secrets["supervisor_token"]
        return requests.request(method, f"{self.runtime.addresses.hub_api_url}{path}",
                                headers={"Authorization": f"token {token}"}, timeout=10, **kwargs)

    def wait_ready(self, timeout: float = 120) -> bool:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                return False
            try:  # through the public proxy: ready means routes are in place, not just the hub API
                if requests.get(f"{self.url}/hub/api/", timeout=5).ok:
                    return True
            except Exception:
                pass
            time.sleep(0.3)
        return False

    def banner(self) -> None:
        r = self.runtime
        _say(f"JupyterHub is up: {self.url}")
        _say(f"isolation: {'ON — ' if r.isolate else 'OFF (DEMO MODE, users are NOT isolated) — '}{r.isolation}")
        if not r.isolate:
            _say("!!! every user can read every file this account can read: a demo only, never with real data !!!")
        if r.limits:
            _say(r.limits)
        logins = r.demo_logins
        for user, password in sorted(logins.items()):
            _say(f"  login: {user:<6} password: {password}")
        if logins:
            _say("  (shown this once; `beamside passwd USER` sets a new one)")
        elif r.settings.auth.type == "passwords":
            _say(f"logins: the passwords in {r.paths.passwords_file} (set one with `beamside passwd USER`)")
        _say(f"catalog: {r.paths.catalog}   audit log: {r.paths.audit_log}")
        _say(f"logs: {self.state / 'logs'}   stop with Ctrl-C")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        Path(stopping_marker(self.runtime.paths)).unlink(missing_ok=True)  # a start after a stop
        self.start_proxy()
        self.start_relay()
        self.start_hub()
        if not self.wait_ready():
            _say(f"JupyterHub did not start; see {self.state / 'logs' / 'jupyterhub.log'}")
            self.shutdown()
            return 1
        self.banner()
        while not self.stopping:
            time.sleep(0.5)
            if self.proxy.poll() is not None and not self.stopping:
                _say(f"the proxy exited ({self.proxy.returncode}); restarting it and its routes")
                self.start_proxy()
                self.restore_routes()
            if self.hub.poll() is not None and not self.stopping:
                _say(f"JupyterHub exited ({self.hub.returncode}); restarting it (user servers keep running)")
                _end_orphaned_services(self.runtime.addresses.hub_api_url)
                self.start_hub()
                self.wait_ready()
        self.shutdown()
        return 0

    def _on_signal(self, signum, frame):
        self.stopping = True

    def shutdown(self) -> None:
        _say("stopping user servers, the hub, the proxy and the gateway …")
        try:
            response = self.api("GET", "/users")
            users = response.json() if response.ok else []
            for user in users:
                for name in (user.get("servers") or {}):
                    self.api("DELETE", f"/users/{user['name']}/servers/{name}" if name else f"/users/{user['name']}/server")
            deadline = time.monotonic() + 30
            while users and time.monotonic() < deadline and any(u.get("servers") for u in self.api("GET", "/users").json()):
                time.sleep(0.5)
        except Exception as exc:
            _say(f"could not stop user servers through the hub ({exc}); killing what is left")
        # the gateway stops its clusters only when beamside stops, not on a hub restart
        Path(stopping_marker(self.runtime.paths)).touch()
        if self.hub and self.hub.poll() is None:
            self.hub.terminate()
            try:
                self.hub.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.hub.pid, signal.SIGKILL)
        if self.proxy and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
        _kill_leftovers(self.state)
        if self.runtime.private_network:
            network.remove_unused()  # namespaces other deployments still use stay
        _say("stopped")


def _open_log(folder: Path, name: str):
    """A service's log, appended to; created root-only and never through a symlink."""
    return os.fdopen(os.open(folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "ab")


def _end(procs: list, timeout: float) -> None:
    """SIGTERM, then SIGKILL for whatever still runs after ``timeout`` seconds."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _end_orphaned_services(hub_api_url: str, timeout: float = 30) -> None:
    """The services a dead hub started (the gateway, the culler, the audit socket) are ended first.

    A hub that exits cleanly stops its services; one killed outright (SIGKILL, the OOM killer)
    leaves them running, and the next hub's would then fail on their ports ("address in use") —
    the gateway, after marking every cluster stopped. They are this account's processes whose
    environment names a service of this hub (``JUPYTERHUB_SERVICE_NAME`` and this hub's API URL);
    single-user servers carry no service name and keep running. The gateway, ended with SIGTERM,
    stops its clusters (on SLURM: cancels their jobs) as on any hub restart.
    """
    import psutil

    services = []
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.info["uids"].real != os.getuid() or proc.pid == os.getpid():
                continue
            env = proc.environ()
            if env.get("JUPYTERHUB_SERVICE_NAME") and env.get("JUPYTERHUB_API_URL") == hub_api_url:
                services.append(proc)
                _say(f"ending the {env['JUPYTERHUB_SERVICE_NAME']} service the last hub left running (pid {proc.pid})")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    _end(services, timeout)


def _kill_leftovers(state: Path) -> None:
    """Whatever still runs from this deployment's state folder (sandboxes, clusters, services) is ended.

    Sandboxed processes are recognised by their command line (bwrap binds
    paths under the state folder) or working folder (homes and cluster folders
    are there) — never by account alone: another deployment on the same
    machine may run servers for the same users.
    """
    import psutil

    me = os.getpid()
    victims = []
    for proc in psutil.process_iter(["pid", "username", "cmdline", "cwd"]):
        try:
            if proc.pid == me:
                continue
            if str(state) in " ".join(proc.info["cmdline"] or []) or str(proc.info["cwd"] or "").startswith(str(state)):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    _end(victims, 5)


def main(config: str | None = None) -> int:
    runtime = prepare(config)
    return Supervisor(runtime).run()
