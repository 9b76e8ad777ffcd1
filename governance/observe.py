"""Where decision records go besides the flow: the sinks an operator turned on (the JSON
decision log, the metrics). None by default, and then no record is built for them: the
default path pays nothing for what it does not show."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from governance.decisions import Record

logger = logging.getLogger("spendfuse")

Sink = Callable[[Record], None]


class Gauges(Protocol):
    """What the metrics take besides decisions (`governance.metrics.Metrics`)."""

    def ledger_seconds(self, op: str, seconds: float) -> None: ...

    def reloaded(self, ok: bool) -> None: ...


class Observers:
    """The sinks in force (False when there are none), and the metrics if they are on."""

    def __init__(self, sinks: list[Sink] | None = None, metrics: Gauges | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or ())
        self.metrics = metrics

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit(self, record: Record) -> None:
        """Give `record` to every sink. A sink that fails is logged (at error level) and the
        others still run: showing a decision never changes it."""
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:
                logger.exception("spendfuse: could not show a %s decision", record.event)
