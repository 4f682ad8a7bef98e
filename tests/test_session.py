"""The scientist's session in the browser, for real: the desktop (hub/desktop.py) and the landing page
(hub/landing.py).

The desktop: Chromium logs in to the embedded deployment,
opens alice's desktop, starts silx view from the XFCE menu and from its terminal on a demo file, and
reads the image back from the screen's pixels; a program in it tries to read another user's confidential
beamtime, and the desktop's processes are examined from the host (whose account, which namespaces,
which capabilities, which sockets). Screenshots go to ``test-artifacts/``; what the browser received
(the first screen, an idle minute's share, silx view's image) to ``test-artifacts/session-figures.json``
(figures, never a timing assertion; ``python -m benchmarks.desktop`` measures a busy screen).

The landing page lists exactly the user's beamtimes (the policy's answer, role and end date), the
examples and the user's running Dask clusters with what they hold; it is reached from JupyterLab's
launcher in Chromium, and refused to other users.
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
from .deploy import ARTIFACTS, deployment_for_module, wait_for
from .desktop import VIEWPORT, Desktop, viridis_pixels
from .hubclient import Kernel
from .slurm import beamside_settings

DESKTOP_PROGRAMS = ("Xtigervnc", "xfce4-session", "xfwm4", "xfce4-panel", "xfsettingsd", "xfce4-terminal", "silx")
figures: dict = {}


@pytest.fixture(scope="module", params=["embedded", "slurm"])
def dep(request):
    """On one machine, then on SLURM (servers as jobs: the desktop is the job's child, in its sandbox)."""
    settings = beamside_settings(request.getfixturevalue("slurm")) if request.param == "slurm" else {}
    for deployment in deployment_for_module(f"session-{request.param}", figures.setdefault(request.param, {}),
                                            settings, users=("alice", "bob", "carol")):
        deployment.platform = request.param
        yield deployment
    if request.param == "slurm":
        request.getfixturevalue("slurm").assert_drained()


def figure(dep, name: str, value) -> None:
    figures[dep.platform][name] = value


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
            blank = desktop.pixels(ARTIFACTS / f"desktop-alice-empty-{dep.platform}.png")
            figure(dep, "first screen, received (bytes)", desktop.received)
            figure(dep, "idle desktop, received (bytes/s over 10 s)", round(desktop.rate(10)))
            assert viridis_pixels(blank)[0] < 100

            desktop.menu("Science", "silx view")
            wait_for(lambda: silx_views(dep, "alice"), 60, "silx view started from the Science menu")
            desktop.page.wait_for_timeout(5000)
            desktop.pixels(ARTIFACTS / f"desktop-alice-menu-silx-{dep.platform}.png")
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
            figure(dep, "up to silx view's image of the scan, received (bytes)", desktop.received)
        finally:
            desktop.pixels(ARTIFACTS / f"desktop-alice-silx-{dep.platform}.png")
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
    figure(dep, "desktop processes with silx view and a terminal, PSS (MB)",
           round(sum(p.memory_full_info().pss for p in procs) / 1e6, 1))
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


def landing(dep, user: str, token_of: str | None = None) -> requests.Response:
    token = dep.hub.token(token_of or user)
    return requests.get(f"{dep.url}/user/{user}/beamside/", params={"format": "json"},
                        headers={"Authorization": f"token {token}"}, timeout=60, allow_redirects=False)


@pytest.mark.parametrize("user", ["alice", "carol"])
def test_the_landing_page_lists_exactly_the_users_beamtimes(dep, catalog, user):
    answer = landing(dep, user)
    assert answer.status_code == 200, answer.text
    facts = answer.json()
    expected = [{"id": bt.id, "title": bt.title, "role": bt.role_of(user), "confidential": bt.confidential,
                 "until": None, "path": str(bt.path)} for bt in catalog.readable(user)]
    assert facts["beamtimes"] == expected
    assert [e["name"] for e in facts["examples"]] == ["01-quickstart.ipynb", "02-azimuthal-integration.ipynb",
                                                      "03-roi-scan.ipynb"]
    assert facts["examples"][0]["title"] == "Quickstart: your beamtime, next to the data"
    assert facts["desktop"] is True and facts["clusters"] == {"available": True, "clusters": []}
    page = requests.get(f"{dep.url}/user/{user}/beamside/", headers={"Authorization": f"token {dep.hub.token(user)}"},
                        timeout=60)
    others = [bt for bt in catalog.beamtimes if bt not in catalog.readable(user)]
    assert all(bt.title in page.text for bt in catalog.readable(user))
    assert others and not any(bt.title in page.text or bt.id in page.text for bt in others), page.text


def test_the_landing_page_shows_the_users_running_cluster(dep):
    kernel = Kernel(dep.url, "alice", dep.hub.token("alice"))
    try:
        started = kernel.run("import analysis_lib as al\nclient = al.cluster(workers=1)\n"
                             "client.wait_for_workers(1, timeout=180)\nprint(client.cluster.name)", timeout=300)
        assert not started.get("error"), started
        facts = landing(dep, "alice").json()["clusters"]
        assert [c["name"] for c in facts["clusters"]] == [started["stdout"].strip()], facts
        cluster = facts["clusters"][0]
        assert cluster["status"] == "running" and cluster["workers"] == 1 and cluster["threads"] >= 1, cluster
        assert cluster["memory"] > 0
        assert landing(dep, "bob").json()["clusters"]["clusters"] == []  # bob's page: his clusters only
    finally:
        kernel.run("client.cluster.shutdown()", timeout=120)
        kernel.close()


def test_nobody_else_reaches_the_landing_page(dep):
    assert landing(dep, "alice", token_of="bob").status_code == 403
    anonymous = requests.get(f"{dep.url}/user/alice/beamside/", timeout=30, allow_redirects=False)
    assert anonymous.status_code == 302 and "/hub/" in anonymous.headers["Location"]


def test_the_launcher_opens_the_landing_page(dep, catalog):
    """In Chromium: JupyterLab's launcher has "Your beamtimes" and "Desktop"; the first opens the page."""
    with logged_in(dep.url, "alice", dep.logins["alice"], {"width": 1280, "height": 900}) as (ctx, page):
        page.goto(f"{dep.url}/user/alice/lab")
        card = page.locator(".jp-LauncherCard", has_text="Your beamtimes")
        card.wait_for(timeout=120_000)
        assert page.locator(".jp-LauncherCard", has_text="Desktop").count() == 1
        with ctx.expect_page(timeout=60_000) as opened:
            card.click()
        landing_page = opened.value
        landing_page.locator("#beamtimes").wait_for(timeout=60_000)
        landing_page.screenshot(path=str(ARTIFACTS / f"landing-alice-{dep.platform}.png"), full_page=True)
        rows = landing_page.locator("#beamtimes tr").all_inner_texts()[1:]
    assert [row.split("\t")[0] for row in rows] == [bt.id for bt in catalog.readable("alice")], rows


def test_the_dask_panel_starts_a_cluster_on_the_gateway(dep):
    """In Chromium: JupyterLab's Dask panel's "New" makes a cluster next to the data (the gateway's, with
    alice's limits, two workers as al.cluster()'s), lists it, and its Shutdown ends it; the landing page
    sees the same cluster."""
    def clusters():
        return landing(dep, "alice").json()["clusters"]["clusters"]

    assert clusters() == []
    with logged_in(dep.url, "alice", dep.logins["alice"], {"width": 1280, "height": 900}) as (_, page):
        try:
            page.goto(f"{dep.url}/user/alice/lab")
            page.locator('.lm-TabBar-tab[data-id="dask-dashboard-launcher"]').click(timeout=120_000)
            page.locator(".dask-DaskClusterManager .jp-Toolbar").get_by_text("NEW", exact=True).click(timeout=60_000)
            item = page.locator(".dask-ClusterListingItem-title").first
            item.wait_for(timeout=180_000)
            wait_for(lambda: [c for c in clusters() if c["status"] == "running" and c.get("workers") == 2], 180,
                 "the panel's cluster, running with its two workers, on alice's landing page")
            assert len(clusters()) == 1, clusters()
            page.screenshot(path=str(ARTIFACTS / f"dask-panel-alice-{dep.platform}.png"))
            page.locator(".dask-ClusterListingItem-button-panel").get_by_text("Shutdown").first.click()
            page.locator(".dask-ClusterListingItem-title").wait_for(state="detached", timeout=120_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / f"dask-panel-alice-after-{dep.platform}.png"))
    wait_for(lambda: clusters() == [], 120, "the cluster gone after the panel's Shutdown")


def test_the_desktop_stops_with_the_server(dep):
    assert desktop_processes(dep, "alice")
    dep.hub.stop("alice")
    wait_for(lambda: not desktop_processes(dep, "alice"), 60, "alice's desktop gone after her server stopped")
