"""The desktop in the browser: GUI programs (silx view, pyFAI-calib2, an image viewer) next to the data.

JupyterLab's "Desktop" launcher is jupyter-remote-desktop-proxy's: jupyter-server-proxy starts TigerVNC's
``vncserver`` as a child of the user's notebook server, on a Unix socket in the server's private /tmp,
and the browser's noVNC client reaches it through the hub's proxy and the server's own login check
(``/user/<name>/desktop/``). Being a child of the server, the whole desktop runs as the user's Unix account
inside the user's sandbox (hub/sandbox.py): the same read-only beamtimes, the same home, the same network
namespace (its X display's abstract socket is no one else's), no capabilities, and it stops with the
server (hub/limits.py kills what is left in the server's cgroup).

What beamside adds is the session itself (``desktop-session/``, the ``xstartup`` handed to
vncserver through jupyter-remote-desktop-proxy's ``JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP``): XFCE's window
manager, panel and settings daemon on a plain background, and menu entries for the facility's programs.
A user on a slow link lowers the desktop's update rate in TigerVNC's own per-user file,
``~/.vnc/config`` (``FrameRate=2``), read when the desktop starts (docs/deployment.md gives the figures).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

SESSION_DIR = Path(__file__).with_name("desktop-session")
XSTARTUP = SESSION_DIR / "xstartup"
# what a desktop needs on the machine (or in the image): the VNC server and the XFCE session
PROGRAMS = ("vncserver", "Xtigervnc", "xfce4-session", "xfwm4", "xfce4-panel", "dbus-launch")


def missing() -> list[str]:
    """What is absent for the desktop to start: programs on PATH, or jupyter-remote-desktop-proxy."""
    absent = [name for name in PROGRAMS if shutil.which(name) is None]
    if importlib.util.find_spec("jupyter_remote_desktop_proxy") is None:
        absent.append("jupyter-remote-desktop-proxy (pip install 'beamside[desktop]')")
    return absent


def environment() -> dict:
    """What a user server sets for its desktop (beamside_hub.user_server, unless already set): beamside's
    session instead of upstream's default, at this installation's path (a pod's differs from the hub's)."""
    return {"JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP": str(XSTARTUP)}
