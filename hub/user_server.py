"""``beamside-singleuser``: the user's notebook server, without the work every start repeats for nothing.

This is ``jupyterhub-singleuser`` (JupyterHub's own server, extensions and all), with what no start
needs taken out of it. On a 2-core machine a stock start cost 3.9 CPU-seconds in the sandbox, more
than half of them for the two things below; this one costs 1.7. When fifty users log in at once,
that CPU is what they wait for.

- **Node, twice.** Importing ``jupyterlab.labapp`` runs ``node yarn.js config --json`` (labapp.py's
  module-level ``get_app_version()`` reads yarn's registry, ~0.7 CPU-s), and jupyter-lsp's search for
  language servers runs ``npm prefix -g`` (~0.3 CPU-s). The registry only matters for building
  JupyterLab or installing extensions, which a read-only software tree cannot do anyway: it is
  JupyterLab's own answer for "no node" here, the extension manager is the read-only one, and
  jupyter-lsp looks for node language servers where it would anyway, minus npm's global folder.
- **Extensions that import the scientific stack, until they are used.** dask-labextension's server
  part imports distributed (~0.5 CPU-s) and jupyterlab-h5web's imports h5py, h5grove and IPython
  (~0.4 CPU-s) when the server starts, for a side panel and a file viewer that most sessions open
  later or never. Here their routes are registered at start and each real handler is imported by
  the first request to it (:class:`_Deferred`); ``tests/test_user_server.py`` checks that the routes
  are still upstream's.

It adds the user's landing page (:mod:`beamside_hub.landing`, "Your beamtimes" in the launcher). The
server also hands its desktop beamside's session (:mod:`beamside_hub.desktop`), found in its own
installation, whichever platform started it.

And one default changes: JupyterLab's settings defaults come from ``overrides.json`` beside this
module (it is the server's ``LabApp.app_settings_dir``): no "Would you like to get notified about
official Jupyter news?" pop-up and no update checks in a facility's deployment (the facility
chooses the versions); users may still turn either on in Settings.

Everything else is upstream's: the hub's OAuth, activity reports, every other extension. Options
given on the command line still win over these defaults.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from tornado.web import RequestHandler

from . import desktop, landing

# The server extensions whose routes are registered deferred: their routes as each one's own
# loader registers them (path under the base URL, module, handler class), and the handler's options.
DEFERRED = {
    "dask_labextension": [
        ("dask/clusters/(?P<cluster_id>\\w+-\\w+-\\w+-\\w+-\\w+)", "dask_labextension.clusterhandler", "DaskClusterHandler"),
        ("dask/clusters/?", "dask_labextension.clusterhandler", "DaskClusterHandler"),
        ("dask/dashboard/(?P<cluster_id>\\w+-\\w+-\\w+-\\w+-\\w+)(?P<proxied_path>.+)",
         "dask_labextension.dashboardhandler", "DaskDashboardHandler"),
        ("dask/dashboard-check/(?P<url>.+)", "dask_labextension.dashboardhandler", "DaskDashboardCheckHandler"),
    ],
    "jupyterlab_h5web": [
        (f"h5web/{endpoint}", "jupyterlab_h5web.handlers", handler)
        for endpoint, handler in (("attr", "AttributeHandler"), ("data", "DataHandler"),
                                  ("meta", "MetadataHandler"), ("paths", "PathsHandler"))
    ],
}


def _options(extension: str, server_app) -> dict:
    """What each deferred handler is built with (h5web's: the folder it serves files from)."""
    return {"base_dir": Path(server_app.root_dir)} if extension == "jupyterlab_h5web" else {}


def _no_yarn_registry() -> None:
    """JupyterLab's result for a machine without node (its ``_yarn_config``), without running node."""
    from jupyterlab import commands

    commands._yarn_config = lambda logger=None: {"yarn config": {}, "npm config": {}}


def default_options() -> list[str]:
    """Command-line defaults (given options override them: traitlets keeps the last value)."""
    prefix = Path(sys.prefix)
    node_roots = [str(Path.cwd()), str(prefix / "share" / "jupyter" / "lab" / "staging"), str(prefix / "lib"),
                  str(prefix)]
    return [
        "--LabApp.extension_manager=readonly",
        f"--LabApp.app_settings_dir={Path(__file__).parent}",
        f"--LanguageServerManager.node_roots={node_roots!r}",
        f"--ServerApp.jpserver_extensions={ {**dict.fromkeys(DEFERRED, False), __name__: True}!r}",
    ]


class _Deferred(RequestHandler):
    """A route whose real handler (``real``: module and class name) is imported by its first request;
    tornado then builds and runs that handler, with its own authentication, as usual."""

    real = ("", "")

    def __new__(cls, application, request, **kwargs):
        module, name = cls.real
        return getattr(importlib.import_module(module), name)(application, request, **kwargs)


def _jupyter_server_extension_points():
    return [{"module": __name__}]


def _load_jupyter_server_extension(server_app) -> None:
    """Register the deferred extensions' routes (see the module's docstring) and the landing page."""
    from jupyter_server.utils import url_path_join

    base_url = server_app.web_app.settings["base_url"]
    handlers = [
        (url_path_join(base_url, path), type(name, (_Deferred,), {"real": (module, name)}), _options(extension, server_app))
        for extension, routes in DEFERRED.items() if importlib.util.find_spec(extension) is not None  # installed
        for path, module, name in routes
    ]
    server_app.web_app.add_handlers(".*$", handlers + landing.handlers(base_url))


def main(argv: list[str] | None = None) -> int | None:
    _no_yarn_registry()
    for name, value in desktop.environment().items():
        os.environ.setdefault(name, value)
    from jupyterhub.singleuser import main as singleuser_main

    given = sys.argv[1:] if argv is None else argv
    return singleuser_main([*default_options(), *given])


if __name__ == "__main__":
    sys.exit(main())
