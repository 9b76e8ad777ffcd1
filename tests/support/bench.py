"""`scripts/bench`: spendfuse's overhead as ratios against bare mitmdump, measured in one run.

Both proxies forward small non-streamed chat requests to the same fake upstream (a separate
process, so it does not share the client's GIL); the bare one runs only the redirect script.
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
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.support.proxy import REPO, start_proxy

HOPS_ADDON = Path(__file__).with_name("hops_addon.py")

BODY = {
    "model": "gpt-4o",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Say hello in one word."}],
}
URL = "https://api.openai.com/v1/chat/completions"


def start_upstream_process() -> tuple[subprocess.Popen, int]:
    code = (
        "import time, sys; from tests.support.fake_upstream import start_upstream; u = start_upstream(); "
        "print(u.port, flush=True); time.sleep(10**6)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO, text=True)
    return proc, int(proc.stdout.readline())


def sequential(proxy_url: str, ca: Path, n: int) -> tuple[float, float]:
    """Requests/s and p50 latency (ms) over one kept-alive connection."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(proxy=proxy_url, verify=ctx, headers={"authorization": "Bearer sk-bench"}) as c:
        for _ in range(20):
            c.post(URL, json=BODY).raise_for_status()
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            c.post(URL, json=BODY).raise_for_status()
            lat.append(time.perf_counter() - s)
        total = time.perf_counter() - t0
    return n / total, statistics.median(lat) * 1000


async def concurrent(proxy_url: str, ca: Path, n: int, conc: int) -> float:
    """Requests/s with `conc` clients in flight at once."""
    ctx = ssl.create_default_context(cafile=str(ca))
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(
        proxy=proxy_url, verify=ctx, limits=limits, headers={"authorization": "Bearer sk-bench"}, timeout=60
    ) as c:
        await asyncio.gather(*(c.post(URL, json=BODY) for _ in range(conc)))
        sem = asyncio.Semaphore(conc)

        async def one():
            async with sem:
                (await c.post(URL, json=BODY)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


def bench_ledger(tmp: Path, n: int = 2000) -> float:
    from governance.ledger import Ledger, RequestRecord
    from governance.types import Claim, Usage

    led = Ledger.open(tmp / "bench-ledger.sqlite")
    now = datetime.now(UTC)
    claims = [Claim("global", "", "never", 10**15, 100, "budget:global")]
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
        "--rounds", type=int, default=2, help="alternate bare/spendfuse this many times; best kept"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spendfuse-bench-"))
    upstream, port = start_upstream_process()
    conf = tmp / "conf"
    import addon

    addon.ensure_ca_bundle(conf)
    rules = tmp / "rules.yaml"
    rules.write_text(
        json.dumps(
            {
                "version": 1,
                "budgets": [{"name": "global", "limit_usd": 1_000_000}],
                "multipliers": f"{REPO}/rules/multipliers.yaml",
                "model_limits": f"{REPO}/rules/model_limits.yaml",
            }
        )
    )
    kinds = ("bare", "hops", "spendfuse")
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    try:
        for _ in range(args.rounds):
            for kind in kinds:
                if kind == "spendfuse":
                    proxy = start_proxy(
                        tmp / kind,
                        confdir=conf,
                        redirect_port=port,
                        sets={
                            "spendfuse_rules": str(rules),
                            "spendfuse_db": str(tmp / f"ledger-{time.monotonic_ns()}.sqlite"),
                        },
                    )
                else:
                    proxy = start_proxy(
                        tmp / kind,
                        confdir=conf,
                        sets={"connection_strategy": "lazy"},
                        redirect_port=port,
                        bare=True,
                        scripts=(HOPS_ADDON,) if kind == "hops" else (),
                    )
                try:
                    rps, p50 = sequential(proxy.url, proxy.ca, args.requests)
                    crps = asyncio.run(concurrent(proxy.url, proxy.ca, args.requests, args.concurrency))
                    results[kind].append((rps, p50, crps))
                finally:
                    proxy.stop()
    finally:
        upstream.kill()
    best = {k: (max(r[0] for r in v), min(r[1] for r in v), max(r[2] for r in v)) for k, v in results.items()}
    b, h, s = best["bare"], best["hops"], best["spendfuse"]
    print(
        f"small non-streamed chat requests, {args.requests} per run, best of {args.rounds} alternating runs"
    )
    print(f"{'':24}{'bare mitmdump':>16}{'spendfuse':>14}{'ratio':>9}{'hops only':>12}{'ratio':>9}")
    rows = (
        ("sequential req/s", 0, ".1f"),
        ("sequential p50 ms", 1, ".2f"),
        (f"concurrent({args.concurrency}) req/s", 2, ".1f"),
    )
    for label, i, fmt in rows:
        print(f"{label:24}{b[i]:16{fmt}}{s[i]:14{fmt}}{s[i] / b[i]:9.2f}{h[i]:12{fmt}}{h[i] / b[i]:9.2f}")
    print(
        "hops only: mitmdump plus an addon that makes spendfuse's two ledger-thread round trips "
        "(reserve, settle) with no work in them"
    )
    print(f"ledger reserve+settle: {bench_ledger(tmp):.0f} pairs/s (one process, WAL, synchronous=NORMAL)")
    tps, count = bench_tokens()
    print(f"input-token estimate: {tps / 1e6:.2f} M tokens/s (o200k, {count} tokens per request body)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
