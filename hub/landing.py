"""The scientist's landing page, in their own server: ``/user/<name>/beamside/``.

What a new user asks first, on one page: which beamtimes may I read (title, my role, until when), where
do I start (the worked examples in my home), how do I get a Dask cluster and what are mine using now, and
where is the desktop. JupyterLab's launcher links to it ("Your beamtimes"): jupyter-server-proxy makes
launcher cards only for its proxied servers, so :func:`launcher` declares one with no process (its own
route, ``/beamside-home/``, proxies nothing) whose card points here, as jupyter-remote-desktop-proxy's
"Desktop" card points at its page.

The beamtimes come from the one access policy (``analysis_lib.beamtimes``, on the user's own catalog
view in the sandbox), so the page lists exactly what the user's kernels, workers and desktop can read.
The clusters are the gateway's answer for the user's own token. Nothing is imported before the first
request (the server's start stays cheap: beamside_hub.user_server); ``?format=json`` gives the same facts
to scripts.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import json
import os
from pathlib import Path

from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from . import desktop

TEMPLATE = Path(__file__).with_name("landing.html")
CLUSTER_TIMEOUT = 10  # seconds the page waits for the gateway and each scheduler before saying so


def launcher() -> dict:
    """jupyter-server-proxy's entry point (``jupyter_serverproxy_servers``): the launcher card only."""
    return {"command": [], "new_browser_tab": True,
            "launcher_entry": {"title": "Your beamtimes", "path_info": "beamside/", "category": "Notebook"}}


def beamtime_facts(user: str) -> list[dict]:
    from analysis_lib import beamtimes

    facts = []
    for bt in beamtimes(user):
        member = next(m for m in bt.members if m.user == user)
        facts.append({"id": bt.id, "title": bt.title, "role": member.role, "confidential": bt.confidential,
                      "until": member.until.isoformat() if member.until else None, "path": str(bt.path)})
    return facts


def example_facts(home: Path) -> list[dict]:
    """The notebooks in ``~/examples``, each with its first heading as the title."""
    found = []
    for path in sorted((home / "examples").glob("*.ipynb")):
        title = path.stem
        try:
            cells = json.loads(path.read_text())["cells"]
            first = next(("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"), "")
            heading = next((line.lstrip("# ").strip() for line in first.splitlines() if line.startswith("#")), "")
            title = heading or title
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a notebook the user broke is still listed, by its name
        found.append({"name": path.name, "title": title, "path": str(path.relative_to(home))})
    return found


async def cluster_facts() -> dict:
    """The user's running gateway clusters with what each holds now (workers, threads, memory), or why
    they could not be asked; ``available`` is False where no gateway is configured."""
    import dask.config

    if not dask.config.get("gateway.address", None):
        return {"available": False, "clusters": []}
    from dask_gateway import Gateway

    async with Gateway(asynchronous=True) as gateway:
        try:
            reports = await asyncio.wait_for(gateway.list_clusters(), CLUSTER_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - the gateway down or slow: the page shows the rest, and why
            return {"available": True, "clusters": [], "error": f"the gateway did not answer: {error}"}
        clusters = [await _usage(gateway, report) for report in reports]
    return {"available": True, "clusters": clusters}


async def _usage(gateway, report) -> dict:
    fact = {"name": report.name, "status": report.status.name.lower(),
            "started": report.start_time.isoformat(timespec="seconds") if report.start_time else None,
            "dashboard": report.dashboard_link}
    if report.status.name != "RUNNING":  # starting or stopping: no scheduler to ask yet
        return fact
    try:
        cluster = await asyncio.wait_for(gateway.connect(report.name), CLUSTER_TIMEOUT)
        try:
            client = await asyncio.wait_for(cluster.get_client(set_as_default=False), CLUSTER_TIMEOUT)
            try:
                workers = (await asyncio.wait_for(client.scheduler.identity(), CLUSTER_TIMEOUT))["workers"].values()
            finally:
                await client.close()
        finally:
            await cluster.close()  # only this connection: connect() never shuts the cluster down
        fact.update(workers=len(workers), threads=sum(w["nthreads"] for w in workers),
                    memory=sum(w["memory_limit"] for w in workers))
    except Exception as error:  # noqa: BLE001 - a scheduler that does not answer is said so, never a 500
        fact["error"] = f"its scheduler did not answer: {error}"
    return fact


class LandingHandler(JupyterHandler):
    """The page (upstream's ``@authenticated``: the user's own login, like every page of the server)."""

    @web.authenticated
    async def get(self):
        user = os.environ.get("JUPYTERHUB_USER") or self.current_user.username
        home = Path(self.serverapp.root_dir)
        facts = {"user": user, "beamtimes": beamtime_facts(user), "examples": example_facts(home),
                 "clusters": await cluster_facts(),
                 "desktop": not desktop.missing(),
                 "now": _dt.datetime.now().astimezone().isoformat(timespec="minutes")}
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(facts))
            return
        self.finish(_template().render(base=self.base_url, **facts))


@functools.cache
def _template():
    """The page's template, read and compiled at the first view (not at the server's start)."""
    import jinja2

    return jinja2.Environment(autoescape=True).from_string(TEMPLATE.read_text())


def handlers(base_url: str) -> list:
    from jupyter_server.utils import url_path_join

    return [(url_path_join(base_url, "beamside/?"), LandingHandler)]
