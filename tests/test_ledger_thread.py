"""The ledger thread: calls run one at a time, in order, off the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from governance.ledger_thread import LedgerThread


@pytest.fixture
def worker():
    w = LedgerThread(name="test-ledger")
    yield w
    w.close(timeout=5)


async def test_call_runs_on_its_own_thread_and_returns_the_result(worker):
    def where() -> str:
        return threading.current_thread().name

    assert await worker.call(where) == "test-ledger"
    assert await worker.call(lambda a, b: a * b, 6, 7) == 42


async def test_an_exception_reaches_the_caller_and_the_thread_keeps_serving(worker):
    def boom() -> None:
        raise ValueError("ledger says no")

    with pytest.raises(ValueError, match="ledger says no"):
        await worker.call(boom)
    assert await worker.call(lambda: "still here") == "still here"


async def test_calls_run_in_submission_order_one_at_a_time(worker):
    running = 0
    overlap = False
    order: list[int] = []

    def step(i: int) -> int:
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        order.append(i)
        running -= 1
        return i

    results = await asyncio.gather(*(worker.call(step, i) for i in range(200)))
    assert results == list(range(200))
    assert order == list(range(200))
    assert not overlap


async def test_answers_ready_together_wake_the_loop_once(worker):
    """While work is queued, finished answers are held and delivered in one loop callback."""
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal wakeups
        wakeups += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        blocker = worker.call(gate.wait, 5)
        calls = [asyncio.ensure_future(worker.call(lambda i=i: i)) for i in range(10)]
        await asyncio.sleep(0)  # every call is queued behind the blocker
        gate.set()
        assert await blocker is True
        assert await asyncio.gather(*calls) == list(range(10))
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
    assert wakeups <= 2  # the blocker (possibly alone) and then the ten together


async def test_a_cancelled_caller_does_not_break_the_thread(worker):
    gate = threading.Event()
    blocked = asyncio.ensure_future(worker.call(gate.wait, 5))
    victim = asyncio.ensure_future(worker.call(lambda: "unwanted"))
    await asyncio.sleep(0)
    victim.cancel()
    gate.set()
    assert await blocked is True
    assert await worker.call(lambda: "next") == "next"


def test_call_blocking_waits_for_the_result_and_raises_its_exception(worker):
    assert worker.call_blocking(lambda: threading.current_thread().name) == "test-ledger"
    with pytest.raises(KeyError):
        worker.call_blocking(lambda: {}["missing"])


def test_idle_hook_runs_on_the_thread_when_the_queue_is_empty():
    seen: list[str] = []
    done = threading.Event()

    def idle() -> None:
        seen.append(threading.current_thread().name)
        done.set()

    w = LedgerThread(name="idle-ledger", on_idle=idle)
    try:
        w.call_blocking(lambda: None)
        assert done.wait(5)
        assert set(seen) == {"idle-ledger"}
    finally:
        w.close(timeout=5)


@pytest.mark.expect_errors("idle housekeeping failed")
def test_a_failing_idle_hook_is_logged_and_the_thread_keeps_serving(caplog):
    def idle() -> None:
        raise RuntimeError("checkpoint failed")

    w = LedgerThread(on_idle=idle)
    try:
        assert w.call_blocking(lambda: 1) == 1
        assert w.call_blocking(lambda: 2) == 2
    finally:
        w.close(timeout=5)
    assert "idle housekeeping failed" in caplog.text


def test_close_runs_what_is_queued_then_refuses_new_work():
    w = LedgerThread()
    ran: list[int] = []
    for i in range(5):
        w.submit(ran.append, i)
    w.close(timeout=5)
    assert ran == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(ran.append, 5)
    w.close()  # idempotent


@pytest.mark.expect_errors("division by zero")
def test_a_failing_submitted_call_is_logged(caplog):
    w = LedgerThread()
    w.submit(lambda: 1 / 0)
    w.close(timeout=5)
    assert "failed" in caplog.text and "division by zero" in caplog.text
