"""spendfuse's engine: everything that decides and records, with no mitmproxy in sight."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parent
# A checkout keeps `addon.py` and `rules/` beside this package. An installed wheel carries them
# inside it, under `_shipped/` (pyproject.toml maps them), so that installing spendfuse adds no
# generic top-level `addon` module and still finds its shipped rules.
_SHIPPED = _PACKAGE / "_shipped"
HOME = _SHIPPED if (_SHIPPED / "addon.py").is_file() else _PACKAGE.parent

#: The rules directory, where the shipped rule files, model tables and schema live.
RULES_DIR = HOME / "rules"
DEFAULT_RULES = RULES_DIR / "default.yaml"
#: The mitmproxy script: `mitmdump -s "$(spendfuse addon-path)"` loads spendfuse.
ADDON_SCRIPT = HOME / "addon.py"

_ADDON_MODULE = "spendfuse_addon"


def load_addon() -> ModuleType:
    """The addon module, for the commands that run the proxy or make its CA. Loaded from
    `ADDON_SCRIPT` under one name whether spendfuse runs from a checkout or from a wheel."""
    module = sys.modules.get(_ADDON_MODULE)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(_ADDON_MODULE, ADDON_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the spendfuse addon from {ADDON_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up by name.
    sys.modules[_ADDON_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_ADDON_MODULE]
        raise
    return module
