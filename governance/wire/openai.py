"""Moved to `governance.families.openai`; this name stays importable as the very same module."""

import sys

from governance.families import openai

sys.modules[__name__] = openai
