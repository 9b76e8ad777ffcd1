"""Processes started together: each runs `target(*args, start, worker, results)` once `start` is
set, so they race for the same store; each puts one result on `results`, and these are returned
(in no order)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def race(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")  # no inherited connections: each opens its own
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, w, results)) for w in range(workers)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"a racing process failed with exit code {p.exitcode}"
    return [results.get(timeout=5) for _ in procs]
