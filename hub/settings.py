"""The deployment's settings: one YAML file for the embedded mode, the Helm values for Kubernetes.

Key names are the Helm chart's where they overlap (``hub``, ``auth``,
``singleuser``, ``dask``, ``culler``, ``data``), so an admin who moves from
one machine to a cluster keeps the same vocabulary. :func:`load` fills in
defaults and checks types; ``jupyterhub_config.py`` maps the result onto
traitlets.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "hub": {
        "ip": "127.0.0.1",  # where the public proxy listens
        "public_url": None,  # how users reach it (behind TLS termination); default http://ip:port
        "port": 8000,
        "hub_port": 8081,  # the hub's own API (internal)
        "proxy_api_port": 8001,
        "state_dir": ".beamside",  # sqlite db, secrets, homes, logs (relative: to the config file)
        "db_url": None,  # default sqlite in state_dir; e.g. postgresql://user@host/beamside
        "concurrent_spawn_limit": 20,
    },
    "data": {
        "catalog": None,  # the facility's catalog file; None: generate demo data
        "demo_size": "1GB",
    },
    "auth": {
        "type": "passwords",  # "passwords" (hashed, per user) or "oidc"
        "admin_users": None,  # default: ["admin"] with passwords, none with OIDC (use oidc.admin_groups)
        "passwords_file": None,  # default: state_dir/secrets/passwords.yaml (demo users: first run, demo data only)
        "oidc": {
            "authorize_url": None,
            "token_url": None,
            "userdata_url": None,
            "client_id": "beamside",
            "client_secret": None,
            "scope": ["openid", "profile", "email"],
            "username_claim": "preferred_username",
            "groups_claim": "groups",
            "allowed_groups": [],  # who may log in; required: an empty list refuses to load (see allow_all)
            # Admit everyone the provider authenticates (the whole federation, not only this facility's
            # users). Only on purpose: an empty allowed_groups used to mean this (issue 17, finding 11).
            "allow_all": False,
            "admin_groups": [],
            "login_service": "facility login",
        },
    },
    "singleuser": {
        "isolation": "auto",  # "bubblewrap", "none" (a demo without isolation), or "auto"
        # "private": each user's processes in a network namespace of their own (isolated mode only);
        # "host": they share the machine's network (and every user reaches others' loopback ports)
        "network": "private",
        "default_url": "/lab",
        "mem_limit": None,
        "cpu_limit": None,
        "start_timeout": 120,
        "access_check_every": 30,  # seconds: running servers and clusters whose beamtime was revoked stop
    },
    "dask": {
        "enabled": True,
        "port": 8010,  # gateway HTTP (behind the hub's proxy)
        "api_port": 8011,
        "scheduler_port": 8786,  # scheduler traffic (TLS, for scripts from outside too)
        "max_clusters_per_user": 2,
        "max_workers": 4,
        "max_cores": 4,
        "max_memory": "8 G",
        "worker_cores": 1,
        "worker_memory": "2 G",
        "idle_timeout": 1800,
        "max_age": 7 * 86400,  # seconds: even a busy cluster ends then (0: never)
    },
    # max_age: seconds after which a server is stopped even if active, so no session outlives
    # a week of catalog changes unseen (0: never)
    "culler": {"enabled": True, "timeout": 3600, "every": 300, "max_age": 7 * 86400},
    "audit": {"enabled": True},
}


def _merge(base: dict, override: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in base:
            raise ValueError(f"unknown setting {where}{key!r}; known: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load(path: str | os.PathLike | None = None, overrides: dict | None = None) -> dict:
    """The settings from ``path`` (YAML) on top of the defaults, with absolute paths."""
    doc: dict = {}
    base = Path.cwd()
    if path:
        path = Path(path).resolve()
        doc = yaml.safe_load(path.read_text()) or {}
        base = path.parent
    settings = _merge(DEFAULTS, doc)
    if overrides:
        settings = _merge(settings, overrides)
    state = Path(settings["hub"]["state_dir"]).expanduser()
    settings["hub"]["state_dir"] = str(state if state.is_absolute() else (base / state).resolve())
    for section, key in (("data", "catalog"), ("auth", "passwords_file")):
        value = settings[section][key]
        if value:
            p = Path(value).expanduser()
            settings[section][key] = str(p if p.is_absolute() else (base / p).resolve())
    if settings["auth"]["type"] not in ("passwords", "oidc"):
        raise ValueError("auth.type must be 'passwords' or 'oidc'")
    if settings["auth"]["type"] == "oidc":
        missing = [k for k in ("authorize_url", "token_url", "userdata_url", "client_secret") if not settings["auth"]["oidc"][k]]
        if missing:
            raise ValueError(f"auth.type is oidc but auth.oidc.{', auth.oidc.'.join(missing)} not set")
        if not settings["auth"]["oidc"]["allowed_groups"] and settings["auth"]["oidc"]["allow_all"] is not True:
            raise ValueError(
                "auth.type is oidc but auth.oidc.allowed_groups is empty: nobody could log in. List the groups "
                "(from the provider's groups claim) whose members may use the hub, or set auth.oidc.allow_all: true "
                "to admit everyone the provider authenticates"
            )
    if settings["singleuser"]["isolation"] not in ("auto", "bubblewrap", "none"):
        raise ValueError("singleuser.isolation must be 'auto', 'bubblewrap' or 'none'")
    if settings["singleuser"]["network"] not in ("private", "host"):
        raise ValueError("singleuser.network must be 'private' or 'host'")
    return settings
