"""spendfuse's mitmproxy script: `mitmdump -s addon.py`, or the fail-closed `spendfuse run`.

The addons live in `governance.mitm`, the only package that imports mitmproxy; every decision
is the engine's (`governance.engine`). `SpendFuse` carries the fuse hooks and brings its
transport guard to the end of the chain once mitmproxy runs.
"""

# No `from __future__ import annotations` here: mitmproxy loads this file as a script that is
# not in sys.modules.
from governance.mitm import SpendFuse
from governance.mitm.launcher import ensure_ca_bundle, launch

__all__ = ["SpendFuse", "addons", "ensure_ca_bundle", "launch"]

addons = [SpendFuse()]
