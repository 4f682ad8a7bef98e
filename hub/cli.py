"""The hub's subcommands of the ``beamside`` command: ``beamside up``, ``passwd`` and ``queue``.

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
    """The ``beamside.commands`` entry point: ``up``, ``passwd``, ``queue``."""
    add_up(sub)
    add_passwd(sub)
    add_queue(sub)


def add_up(sub) -> None:
    up = sub.add_parser("up", help="start the embedded deployment (JupyterHub next to the data)")
    up.add_argument("--config", help="deployment config file (YAML)")
    up.set_defaults(run=_up)


def add_passwd(sub) -> None:
    pw = sub.add_parser("passwd", help="set a user's password for the embedded deployment (read from the terminal)")
    pw.add_argument("user")
    pw.add_argument("--config", help="deployment config file (YAML)")
    pw.set_defaults(run=_passwd)


def add_queue(sub) -> None:
    q = sub.add_parser("queue", help="show the embedded deployment's start queue: who starts, who waits")
    q.add_argument("--config", help="deployment config file (YAML)")
    q.add_argument("--json", action="store_true", help="print the queue as JSON")
    q.set_defaults(run=_queue)


def _queue(args) -> int:
    import json

    try:
        from . import settings, start_queue
    except ImportError:
        raise ValueError("needs the hub extras: pip install 'beamside[hub]'") from None
    path = start_queue.queue_file(settings.Settings.from_yaml(args.config).hub.state_dir)
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"no start queue at {path}: is this deployment up (beamside up --config …)?") from None
    try:
        os.kill(report["hub_pid"], 0)
        alive = True
    except ProcessLookupError:
        alive = False
    print(json.dumps(report, indent=1) if args.json else start_queue.show(report, alive))
    return 0


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
