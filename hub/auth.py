"""Login for the embedded deployment: one password per user, stored only as a hash.

Facilities log users in through their identity provider (OpenID Connect,
configured with oauthenticator's GenericOAuthenticator in
``jupyterhub_config.py``). For a single machine and for demos, this
authenticator checks per-user passwords against a YAML file of scrypt hashes
(``user: scrypt$n$r$p$salt$hash``) that the admin manages with
``beamside passwd``; no shared password, no plain text at rest.

A password check is deliberately expensive, which makes logins a target
(security review, issue 17, finding 11). So checks run in a small thread
pool beside the hub's event loop, with a bound on how many may wait (a flood
is refused, not queued); repeated failures per user name and per client
address are refused for a while (:class:`LoginThrottle`); and an unknown user
costs the same scrypt work as a known one, so answers do not tell which
names exist.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Float, Integer, List, Unicode

# OWASP's minimum for scrypt (Password Storage Cheat Sheet): N=2^17, r=8, p=1 (128 MiB, ~0.5 s here).
# Hashes made with other parameters keep verifying with the parameters stored beside them.
_N, _R, _P = 2**17, 8, 1
_MAXMEM_LIMIT = 2**30  # refuse stored parameters that would need more than 1 GiB per check


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The one place scrypt runs (the tests count its calls)."""
    # hashlib's default maxmem (32 MiB) is below what n=2^17, r=8 needs: 128 * r * (n + p) bytes.
    maxmem = 128 * r * (n + p) + 2**20
    if maxmem > _MAXMEM_LIMIT:
        raise ValueError(f"scrypt parameters n={n} r={r} p={p} need more than {_MAXMEM_LIMIT} bytes")
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, _N, _R, _P)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = _scrypt(password.encode(), base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


# Checked when the user name is unknown: the current parameters, a random salt and a random digest,
# so the work is that of a real check and no password ever matches it.
_DUMMY_HASH = "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(secrets.token_bytes(16)), _b64(secrets.token_bytes(32))])


def read_passwords(path: str | os.PathLike) -> dict[str, str]:
    p = Path(path)
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


def set_password(path: str | os.PathLike, user: str, password: str) -> None:
    """Add or change one user's password in the file (written atomically, mode 0600)."""
    entries = read_passwords(path)
    entries[user] = hash_password(password)
    tmp = Path(f"{path}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(entries, f)
    os.replace(tmp, path)


@dataclass
class _Record:
    failures: collections.deque = field(default_factory=collections.deque)  # monotonic times
    pending: int = 0  # checks started and not finished: they count, or a concurrent flood gets through
    locked_until: float = 0.0


class LoginThrottle:
    """Failed logins per key (a user name, a client address) in a sliding window, and lockouts.

    After ``limit`` failures within ``window`` seconds the key is refused for
    ``lockout`` seconds. Checks still running count as failures until they
    end, so ``limit`` concurrent attempts are all a flood gets. Used only from
    the hub's event loop (one thread), so it needs no lock.
    """

    def __init__(self, limit: int, window: float, lockout: float, *, forgive_on_success: bool = True,
                 clock=time.monotonic):
        self.limit, self.window, self.lockout, self.clock = limit, window, lockout, clock
        self.forgive_on_success = forgive_on_success
        self._records: dict[str, _Record] = {}

    def _record(self, key: str) -> _Record:
        now = self.clock()
        record = self._records.setdefault(key, _Record())
        while record.failures and record.failures[0] <= now - self.window:
            record.failures.popleft()
        return record

    def refused_for(self, key: str) -> float:
        """Seconds ``key`` must still wait (0: it may try now)."""
        record = self._record(key)
        now = self.clock()
        if record.locked_until > now:
            return record.locked_until - now
        if len(record.failures) + record.pending >= self.limit:
            return self.window  # the limit is taken by checks still running
        return 0.0

    def begin(self, key: str) -> None:
        self._record(key).pending += 1

    def end(self, key: str, ok: bool) -> None:
        record = self._record(key)
        record.pending -= 1
        if ok:
            if self.forgive_on_success:
                record.failures.clear()
        else:
            record.failures.append(self.clock())
            if len(record.failures) >= self.limit:
                record.locked_until = self.clock() + self.lockout
        self._forget_idle()

    def _forget_idle(self) -> None:
        """Drop keys with nothing to remember, so a flood of made-up names cannot grow memory forever."""
        if len(self._records) < 1024:
            return
        now = self.clock()
        for key in [k for k, r in self._records.items()
                    if not r.pending and r.locked_until <= now and (not r.failures or r.failures[-1] <= now - self.window)]:
            del self._records[key]


def client_address(request, trusted_proxies=("127.0.0.1", "::1")) -> str:
    """The client's address for throttling: the nearest hop that is not a trusted proxy.

    ``request.remote_ip`` is not used as it is: with JupyterHub's
    ``xheaders=True`` tornado takes it from ``X-Real-Ip`` when present, and
    configurable-http-proxy passes a client's own ``X-Real-Ip`` through, so a
    client could pick the address it is throttled under. The chain is the
    ``X-Forwarded-For`` entries (each proxy appends the address it saw) and
    then the hub's own peer; walking it from the hub outwards, the first hop
    that is not a trusted proxy is the client. Loopback is trusted by default
    (the proxy, or a TLS terminator, on this machine); local users can still
    claim any address, remote clients cannot.
    """
    context = getattr(request.connection, "context", None)
    peer = getattr(context, "address", None)
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    hops.append(peer[0] if isinstance(peer, tuple) and peer else str(peer or "local"))
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop
    return hops[0]


class PasswordFileAuthenticator(Authenticator):
    """Per-user passwords checked against scrypt hashes in ``passwords_file``."""

    passwords_file = Unicode(
        config=True,
        help="YAML file mapping user names to scrypt hashes (see beamside_hub.auth.hash_password).",
    )
    check_threads = Integer(
        2, config=True,
        help="Threads that check passwords (each scrypt check holds 128 MiB and one core for ~0.5 s).",
    )
    max_pending_checks = Integer(
        8, config=True,
        help="Password checks that may run or wait at once; more are refused with 429 (a flood is not queued).",
    )
    user_failure_limit = Integer(5, config=True, help="Failed logins per user name within failure_window before a lockout.")
    address_failure_limit = Integer(
        20, config=True,
        help="Failed logins per client address within failure_window before a lockout (any user names).",
    )
    failure_window = Float(600, config=True, help="Seconds over which failed logins are counted.")
    lockout_seconds = Float(300, config=True, help="Seconds a user name or client address is refused after too many failures.")
    trusted_proxies = List(
        Unicode(), ["127.0.0.1", "::1"], config=True,
        help="Addresses of proxies between clients and the hub (configurable-http-proxy, a TLS terminator), "
             "skipped when finding a client's address in X-Forwarded-For. A proxy missing here makes every "
             "client behind it share one address (and one failure count).",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._pool = ThreadPoolExecutor(max_workers=self.check_threads, thread_name_prefix="password-check")
        self._pending = 0
        self._by_user = LoginThrottle(self.user_failure_limit, self.failure_window, self.lockout_seconds)
        self._by_address = LoginThrottle(self.address_failure_limit, self.failure_window, self.lockout_seconds,
                                         forgive_on_success=False)

    def _refuse_if_throttled(self, user: str, address: str | None) -> None:
        wait = self._by_user.refused_for(user)
        what = "for this user name"
        if address is not None and not wait:
            wait, what = self._by_address.refused_for(address), "from this address"
        if wait:
            self.log.warning("login refused for %r from %s: too many failed logins %s", user, address, what)
            raise web.HTTPError(429, "Too many failed logins %s. Try again in %d minute(s).", what, max(1, round(wait / 60)))

    async def authenticate(self, handler, data):
        data = data or {}
        user = data.get("username", "")
        key = self.normalize_username(user)  # the name JupyterHub will use: "Alice" and "alice" share a count
        address = client_address(handler.request, self.trusted_proxies) if handler is not None else None
        self._refuse_if_throttled(key, address)
        if self._pending >= self.max_pending_checks:
            self.log.warning("login refused for %r from %s: %d password checks pending", user, address, self._pending)
            raise web.HTTPError(429, "Too many logins at once. Try again in a few seconds.")
        stored = read_passwords(self.passwords_file).get(user)
        self._pending += 1
        self._by_user.begin(key)
        if address is not None:
            self._by_address.begin(address)
        ok = False
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._pool, check_password, data.get("password", ""), stored or _DUMMY_HASH
            )
            ok = ok and stored is not None
        finally:
            self._pending -= 1
            self._by_user.end(key, ok)
            if address is not None:
                self._by_address.end(address, ok)
        if ok:
            return user
        self.log.warning("failed login for %r from %s", user, address)
        return None
