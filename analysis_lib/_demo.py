"""The old name of :mod:`analysis_lib.demo`, kept for code that imports it: the same module object."""

import sys

from . import demo

sys.modules[__name__] = demo
