"""Prometheus metrics of spendfuse's decisions (`spendfuse_metrics`), fed by decision records
(`governance.decisions`), the ledger thread's latency and the rules reloads. Every series is
documented in README.md ("Metrics").

Cardinality is bounded: principals are the ledger's (a key's id, a proxy user, a salted hash of
an API key: never a secret), and once `max_series` label sets of a metric exist, new ones are
counted under `principal="_other", model="_other"`. Money is in USD (floats, as Prometheus
keeps them; the ledger keeps the exact figures).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from governance.decisions import Record

#: Decisions a request is counted under in `spendfuse_requests_total`.
REQUEST_DECISIONS = frozenset({"admitted", "refused", "dry_run", "free", "unmetered_allowed"})
#: Ledger operations timed by name; any other is `other`.
LEDGER_OPS = frozenset({"admit", "settle", "record_refusal", "release", "reap", "finish"})
OTHER = "_other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Capped:
    """Label sets of one metric, at most `cap` distinct ones: past it, a new set's principal and
    model become `_other` (its decision, rule and provider come from bounded tables)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[tuple[str, ...]] = set()

    def labels(self, values: dict[str, str]) -> dict[str, str]:
        key = tuple(values.values())
        if key in self.seen:
            return values
        if len(self.seen) < self.cap:
            self.seen.add(key)
            return values
        capped = {**values, "principal": OTHER, "model": OTHER}
        self.seen.add(tuple(capped.values()))
        return capped


class Metrics:
    """A sink (`governance.observe`) and the registry it fills."""

    def __init__(self, *, max_series: int = 1000) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        who = ["provider", "model", "principal"]
        self.requests = Counter(
            "spendfuse_requests",
            "Requests decided, by decision, rule, provider, model and principal",
            ["decision", "rule", *who],
            registry=r,
        )
        self.spend = Counter("spendfuse_spend_usd", "USD charged by settlements", who, registry=r)
        self.reserved = Counter("spendfuse_reserved_usd", "USD reserved by admissions", who, registry=r)
        self.open = Gauge(
            "spendfuse_reservations_open", "Reservations not yet settled or released", registry=r
        )
        self.open_usd = Gauge("spendfuse_reservations_open_usd", "USD held by open reservations", registry=r)
        self.settlements = Counter(
            "spendfuse_settlements", "Reservations settled or released, by result", ["result"], registry=r
        )
        self.refusals = Counter("spendfuse_refusals", "Refusals, by kind", ["kind"], registry=r)
        self.reaped = Counter(
            "spendfuse_reaped_holds", "Holds left by a crash charged by the reaper", registry=r
        )
        self.ledger = Histogram(
            "spendfuse_ledger_seconds",
            "Time a ledger operation took, from the event loop (queueing on the ledger thread included)",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "spendfuse_rules_reloads", "Rules reloads, by result (ok, failed)", ["result"], registry=r
        )
        self._requests_cap = _Capped(max_series)
        self._money_cap = _Capped(max_series)

    def __call__(self, record: Record) -> None:
        who = {
            "provider": record.provider or "",
            "model": record.model or "",
            "principal": record.principal or "",
        }
        event = record.event
        if event in REQUEST_DECISIONS:
            labels = {"decision": event, "rule": record.rule or "", **who}
            self.requests.labels(**self._requests_cap.labels(labels)).inc()
            if record.kind is not None and event == "refused":
                self.refusals.labels(kind=record.kind).inc()
            if record.reserved is not None:
                self.reserved.labels(**self._money_cap.labels(who)).inc(float(record.reserved))
                self.open.inc()
                self.open_usd.inc(float(record.reserved))
        elif event in ("settled", "released"):
            self.settlements.labels(result=event).inc()
            if record.cost is not None:
                self.spend.labels(**self._money_cap.labels(who)).inc(float(record.cost))
            if record.reserved is not None:
                self.open.dec()
                self.open_usd.dec(float(record.reserved))
        elif event == "reaped" and record.count:
            self.reaped.inc(record.count)

    def ledger_seconds(self, op: str, seconds: float) -> None:
        self.ledger.labels(op=op if op in LEDGER_OPS else "other").observe(seconds)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "failed").inc()
