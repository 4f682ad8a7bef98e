"""Hub users as Unix accounts: every user's processes run under a uid of their own.

Hub names can be e-mail addresses or federation ids; Unix names cannot. Each
hub user gets a system account ``bs-<name>`` whose comment field records the
hub name, so the audit service can turn a peer uid back into the hub user.

The mapping must be one-to-one, or two hub users share a uid and so each
other's files and processes (security review, issue 17, finding 9). It works
like kubespawner's "safe slug": a name that is already a safe short Unix name
is kept as it is; any other name becomes ``<sanitised stem>--<hash>``. A kept
name never contains ``--``, so no hub name can be kept as the escaped form of
another one. And an existing account is only reused when its comment records
the same hub name (:class:`AccountConflict` otherwise), which also catches
accounts made by an older mapping, by hand, or by a hash collision.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
from dataclasses import dataclass
from urllib.parse import quote, unquote

PREFIX = "bs-"
_COMMENT = "beamside user "  # + the url-quoted hub name (no ":" allowed in passwd)


@dataclass(frozen=True)
class Account:
    hub_name: str
    unix_name: str
    uid: int
    gid: int


_MAX = 32  # useradd's limit on Linux, including the prefix
_KEPT = re.compile(r"[a-z0-9_]+(-[a-z0-9_]+)*")  # no leading, trailing or double "-"
# hex digits of sha256 (40 bits); a collision would still be refused by the ownership check
_HASH = 10


class AccountConflict(RuntimeError):
    """The Unix account a hub user maps to exists but belongs to someone else (or to nobody we know)."""

    def __init__(self, unix_name: str, hub_name: str, recorded: str | None):
        self.unix_name, self.hub_name, self.recorded = unix_name, hub_name, recorded
        owner = f"hub user {recorded!r}" if recorded is not None else "no beamside hub user (not made by beamside)"
        super().__init__(
            f"Unix account {unix_name!r} is needed for hub user {hub_name!r} but its comment field records {owner}; "
            f"refusing to share it. An admin should check the account (getent passwd {unix_name}) and remove or "
            "rename it if it is stale."
        )


def unix_name(hub_name: str) -> str:
    """The Unix account name for a hub user: ``bs-`` + at most 29 characters of [a-z0-9_-].

    One-to-one: a hub name that is already a safe short name (lower case, no
    leading, trailing or double ``-``) is kept; any other gets a readable stem,
    ``--`` (which a kept name cannot contain) and a hash of the whole hub name.
    """
    room = _MAX - len(PREFIX)
    if len(hub_name) <= room and _KEPT.fullmatch(hub_name):
        return PREFIX + hub_name
    stem = re.sub(r"[^a-z0-9_]+", "-", hub_name.lower()).strip("-")[: room - 2 - _HASH].strip("-")
    digest = hashlib.sha256(hub_name.encode()).hexdigest()[:_HASH]
    return f"{PREFIX}{stem}--{digest}"


def _recorded_hub_name(pw: pwd.struct_passwd) -> str | None:
    """The hub name an account's comment field records (None: not a beamside comment)."""
    if pw.pw_gecos.startswith(_COMMENT):
        return unquote(pw.pw_gecos[len(_COMMENT):])
    return None


def _owned_by(pw: pwd.struct_passwd, hub_name: str) -> Account:
    recorded = _recorded_hub_name(pw)
    if recorded != hub_name:
        raise AccountConflict(pw.pw_name, hub_name, recorded)
    return Account(hub_name, pw.pw_name, pw.pw_uid, pw.pw_gid)


def ensure_account(hub_name: str, home: str) -> Account:
    """The account of ``hub_name``, created (as a system user without login) if missing.

    An existing account is reused only if its comment field records ``hub_name``;
    otherwise :class:`AccountConflict`.
    """
    name = unix_name(hub_name)
    try:
        return _owned_by(pwd.getpwnam(name), hub_name)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
         "--shell", "/usr/sbin/nologin", "--comment", _COMMENT + quote(hub_name, safe="@.+-_"), name],
        capture_output=True, text=True,
    )
    if done.returncode == 9:  # "already exists": made meanwhile (the spawner and the gateway race)
        return _owned_by(pwd.getpwnam(name), hub_name)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return _owned_by(pwd.getpwnam(name), hub_name)


def hub_name_of_uid(uid: int) -> str | None:
    """The hub user whose processes run as ``uid`` (None for any other uid).

    Only an account whose name is what its recorded hub name maps to counts, so
    a comment field cannot claim another user's name.
    """
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    recorded = _recorded_hub_name(pw)
    if recorded is not None and pw.pw_name.startswith(PREFIX) and unix_name(recorded) == pw.pw_name:
        return recorded
    return None


def drop_privileges(account: Account, workdir: str):
    """A ``preexec_fn``: the account's uid/gid and no other groups, then ``cd``.

    Callers start the process in a new session (``start_new_session=True``),
    so the sandbox is a process group of its own and stopping it signals every
    process inside.
    """

    def preexec():
        os.setgroups([])
        os.setgid(account.gid)
        os.setuid(account.uid)
        os.chdir(workdir)

    return preexec
