"""Moved to `governance.families.tap`; this name stays importable as the very same module."""

import sys

from governance.families import tap

sys.modules[__name__] = tap
