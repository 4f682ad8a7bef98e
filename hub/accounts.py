"""Hub users as Unix accounts: every user's processes run under a uid of their own.

Hub names can be e-mail addresses or federation ids; Unix names cannot. Each
hub user gets a system account ``bs-<name>`` (sanitised, with a short hash
when sanitising changed it) whose comment field records the hub name, so the
audit service can turn a peer uid back into the hub user.
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


def unix_name(hub_name: str) -> str:
    """The Unix account name for a hub user (at most 32 characters, [a-z0-9_-])."""
    clean = re.sub(r"[^a-z0-9_-]", "-", hub_name.lower()).strip("-") or "user"
    if clean != hub_name or len(clean) > 20:
        clean = f"{clean[:20]}-{hashlib.sha256(hub_name.encode()).hexdigest()[:8]}"
    return PREFIX + clean


def ensure_account(hub_name: str, home: str) -> Account:
    """The account of ``hub_name``, created (as a system user without login) if missing."""
    name = unix_name(hub_name)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
             "--shell", "/usr/sbin/nologin", "--comment", _COMMENT + quote(hub_name, safe="@.+-_"), name],
            check=True, capture_output=True,
        )
        pw = pwd.getpwnam(name)
    return Account(hub_name, name, pw.pw_uid, pw.pw_gid)


def hub_name_of_uid(uid: int) -> str | None:
    """The hub user whose processes run as ``uid`` (None for any other uid)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    if pw.pw_name.startswith(PREFIX) and pw.pw_gecos.startswith(_COMMENT):
        return unquote(pw.pw_gecos[len(_COMMENT):])
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
