"""The hub's subcommands of the ``beamside`` command: ``beamside up`` and ``beamside passwd``.

``analysis_lib`` never imports the hub: its CLI finds these through the
``beamside.commands`` entry point ``hub`` (see pyproject.toml): a function
that takes the ``beamside`` command's subparsers and adds subcommands whose
``run`` takes the parsed arguments and returns the exit status. Nothing heavy
is imported until a subcommand runs.
"""

from __future__ import annotations

import os
import sys


def add_commands(sub) -> None:
    """The ``beamside.commands`` entry point: ``up``, then ``passwd``."""
    add_up(sub)
    add_passwd(sub)


def add_up(sub) -> None:
    up = sub.add_parser("up", help="start the embedded deployment (JupyterHub next to the data)")
    up.add_argument("--config", help="deployment config file (YAML)")
    up.set_defaults(run=_up)


def add_passwd(sub) -> None:
    pw = sub.add_parser("passwd", help="set a user's password for the embedded deployment (read from the terminal)")
    pw.add_argument("user")
    pw.add_argument("--config", help="deployment config file (YAML)")
    pw.set_defaults(run=_passwd)


def _passwd(args) -> int:
    import getpass

    try:
        from . import auth, settings
    except ImportError:
        raise ValueError("needs the hub extras: pip install 'beamside[hub]'") from None
    path = settings.Settings.from_yaml(args.config).auth.passwords_file  # the default filled in, as `beamside up` uses it
    password = getpass.getpass(f"new password for {args.user}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    auth.set_password(path, args.user, password)
    print(f"password of {args.user} set in {path}")
    return 0


def _up(args) -> int:
    try:
        from .embedded import main as up_main
    except ImportError:
        raise ValueError("the embedded deployment needs the hub extras: pip install 'beamside[hub]'") from None
    return up_main(args.config)
