"""``beamside-singleuser`` (beamside_hub.user_server): the deferred routes are upstream's routes.

The deployments' tests (test_hub.py) start it and use the deferred routes through the proxy; here,
without a server, each extension's own loader registers its routes on a recording web app and they
are compared with the deferred ones, so an upgrade that moves or renames a route fails here.
"""

from __future__ import annotations

import asyncio
import importlib
import logging

import pytest
from beamside_hub import user_server


class _RecordingApp:
    """What an extension loader sees of a server: ``web_app`` (settings, add_handlers), ``root_dir``, ``log``."""

    def __init__(self):
        self.root_dir = "/home/someone"
        self.log = logging.getLogger("test")
        self.routes = []
        outer = self

        class WebApp:
            settings = {"base_url": "/user/someone/"}

            def add_handlers(self, host, handlers):
                outer.routes += [(path, handler, dict(options[0]) if options else {})
                                 for path, handler, *options in handlers]

        self.web_app = WebApp()


def _upstream(extension: str) -> list:
    """The extension's routes as its loader registers them, on a running event loop as in the server
    (dask-labextension makes a future at import: without a loop, e.g. after an asyncio.run, it fails)."""
    app = _RecordingApp()

    async def load():
        module = importlib.import_module(extension)
        (getattr(module, "_load_jupyter_server_extension", None) or module.load_jupyter_server_extension)(app)

    asyncio.run(load())
    return [(path, f"{handler.__module__}.{handler.__name__}", options) for path, handler, options in app.routes]


def _deferred() -> dict:
    app = _RecordingApp()
    user_server._load_jupyter_server_extension(app)
    by_module = {}
    for path, handler, options in app.routes:
        if not issubclass(handler, user_server._Deferred):
            continue  # beamside's own (the landing page)
        module, name = handler.real
        by_module.setdefault(module.split(".")[0], []).append((path, f"{module}.{name}", options))
    return by_module


@pytest.mark.parametrize("extension", sorted(user_server.DEFERRED))
def test_deferred_routes_are_the_extensions_own(extension):
    assert _deferred()[extension] == _upstream(extension)


def test_the_server_starts_without_node_and_with_the_read_only_extension_manager():
    options = user_server.default_options()
    assert "--LabApp.extension_manager=readonly" in options
    assert any(o.startswith("--LanguageServerManager.node_roots=") for o in options)
    extensions = next(o for o in options if o.startswith("--ServerApp.jpserver_extensions="))
    assert "'dask_labextension': False" in extensions and "'beamside_hub.user_server': True" in extensions
    user_server._no_yarn_registry()
    from jupyterlab import commands

    assert commands._yarn_config(None) == {"yarn config": {}, "npm config": {}}


def test_an_extension_that_is_not_installed_gets_no_routes(monkeypatch):
    """A deployment without one of the deferred extensions: no route that would fail at its first request."""
    monkeypatch.setitem(user_server.DEFERRED, "no_such_extension", [("nowhere/?", "no_such_extension.handlers", "H")])
    assert "no_such_extension" not in _deferred()
    assert set(_deferred()) == set(user_server.DEFERRED) - {"no_such_extension"}


def test_the_landing_page_is_the_servers_own_route():
    from beamside_hub.landing import LandingHandler

    app = _RecordingApp()
    user_server._load_jupyter_server_extension(app)
    assert ("/user/someone/beamside/?", LandingHandler, {}) in app.routes
