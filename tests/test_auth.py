"""Password logins under attack (security review, issue 17, finding 11), and the OIDC allow-list.

The authenticator is the real one, driven through ``authenticate`` the way
JupyterHub's login handler calls it; only the request is a small stand-in
(headers and the peer address). Work is compared by counting scrypt calls,
never by timing. The OIDC part checks settings and the hub's traitlets config.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
from tornado import web
from tornado.httputil import HTTPHeaders
from traitlets.config import Config

from beamside_hub import auth, configure, settings
from beamside_hub.auth import LoginThrottle, PasswordFileAuthenticator, check_password, client_address, hash_password

def request(peer="10.0.0.5", **headers):
    return SimpleNamespace(headers=HTTPHeaders(headers), connection=SimpleNamespace(context=SimpleNamespace(address=(peer, 40000))),
                           remote_ip=headers.get("X-Real-Ip", peer))


def handler(peer="10.0.0.5", **headers):
    return SimpleNamespace(request=request(peer, **headers))


@pytest.fixture
def scrypt_calls(monkeypatch):
    """Every scrypt call: (n, r, p, thread name)."""
    calls = []
    real = auth._scrypt

    def spy(password, salt, n, r, p):
        calls.append((n, r, p, threading.current_thread().name))
        return real(password, salt, n, r, p)

    monkeypatch.setattr(auth, "_scrypt", spy)
    return calls


@pytest.fixture
def authenticator(tmp_path):
    path = tmp_path / "passwords.yaml"
    auth.set_password(path, "alice", "alice-secret")
    a = PasswordFileAuthenticator(passwords_file=str(path))
    yield a
    a._pool.shutdown(wait=True)


def login(a, user, password, h=None):
    return asyncio.run(a.authenticate(h or handler(), {"username": user, "password": password}))


# -- (d) cost -----------------------------------------------------------------------------------
def test_new_hashes_use_owasp_minimum_and_old_hashes_still_verify(scrypt_calls):
    stored = hash_password("pw")
    assert stored.startswith("scrypt$131072$8$1$")
    assert check_password("pw", stored) and not check_password("other", stored)
    # a hash made by the previous default (N=2^14) keeps working with its own parameters
    old = "$".join(["scrypt", "16384", "8", "1", auth._b64(b"s" * 16),
                    auth._b64(__import__("hashlib").scrypt(b"pw", salt=b"s" * 16, n=2**14, r=8, p=1, dklen=32))])
    assert check_password("pw", old) and not check_password("other", old)
    assert [c[:3] for c in scrypt_calls] == [(2**17, 8, 1)] * 3 + [(2**14, 8, 1)] * 2


def test_absurd_stored_parameters_are_refused_not_run():
    assert not check_password("pw", "scrypt$1073741824$8$1$c2FsdA==$ZGlnZXN0")


# -- (a) off the event loop, bounded ------------------------------------------------------------
def test_password_check_runs_in_the_pool_while_the_loop_keeps_serving(authenticator, scrypt_calls):
    async def scenario():
        ticks = 0
        check = asyncio.ensure_future(authenticator.authenticate(handler(), {"username": "alice", "password": "alice-secret"}))
        while not check.done():  # the loop turns while scrypt runs elsewhere
            ticks += 1
            await asyncio.sleep(0.01)
        return await check, ticks

    user, ticks = asyncio.run(scenario())
    assert user == "alice"
    assert ticks > 1
    assert [c[3] for c in scrypt_calls] == ["password-check_0"]


def test_a_flood_beyond_the_pending_bound_is_refused_not_queued(authenticator, scrypt_calls):
    authenticator.max_pending_checks = 3

    async def flood():
        attempts = [authenticator.authenticate(handler(f"10.0.1.{i}"), {"username": f"user{i}", "password": "x"})
                    for i in range(10)]
        return await asyncio.gather(*attempts, return_exceptions=True)

    results = asyncio.run(flood())
    refused = [r for r in results if isinstance(r, web.HTTPError)]
    assert len(refused) == 7 and {r.status_code for r in refused} == {429}
    assert "Too many logins at once" in refused[0].log_message
    assert results.count(None) == 3 and len(scrypt_calls) == 3
    assert authenticator._pending == 0


# -- (b) throttling -----------------------------------------------------------------------------
def test_user_name_is_locked_after_failures_even_with_the_right_password(authenticator):
    authenticator._by_user.limit = 3
    for i in range(3):
        assert login(authenticator, "alice", "wrong", handler(f"10.0.2.{i}")) is None  # from different addresses
    with pytest.raises(web.HTTPError) as err:
        login(authenticator, "Alice", "alice-secret", handler("10.0.3.1"))  # normalised: the same name
    assert err.value.status_code == 429
    message = err.value.log_message % err.value.args
    assert "Too many failed logins for this user name" in message and "minute" in message
    assert login(authenticator, "bob", "wrong", handler("10.0.3.1")) is None  # other names are still checked


def test_client_address_is_locked_after_failures_over_many_names(authenticator):
    authenticator._by_address.limit = 4
    for i in range(4):
        assert login(authenticator, f"guess{i}", "wrong", handler("10.0.4.1")) is None
    with pytest.raises(web.HTTPError) as err:
        login(authenticator, "alice", "alice-secret", handler("10.0.4.1"))
    assert err.value.status_code == 429 and "from this address" in err.value.log_message % err.value.args
    assert login(authenticator, "alice", "alice-secret", handler("10.0.4.2")) == "alice"


def test_concurrent_failures_cannot_overshoot_the_limit(authenticator, scrypt_calls):
    authenticator._by_user.limit = 3
    authenticator.max_pending_checks = 50

    async def flood():
        attempts = [authenticator.authenticate(handler(f"10.0.5.{i}"), {"username": "alice", "password": f"guess{i}"})
                    for i in range(20)]
        return await asyncio.gather(*attempts, return_exceptions=True)

    results = asyncio.run(flood())
    assert len(scrypt_calls) == 3  # checks in flight count against the limit
    assert sum(isinstance(r, web.HTTPError) and r.status_code == 429 for r in results) == 17


def test_throttle_window_and_lockout_expire():
    now = [0.0]
    t = LoginThrottle(limit=2, window=60, lockout=300, clock=lambda: now[0])
    for _ in range(2):
        assert t.refused_for("k") == 0
        t.begin("k")
        t.end("k", ok=False)
    assert t.refused_for("k") == pytest.approx(300)
    now[0] = 301
    assert t.refused_for("k") == 0  # lockout over, failures outside the window forgotten
    t.begin("k"); t.end("k", ok=False)
    now[0] = 400
    t.begin("k"); t.end("k", ok=False)  # 99 s apart: never two within the window
    assert t.refused_for("k") == 0


def test_a_success_forgives_a_user_name_but_not_an_address():
    by_user, by_address = LoginThrottle(2, 60, 300), LoginThrottle(2, 60, 300, forgive_on_success=False)
    for t in (by_user, by_address):
        t.begin("k"); t.end("k", ok=False)
        t.begin("k"); t.end("k", ok=True)
        t.begin("k"); t.end("k", ok=False)
    assert by_user.refused_for("k") == 0
    assert by_address.refused_for("k") > 0  # one valid account must not reset the count between guesses


def test_client_address_cannot_be_chosen_by_the_client():
    # through the proxy: it appends the address it saw to X-Forwarded-For; the hub's peer is the proxy
    via_proxy = request("127.0.0.1", **{"X-Forwarded-For": "6.6.6.6, 192.0.2.7", "X-Real-Ip": "6.6.6.6"})
    assert client_address(via_proxy) == "192.0.2.7"
    # straight to the hub from elsewhere: its headers are not believed at all
    direct = request("192.0.2.8", **{"X-Forwarded-For": "6.6.6.6", "X-Real-Ip": "6.6.6.6"})
    assert client_address(direct) == "192.0.2.8"
    # a TLS terminator in front of the proxy, listed as trusted
    chain = request("127.0.0.1", **{"X-Forwarded-For": "192.0.2.9, 10.1.1.1"})
    assert client_address(chain, ("127.0.0.1", "10.1.1.1")) == "192.0.2.9"
    assert client_address(request("127.0.0.1", **{"X-Forwarded-For": "127.0.0.1"})) == "127.0.0.1"


def test_made_up_names_do_not_grow_memory_forever():
    now = [0.0]
    t = LoginThrottle(5, 60, 300, clock=lambda: now[0])
    for i in range(3000):
        now[0] = i  # each name's single failure is long past by the time it is pruned
        t.begin(f"n{i}"); t.end(f"n{i}", ok=False)
    assert len(t._records) < 1100


# -- (c) no user enumeration ---------------------------------------------------------------------
def test_unknown_user_costs_the_same_scrypt_work_as_a_known_one(authenticator, scrypt_calls):
    assert login(authenticator, "alice", "wrong") is None
    known = list(scrypt_calls)
    scrypt_calls.clear()
    assert login(authenticator, "nobody", "wrong") is None
    assert [c[:3] for c in scrypt_calls] == [c[:3] for c in known] == [(2**17, 8, 1)]
    # and the dummy hash admits nobody, whatever the password
    assert login(authenticator, "nobody", "") is None


# -- (e) OIDC: an empty allow-list refuses ------------------------------------------------------
OIDC = {"type": "oidc", "oidc": {"authorize_url": "https://idp/a", "token_url": "https://idp/t",
                                  "userdata_url": "https://idp/u", "client_secret": "s"}}


def test_oidc_settings_without_allowed_groups_refuse_to_load(tmp_path):
    with pytest.raises(ValueError, match="auth.oidc.allowed_groups is empty.*auth.oidc.allow_all: true"):
        settings.load(overrides={"auth": OIDC})
    ok = settings.load(overrides={"auth": {**OIDC, "oidc": {**OIDC["oidc"], "allowed_groups": ["facility-users"]}}})
    assert ok.auth.oidc.allow_all is False
    everyone = settings.load(overrides={"auth": {**OIDC, "oidc": {**OIDC["oidc"], "allow_all": True}}})
    assert everyone.auth.oidc.allow_all is True


def _hub_config(oidc: dict, unchecked: bool = False) -> Config:
    from beamside_hub.runtime import Addresses, Paths, Runtime

    s = settings.load(overrides={"auth": {**OIDC, "oidc": {**OIDC["oidc"], **oidc}}, "dask": {"enabled": False},
                                 "culler": {"enabled": False}, "audit": {"enabled": False}})
    if unchecked:  # settings that never went through the checks (built by hand, or an older runtime file)
        s = settings.Settings.from_dict({**s.to_dict(), "auth": {**s.to_dict()["auth"], "oidc": {
            **s.to_dict()["auth"]["oidc"], "allowed_groups": [], "allow_all": False}}})
    rt = Runtime(settings=s, paths=Paths(state="/tmp/x", catalog="/c", passwords_file="/p", venv="/v", homes="/h",
                                         sandboxes="/s", audit_socket="/a"),
                 addresses=Addresses(*(f"http://127.0.0.1:{port}" for port in range(9000, 9006))),
                 secrets={"proxy_token": "t", "supervisor_token": "t", "crypt_key": "k" * 64})
    c = Config()
    configure.configure_hub(c, rt, python="python")
    return c


def test_oidc_hub_config_never_allows_all_implicitly(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "k" * 64)
    g = _hub_config({"allowed_groups": ["facility-users"]}).GenericOAuthenticator
    assert g.allowed_groups == {"facility-users"} and g.allow_all is False
    assert _hub_config({"allow_all": True}).GenericOAuthenticator.allow_all is True
    # an empty list that reaches the hub anyway admits nobody
    g = _hub_config({"allowed_groups": ["x"]}, unchecked=True).GenericOAuthenticator
    assert g.allowed_groups == set() and g.allow_all is False
