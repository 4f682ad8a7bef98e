"""Login for the embedded deployment: one password per user, stored only as a hash.

Facilities log users in through their identity provider (OpenID Connect,
configured with oauthenticator's GenericOAuthenticator in
``jupyterhub_config.py``). For a single machine and for demos, this
authenticator checks per-user passwords against a YAML file of scrypt hashes
(``user: scrypt$n$r$p$salt$hash``) that the admin manages with
``beamside passwd``; no shared password, no plain text at rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import yaml
from jupyterhub.auth import Authenticator
from traitlets import Unicode

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


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


class PasswordFileAuthenticator(Authenticator):
    """Per-user passwords checked against scrypt hashes in ``passwords_file``."""

    passwords_file = Unicode(
        config=True,
        help="YAML file mapping user names to scrypt hashes (see beamside_hub.auth.hash_password).",
    )

    async def authenticate(self, handler, data):
        user = (data or {}).get("username", "")
        stored = read_passwords(self.passwords_file).get(user)
        if stored and check_password((data or {}).get("password", ""), stored):
            return user
        self.log.warning("failed login for %r", user)
        return None
