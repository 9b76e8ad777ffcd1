"""The `LedgerStore` contract: the same promises checked against every store.

Each test takes a `store` built by every factory in `STORES` (SQLite, and PostgreSQL on a real
server the session starts: tests/support/postgres.py) and uses only the protocol's verbs, so a
new store passes or fails the same suite. Amounts are chosen so that one more unit would change the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from governance import money, policy
from governance.engine import Engine
from governance.store import LedgerStore, RequestRecord, Room
from governance.store.postgres import PostgresStore
from governance.store.sqlite import SqliteStore
from governance.types import Claim, Endpoint, Metering, Usage
from governance.units import Unit
from tests.support.postgres import database_for
from tests.support.racing import race

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def sqlite_store(tmp_path: Path) -> LedgerStore:
    return SqliteStore.open(tmp_path / "contract.sqlite")


def postgres_store(tmp_path: Path) -> LedgerStore:
    return PostgresStore.open(database_for(str(tmp_path)), db_clock=False)  # time injected, as SQLite's


#: One factory per store: `factory(tmp_path) -> LedgerStore`, the same store for the same
#: `tmp_path` from any process (module-level functions, so spawned processes can call them).
STORES: dict[str, Callable[[Path], LedgerStore]] = {"sqlite": sqlite_store, "postgresql": postgres_store}


def _server_for(request: pytest.FixtureRequest, kind: str) -> None:
    if kind == "postgresql":
        request.getfixturevalue("pg_server")  # started once per session, for this kind only


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path: Path) -> Iterator[LedgerStore]:
    _server_for(request, request.param)
    s = STORES[request.param](tmp_path)
    yield s
    s.close()


def budget(amount: int, limit: int = 1_000_000, scope: str = "global", reset: str = "never") -> Claim:
    return Claim(scope, "", "never", limit, amount, f"budget:{scope}", reset=reset)


def rate(unit: Unit, amount: int, limit: int, scope: str = "pace") -> Claim:
    return Claim(f"{scope}|{unit.part}", "", "never", limit, amount, f"rate_limit:{scope}:{unit.part}", unit)


def test_reserve_holds_every_claim_or_none(store):
    a, b = budget(600_000, scope="a"), budget(600_000, scope="b", limit=1_000_000)
    assert store.reserve(RequestRecord("r1", "p"), [a, b], 600_000, NOW).granted
    # b still has room for 400,000; a has room for 400,000: 400,001 fits neither, so nothing is held
    r = store.reserve(
        RequestRecord("r2", "p"), [budget(1, scope="b"), budget(400_001, scope="a")], 400_001, NOW
    )
    assert not r.granted and r.blocking is not None and r.blocking.scope == "a" and r.recorded
    assert store.window_totals("b", "").held == 600_000  # b's claim was not held either
    assert store.request("r2")["state"] == "refused"
    assert store.reserve(RequestRecord("r3", "p"), [budget(400_000, scope="a")], 400_000, NOW).granted


def test_a_refusal_reports_its_numbers_and_the_room_left(store):
    store.reserve(RequestRecord("r1", "p"), [budget(700_000)], 700_000, NOW)
    store.settle("r1", 250_000, NOW, outcome="usage", cost_submicro=5)
    store.reserve(RequestRecord("r2", "p"), [budget(300_000)], 300_000, NOW)
    r = store.reserve(RequestRecord("r3", "p"), [budget(449_999)], 449_999, NOW)
    # spent 250,000 and 5 atto-USD, held 300,000: 449,999 whole micro-USD left, exactly
    assert r.granted and r.remaining_micro == 0 and r.binding == "budget:global"
    store.release("r3", NOW, outcome="x")
    r = store.reserve(RequestRecord("r4", "p"), [budget(450_000)], 450_000, NOW)
    assert not r.granted and (r.settled, r.held, r.settled_rest) == (250_000, 300_000, 5)
    assert r.room == 449_999 and r.output_room is None


def test_output_room_counts_only_limits_on_output(store):
    claims = [rate(Unit.TOKENS_TOTAL, 1_000, 1_200), rate(Unit.TOKENS_OUTPUT, 900, 800, scope="o"), budget(1)]
    r = store.reserve(RequestRecord("r", "p", est_input_tokens=300), claims, 1, NOW)
    # total: 1,200 left less 300 input = 900; output: 800 left -> 800
    assert not r.granted and r.blocking.scope == "o|tokens" and r.output_room == 800 and r.room == 1_000_000


def test_an_unrecorded_refusal_writes_nothing(store):
    store.reserve(RequestRecord("r1", "p"), [budget(900_000)], 900_000, NOW)
    seen: list[tuple[str, Room]] = []

    def record(blocking: Claim, room: Room) -> bool:
        seen.append((blocking.scope, room))
        return False

    r = store.reserve(RequestRecord("r2", "p"), [budget(100_001)], 100_001, NOW, record_refusal=record)
    assert not r.granted and not r.recorded and store.request("r2") is None
    assert seen == [("global", Room(100_000, None))]
    store.record_refusal(RequestRecord("r2", "p"), NOW, rule="budget:global", reason=None)
    assert store.request("r2")["state"] == "refused"


def test_dry_run_holds_regardless_and_reports(store):
    store.reserve(RequestRecord("r1", "p"), [budget(900_000)], 900_000, NOW)
    r = store.reserve(RequestRecord("r2", "p"), [budget(200_000)], 200_000, NOW, enforce=False)
    assert r.granted and r.blocking is not None and store.request("r2")["decision"] == "dry_run"
    assert store.window_totals("global", "").held == 1_100_000


def test_settlement_is_exact_idempotent_and_per_unit(store):
    claims = [
        rate(Unit.REQUESTS, 1, 10),
        rate(Unit.TOKENS_TOTAL, 5_000, 10_000),
        rate(Unit.IN_FLIGHT, 1, 2, scope="fl"),
        budget(400_000),
    ]
    assert store.reserve(RequestRecord("r", "p"), claims, 400_000, NOW).granted
    assert store.settle("r", 123_456, NOW, outcome="usage", usage=Usage(70, 30), cost_submicro=7 * 10**11)
    assert not store.settle("r", 1, NOW, outcome="usage") and not store.release("r", NOW, outcome="x")
    got = {c.scope: store.window_totals(c.scope, "") for c in claims}
    assert (got["pace|requests"].settled, got["pace|tokens"].settled) == (1, 100)
    assert got["fl|in_flight"].settled == 0 and all(t.held == 0 for t in got.values())
    g = got["global"]
    assert money.to_usd(g.settled, g.settled_rest) == money.to_usd(123_456, 7 * 10**11)
    row = store.request("r")
    assert row["state"] == "settled" and row["cost_micro"] == 123_456 and row["input_tokens"] == 70


def test_release_charges_nothing_and_charge_takes_the_reservation(store):
    store.reserve(RequestRecord("a", "p"), [budget(300_000), rate(Unit.REQUESTS, 1, 5)], 300_000, NOW)
    store.reserve(RequestRecord("b", "p"), [budget(200_000)], 200_000, NOW)
    assert store.release("a", NOW, outcome="upstream_error")
    assert store.charge_reservation("b", NOW, outcome="no_usage")
    assert store.window_totals("global", "").settled == 200_000
    assert store.window_totals("pace|requests", "").settled == 0  # a released request never ran
    assert store.request("b")["cost_micro"] == 200_000


def test_reap_charges_lost_holds_and_a_late_settle_corrects_them(store):
    claims = [budget(500_000), rate(Unit.IN_FLIGHT, 1, 1, scope="fl")]
    store.reserve(RequestRecord("old", "p"), claims, 500_000, NOW)
    store.reserve(RequestRecord("new", "p"), [budget(100_000)], 100_000, NOW + timedelta(seconds=50))
    assert store.reap(NOW + timedelta(seconds=100), 60) == 1
    assert store.request("old")["state"] == "expired" and store.request("new")["state"] == "held"
    t = store.window_totals("global", "")
    assert (t.settled, t.held) == (500_000, 100_000)
    assert store.window_totals("fl|in_flight", "").used == 0  # nothing is in flight any more
    assert store.settle("old", 80_000, NOW + timedelta(seconds=200), outcome="usage", usage=Usage(1, 1))
    assert store.window_totals("global", "").settled == 80_000


def test_windows_anchors_resets_and_topups(store):
    daily = budget(100_000, limit=100_000, scope="d", reset="1d")
    assert store.reserve(RequestRecord("a", "p"), [daily], 100_000, NOW).granted
    assert not store.reserve(RequestRecord("b", "p"), [daily], 1, NOW + timedelta(hours=23)).granted
    assert store.reserve(RequestRecord("c", "p"), [daily], 100_000, NOW + timedelta(days=1)).granted
    store.reset(["d"], NOW + timedelta(days=1, hours=1), who="ops")
    now = NOW + timedelta(days=1, hours=2)
    resolved = store.resolve_window(daily, now)
    assert resolved.window_start > "" and store.window_totals("d", resolved.window_start).used == 0
    store.topup("global", 1, NOW, who="ops")
    assert store.resolve_window(budget(0), NOW).limit == 1_000_001


def test_contexts_keep_the_larger_size(store):
    for rid, size in (("a", 300), ("b", 200)):
        store.reserve(RequestRecord(rid, "p"), [], 0, NOW)
        store.settle(rid, 0, NOW, outcome="usage", usage=Usage(size, 0, conversation_id="conv"))
    assert store.context_tokens(["conversation:conv", "conversation:none"]) == {"conversation:conv": 300}


def test_salt_is_stable_and_reports_count_every_request(store):
    assert store.salt() == store.salt() and len(store.salt()) == 32
    store.reserve(RequestRecord("a", "p", model="m"), [budget(10)], 10, NOW)
    store.settle("a", 7, NOW, outcome="usage", usage=Usage(3, 4))
    store.reserve(RequestRecord("b", "p"), [budget(2_000_000)], 2_000_000, NOW)
    by_state = {r["state"]: r["n"] for r in store.requests_by_state()}
    assert by_state == {"refused": 1, "settled": 1}
    [model] = store.spend_by_model()
    assert (model["model"], model["n"], model["tin"], model["tout"]) == ("m", 1, 3, 4)
    assert money.summed(model, "cost") == money.to_usd(7, 0)
    assert [(r["rule"], r["n"]) for r in store.refusals_by_rule()] == [("budget:global", 1)]
    assert store.spend_by_model(since="2099-01-01") == [] and len(store.spend_by_day()) == 1


def _race(kind: str, tmp_path: Path, start, worker: int, results) -> None:
    start.wait()
    s = STORES[kind](tmp_path)  # every process opens the store, new at first
    granted = 0
    for i in range(20):
        rid = f"w{worker}-{i}"
        claims = [budget(10_000, limit=500_000), rate(Unit.IN_FLIGHT, 1, 4)]  # 4 processes: never full
        if s.reserve(RequestRecord(rid, "p"), claims, 10_000, NOW).granted:
            granted += 1
            s.settle(rid, 10_000, NOW, outcome="usage", usage=Usage(1, 1))
    s.close()
    results.put(granted)


@pytest.mark.parametrize("kind", sorted(STORES))
def test_processes_sharing_a_store_never_pass_a_limit(kind, tmp_path: Path, request):
    _server_for(request, kind)
    granted = race(_race, (kind, tmp_path), 4)
    # 4 x 20 attempts of $0.01 against $0.50: exactly 50 fit, whatever the interleaving.
    assert sum(granted) == 50
    s = STORES[kind](tmp_path)
    t = s.window_totals("global", "")
    assert (t.settled, t.held) == (500_000, 0) and s.window_totals("pace|in_flight", "").used == 0
    assert {r["state"]: r["n"] for r in s.requests_by_state()} == {"refused": 30, "settled": 50}
    s.close()


def _reap(kind: str, tmp_path: Path, start, worker: int, results) -> None:
    start.wait()
    s = STORES[kind](tmp_path)
    results.put(s.reap(NOW + timedelta(seconds=100), 60))
    s.close()


@pytest.mark.parametrize("kind", sorted(STORES))
def test_processes_reaping_together_reap_each_lost_hold_once(kind, tmp_path: Path, request):
    _server_for(request, kind)
    s = STORES[kind](tmp_path)
    claims = [budget(10_000), rate(Unit.IN_FLIGHT, 1, 100, scope="fl")]
    for i in range(30):
        assert s.reserve(RequestRecord(f"h{i}", "p"), claims, 10_000, NOW).granted
    s.close()
    reaped = race(_reap, (kind, tmp_path), 4)
    assert sum(reaped) == 30  # every lost hold once, whichever process got it
    s = STORES[kind](tmp_path)
    t = s.window_totals("global", "")
    assert (t.settled, t.held) == (300_000, 0) and s.window_totals("fl|in_flight", "").used == 0
    assert {r["state"]: r["n"] for r in s.requests_by_state()} == {"expired": 30}
    s.close()


class _RacedStore:
    """A store that lets a competitor reserve right after the first refusal left unwritten:
    the room the admission's fit was computed for is gone when it reserves again."""

    def __init__(self, inner: LedgerStore, competitor: Callable[[], None]) -> None:
        self.inner, self.competitor, self.raced, self.calls = inner, competitor, False, 0

    def reserve(self, *args, **kw):
        self.calls += 1
        result = self.inner.reserve(*args, **kw)
        if not result.granted and not result.recorded and not self.raced:
            self.raced = True
            self.competitor()
        return result

    def __getattr__(self, name):
        return getattr(self.inner, name)


CLAMPED = {
    "budgets": [{"limit_usd": "0.05"}],
    "prices": {"gpt-4o": {"input_mtok": 1, "output_mtok": 10}},
    "model_limits": {"gpt-4o": 16384},
    "estimate": {"input_margin": 1},
    "clamp_output": {"floor_tokens": 100},
}
CHAT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")
ASKS_16000 = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16000}


def test_a_fit_whose_room_is_then_gone_is_refused_as_sent(store):
    # the competitor takes the whole budget between the fit and its reservation
    raced = _RacedStore(store, lambda: store.reserve(RequestRecord("x", "p"), [budget(50_000)], 50_000, NOW))
    e = Engine(policy.parse(CLAMPED, Path(".")), raced)  # type: ignore[arg-type]
    read = e.read_request(CHAT, ASKS_16000, principal="p", request_id="r")
    d = e.admit(read.info, NOW)
    assert not d.allowed and d.refusal.rule == "budget:global" and raced.calls == 2
    row = store.request("r")
    assert (
        row["state"] == "refused"
        and row["max_output_tokens"] == 16000
        and row["injected_output_tokens"] is None
    )
    assert store.window_totals("global", "").held == 50_000


def test_a_fit_whose_room_is_taken_is_fitted_again_never_overspent(store):
    raced = _RacedStore(store, lambda: store.reserve(RequestRecord("x", "p"), [budget(20_000)], 20_000, NOW))
    e = Engine(policy.parse(CLAMPED, Path(".")), raced)  # type: ignore[arg-type]
    read = e.read_request(CHAT, ASKS_16000, principal="p", request_id="r")
    d = e.admit(read.info, NOW)
    # 0.05 USD less the competitor's 0.02: under 3,000 output tokens at $10/M, not the ~5,000 first fitted
    assert d.allowed and 2_000 < d.output_cap < 3_000 and raced.calls == 3
    t = store.window_totals("global", "")
    assert t.held <= 50_000 and t.held == 20_000 + store.request("r")["reserved_micro"]
    assert store.request("r")["injected_output_tokens"] == d.output_cap
