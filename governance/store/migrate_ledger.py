"""Copy a SQLite ledger into a PostgreSQL one (`spendfuse migrate-ledger SQLITE POSTGRES`): every
request with its claims (history and the holds still in flight), the window totals, the counters'
anchors, top-ups and shapes, the operators' adjustments, the context sizes, and the salt (so a
key hashed into a principal before the move is the same principal after it).

One transaction on the target, which must hold no requests yet: the copy lands whole or not at
all, and a second run cannot count the same spend twice. Stop the proxies that write the SQLite
file first; the copy reads it as it is."""

from __future__ import annotations

import psycopg
from psycopg import sql

from governance.errors import LedgerUnavailable
from governance.store.postgres import PostgresStore
from governance.store.sqlite import SqliteStore

#: In foreign-key order: a claim's request first.
TABLES = ("requests", "claims", "totals", "counters", "adjustments", "contexts")


def _columns(cur: psycopg.Cursor, table: str) -> list[str]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = "
        "current_schema() ORDER BY ordinal_position",
        (table,),
    )
    return [r[0] for r in cur.fetchall()]


def copy_ledger(src: SqliteStore, dst: PostgresStore) -> dict[str, int]:
    """Copy every table of `src` into `dst`; the rows copied per table. Raises
    `LedgerUnavailable` if `dst` already holds requests."""

    def tx(cur: psycopg.Cursor) -> dict[str, int]:
        cur.execute("LOCK TABLE requests IN EXCLUSIVE MODE")  # no proxy writes while we copy
        cur.execute("SELECT count(*) FROM requests")
        row = cur.fetchone()
        if row is not None and row[0]:
            raise LedgerUnavailable(
                f"the target ledger already holds {row[0]} request(s): copy only into a new database"
            )
        copied: dict[str, int] = {}
        for table in TABLES:
            target = _columns(cur, table)
            rows = src.query(f"SELECT * FROM {table}")
            columns = [c for c in target if rows and c in rows[0]] if rows else []
            if table == "counters":
                cur.execute("DELETE FROM counters")  # none yet but any a start-up anchored: replaced
            if rows:
                statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier(table),
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                )
                cur.executemany(statement, [tuple(r[c] for c in columns) for r in rows])
            copied[table] = len(rows)
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('adjustments', 'id'), "
            "greatest((SELECT max(id) FROM adjustments), 1))"
        )
        salt = src.salt()
        cur.execute(
            "INSERT INTO meta (key, value) VALUES ('salt', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (salt,),
        )
        return copied

    return dst._transact(tx)
