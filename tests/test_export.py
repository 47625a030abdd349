"""`tart-export` against a real PostgreSQL: filters, formats, and that it streams."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from eventdb import CORES, event_value, jce_us, store_event

from tart.engine import eventrows, nodekeys
from tart.engine.codec import encode_event
from tart.engine.db import connect
from tart.engine.migrate import ensure_partitions

EXPORT = str(Path(sys.executable).parent / "tart-export")
NODE_A = "aa" * 32
NODE_B = "bb" * 32
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
# A BestBlockChanged frame cut short inside its slot: stored whole, with a decode_error.
BAD_FRAME = struct.pack("<QB", jce_us(T0 + timedelta(seconds=20)), 11) + b"\x01\x02"


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seed(dsn: str) -> list[dict]:
    """20 events from two nodes, types 28 (PeerMisbehaved, whose reason is text with non-ASCII
    characters and quotes) and 11 (BestBlockChanged), one second apart, and one malformed event.
    Returns the expected envelopes, in id order."""
    now = datetime.now(UTC).replace(microsecond=654321)
    expected = []
    with connect(dsn) as conn:
        ensure_partitions(conn)
        conn.execute(
            "INSERT INTO nodes (node_id, peer_id, implementation_name, implementation_version)"
            " VALUES (%s, %s, 'polkajam', '0.1.0')", (NODE_A, NODE_A))
        # NODE_B never sent NODE_UP: its row (made when its events were stored) names no
        # implementation, so node_name/node_version come out empty, as in REST.
        for i in range(20):
            node = NODE_A if i % 2 == 0 else NODE_B
            etype = 28 if i % 4 < 2 else 11
            ts = T0 + timedelta(seconds=i)
            fields = {"reason": f"ünïcode, \"quoted\" #{i}"} if etype == 28 else \
                {"slot": i, "hash": "0x" + "ab" * 32}
            data = store_event(conn, id=1000 + i, node_id=node, event_id=i, event_type=etype, timestamp=ts,
                               created_at=now, fields=fields)
            expected.append({
                "id": 1000 + i, "node_id": node, "event_id": i, "event_type": etype,
                "timestamp": rfc3339(ts), "data": data,
                "node_name": "polkajam" if node == NODE_A else "",
                "node_version": "0.1.0" if node == NODE_A else "",
                "received_at": rfc3339(now),
            })
        bad_ts = T0 + timedelta(seconds=20)
        store_event(conn, id=2000, node_id=NODE_A, event_id=20, event_type=11, timestamp=bad_ts,
                    created_at=now, decode_error="truncated at byte 3", frame=BAD_FRAME)
        expected.append({
            "id": 2000, "node_id": NODE_A, "event_id": 20, "event_type": 11,
            "timestamp": rfc3339(bad_ts), "data": None, "node_name": "polkajam", "node_version": "0.1.0",
            "received_at": rfc3339(now), "decode_error": "truncated at byte 3",
        })
        conn.commit()
    return expected


def run_export(dsn: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TART_CONFIG")}
    r = subprocess.run([EXPORT, "--database-url", dsn, *args], capture_output=True, env=env, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def jsonl(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines()]


ALL = ("--since", "2026-03-01", "--until", "2026-03-02")


def test_jsonl_is_the_rest_envelope_in_id_order(fresh_db: str) -> None:
    expected = seed(fresh_db)
    got = jsonl(run_export(fresh_db, *ALL).stdout)
    assert got == expected
    assert list(got[0]) == ["id", "node_id", "event_id", "event_type", "timestamp", "data",
                            "node_name", "node_version", "received_at"]


def test_jsonl_matches_what_the_rest_api_serves(fresh_db: str) -> None:
    """The same rows through the web tier's envelope function give the same objects."""
    store = pytest.importorskip("tart.web.store")
    seed(fresh_db)
    with connect(fresh_db) as conn:
        rows = conn.execute(eventrows.SELECT.format(table="event_rows") + " ORDER BY e.id").fetchall()
    rest = [json.loads(json.dumps(store.event_row(r))) for r in rows]
    assert jsonl(run_export(fresh_db, *ALL).stdout) == rest


def test_filters_time_node_and_type(fresh_db: str) -> None:
    expected = seed(fresh_db)
    since, until = T0 + timedelta(seconds=3), T0 + timedelta(seconds=9)
    # RFC 3339 with an offset and unix seconds are both accepted.
    since_plus2 = since.astimezone(timezone(timedelta(hours=2))).isoformat()
    got = jsonl(run_export(fresh_db, "--since", since_plus2, "--until", str(until.timestamp())).stdout)
    want = [e for e in expected if rfc3339(since) <= e["timestamp"] < rfc3339(until)]
    assert [e["id"] for e in got] == [e["id"] for e in want] and len(want) == 6

    got = jsonl(run_export(fresh_db, *ALL, "--node", NODE_B.upper()).stdout)
    assert [e["id"] for e in got] == [e["id"] for e in expected if e["node_id"] == NODE_B]

    got = jsonl(run_export(fresh_db, *ALL, "--type", "11", "--node", f"{NODE_A},{NODE_B}").stdout)
    assert [e["id"] for e in got] == [e["id"] for e in expected if e["event_type"] == 11]

    got = jsonl(run_export(fresh_db, *ALL, "--type", "28", "--type", "11", "--node", NODE_A).stdout)
    assert [e["id"] for e in got] == [e["id"] for e in expected if e["node_id"] == NODE_A]

    # received_at selects by arrival: every row arrived "now", none on 2026-03-01.
    assert run_export(fresh_db, *ALL, "--time-field", "received_at").stdout == b""
    today = datetime.now(UTC).date()
    got = jsonl(run_export(fresh_db, "--since", str(today - timedelta(days=1)), "--until",
                           str(today + timedelta(days=1)), "--time-field", "received_at").stdout)
    assert len(got) == len(expected)


def test_raw_bytes_on_request(fresh_db: str) -> None:
    seed(fresh_db)
    got = jsonl(run_export(fresh_db, *ALL, "--raw").stdout)
    assert [e.get("raw") for e in got if "raw" in e] == ["0x" + BAD_FRAME.hex()]
    assert got[-1]["decode_error"] == "truncated at byte 3"


def test_csv_parses_with_the_csv_module(fresh_db: str) -> None:
    expected = seed(fresh_db)
    out = run_export(fresh_db, *ALL, "--format", "csv").stdout.decode()
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert int(row["id"]) == want["id"]
        assert row["node_id"] == want["node_id"]
        assert int(row["event_type"]) == want["event_type"]
        assert row["timestamp"] == want["timestamp"]
        assert row["received_at"] == want["received_at"]
        assert row["node_name"] == want["node_name"]
        assert (json.loads(row["data"]) if row["data"] else None) == want["data"]
        assert row["decode_error"] == want.get("decode_error", "")


def test_output_file_gzip_and_no_leftovers(fresh_db: str, tmp_path: Path) -> None:
    seed(fresh_db)
    plain = run_export(fresh_db, *ALL).stdout
    target = tmp_path / "events.jsonl.gz"
    r = run_export(fresh_db, *ALL, "--output", str(target))
    assert b"21 events" in r.stderr
    assert gzip.decompress(target.read_bytes()) == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl.gz"]


def test_usage_errors_exit_2(fresh_db: str) -> None:
    r = run_export(fresh_db, "--since", "yesterday-ish", "--until", "2026-03-02", check=False)
    assert r.returncode == 2 and b"yesterday-ish" in r.stderr
    r = run_export(fresh_db, *ALL, "--type", "status", check=False)
    assert r.returncode == 2 and b"status" in r.stderr


def test_no_database_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TART_CONFIG")}
    env["TART_DATA_DIR"] = str(tmp_path / "nothing-here")
    r = subprocess.run([EXPORT, *ALL], capture_output=True, env=env, timeout=60)
    assert r.returncode == 2
    assert b"no DATABASE_URL and no embedded cluster" in r.stderr


def test_large_export_streams_through_a_server_side_cursor(fresh_db: str) -> None:
    """100k rows: the first line arrives while the exporter is still running, and at that moment
    its session sits in an open transaction FETCHing from a cursor, i.e. rows are pulled in
    batches rather than loaded whole."""
    n = 100_000
    # Status events whose num_peers (the first 4 payload bytes, little-endian) is the row's number.
    status = event_value(10, T0, {"num_peers": 0})
    template = encode_event(10, status, CORES)[9:]
    with connect(fresh_db) as conn:
        ensure_partitions(conn)
        key = nodekeys.resolve(conn, [NODE_A])[NODE_A]
        conn.execute(
            "INSERT INTO event_rows (id, event_id, timestamp, created_at, node_key, event_type, payload)"
            " SELECT g, g, %s::timestamptz + g * interval '1 ms', now(), %s, 10,"
            " set_byte(set_byte(set_byte(set_byte(%s::bytea, 0, g & 255), 1, (g >> 8) & 255),"
            " 2, (g >> 16) & 255), 3, g >> 24)"
            " FROM generate_series(1, %s) g", (T0, key, template, n))
        conn.commit()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TART_CONFIG")}
    proc = subprocess.Popen([EXPORT, "--database-url", fresh_db, *ALL], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        first_ts = T0 + timedelta(milliseconds=1)
        assert first["id"] == 1 and first["timestamp"] == rfc3339(first_ts)
        assert first["data"] == {"Status": {**status, "num_peers": 1, "timestamp": jce_us(first_ts)}}
        # The pipe is full and nobody reads it: the exporter is blocked writing, mid-export.
        assert proc.poll() is None
        with connect(fresh_db, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while True:
                row = conn.execute(
                    "SELECT state, query FROM pg_stat_activity WHERE application_name = 'tart-export'"
                ).fetchone()
                if row and row[1].lstrip().upper().startswith("FETCH"):
                    break
                assert time.monotonic() < deadline, f"exporter session: {row}"
                time.sleep(0.05)
        assert row[0] == "idle in transaction"
        rest = proc.stdout.read()
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = rest.splitlines()
    assert 1 + len(lines) == n
    last = json.loads(lines[-1])
    assert last["id"] == n and last["data"]["Status"]["num_peers"] == n


def test_retention_archives_are_export_lines(fresh_db: str, tmp_path: Path) -> None:
    """An archive written by retention holds exactly what `tart-export --raw` gives for the same
    partition (selected by arrival time), so one set of tools reads both."""
    writer = pytest.importorskip("tart.engine.writer")
    day = datetime(2026, 3, 1, tzinfo=UTC)
    with connect(fresh_db) as conn:
        conn.execute("SELECT tart_ensure_partition(%s::date)", (day.date(),))
        conn.execute(
            "INSERT INTO nodes (node_id, peer_id, implementation_name, implementation_version)"
            " VALUES (%s, %s, 'polkajam', '0.1.0')", (NODE_A, NODE_A))
        for i in range(5):
            store_event(conn, id=10 + i, node_id=NODE_A, event_id=i, event_type=10,
                        timestamp=T0 + timedelta(seconds=i), created_at=day + timedelta(hours=1, microseconds=i),
                        fields={"num_peers": i})
        store_event(conn, id=99, node_id=NODE_B, event_id=5, event_type=27, timestamp=T0,
                    created_at=day + timedelta(hours=2), decode_error="bad enum byte",
                    frame=struct.pack("<QB", jce_us(T0), 27) + b"\x11" * 32 + b"\x01\x07")
        conn.commit()
    exported = run_export(fresh_db, "--raw", "--time-field", "received_at",
                          "--since", "2026-03-01", "--until", "2026-03-02").stdout
    assert len(exported.splitlines()) == 6

    archive_dir = tmp_path / "archive"
    with connect(fresh_db) as conn:
        dropped = writer.apply_retention(conn, 1, archive_dir, now=day + timedelta(days=3))
    assert dropped == ["event_rows_20260301"]
    archived = gzip.decompress((archive_dir / "event_rows_20260301.jsonl.gz").read_bytes())
    assert jsonl(archived) == jsonl(exported)
