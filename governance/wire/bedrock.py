"""Moved to `governance.families.bedrock`; this name stays importable as the very same module."""

import sys

from governance.families import bedrock

sys.modules[__name__] = bedrock
