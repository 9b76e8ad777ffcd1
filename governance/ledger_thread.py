"""The ledger's own thread: every database call runs here, one at a time, in the order submitted.

An asyncio caller awaits `call(fn, ...)`; the event loop never blocks on SQLite. This replaces
`loop.run_in_executor` on a one-worker pool, which costs a `concurrent.futures.Future` (a lock
and a condition), a chained asyncio future and two callbacks per call: in a proxy that makes two
ledger calls per request, that hand-off was a fifth of the request's time. Here a call is one
`SimpleQueue.put`, and its answer one `call_soon_threadsafe`, shared by every answer the thread
has ready when it next looks at its queue.

FIFO order is a promise callers rely on: a settle submitted before an admit is committed before
that admit reads the totals.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Answers the thread holds back while more work is queued, before it wakes the loop anyway.
_MAX_BATCH = 32


class _Reply:
    """Where one call's outcome goes: an asyncio future (`call`), or else a blocking waiter."""

    __slots__ = ("future", "event", "ok", "value")

    def __init__(self, future: asyncio.Future[Any] | None = None) -> None:
        self.future = future
        self.event = threading.Event() if future is None else None
        self.ok = False
        self.value: Any = None


def _resolve_all(replies: list[_Reply]) -> None:
    """On the event loop: hand each finished call's outcome to its awaiting future."""
    for reply in replies:
        fut = reply.future
        assert fut is not None
        if fut.cancelled():
            continue
        if reply.ok:
            fut.set_result(reply.value)
        else:
            fut.set_exception(reply.value)


class LedgerThread:
    """One daemon thread that runs calls in submission order."""

    def __init__(
        self, name: str = "spendfuse-ledger", *, on_idle: Callable[[], object] | None = None
    ) -> None:
        """`on_idle` runs on the thread whenever its queue runs dry (housekeeping such as WAL
        checkpoints, kept off the requests' path); its exceptions are logged and dropped."""
        self.on_idle = on_idle
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], _Reply | None] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # -- submitting --------------------------------------------------------------------------

    def _put(self, fn: Callable[..., Any], args: tuple[Any, ...], reply: _Reply | None) -> None:
        if self._closed:
            raise RuntimeError("the ledger thread is closed")
        self._queue.put((fn, args, reply))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the ledger thread; return its result or raise its exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(fn, args, _Reply(future))
        return await future

    def call_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the ledger thread and wait for it, from a thread that may block
        (start-up and reconfiguration, before and between requests)."""
        reply = _Reply()
        self._put(fn, args, reply)
        assert reply.event is not None
        reply.event.wait()
        if not reply.ok:
            raise reply.value
        return reply.value  # type: ignore[no-any-return]

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue `fn(*args)` without waiting for it (closing a replaced ledger)."""
        self._put(fn, args, None)

    def close(self, timeout: float | None = None) -> None:
        """Run everything already queued, then stop the thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------------------

    def _serve(self) -> None:
        ready: list[_Reply] = []  # answers not yet handed to their loops
        while True:
            if ready and (len(ready) >= _MAX_BATCH or self._queue.empty()):
                self._wake(ready)
            if self.on_idle is not None and self._queue.empty():
                try:
                    self.on_idle()
                except Exception:
                    logger.exception("ledger thread: idle housekeeping failed")
            item = self._queue.get()
            if item is None:
                self._wake(ready)
                return
            fn, args, reply = item
            try:
                value, ok = fn(*args), True
            except BaseException as e:  # noqa: BLE001 - delivered to the caller, who decides
                value, ok = e, False
            if reply is None:
                if not ok:
                    logger.error("ledger thread: %s failed: %s", getattr(fn, "__qualname__", fn), value)
                continue
            reply.ok, reply.value = ok, value
            if reply.event is not None:
                reply.event.set()
            else:
                ready.append(reply)

    @staticmethod
    def _wake(ready: list[_Reply]) -> None:
        """One loop callback per event loop for every answer in `ready`; empties it."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Reply]] = {}
        for reply in ready:
            assert reply.future is not None
            by_loop.setdefault(reply.future.get_loop(), []).append(reply)
        ready.clear()
        for loop, replies in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, replies)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more
