"""Upgrade in place: a database made by the v1-v3 schema (JSONB events) migrates on start, and its
events stay readable, with the same JSON, through the `events` view and the REST API."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from tartproc import TartProcess

from tart.engine.codec import EVENT_NAMES, decode_event, encode_event
from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.copyfmt import escape_nul_json
from tart.engine.loadgen import _value
from tart.engine.migrate import migrate, migration_files

CORES = 3
NODES = ["a1" * 32, "b2" * 32]


def _old_schema(dsn: str) -> None:
    """What the previous release's migrations made (001-003), applied as it applied them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for name, sql in migration_files():
            if name < "004":
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))


def _seed_old(dsn: str) -> dict[int, dict]:
    """Rows as the old writer stored them; returns id -> what a reader must see."""
    rng = random.Random(3)
    now = datetime.now(UTC).replace(microsecond=0)
    expect: dict[int, dict] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for day in (now - timedelta(days=1), now):
            conn.execute("SELECT tart_ensure_partition(%s::date)", (day.date(),))
        for n in NODES:
            conn.execute("INSERT INTO nodes (node_id, peer_id, implementation_name, implementation_version,"
                         " event_count) VALUES (%s, %s, 'old-impl', '0.9', 500)", (n, n))
        id_ = 1 << 40
        for i, et in enumerate([*EVENT_NAMES] * 4):
            node = NODES[i % 2]
            value = _value(et, rng, CORES)
            created = now - timedelta(days=1 if i % 3 == 0 else 0, seconds=i)
            value["timestamp"] = int(created.timestamp() * 1e6) - JCE_EPOCH_UNIX_US - 1000
            frame = encode_event(et, value, CORES)
            js = decode_event(frame, CORES).json()
            ts = created - timedelta(microseconds=1000)
            id_ = int(created.timestamp() * 1e6) << 6  # ids follow arrival time, as the old writer's did
            conn.execute(
                "INSERT INTO events (id, node_id, event_id, event_type, timestamp, data, created_at, raw,"
                " decode_error) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, NULL, NULL)",
                (id_, node, i, et, ts, js.decode(), created))
            expect[id_] = {"data": orjson.loads(js), "view": orjson.loads(js), "node": node, "type": et}
        # a string with U+0000: the old writer escaped it in data and kept the frame in raw
        v = {**_value(41, rng, CORES), "reason": "a\x00b"}
        v["timestamp"] = int(now.timestamp() * 1e6) - JCE_EPOCH_UNIX_US
        frame = encode_event(41, v, CORES)
        id_ += 64
        conn.execute("INSERT INTO events VALUES (%s, %s, 0, 41, %s, %s::jsonb, %s, %s, NULL)",
                     (id_, NODES[0], now, escape_nul_json(decode_event(frame, CORES).json()).decode(), now, frame))
        expect[id_] = {"data": orjson.loads(decode_event(frame, CORES).json()),
                       "view": orjson.loads(escape_nul_json(decode_event(frame, CORES).json())),
                       "node": NODES[0], "type": 41}
        # malformed: no data, the frame in raw
        id_ += 64
        conn.execute("INSERT INTO events VALUES (%s, %s, 1, 99, %s, NULL, %s, %s, 'unknown event type 99')",
                     (id_, NODES[1], now, now, b"\x01\x02\x03"))
        expect[id_] = {"data": None, "view": None, "node": NODES[1], "type": 99, "raw": b"\x01\x02\x03",
                       "error": "unknown event type 99"}
        conn.execute("INSERT INTO event_stats_hourly VALUES (date_trunc('hour', now()), %s, 11, 7)", (NODES[0],))
    return expect


def test_upgrade_from_jsonb_schema_keeps_every_event_readable(empty_db: str, tmp_path) -> None:
    _old_schema(empty_db)
    expect = _seed_old(empty_db)
    applied = migrate(empty_db)
    assert "004_compact_events" in applied and migrate(empty_db) == []
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('events_legacy')").fetchone()[0] is None
        rows = {r[0]: r for r in conn.execute("SELECT id, node_id, event_type, data, raw, decode_error FROM events")}
        assert sorted(rows) == sorted(expect)
        for id_, e in expect.items():
            _, node, et, data, raw, err = rows[id_]
            assert (node, et, data) == (e["node"], e["type"], e["view"]), id_
            assert err == e.get("error") and (bytes(raw) if raw is not None else None) == e.get("raw")
        assert conn.execute("SELECT hour, event_count FROM event_stats_hourly WHERE node_id = %s",
                            (NODES[0],)).fetchone()[1] == 7
        assert conn.execute("SELECT sum(event_count) FROM nodes").fetchone()[0] == 1000
        # the payload is the wire form: stored rows are far smaller than their JSON
        avg = conn.execute("SELECT avg(length(payload)) FROM event_rows WHERE decode_error IS NULL").fetchone()[0]
        assert 0 < avg < 120
    # and REST serves the same JSON as before (the codec's, rendered from the stored payload)
    with TartProcess(tmp_path, database_url=empty_db, acceptors=1) as tart:
        got: dict[int, dict] = {}
        before = None
        while True:
            q = "/api/events?limit=1000" + (f"&before_id={before}" if before else "")
            status, page = tart.get(q)
            assert status == 200, page
            got.update({ev["id"]: ev for ev in page["events"]})
            if not page["has_more"]:
                break
            before = page["next_before_id"]
        assert sorted(got) == sorted(expect)
        for id_, e in expect.items():
            assert got[id_]["data"] == e["data"], id_
            assert got[id_]["node_id"] == e["node"] and got[id_]["node_name"] == "old-impl"
        node_page = tart.get(f"/api/nodes/{NODES[1]}/events?limit=1000")[1]["events"]
        assert {ev["id"] for ev in node_page} == {i for i, e in expect.items() if e["node"] == NODES[1]}


def test_legacy_payload_rules() -> None:
    from tart.engine.legacy import legacy_payload

    frame = struct.pack("<QB", 9, 11) + bytes(4) + b"\x11" * 32
    # an event with U+0000 kept its frame: the payload is the frame's fields
    assert legacy_payload(11, {"BestBlockChanged": {}}, frame, None) == (frame[9:], None)
    # malformed: the frame is the payload, the error stays
    assert legacy_payload(99, None, b"\x01", "bad") == (b"\x01", "bad")
    # data that no longer encodes is kept as its JSON, and says so
    payload, err = legacy_payload(11, {"BestBlockChanged": {"slot": "x"}}, None, None)
    assert orjson.loads(payload) == {"BestBlockChanged": {"slot": "x"}} and "re-encoded" in err
