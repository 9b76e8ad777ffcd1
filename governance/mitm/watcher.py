"""The rules watcher: reloads the rules when their file changes (polled, so it works on every
filesystem), and only once a change has settled, so a half-written file is never applied."""

import asyncio
import logging
import os
from collections.abc import Callable

from mitmproxy import ctx
from mitmproxy.utils import asyncio_utils

logger = logging.getLogger("spendfuse")

# How often the rules file is checked for edits.
RULES_POLL_SECONDS = 0.5


def rules_signature(path: str) -> tuple:
    """What changes when the rules file is edited or replaced: its identity, size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


class RulesWatcher:
    """Calls `reload` when the file named by `spendfuse_rules` has changed and then stayed the
    same for a whole poll. `seen` is the signature of the rules in force."""

    def __init__(self, reload: Callable[[], None]) -> None:
        self.reload = reload
        self.seen: tuple | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio_utils.create_task(
                self._watch(), name="spendfuse rules watcher", keep_ref=True
            )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        changing: tuple | None = None
        while True:
            await asyncio.sleep(RULES_POLL_SECONDS)
            try:
                signature = rules_signature(ctx.options.spendfuse_rules)
                if signature == self.seen:
                    changing = None
                elif signature == changing:
                    # Unchanged for a whole poll: an editor or a copy has finished writing it.
                    self.reload()
                    changing = None
                else:
                    changing = signature
            except Exception:
                logger.exception("spendfuse: watching the rules file failed")
