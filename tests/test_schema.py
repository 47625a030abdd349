"""Migrations, daily partitions, the README's analytics queries, and PostgreSQL's NUL rules."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tart.engine.db import connect
from tart.engine.migrate import MIGRATION_LOCK_KEY, ensure_partitions, migrate, migration_files

UTC = dt.UTC

# The four "PostgreSQL Direct Access" queries, verbatim from the product README.
README_QUERIES = """\
-- Get event counts by type
SELECT
    event_type,
    COUNT(*) as count,
    MIN(timestamp) as first_seen,
    MAX(timestamp) as last_seen
FROM events
WHERE created_at > NOW() - INTERVAL '1 hour'
GROUP BY event_type
ORDER BY count DESC;

-- Get node connection history
SELECT
    node_id,
    implementation_name,
    COUNT(*) as connection_count,
    SUM(event_count) as total_events,
    MAX(last_seen_at) as last_active
FROM nodes
GROUP BY node_id, implementation_name
ORDER BY total_events DESC;

-- Get events per node per hour
SELECT
    hour,
    node_id,
    SUM(event_count) as events
FROM event_stats_hourly
WHERE hour > NOW() - INTERVAL '24 hours'
GROUP BY hour, node_id
ORDER BY hour DESC, events DESC;

-- Find nodes with high error rates
SELECT
    node_id,
    COUNT(*) FILTER (WHERE event_type IN (41, 44, 46, 92)) as error_events,
    COUNT(*) as total_events,
    ROUND(100.0 * COUNT(*) FILTER (WHERE event_type IN (41, 44, 46, 92)) / COUNT(*), 2) as error_rate_pct
FROM events
WHERE created_at > NOW() - INTERVAL '1 hour'
GROUP BY node_id
HAVING COUNT(*) FILTER (WHERE event_type IN (41, 44, 46, 92)) > 10
ORDER BY error_rate_pct DESC;
"""

README = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tart-backend-README.md"


def applied(dsn: str) -> list[str]:
    with connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def test_migrate_applies_every_file_once(empty_db: str) -> None:
    names = [n for n, _ in migration_files()]
    assert names and names[0] == "001_init"
    assert migrate(empty_db) == names
    assert migrate(empty_db) == []
    assert applied(empty_db) == names


def test_migrate_from_two_processes_at_once(empty_db: str) -> None:
    code = ("import json, sys; from tart.engine.migrate import migrate;"
            "print(json.dumps(migrate(sys.argv[1])))")
    # Hold the migration lock so both processes are waiting on it when it is released: they
    # contend for real instead of one finishing before the other starts.
    with connect(empty_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        procs = [subprocess.Popen([sys.executable, "-c", code, empty_db], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        waiting = 0
        for _ in range(300):
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()[0]
            if waiting == 2:
                break
            time.sleep(0.05)
        assert waiting == 2
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    names = [n for n, _ in migration_files()]
    assert sorted(results) == [[], names]
    assert applied(empty_db) == names


def test_ensure_partitions_creates_utc_days_and_rows_land_in_them(fresh_db: str) -> None:
    today = dt.datetime.now(UTC).date()
    with connect(fresh_db) as conn:
        # A session in another time zone: partition bounds must still fall on UTC midnight.
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        names = ensure_partitions(conn, days_back=1, days_ahead=3)
        expected = [f"events_{today + dt.timedelta(days=d):%Y%m%d}" for d in range(-1, 4)]
        assert names == expected
        assert ensure_partitions(conn, days_back=1, days_ahead=3) == expected
        existing = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass")}
        assert existing == set(expected)

        last_us = dt.datetime.combine(today, dt.time(23, 59, 59, 999999), UTC)
        first_us = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), UTC)
        rows = [(1, last_us), (2, first_us), (3, None)]
        for id_, created in rows:
            conn.execute(
                "INSERT INTO events (id, node_id, event_id, event_type, timestamp, data, created_at)"
                " VALUES (%s, 'n', %s, 10, now(), '{}', coalesce(%s, now()))", (id_, id_, created))
        placed = dict(conn.execute("SELECT id, tableoid::regclass::text FROM events").fetchall())
        conn.commit()
    assert placed == {1: expected[1], 2: expected[2], 3: f"events_{dt.datetime.now(UTC).date():%Y%m%d}"}


def test_insert_outside_partitions_fails(fresh_db: str) -> None:
    # No default partition: the writer must ensure partitions ahead of time (ensure_partitions).
    with connect(fresh_db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO events (id, node_id, event_id, event_type, timestamp, created_at)"
                      " VALUES (1, 'n', 0, 0, now(), '2001-01-01Z')")


def test_readme_queries_are_verbatim() -> None:
    if not README.is_file():
        pytest.skip(f"{README} not present")
    text = README.read_text()
    block = text[text.index("### PostgreSQL Direct Access"):]
    sql = re.search(r"```sql\n(.*?)```", block, re.S)
    assert sql is not None and sql.group(1) == README_QUERIES


def test_readme_queries_return_expected_aggregates(fresh_db: str) -> None:
    now = dt.datetime.now(UTC)
    a, b = "a" * 64, "b" * 64
    with connect(fresh_db) as conn:
        ensure_partitions(conn, days_back=1, days_ahead=1)
        conn.execute(
            "INSERT INTO nodes (node_id, peer_id, implementation_name, event_count, last_seen_at)"
            " VALUES (%s, %s, 'polkajam', 15, %s), (%s, %s, 'javajam', 7, %s)",
            (a, a, now, b, b, now - dt.timedelta(minutes=5)))
        events = []
        seq = 0

        def add(node: str, etype: int, count: int, age: dt.timedelta) -> None:
            nonlocal seq
            for _ in range(count):
                seq += 1
                ts = now - age - dt.timedelta(seconds=seq)
                events.append((seq, node, seq, etype, ts, Jsonb({"x": seq}), now - age))

        add(a, 41, 12, dt.timedelta(minutes=1))   # errors
        add(a, 10, 3, dt.timedelta(minutes=2))
        add(b, 44, 2, dt.timedelta(minutes=3))    # errors, too few to report
        add(b, 10, 5, dt.timedelta(minutes=4))
        add(b, 10, 4, dt.timedelta(minutes=90))   # older than the hour window
        with conn.cursor().copy("COPY events (id, node_id, event_id, event_type, timestamp, data,"
                                " created_at) FROM STDIN") as copy:
            for row in events:
                copy.write_row(row)
        hour = now.replace(minute=0, second=0, microsecond=0)
        conn.execute(
            "INSERT INTO event_stats_hourly (hour, node_id, event_type, event_count) VALUES"
            " (%(h)s, %(a)s, 41, 12), (%(h)s, %(a)s, 10, 3), (%(h)s, %(b)s, 10, 5),"
            " (%(p)s, %(b)s, 10, 4), (%(old)s, %(a)s, 10, 99)",
            {"h": hour, "p": hour - dt.timedelta(hours=1), "old": hour - dt.timedelta(days=2),
             "a": a, "b": b})
        conn.commit()

        results = []
        for query in README_QUERIES.split(";\n")[:4]:
            results.append(conn.execute(query).fetchall())

    by_type = {r[0]: r[1] for r in results[0]}
    assert by_type == {41: 12, 10: 8, 44: 2}
    assert [r[0] for r in results[0]] == [41, 10, 44]
    first_41, last_41 = results[0][0][2], results[0][0][3]
    assert first_41 < last_41

    assert [(r[0], r[1], r[2], r[3]) for r in results[1]] == [(a, "polkajam", 1, 15), (b, "javajam", 1, 7)]

    assert [(r[0], r[1], r[2]) for r in results[2]] == [
        (hour, a, 15), (hour, b, 5), (hour - dt.timedelta(hours=1), b, 4)]

    assert [(r[0], r[1], r[2], float(r[3])) for r in results[3]] == [(a, 12, 15, 80.0)]


def test_jsonb_rejects_nul_and_one_bad_row_fails_the_whole_copy(fresh_db: str) -> None:
    """PostgreSQL's behaviour the writer must design around: U+0000 cannot be stored in JSONB
    (nor in text), and a single such row aborts the entire COPY batch it is in. The writer must
    escape or strip it, or keep the bytes in `raw` (bytea), before the row reaches COPY."""
    with connect(fresh_db) as conn:
        ensure_partitions(conn, days_back=0, days_ahead=0)
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            conn.execute("SELECT %s::jsonb", (Jsonb({"name": "a\x00b"}),))
        conn.rollback()
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            conn.execute("SELECT '{\"s\": \"\\u0000\"}'::jsonb")
        conn.rollback()

        now = dt.datetime.now(UTC)
        rows = [(i, "n", i, 10, now, Jsonb({"s": text}), now)
                for i, text in enumerate(["ok", "bad\x00", "ok too"])]
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            with conn.cursor().copy("COPY events (id, node_id, event_id, event_type, timestamp, data,"
                                    " created_at) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)

        # What works: the text spelled out (a literal backslash-u escape) plus the bytes in raw.
        escaped = "bad\x00".replace("\x00", "\\u0000")
        conn.execute("INSERT INTO events (id, node_id, event_id, event_type, timestamp, data, created_at,"
                     " raw) VALUES (1, 'n', 1, 10, now(), %s, now(), %s)",
                     (Jsonb({"s": escaped}), b"bad\x00"))
        row = conn.execute("SELECT data->>'s', raw FROM events").fetchone()
        assert row == ("bad\\u0000", b"bad\x00")
