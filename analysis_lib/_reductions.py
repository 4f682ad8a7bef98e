"""The one list of reductions: the ``al.ops`` functions that turn frames into a result.

The command line (``beamside reduce``, ``beamside remote reduce``) and
:mod:`analysis_lib.remote` choose from here; names are ``al.ops`` function
names, and the command line spells them with hyphens. No imports: the CLI
builds its parser from this without loading xarray or Dask.
"""

from __future__ import annotations

# Every reduction in al.ops, by function name.
REDUCTIONS = ("bin", "correct", "frame_stats", "max_frame", "mean_frame", "radial_profile", "roi_sums")

# Those the command line offers, in the order its help lists them: each gives a
# result small enough to save (``correct`` gives back the whole stack).
COMMAND_LINE = ("mean_frame", "max_frame", "frame_stats", "roi_sums", "radial_profile", "bin")


def command_name(op: str) -> str:
    """``mean_frame`` as the command line spells it: ``mean-frame``."""
    return op.replace("_", "-")


def function_name(command: str) -> str:
    """``mean-frame`` as ``al.ops`` spells it: ``mean_frame``."""
    return command.replace("-", "_")


def check(op: str) -> str:
    """``op`` if it names a reduction, else a ValueError that lists them."""
    if op not in REDUCTIONS:
        raise ValueError(f"unknown reduction {op!r}; choose from {', '.join(REDUCTIONS)}")
    return op
