"""Moved to `governance.families.envelope`; this name stays importable as the very same module."""

import sys

from governance.families import envelope

sys.modules[__name__] = envelope
