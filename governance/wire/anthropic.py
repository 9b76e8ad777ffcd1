"""Moved to `governance.families.anthropic`; this name stays importable as the very same module."""

import sys

from governance.families import anthropic

sys.modules[__name__] = anthropic
