"""Moved to `governance.families.sse`; this name stays importable as the very same module."""

import sys

from governance.families import sse

sys.modules[__name__] = sse
