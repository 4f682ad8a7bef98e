"""The desktop in the browser (hub/desktop.py), for real: Chromium logs in to the embedded deployment,
opens alice's desktop, starts silx view from the XFCE menu and from its terminal on a demo file, and
reads the image back from the screen's pixels; a program in it tries to read another user's confidential
beamtime, and the desktop's processes are examined from the host (whose account, which namespaces,
which capabilities, which sockets). Screenshots go to ``test-artifacts/``; what the browser received per second on an idle
and a busy screen to ``test-artifacts/desktop-figures.json`` (figures, never a timing assertion;
``python -m benchmarks.desktop`` measures them with more care).
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
import requests
import websocket
from beamside_hub.accounts import unix_name

from analysis_lib.catalog import Catalog

from .browser import logged_in
from .deploy import deployment_for_module, wait_for
from .desktop import VIEWPORT, Desktop, viridis_pixels

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP_PROGRAMS = ("Xtigervnc", "xfce4-session", "xfwm4", "xfce4-panel", "xfsettingsd", "xfce4-terminal", "silx")
figures: dict = {}


@pytest.fixture(scope="module")
def dep():
    yield from deployment_for_module("desktop", figures, users=("alice", "bob"))  # bob: a hub user with a token


@pytest.fixture(scope="module")
def catalog(dep) -> Catalog:
    return Catalog.load(dep.runtime["paths"]["catalog"])


def scan_of(catalog: Catalog, user: str) -> Path:
    return min((catalog.readable(user)[0].path / "raw").glob("*.nxs"))


def desktop_processes(dep, user: str) -> list[psutil.Process]:
    return [p for p in dep.processes_of(user)
            if any(name in " ".join(p.info["cmdline"] or []) for name in DESKTOP_PROGRAMS)]


def silx_views(dep, user: str) -> list[psutil.Process]:
    return [p for p in dep.processes_of(user) if "silx view" in " ".join(p.info["cmdline"] or [])]


def test_the_launcher_offers_the_desktop(dep):
    answer = requests.get(f"{dep.url}/user/alice/server-proxy/servers-info",
                          headers={"Authorization": f"token {dep.hub.token('alice')}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    entries = {s["name"]: s["launcher_entry"] for s in answer.json()["server_processes"]}
    assert entries["desktop-websockify"]["title"] == "Desktop" and entries["desktop-websockify"]["enabled"]


def test_silx_view_shows_a_demo_file_in_the_desktop(dep, catalog):
    """From the menu, then from the desktop's terminal on alice's first scan: the image is on screen."""
    ARTIFACTS.mkdir(exist_ok=True)
    scan = scan_of(catalog, "alice")
    other = next(bt.path for bt in catalog.beamtimes if bt.confidential and bt not in catalog.readable("alice"))
    probe = Path(dep.folder / "state" / "homes" / "alice" / "desktop-probe.txt")
    with logged_in(dep.url, "alice", dep.logins["alice"], VIEWPORT) as (ctx, page):
        desktop = Desktop(ctx, page, dep.url, "alice")
        try:
            blank = desktop.pixels(ARTIFACTS / "desktop-alice-empty.png")
            figures["first screen, received (bytes)"] = desktop.received
            figures["idle desktop, received (bytes/s over 10 s)"] = round(desktop.rate(10))
            assert viridis_pixels(blank)[0] < 100

            desktop.menu("Science", "silx view")
            wait_for(lambda: silx_views(dep, "alice"), 60, "silx view started from the Science menu")
            desktop.page.wait_for_timeout(5000)
            desktop.pixels(ARTIFACTS / "desktop-alice-menu-silx.png")
            for view in silx_views(dep, "alice"):
                view.terminate()

            desktop.menu("Xfce Terminal")
            wait_for(lambda: [p for p in dep.processes_of("alice") if "xfce4-terminal" in " ".join(p.info["cmdline"])],
                     60, "the terminal started from the menu")
            desktop.page.wait_for_timeout(3000)
            desktop.type(f"(id; ls {catalog.data_root}; ls {other}; cat {other}/raw/*) > ~/{probe.name} 2>&1")
            desktop.type(f"silx view {scan}::/entry/data &")
            def image_on_screen():
                pixels, levels = viridis_pixels(desktop.pixels())
                return (pixels, levels) if pixels > 5000 else None

            _, levels = wait_for(image_on_screen, 120, "silx view's image of the scan on the desktop's screen")
            figures["up to silx view's image of the scan, received (bytes)"] = desktop.received
        finally:
            desktop.pixels(ARTIFACTS / "desktop-alice-silx.png")
    assert levels >= 20, f"only {levels} colormap levels on screen: not an image of the frame"
    text = wait_for(lambda: probe.exists() and probe.read_text(), 30, "the terminal's probe file")
    account = unix_name("alice")
    assert f"({account})" in text.splitlines()[0], text
    listed = set(text.splitlines()[1:1 + len(catalog.readable("alice"))])
    assert listed == {bt.path.name for bt in catalog.readable("alice")}, text
    assert f"ls: cannot access '{other}': No such file or directory" in text, text
    assert "NXentry" not in text and "HDF" not in text, text


def test_the_desktop_runs_as_the_user_in_her_sandbox(dep, catalog):
    """Every desktop process, seen from the host: alice's uid, her server's mount and network
    namespaces (not the host's), no capabilities, no new privileges; only her beamtimes under the data
    root; and the VNC server listening on no TCP port (its Unix socket is in her private /tmp)."""
    procs = desktop_processes(dep, "alice")
    names = {p.name() for p in procs}
    assert {"Xtigervnc", "xfwm4", "xfce4-panel"} <= names, names
    server = next(p for p in dep.processes_of("alice")  # the server itself, not the bwrap that started it
                  if "beamside-singleuser" in " ".join(p.info["cmdline"]) and p.name() != "bwrap")
    uid = server.uids().real
    mine = sorted(bt.path.name for bt in catalog.readable("alice"))
    for p in procs:
        status = Path(f"/proc/{p.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert p.uids().real == p.uids().effective == uid, (p.name(), p.uids())
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0, (p.name(), fields["CapEff"])
        assert fields["NoNewPrivs"].strip() == "1", p.name()
        for ns in ("mnt", "net", "pid"):
            assert os.readlink(f"/proc/{p.pid}/ns/{ns}") == os.readlink(f"/proc/{server.pid}/ns/{ns}"), (p.name(), ns)
            assert os.readlink(f"/proc/{p.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), (p.name(), ns)
        assert sorted(os.listdir(f"/proc/{p.pid}/root{catalog.data_root}")) == mine, p.name()
    figures["desktop processes with silx view and a terminal, PSS (MB)"] = round(
        sum(p.memory_full_info().pss for p in procs) / 1e6, 1)
    xvnc = next(p for p in procs if p.name() == "Xtigervnc")
    assert not [c for c in xvnc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN], \
        "the VNC server listens on a TCP port"


def test_nobody_else_reaches_the_desktop(dep):
    """bob's token, or none, opens neither alice's desktop page nor its VNC WebSocket."""
    bob = {"Authorization": f"token {dep.hub.token('bob')}"}
    page = requests.get(f"{dep.url}/user/alice/desktop/", headers=bob, timeout=30, allow_redirects=False)
    assert page.status_code == 403, page.status_code
    anonymous = requests.get(f"{dep.url}/user/alice/desktop/", timeout=30, allow_redirects=False)
    assert anonymous.status_code == 302 and "/hub/" in anonymous.headers["Location"], anonymous.status_code
    url = dep.url.replace("http", "ws") + "/user/alice/desktop-websockify/"
    for header in (["Authorization: " + bob["Authorization"]], []):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, header=header, timeout=30)
        assert refused.value.status_code in (302, 403), refused.value.status_code


def test_the_desktop_stops_with_the_server(dep):
    assert desktop_processes(dep, "alice")
    dep.hub.stop("alice")
    wait_for(lambda: not desktop_processes(dep, "alice"), 60, "alice's desktop gone after her server stopped")
