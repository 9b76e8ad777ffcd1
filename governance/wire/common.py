"""Moved to `governance.families.common`; this name stays importable as the very same module."""

import sys

from governance.families import common

sys.modules[__name__] = common
