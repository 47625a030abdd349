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
from eventdb import jce_us, store_event
from psycopg.types.json import Jsonb

from tart.engine import copyfmt, eventrows, nodekeys
from tart.engine.codec import encode_event
from tart.engine.db import connect
from tart.engine.migrate import MIGRATION_LOCK_KEY, ensure_partitions, migrate, migration_files

UTC = dt.UTC
DECODERS = re.compile(r"decoders-[0-9a-f]{16}")  # the SQL event decoders, applied before the files
NODE = "ab" * 32

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
    first = migrate(empty_db)
    assert DECODERS.fullmatch(first[0]) and first[1:] == names
    assert migrate(empty_db) == []
    assert applied(empty_db) == sorted(first)


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
    decoders = [n for n in applied(empty_db) if n.startswith("decoders-")]
    assert len(decoders) == 1 and DECODERS.fullmatch(decoders[0])
    assert sorted(results) == [[], [decoders[0], *names]]
    assert applied(empty_db) == sorted([*decoders, *names])


def test_ensure_partitions_creates_utc_days_and_rows_land_in_them(fresh_db: str) -> None:
    today = dt.datetime.now(UTC).date()
    with connect(fresh_db) as conn:
        # A session in another time zone: partition bounds must still fall on UTC midnight.
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        names = ensure_partitions(conn, days_back=1, days_ahead=3)
        days = [f"{today + dt.timedelta(days=d):%Y%m%d}" for d in range(-1, 4)]
        expected = [f"event_rows_{d}" for d in days]
        assert names == expected
        assert ensure_partitions(conn, days_back=1, days_ahead=3) == expected

        def partitions(parent: str) -> set[str]:
            return {r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = %s::regclass", (parent,))}

        assert partitions("event_rows") == set(expected)
        # The 30-second rollup is partitioned by the same days.
        assert partitions("event_counts_30s") == {f"event_counts_30s_{d}" for d in days}
        # The v1 signature means the event table; the two-argument one takes the parent.
        later = today + dt.timedelta(days=10)
        assert conn.execute("SELECT tart_ensure_partition(%s::date)", (later,)).fetchone() == (
            f"event_rows_{later:%Y%m%d}",)
        assert conn.execute("SELECT tart_ensure_partition('event_counts_30s', %s::date)", (later,)).fetchone() == (
            f"event_counts_30s_{later:%Y%m%d}",)

        last_us = dt.datetime.combine(today, dt.time(23, 59, 59, 999999), UTC)
        first_us = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), UTC)
        now = conn.execute("SELECT now()").fetchone()[0]
        rows = [(1, last_us), (2, first_us), (3, now)]
        for id_, created in rows:
            store_event(conn, id=id_, node_id=NODE, event_id=id_, event_type=10, timestamp=now, created_at=created)
            conn.execute("INSERT INTO event_counts_30s (bucket, node_key, event_type, event_count)"
                         " VALUES (%s, 1, 10, 1)", (created,))
        placed = dict(conn.execute("SELECT id, tableoid::regclass::text FROM event_rows").fetchall())
        buckets = {r[0] for r in conn.execute("SELECT tableoid::regclass::text FROM event_counts_30s")}
        conn.commit()
    assert placed == {1: expected[1], 2: expected[2], 3: f"event_rows_{now.astimezone(UTC):%Y%m%d}"}
    assert buckets == {p.replace("event_rows", "event_counts_30s") for p in placed.values()}


def test_insert_outside_partitions_fails(fresh_db: str) -> None:
    # No default partition: the writer must ensure partitions ahead of time (ensure_partitions).
    long_ago = dt.datetime(2001, 1, 1, tzinfo=UTC)
    with connect(fresh_db) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            store_event(conn, id=1, node_id=NODE, event_id=0, event_type=10,
                        timestamp=dt.datetime.now(UTC), created_at=long_ago)
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO event_counts_30s (bucket, node_key, event_type, event_count)"
                         " VALUES (%s, 1, 10, 1)", (long_ago,))


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
        seq = 0

        def add(node: str, etype: int, count: int, age: dt.timedelta) -> None:
            nonlocal seq
            for _ in range(count):
                seq += 1
                ts = now - age - dt.timedelta(seconds=seq)
                store_event(conn, id=seq, node_id=node, event_id=seq, event_type=etype, timestamp=ts,
                            created_at=now - age)

        add(a, 41, 12, dt.timedelta(minutes=1))   # errors
        add(a, 10, 3, dt.timedelta(minutes=2))
        add(b, 44, 2, dt.timedelta(minutes=3))    # errors, too few to report
        add(b, 10, 5, dt.timedelta(minutes=4))
        add(b, 10, 4, dt.timedelta(minutes=90))   # older than the hour window
        # The hourly counts are stored per node key; event_stats_hourly is a view over them.
        keys = nodekeys.resolve(conn, [a, b])
        hour = now.replace(minute=0, second=0, microsecond=0)
        conn.execute(
            "INSERT INTO event_counts_hourly (hour, node_key, event_type, event_count) VALUES"
            " (%(h)s, %(a)s, 41, 12), (%(h)s, %(a)s, 10, 3), (%(h)s, %(b)s, 10, 5),"
            " (%(p)s, %(b)s, 10, 4), (%(old)s, %(a)s, 10, 99)",
            {"h": hour, "p": hour - dt.timedelta(hours=1), "old": hour - dt.timedelta(days=2),
             "a": keys[a], "b": keys[b]})
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


def test_nul_in_a_string_round_trips_through_copy_and_the_view(fresh_db: str) -> None:
    """PostgreSQL's rules the storage is designed around: U+0000 cannot be stored in JSONB (nor in
    text). Events are stored as their wire payload (bytea), so an event with U+0000 in a string is
    a row like any other: it does not fail the COPY batch it is in, REST and export render the
    codec's JSON (with the NUL), and the `events` view, whose data is JSONB, shows each U+0000 as
    the text ``\\u0000``."""
    with connect(fresh_db) as conn:
        ensure_partitions(conn, days_back=0, days_ahead=0)
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            conn.execute("SELECT %s::jsonb", (Jsonb({"name": "a\x00b"}),))
        conn.rollback()
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            conn.execute("SELECT '{\"s\": \"\\u0000\"}'::jsonb")
        conn.rollback()

        # One COPY batch of compact rows, as the writer sends it, with the NUL event in the middle.
        key = nodekeys.resolve(conn, [NODE])[NODE]
        now = dt.datetime.now(UTC)
        received_us = (now - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)
        peer = "0x" + "cd" * 32
        reasons = ["ok", "bad\x00", "ok too"]
        rows = []
        for i, reason in enumerate(reasons):
            frame = encode_event(28, {"timestamp": jce_us(now), "peer": peer, "reason": reason}, 0)
            rows.append(copyfmt.fast_row(i, i, jce_us(now), received_us + i, key, 28, frame[9:]))
        with conn.cursor().copy(copyfmt.COPY_SQL) as copy:
            copy.write(copyfmt.copy_stream(rows))
        conn.commit()

        view = conn.execute("SELECT id, data->'PeerMisbehaved'->>'reason', raw, decode_error"
                            " FROM events ORDER BY id").fetchall()
        assert view == [(0, "ok", None, None), (1, "bad\\u0000", None, None), (2, "ok too", None, None)]
        stored = conn.execute(eventrows.SELECT.format(table="event_rows") + " ORDER BY e.id").fetchall()
        rendered = [eventrows.event_data(r[eventrows.R_TYPE], r[eventrows.R_TS], r[eventrows.R_PAYLOAD],
                                         r[eventrows.R_ERROR]) for r in stored]
        assert [d["PeerMisbehaved"]["reason"] for d in rendered] == reasons
        assert all(d["PeerMisbehaved"]["peer"] == peer for d in rendered)
