"""A proxy on a PostgreSQL ledger end to end: a real mitmdump with `spendfuse_db=postgresql://…`,
a real OpenAI client, the fake upstream, and a real PostgreSQL server that the test stops and
starts again (tests/support/postgres.py)."""

from __future__ import annotations

import socket

import openai
import pytest

from governance.store.postgres import PostgresStore
from tests.support.postgres import PgServer
from tests.test_e2e_governance import chat, client, rules


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.expect_errors(
    "LEDGER DATABASE",
    "ledger unavailable",
    "could not record refusal",
    "reconnection attempt",
    "error connecting",
)
def test_requests_are_refused_503_while_the_database_is_down_and_pass_when_it_is_back(
    start, upstream, tmp_path, pg_server: PgServer
):
    url = pg_server.create_db("fleet")
    proxy = start(
        rules=rules(
            tmp_path / "r.yaml", budgets=[{"id": "all", "max_usd": 1}], **{"global": {"budgets": ["all"]}}
        ),
        spendfuse_db=url,
    )
    c = client(proxy)
    assert chat(c).choices
    pg_server.stop()
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            chat(c)
    finally:
        pg_server.start()
    assert refused.value.status_code == 503
    assert refused.value.response.json()["error"]["message"]  # the provider's own envelope
    assert sum(upstream.hits.values()) == 1  # the refused request never reached the provider
    assert chat(c).choices  # reconnected without a restart
    assert sum(upstream.hits.values()) == 2
    store = PostgresStore.open(url)
    try:
        by_state = {r["state"]: r["n"] for r in store.requests_by_state()}
    finally:
        store.close()
    assert by_state == {"settled": 2}


def test_a_database_that_is_down_at_start_stops_the_proxy(start, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/spend"
    with pytest.raises(RuntimeError, match="cannot open ledger 'postgresql://postgres@127.0.0.1"):
        start(spendfuse_db=url)
    assert not (tmp_path / "postgresql:").exists()
