"""`scripts/bench`: spendfuse's overhead as ratios against bare mitmdump, measured in one run.

Both proxies forward small non-streamed chat requests to the same fake upstream (a separate
process, so it does not share the client's GIL); the bare one runs only the redirect script.
Proxy mode (HTTPS through the proxy, intercepted) is compared with bare mitmdump as a regular
proxy; gateway mode (plain HTTP to `/openai/v1/...` on the gateway listener) with bare mitmdump
in reverse mode. Each figure is the median of the rounds, which alternate the proxies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.gateway import free_port
from tests.support.proxy import REPO, Proxy, start_proxy

HOPS_ADDON = Path(__file__).with_name("hops_addon.py")
#: spendfuse with its metrics and JSON decision log on (`--observe`).
OBSERVED = "spendfuse+obs"

BODY = {
    "model": "gpt-4o",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Say hello in one word."}],
}
URL = "https://api.openai.com/v1/chat/completions"


@dataclass(frozen=True)
class Target:
    """How a client reaches the upstream through one proxy: the URL it posts to and the httpx
    client options (a proxy and the CA in proxy mode, nothing in gateway mode)."""

    url: str
    options: dict[str, Any]

    @staticmethod
    def of(kind: str, proxy: Proxy) -> Target:
        if kind == "gateway":
            return Target(proxy.gateway_url + "/openai/v1/chat/completions", {})
        if kind == "bare-reverse":
            return Target(proxy.url + "/v1/chat/completions", {})
        return Target(URL, {"proxy": proxy.url, "verify": ssl.create_default_context(cafile=str(proxy.ca))})


def start_upstream_process() -> tuple[subprocess.Popen, int]:
    code = (
        "import time, sys; from tests.support.fake_upstream import start_upstream; u = start_upstream(); "
        "print(u.port, flush=True); time.sleep(10**6)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO, text=True)
    return proc, int(proc.stdout.readline())


def sequential(target: Target, n: int) -> tuple[float, float]:
    """Requests/s and p50 latency (ms) over one kept-alive connection."""
    with httpx.Client(headers={"authorization": "Bearer sk-bench"}, trust_env=False, **target.options) as c:
        for _ in range(20):
            c.post(target.url, json=BODY).raise_for_status()
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            c.post(target.url, json=BODY).raise_for_status()
            lat.append(time.perf_counter() - s)
        total = time.perf_counter() - t0
    return n / total, statistics.median(lat) * 1000


async def concurrent(target: Target, n: int, conc: int) -> float:
    """Requests/s with `conc` clients in flight at once."""
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(
        limits=limits,
        headers={"authorization": "Bearer sk-bench"},
        timeout=60,
        trust_env=False,
        **target.options,
    ) as c:
        await asyncio.gather(*(c.post(target.url, json=BODY) for _ in range(conc)))
        sem = asyncio.Semaphore(conc)

        async def one():
            async with sem:
                (await c.post(target.url, json=BODY)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


def start_kind(kind: str, tmp: Path, conf: Path, port: int, rules: Path) -> Proxy:
    """One proxy of the bench: spendfuse (with its gateway listener for `gateway`), or bare
    mitmdump as a regular proxy, with the hops addon, or in reverse mode to the upstream."""
    if kind in ("spendfuse", "gateway", OBSERVED):
        sets = {
            "spendfuse_rules": str(rules),
            "spendfuse_db": str(tmp / f"ledger-{time.monotonic_ns()}.sqlite"),
        }
        if kind == OBSERVED:  # metrics on (loopback, unscraped) and the JSON decision log to a file
            sets["spendfuse_metrics"] = str(free_port())
            sets["spendfuse_log_format"] = "json"
            sets["spendfuse_log_file"] = str(tmp / f"decisions-{time.monotonic_ns()}.jsonl")
        if kind == "gateway":
            sets["spendfuse_gateway"] = f"127.0.0.1:{free_port()}"
        return start_proxy(tmp / kind, confdir=conf, redirect_port=port, sets=sets)
    return start_proxy(
        tmp / kind,
        confdir=conf,
        sets={"connection_strategy": "lazy"},
        redirect_port=port,
        bare=True,
        scripts=(HOPS_ADDON,) if kind == "hops" else (),
        extra=["--mode", f"reverse:http://127.0.0.1:{port}"] if kind == "bare-reverse" else None,
    )


#: The scopes of a request under a key, a team, a customer, a model limit, a provider limit and
#: the global budget: six claims, each with a window of its own kind.
SIX_SCOPES = (
    ("key=agent-1|daily", "1d", False),
    ("team=research|weekly", "1w", True),
    ("customer=acme|monthly", "1M", True),
    ("model=gpt-4o|daily", "1d", True),
    ("provider=openai|monthly", "1M", False),
    ("global", "never", False),
)


def _claims(n_claims: int) -> list:
    from governance.types import Claim

    if n_claims == 1:
        return [Claim("global", "", "never", 10**15, 100, "budget:global")]
    return [
        Claim(
            scope,
            "",
            "",
            10**15,
            100,
            f"budget:{scope}",
            reset=reset,
            calendar=calendar,
            timezone="Europe/Berlin",
        )
        for scope, reset, calendar in SIX_SCOPES[:n_claims]
    ]


def prefill(led, rows: int, n_claims: int) -> None:
    """Grow the ledger by `rows` settled requests with their claims, as a long-lived proxy's
    would be, in bulk (the rate of interest is the one measured after)."""
    conn = led.db.conn
    batch = 50_000
    scopes = [c.scope for c in _claims(n_claims)]
    for start in range(0, rows, batch):
        ids = [f"old{i}" for i in range(start, min(start + batch, rows))]
        with conn:
            conn.executemany(
                "INSERT INTO requests (id, created_at, settled_at, principal, provider, api, model, stream, "
                "reserved_micro, cost_micro, state, decision, counters) VALUES "
                "(?, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:01.000000Z', 'key:agent-1', 'openai', "
                "'chat', 'gpt-4o', 0, 100, 80, 'settled', 'allowed', ?)",
                [(i, ",".join(scopes)) for i in ids],
            )
            conn.executemany(
                "INSERT INTO claims (request_id, scope, window_start, amount, state, unit) "
                "VALUES (?, ?, '2026-01-01T00:00:00.000000Z', 80, 'settled', 'usd')",
                [(i, sc) for i in ids for sc in scopes],
            )


def bench_ledger(tmp: Path, n: int = 2000, *, n_claims: int = 1, rows: int = 0) -> float:
    """Reserve-and-settle pairs per second with `n_claims` claims each, on a ledger already
    holding `rows` requests."""
    from governance.ledger import Ledger, RequestRecord
    from governance.types import Usage

    led = Ledger.open(tmp / f"bench-ledger-{n_claims}-{rows}.sqlite")
    if rows:
        prefill(led, rows, n_claims)
        # As a long-lived proxy's ledger is: checkpointed while idle, the WAL folded in.
        led.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    now = datetime.now(UTC)
    claims = _claims(n_claims)
    t0 = time.perf_counter()
    for i in range(n):
        led.reserve(RequestRecord(f"r{i}", "bench", "openai", "chat", "gpt-4o"), claims, 100, now)
        led.settle(f"r{i}", 80, now, outcome="usage", usage=Usage(10, 5))
    rate = n / (time.perf_counter() - t0)
    led.close()
    return rate


def bench_tokens() -> tuple[float, int]:
    from governance import tokens

    # A realistic agent prompt: source code and prose, ~100 KB.
    text = "\n".join(p.read_text() for p in sorted((REPO / "governance").rglob("*.py")))[:100_000]
    prompt = [[{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": text}]]
    tokens.estimate_input_tokens(prompt, "gpt-4o", image_tokens=0)  # load the encoding
    t0 = time.perf_counter()
    rounds, count = 20, 0
    for _ in range(rounds):
        count = tokens.estimate_input_tokens(prompt, "gpt-4o", image_tokens=0)
    return rounds * count / (time.perf_counter() - t0), count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--rounds", type=int, default=2, help="alternate the proxies this many times; medians kept"
    )
    ap.add_argument(
        "--ledger-rows",
        type=int,
        default=1_000_000,
        help="requests already in the ledger for the growth figure",
    )
    ap.add_argument("--ledger-only", action="store_true", help="only the ledger and estimate figures")
    ap.add_argument(
        "--stores",
        action="store_true",
        help="only reserve+settle pairs/s on the SQLite and PostgreSQL stores (bench_stores.py)",
    )
    ap.add_argument(
        "--observe", action="store_true", help="also spendfuse with metrics and the JSON decision log on"
    )
    args = ap.parse_args()
    if args.stores:
        from tests.support import bench_stores

        return bench_stores.main([])
    tmp = Path(tempfile.mkdtemp(prefix="spendfuse-bench-"))
    upstream, port = start_upstream_process()
    conf = tmp / "conf"
    import addon

    addon.ensure_ca_bundle(conf)
    rules = tmp / "rules.yaml"
    rules.write_text(
        json.dumps(
            {
                "version": 2,
                "budgets": [{"id": "global", "max_usd": 1_000_000}],
                "global": {"budgets": ["global"]},
                "multipliers": f"{REPO}/rules/multipliers.yaml",
                "model_limits": f"{REPO}/rules/model_limits.yaml",
            }
        )
    )
    if args.ledger_only:
        upstream.kill()
        print_ledger(tmp, args.ledger_rows)
        return 0
    kinds = ("bare", "hops", "spendfuse", *((OBSERVED,) if args.observe else ()), "bare-reverse", "gateway")
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    try:
        for _ in range(args.rounds):
            for kind in kinds:
                proxy = start_kind(kind, tmp, conf, port, rules)
                try:
                    target = Target.of(kind, proxy)
                    rps, p50 = sequential(target, args.requests)
                    crps = asyncio.run(concurrent(target, args.requests, args.concurrency))
                    results[kind].append((rps, p50, crps))
                finally:
                    proxy.stop()
    finally:
        upstream.kill()
    print_proxies(results, args)
    print_ledger(tmp, args.ledger_rows)
    return 0


def print_proxies(results: dict[str, list[tuple[float, float, float]]], args: argparse.Namespace) -> None:
    """The medians of the rounds, each mode against bare mitmdump in the same mode."""
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in results.items()}
    b, h, s, br, g = (med[k] for k in ("bare", "hops", "spendfuse", "bare-reverse", "gateway"))
    print(
        f"small non-streamed chat requests, {args.requests} per run, median of {args.rounds} alternating runs"
    )
    rows = (
        ("sequential req/s", 0, ".1f"),
        ("sequential p50 ms", 1, ".2f"),
        (f"concurrent({args.concurrency}) req/s", 2, ".1f"),
    )
    print("proxy mode (HTTPS_PROXY, TLS intercepted):")
    print(f"{'':24}{'bare mitmdump':>16}{'spendfuse':>14}{'ratio':>9}{'hops only':>12}{'ratio':>9}")
    for label, i, fmt in rows:
        print(f"{label:24}{b[i]:16{fmt}}{s[i]:14{fmt}}{s[i] / b[i]:9.2f}{h[i]:12{fmt}}{h[i] / b[i]:9.2f}")
    print(
        "hops only: mitmdump plus an addon that makes spendfuse's two ledger-thread round trips "
        "(reserve, settle) with no work in them"
    )
    print("gateway mode (base URL http://HOST:PORT/openai/v1, plain HTTP):")
    print(f"{'':24}{'bare reverse':>16}{'gateway':>14}{'ratio':>9}")
    for label, i, fmt in rows:
        print(f"{label:24}{br[i]:16{fmt}}{g[i]:14{fmt}}{g[i] / br[i]:9.2f}")
    if OBSERVED in med:
        o = med[OBSERVED]
        print("proxy mode with metrics and the JSON decision log on (--observe):")
        print(f"{'':24}{'bare mitmdump':>16}{'spendfuse':>14}{'observed':>12}{'vs bare':>9}{'vs off':>8}")
        for label, i, fmt in rows:
            print(f"{label:24}{b[i]:16{fmt}}{s[i]:14{fmt}}{o[i]:12{fmt}}{o[i] / b[i]:9.2f}{o[i] / s[i]:8.2f}")


def print_ledger(tmp: Path, rows: int) -> None:
    one = bench_ledger(tmp, n_claims=1)
    six = bench_ledger(tmp, n_claims=6)
    grown = bench_ledger(tmp, n_claims=6, rows=rows)
    print("ledger reserve+settle pairs/s (one process, WAL, synchronous=NORMAL):")
    print(f"  1 claim (global budget): {one:.0f}")
    print(
        f"  6 claims (key, team, customer, model, provider, global; every kind of window): "
        f"{six:.0f} ({six / one:.2f}x)"
    )
    print(f"  6 claims, ledger already holding {rows:,} requests: {grown:.0f} ({grown / six:.2f}x of empty)")
    tps, count = bench_tokens()
    print(f"input-token estimate: {tps / 1e6:.2f} M tokens/s (o200k, {count} tokens per request body)")


if __name__ == "__main__":
    sys.exit(main())
