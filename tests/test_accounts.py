"""Hub names -> Unix accounts: one-to-one, and an existing account is only reused by its own hub user.

Security review, issue 17, finding 9: ``alice.smith`` and ``alice-smith-63425827``
used to map to the same account, and ``ensure_account`` reused any existing
``bs-*`` account without checking whose it was.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beamside_hub import accounts
from beamside_hub.accounts import AccountConflict, ensure_account, hub_name_of_uid, unix_name

UNIX = re.compile(r"[a-z0-9_-]{1,32}")

# Names that look like each other once sanitised: the review's collision, case, dots, unicode, length.
LOOKALIKES = st.sampled_from(["alice", "Alice", "alice.smith", "alice-smith", "alice_smith", "alice-smith-63425827",
                              "alice--smith", "-alice", "alice-", "ålice", "alice@example.org", "", "a" * 29, "a" * 30])
HUB_NAMES = st.one_of(
    LOOKALIKES,
    st.text(max_size=60),
    st.text(alphabet="abcz019_-.@ÅÉ", max_size=40),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,40}-[0-9a-f]{8,10}", fullmatch=True),  # shaped like the hashed forms
)


def test_plain_names_are_kept():
    assert unix_name("alice") == "bs-alice"
    assert unix_name("bob_2") == "bs-bob_2"
    assert unix_name("a" * 29) == "bs-" + "a" * 29


def test_the_reported_collision_is_gone():
    hashed = unix_name("alice.smith")
    assert hashed.startswith("bs-alice-smith--")
    assert unix_name("alice-smith-63425827") == "bs-alice-smith-63425827"
    assert hashed != unix_name("alice-smith-63425827")
    # ... and no hub name is kept as the escaped form of another one
    assert unix_name(hashed[len("bs-"):]) != hashed


@given(HUB_NAMES)
@example("alice.smith")
@example("Grace.Hopper@example.org")
def test_unix_names_are_valid(name):
    got = unix_name(name)
    assert got.startswith("bs-") and UNIX.fullmatch(got), got
    assert unix_name(name) == got  # stable: the same account on every spawn


@settings(max_examples=500)
@given(HUB_NAMES, HUB_NAMES)
@example("alice.smith", "alice-smith-63425827")
@example("Alice", "alice")
@example("a" * 30, "a" * 31)
@example("alice", unix_name("alice")[3:])
def test_distinct_hub_names_get_distinct_accounts(a, b):
    if a != b:
        assert unix_name(a) != unix_name(b)


@given(st.lists(HUB_NAMES, min_size=2, max_size=200, unique=True))
def test_no_two_of_many_names_share_an_account(names):
    assert len({unix_name(n) for n in names}) == len(names)


def test_escaped_name_of_every_kept_name_differs():
    # Every name the escaping branch makes contains "--", which the kept branch refuses.
    for name in ["Alice", "alice.smith", "x" * 40, "ålice", ""]:
        escaped = unix_name(name)
        assert "--" in escaped and not accounts._KEPT.fullmatch(escaped[3:])


# -- the ownership check, with real accounts (root) -------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"), reason="needs root and useradd")


def _userdel(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


def _useradd(name: str, *extra: str) -> None:
    """A test account; refuses to touch one that exists already (it would not be ours to delete)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name],
                       check=True, capture_output=True)
        return
    pytest.fail(f"account {name} exists already; remove it (userdel {name}) and run again", pytrace=False)


@needs_root
def test_existing_account_of_another_hub_user_is_refused(tmp_path):
    """The attack: the account the old mapping made for alice.smith is claimed by hub user alice-smith-63425827.

    Under the old mapping both names gave ``bs-alice-smith-63425827``; under the new one that is
    the second user's name (kept as is), and the account records the first user, so it is refused.
    """
    victim, attacker = "alice.smith", "alice-smith-63425827"
    name = unix_name(attacker)
    assert name == "bs-alice-smith-63425827"
    _useradd(name, "--user-group", "--comment", f"beamside user {victim}")
    try:
        with pytest.raises(AccountConflict) as err:
            ensure_account(attacker, str(tmp_path))
        assert attacker in str(err.value) and victim in str(err.value) and name in str(err.value)
        assert (err.value.hub_name, err.value.recorded, err.value.unix_name) == (attacker, victim, name)
        # The audit service attributes the account to neither: its name is not what alice.smith maps to.
        assert hub_name_of_uid(pwd.getpwnam(name).pw_uid) is None
    finally:
        _userdel(name)


@needs_root
def test_account_not_made_by_beamside_is_refused(tmp_path):
    name = unix_name("zz-mallory")
    _useradd(name)
    try:
        with pytest.raises(AccountConflict, match="not made by beamside"):
            ensure_account("zz-mallory", str(tmp_path))
    finally:
        _userdel(name)


@needs_root
def test_own_account_is_created_then_reused(tmp_path):
    hub_name = "Zz.Owner@example.org"
    name = unix_name(hub_name)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    try:
        first = ensure_account(hub_name, str(tmp_path))
        again = ensure_account(hub_name, str(tmp_path))
        assert first == again and first.unix_name == name and first.uid != 0
        assert pwd.getpwnam(name).pw_shell == "/usr/sbin/nologin"
        assert hub_name_of_uid(first.uid) == hub_name
    finally:
        _userdel(name)
