"""Moved to `governance.families.google`; this name stays importable as the very same module."""

import sys

from governance.families import google

sys.modules[__name__] = google
