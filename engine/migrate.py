"""Schema migrations (sql/NNN_*.sql, applied once each, in order) and daily event partitions."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from importlib.resources import files

import psycopg

from tart.engine import legacy
from tart.engine.db import connect

# Any constant works as long as every tart process uses the same one.
MIGRATION_LOCK_KEY = 0x7461727400000001  # "tart" + 1
_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")


def migration_files() -> list[tuple[str, str]]:
    """``(name, sql)`` for every sql/NNN_*.sql shipped in tart.sql, in order; name = file stem."""
    found = []
    for entry in files("tart.sql").iterdir():
        if entry.is_file() and _NAME.match(entry.name):
            found.append((entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet recorded in schema_migrations, each in its own transaction,
    under an advisory lock so that processes starting together apply each exactly once.
    Returns the names applied by this call (empty when the schema was current)."""
    applied_now: list[str] = []
    with connect(dsn, autocommit=True) as conn:
        # Session-level lock: waits while another process migrates, then sees its results.
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            # The SQL event decoders come first: the `events` view of 004 calls them.
            decoders = _decoders_name()
            if decoders[0] not in done:
                with conn.transaction():
                    conn.execute(decoders[1])
                    conn.execute("DELETE FROM schema_migrations WHERE name LIKE 'decoders-%%'")
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (decoders[0],))
                applied_now.append(decoders[0])
            for name, sql in migration_files():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # no parameters: several statements may run in one call
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied_now.append(name)
            _fill_event_types(conn)
            # After the SQL files and at every start, so the grants cover every table and view.
            from tart.web.dbrole import ensure_roles

            ensure_roles(conn)
            # Resumes an interrupted upgrade too: the legacy table is dropped only when empty.
            legacy.convert(conn)
        finally:
            # If the connection broke, the server released the lock already; keep the real error.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


# The day-partitioned tables (by arrival time): events, and the 30-second rollup.
PARTITIONED = ("event_rows", "event_counts_30s")


def ensure_partitions(conn: psycopg.Connection, days_back: int = 1, days_ahead: int = 3) -> list[str]:
    """Make sure the daily partitions of ``PARTITIONED`` from ``days_back`` days before today
    (UTC) to ``days_ahead`` days after exist; returns the event partitions' names, oldest first.
    Commits unless the caller already has a transaction open (then it runs in a savepoint)."""
    today = dt.datetime.now(dt.UTC).date()
    names = []
    with conn.transaction():
        for offset in range(-days_back, days_ahead + 1):
            day = today + dt.timedelta(days=offset)
            for parent in PARTITIONED:
                row = conn.execute("SELECT tart_ensure_partition(%s, %s::date)", (parent, day)).fetchone()
                assert row is not None
                if parent == PARTITIONED[0]:
                    names.append(row[0])
    return names


def _decoders_name() -> tuple[str, str]:
    """("decoders-<hash>", SQL) of the SQL event decoders generated from the codec's schema table:
    a changed schema gets a new name, so its functions are replaced on the next start."""
    from tart.engine.codec.sqlgen import decoder_sql

    sql = decoder_sql()
    return "decoders-" + hashlib.sha256(sql.encode()).hexdigest()[:16], sql


def _fill_event_types(conn: psycopg.Connection) -> None:
    from tart.engine.codec.eventtype import EventType, event_group

    rows = [(int(t), t.name, event_group(t)) for t in EventType]
    with conn.transaction():
        conn.cursor().executemany(
            'INSERT INTO event_types (id, name, "group") VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE'
            ' SET name = excluded.name, "group" = excluded."group"'
            ' WHERE (event_types.name, event_types."group") IS DISTINCT FROM (excluded.name, excluded."group")',
            rows)
