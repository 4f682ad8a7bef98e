"""Load beamside's Dask config defaults (``beamside.yaml``) into ``dask.config``."""

from __future__ import annotations

import os

import dask.config
import yaml
from dask.utils import parse_bytes

_fn = os.path.join(os.path.dirname(__file__), "beamside.yaml")
with open(_fn) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))


def get(key: str):
    """``dask.config.get("beamside." + key)``."""
    return dask.config.get(f"beamside.{key}")


def get_bytes(key: str) -> int:
    """A size setting (``"16MiB"`` or a number) in bytes."""
    value = get(key)
    return int(value) if isinstance(value, (int, float)) else parse_bytes(value)
