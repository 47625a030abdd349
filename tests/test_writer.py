"""The writer against real rings, real PostgreSQL and real processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import multiprocessing
import os
import random
import shutil
import signal
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tart.engine.codec import decode_event, encode_event
from tart.engine.codec.jce import JCE_EPOCH_UNIX_US, jce_to_datetime
from tart.engine.config import Settings
from tart.engine.db import connect
from tart.engine.loadgen import _value
from tart.engine.migrate import migrate
from tart.engine.pgcluster import EmbeddedCluster
from tart.engine.record import (
    FLAG_HAS_NUL,
    FLAG_MALFORMED,
    pack_event,
    pack_node_down,
    pack_node_up,
    unpack_event,
)
from tart.engine.ring import Ring
from tart.engine.writer import apply_retention, run_writer

CTX = multiprocessing.get_context("fork")
CORES = 2  # core count of the test nodes (sizes Status and the assurance bitfield)
OUTLINE = {"size_bytes": 1, "hash": "0x" + "00" * 32, "num_tickets": 0, "num_preimages": 0,
           "total_preimages_size": 0, "num_guarantees": 0, "num_assurances": 0, "num_dispute_verdicts": 0}
RING_CAP = 1 << 20


def peer(n: int) -> bytes:
    return bytes([n]) * 32


def hexid(n: int) -> str:
    return peer(n).hex()


def now_us() -> int:
    return time.time_ns() // 1000


class Producer:
    """Packs records into a ring the way an acceptor would (ids from the ring's clock)."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.eids: dict[int, int] = {}
        self.rng = random.Random(ring.ring_index)

    def put(self, recs: list[bytes]) -> None:
        while recs:
            n = self.ring.write_many(recs)
            recs = recs[n:]
            if recs:
                time.sleep(0.005)  # the writer holds the space: wait like a backpressured acceptor

    def event(self, node: int, event_type: int, body: dict | None = None, *, flags: int = 0,
              json: bytes | None = None, raw: bytes | None = None, ts: int | None = None) -> tuple[bytes, int]:
        """A record as an acceptor makes it: a real event of ``event_type`` (random fields, ``body``
        overriding some), its JSON, and its wire payload. With ``flags``/``json``/``raw`` given,
        exactly those bytes (for malformed records)."""
        eid = self.eids.get(node, 0)
        self.eids[node] = eid + 1
        ra = now_us()
        if ts is None:
            ts = ra - JCE_EPOCH_UNIX_US
        if json is None:
            value = {**_value(event_type, self.rng, CORES), **(body or {}), "timestamp": ts}
            frame = encode_event(event_type, value, CORES)
            d = decode_event(frame, CORES)
            json, raw = d.json(), frame[9:]
            if b"\\u0000" in json:
                flags |= FLAG_HAS_NUL
        id_ = self.ring.next_id()
        return pack_event(flags=flags, event_type=event_type, id=id_, received_at=ra, timestamp=ts,
                          event_id=eid, peer_id=peer(node), json=json, raw=raw or b""), id_

    def conn_id(self, connected_at: int) -> int:
        # Unique per connection with the ring index in the low 6 bits, like Ring.next_id().
        return (connected_at << 6) | self.ring.ring_index

    def node_up(self, node: int, connected_at: int, name: str = "impl") -> bytes:
        self.eids[node] = 0
        info = {"node_info": {"name": name}, "address": "127.0.0.1:5000", "implementation_name": name,
                "implementation_version": "1.0", "gp_version": "0.7.0"}
        return pack_node_up(connected_at=connected_at, conn_id=self.conn_id(connected_at), peer_id=peer(node),
                            info_json=orjson.dumps(info))

    def node_down(self, node: int, connected_at: int, events: int) -> bytes:
        return pack_node_down(disconnected_at=now_us(), conn_id=self.conn_id(connected_at), peer_id=peer(node),
                              connected_at=connected_at, events=events)


@pytest.fixture
def rings() -> Iterator[list[Ring]]:
    made: list[Ring] = []
    tag = uuid.uuid4().hex[:8]
    made = [Ring.create(f"tart-wt-{tag}-{i}", RING_CAP, i) for i in range(2)]
    yield made
    for r in made:
        with contextlib.suppress(Exception):
            r.close()
            r.unlink()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tart-writer-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def settings_for(data_dir: Path, **kw) -> Settings:
    return Settings(data_dir=str(data_dir), batch_max=kw.pop("batch_max", 500), batch_interval_ms=20,
                    retention_days=kw.pop("retention_days", 0), **kw)


def start_writer(rings: list[Ring], dsn: str, settings: Settings) -> multiprocessing.Process:
    p = CTX.Process(target=run_writer, args=([r.name for r in rings], dsn, settings), daemon=True)
    p.start()
    return p


def stop_writer(p: multiprocessing.Process, timeout: float = 30) -> None:
    os.kill(p.pid, signal.SIGTERM)
    p.join(timeout)
    assert p.exitcode == 0, f"writer exit code {p.exitcode}"


def wait_for(pred, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count(dsn: str, sql: str = "SELECT count(*) FROM events", args: tuple = ()) -> int:
    with connect(dsn, autocommit=True) as c:
        return c.execute(sql, args).fetchone()[0]


def ids_in_db(dsn: str) -> list[int]:
    with connect(dsn, autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")]


# --- columns, nodes, malformed, NUL --------------------------------------------------------


def test_events_columns_nodes_and_special_rows(rings, fresh_db, data_dir):
    prod = Producer(rings[0])
    c1 = now_us()
    recs = [prod.node_up(1, c1)]
    expect: dict[int, tuple] = {}
    for i in range(20):
        rec, id_ = prod.event(1, 11, {"slot": i, "hash": "0x" + "ab" * 32})
        recs.append(rec)
        expect[id_] = (11, i)
    # malformed: decode error message in the JSON part, frame in raw
    bad, bad_id = prod.event(1, 99, flags=FLAG_MALFORMED, json=b"unknown event type 99", raw=b"\x63\x01\x02")
    recs.append(bad)
    # a string with U+0000, and one with a literal backslash-u0000 text
    nul, nul_id = prod.event(1, 41, {"reason": "a\x00b"})
    lit, lit_id = prod.event(1, 41, {"reason": "c\\u0000d"})
    recs += [nul, lit]
    # a timestamp beyond year 9999
    far, far_id = prod.event(1, 11, {"slot": 999}, ts=2**64 - 1)
    recs.append(far)
    prod.put(recs)

    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: count(fresh_db) == 24, what="24 events")
        # disconnect, reconnect on the other ring, more events
        rings[0].write_many([prod.node_down(1, c1, 24)])
        wait_for(lambda: count(fresh_db, "SELECT count(*) FROM nodes WHERE NOT is_connected") == 1,
                 what="node down")
        prod2 = Producer(rings[1])
        c2 = now_us()
        more = [prod2.node_up(1, c2)] + [prod2.event(1, 11, {"slot": 100 + i})[0] for i in range(5)]
        # a stale NODE_DOWN of the first connection arriving late must not disconnect the new one
        more.append(prod.node_down(1, c1, 24))
        prod2.put(more)
        wait_for(lambda: count(fresh_db) == 29, what="29 events")
        health = orjson.loads((data_dir / "writer.health").read_bytes())
        assert health["pg_ok"] is True and health["pid"] == w.pid
    finally:
        stop_writer(w)

    with connect(fresh_db, autocommit=True) as c:
        rows = {r[0]: r for r in c.execute(
            "SELECT id, node_id, event_id, event_type, timestamp, data, created_at, raw, decode_error"
            " FROM events")}
        for id_, (etype, slot) in expect.items():
            _, node, eid, et, ts, data, created, raw, err = rows[id_]
            assert node == hexid(1) and et == etype and raw is None and err is None
            assert data["BestBlockChanged"]["slot"] == slot
            assert ts == jce_to_datetime(data["BestBlockChanged"]["timestamp"])
            assert abs((created - ts).total_seconds()) < 5
        assert [rows[i][2] for i in sorted(expect)] == list(range(20))  # JIP-3 ids from 0
        b = rows[bad_id]
        assert b[5] is None and b[8] == "unknown event type 99" and bytes(b[7]) == b"\x63\x01\x02"
        # JSONB cannot hold U+0000: the view shows it as the text \u0000, like a literal one
        n, lt = rows[nul_id], rows[lit_id]
        assert n[5]["AuthoringFailed"]["reason"] == "a\\u0000b" and n[7] is None and n[8] is None
        assert lt[5]["AuthoringFailed"]["reason"] == "c\\u0000d"
        # beyond year 9999: the arrival time stands in, the frame is kept, and there is no data
        f = rows[far_id]
        assert f[5] is None and f[4] == f[6] and "out of range" in f[8]
        assert bytes(f[7])[:9] == struct.pack("<QB", 2**64 - 1, 11)

        node = c.execute("SELECT is_connected, connected_at, disconnected_at, event_count, connection_count,"
                         " implementation_name, node_info, address FROM nodes WHERE node_id = %s",
                         (hexid(1),)).fetchone()
        assert node[0] is True and node[2] is None
        assert node[1] == dt.datetime.fromtimestamp(c2 / 1e6, dt.UTC)
        assert node[3] == 29 and node[4] == 2
        assert node[5] == "impl" and node[6] == {"name": "impl"} and node[7] == "127.0.0.1:5000"
        cur = c.execute("SELECT ring_name, position FROM ring_cursors ORDER BY 1").fetchall()
        assert [r[0] for r in cur] == sorted(r.name for r in rings)
        assert [r[1] for r in cur] == [r.gate_pos for r in sorted(rings, key=lambda r: r.name)]


def test_bad_row_isolated_without_losing_batch_mates(rings, fresh_db, data_dir):
    """A row PostgreSQL rejects (here through a CHECK constraint the test adds: compact rows leave
    PostgreSQL nothing of its own to reject) is stored with its frame and the reason; its batch
    mates are stored normally."""
    with connect(fresh_db, autocommit=True) as c:
        c.execute("ALTER TABLE event_rows ADD CONSTRAINT not_57_201 CHECK (event_id NOT IN (57, 201)"
                  " OR decode_error IS NOT NULL)")
    prod = Producer(rings[0])
    recs, bad = [], {}
    for i in range(300):
        rec, id_ = prod.event(2, 11, {"slot": i})
        recs.append(rec)
        if i in (57, 201):
            bad[id_] = unpack_event(rec)
    prod.put(recs)
    w = start_writer(rings, fresh_db, settings_for(data_dir, batch_max=1000))
    try:
        wait_for(lambda: count(fresh_db) == 300, what="300 events")
    finally:
        stop_writer(w)
    with connect(fresh_db, autocommit=True) as c:
        rows = c.execute("SELECT id, data, raw, decode_error FROM events WHERE decode_error IS NOT NULL"
                         " ORDER BY id").fetchall()
        assert [r[0] for r in rows] == sorted(bad)
        for id_, data, raw, err in rows:
            assert data is None and err.startswith("rejected by PostgreSQL:") and "not_57_201" in err
            r = bad[id_]
            assert bytes(raw) == struct.pack("<QB", r.timestamp, 11) + r.raw  # the frame
        assert count(fresh_db, "SELECT count(*) FROM events WHERE data IS NOT NULL") == 298
    wait_for(lambda: count(fresh_db, "SELECT event_count FROM nodes WHERE node_id = %s", (hexid(2),)) == 300,
             what="event_count 300")


# --- crash safety --------------------------------------------------------------------------


def _stream(prod: Producer, n: int, node: int, chunk: int = 200, pause: float = 0.002) -> list[int]:
    ids = []
    for start in range(0, n, chunk):
        batch = []
        for i in range(min(chunk, n - start)):
            rec, id_ = (prod.event(node, 41, {"reason": "x" * 40}) if i % 3 else prod.event(node, 11, {"slot": i}))
            batch.append(rec)
            ids.append(id_)
        prod.put(batch)
        time.sleep(pause)
    return ids


def test_kill9_midstream_then_restart_loses_and_duplicates_nothing(rings, fresh_db, data_dir):
    settings = settings_for(data_dir, batch_max=300)
    prods = [Producer(r) for r in rings]
    w = start_writer(rings, fresh_db, settings)
    ids: list[int] = []
    for _ in range(3):
        ids += _stream(prods[0], 1500, 3) + _stream(prods[1], 1500, 4)
        wait_for(lambda: count(fresh_db) > 0, what="some rows")
        os.kill(w.pid, signal.SIGKILL)  # mid-stream: the rings still hold uncommitted records
        w.join(10)
        w = start_writer(rings, fresh_db, settings)
    try:
        wait_for(lambda: count(fresh_db) >= len(ids), what="all rows")
    finally:
        stop_writer(w)
    assert ids_in_db(fresh_db) == sorted(ids)
    assert_rollups_exact(fresh_db, len(ids))


def assert_rollups_exact(dsn: str, total: int) -> None:
    """Every rollup equals count(*) over the stored events, per node and type."""
    with connect(dsn, autocommit=True) as c:
        truth = dict(((k, t), n) for k, t, n in c.execute(
            "SELECT node_key, event_type, count(*) FROM event_rows GROUP BY 1, 2"))
        assert sum(truth.values()) == total
        for table in ("event_counts_30s", "event_counts_hourly"):
            got = dict(((k, t), n) for k, t, n in c.execute(
                f"SELECT node_key, event_type, sum(event_count) FROM {table} GROUP BY 1, 2"))
            assert got == truth, table
        per_node = dict(c.execute("SELECT node_key, count(*) FROM event_rows GROUP BY 1").fetchall())
        assert dict(c.execute("SELECT node_key, event_count FROM nodes WHERE event_count > 0").fetchall()) == per_node


def test_two_writers_kill9_one_loses_and_duplicates_nothing(rings, fresh_db, data_dir):
    """TART_WRITERS=2: each writer owns one ring; killing one mid-stream costs the other nothing,
    and its successor neither loses nor repeats rows or counts."""
    settings = settings_for(data_dir, batch_max=300)

    def start(i: int) -> multiprocessing.Process:
        p = CTX.Process(target=run_writer, args=([rings[i].name], fresh_db, settings, i), daemon=True)
        p.start()
        return p

    writers = [start(0), start(1)]
    prods = [Producer(r) for r in rings]
    ids: list[int] = []
    for _ in range(3):
        ids += _stream(prods[0], 1500, 3) + _stream(prods[1], 1500, 4)
        wait_for(lambda: count(fresh_db) > 0, what="some rows")
        os.kill(writers[1].pid, signal.SIGKILL)
        writers[1].join(10)
        writers[1] = start(1)
    try:
        wait_for(lambda: count(fresh_db) >= len(ids), what="all rows")
        assert (data_dir / "writer.health").exists() and (data_dir / "writer-1.health").exists()
    finally:
        for w in writers:
            stop_writer(w)
    assert ids_in_db(fresh_db) == sorted(ids)
    assert_rollups_exact(fresh_db, len(ids))


def test_sigterm_drains_everything(rings, fresh_db, data_dir):
    prod = Producer(rings[1])
    w = start_writer(rings, fresh_db, settings_for(data_dir, batch_max=10000))
    ids = _stream(prod, 3000, 5, chunk=1000, pause=0)
    stop_writer(w)  # immediately: the drain must still store everything
    assert ids_in_db(fresh_db) == sorted(ids)


def test_postgres_down_midstream(rings, data_dir):
    root = Path(tempfile.mkdtemp(prefix="tart-wpg-", dir="/tmp"))
    root.chmod(0o755)
    cluster = EmbeddedCluster(root / "var", settings={"fsync": "off", "shared_buffers": "32MB"})
    try:
        dsn = cluster.start()
        migrate(dsn)
        prod = Producer(rings[0])
        w = start_writer(rings, dsn, settings_for(data_dir, batch_max=200))
        try:
            ids = _stream(prod, 1000, 6)
            wait_for(lambda: count(dsn) > 0, what="first rows")
            cluster.stop()
            ids += _stream(prod, 1000, 6)  # lands in the ring while PostgreSQL is down
            time.sleep(3)
            health = orjson.loads((data_dir / "writer.health").read_bytes())
            assert health["pg_ok"] is False and health["pending"] > 0
            cluster.start()
            ids += _stream(prod, 1000, 6)
            wait_for(lambda: count(dsn) >= len(ids), timeout=60, what="all rows after restart")
        finally:
            stop_writer(w)
        assert ids_in_db(dsn) == sorted(ids)
        assert count(dsn, "SELECT event_count FROM nodes") == len(ids)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- derived tables ------------------------------------------------------------------------


def test_node_status_blocks_and_hourly(rings, fresh_db, data_dir):
    prod = Producer(rings[0])
    h = "0x" + "11" * 32
    recs = [prod.node_up(7, now_us()), prod.node_up(8, now_us())]
    recs.append(prod.event(7, 10, {"num_peers": 5, "num_val_peers": 4, "num_sync_peers": 3,
                                   "num_guarantees": [1, 2], "num_shards": 9, "shards_size": 2**40,
                                   "num_preimages": 6, "preimages_size": 7})[0])
    recs.append(prod.event(7, 11, {"slot": 41, "hash": "0x" + "aa" * 32})[0])
    recs.append(prod.event(7, 11, {"slot": 42, "hash": "0x" + "bb" * 32})[0])
    recs.append(prod.event(7, 12, {"slot": 40, "hash": "0x" + "cc" * 32})[0])
    recs.append(prod.event(7, 13, {"synced": True})[0])
    authoring, _ = prod.event(7, 40, {"slot": 42})  # node 7 event_id 5
    recs.append(authoring)
    recs.append(prod.event(7, 42, {"authoring_id": 5, "outline": {**OUTLINE, "hash": h}})[0])
    recs.append(prod.event(7, 47, {"authoring_or_importing_id": 5})[0])
    recs.append(prod.event(8, 43, {"slot": 42, "outline": {**OUTLINE, "hash": h}})[0])  # node 8 event_id 0
    recs.append(prod.event(8, 47, {"authoring_or_importing_id": 0})[0])
    recs.append(prod.event(8, 11, {"slot": 42, "hash": h})[0])
    prod.put(recs)
    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: count(fresh_db) == 11, what="11 events")
        # a later batch updates only what it carries
        prod.put([prod.event(7, 13, {"synced": False})[0]])
        wait_for(lambda: count(fresh_db) == 12, what="12 events")
    finally:
        stop_writer(w)
    with connect(fresh_db, autocommit=True) as c:
        st = c.execute("SELECT num_peers, num_val_peers, num_sync_peers, num_guarantees, num_shards, shards_size,"
                       " num_preimages, preimages_size, best_slot, best_hash, finalized_slot, finalized_hash,"
                       " is_synced FROM node_status WHERE node_id = %s", (hexid(7),)).fetchone()
        assert st == (5, 4, 3, [1, 2], 9, 2**40, 6, 7, 42, "0x" + "bb" * 32, 40, "0x" + "cc" * 32, False)
        st8 = c.execute("SELECT num_peers, best_slot, best_hash FROM node_status WHERE node_id = %s",
                        (hexid(8),)).fetchone()
        assert st8 == (None, 42, h)
        blocks = c.execute("SELECT slot, hash, authored_by, imported_by, executed_by FROM blocks").fetchall()
        assert blocks == [(42, h, [hexid(7)], [hexid(8)], sorted([hexid(7), hexid(8)]))]
        hourly = dict(((r[0], r[1]), r[2]) for r in c.execute(
            "SELECT node_id, event_type, sum(event_count) FROM event_stats_hourly GROUP BY 1, 2"))
        assert hourly[(hexid(7), 11)] == 2 and hourly[(hexid(7), 13)] == 2 and hourly[(hexid(8), 47)] == 1
        assert sum(hourly.values()) == 12
        counts = dict(c.execute("SELECT node_id, event_count FROM nodes").fetchall())
        assert counts == {hexid(7): 9, hexid(8): 3}


# --- retention -----------------------------------------------------------------------------


def test_retention_archives_and_drops_old_partitions(fresh_db, data_dir):
    now = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
    ts = int(now.timestamp() * 1e6) - JCE_EPOCH_UNIX_US
    frame = encode_event(11, {"timestamp": ts, "slot": 7, "hash": "0x" + "cd" * 32}, 0)
    with connect(fresh_db, autocommit=True) as c:
        key = c.execute("INSERT INTO nodes (node_id, peer_id) VALUES (%s, %s) RETURNING node_key",
                        (hexid(1), hexid(1))).fetchone()[0]
        for d in range(0, 6):
            day = (now - dt.timedelta(days=d)).date()
            c.execute("SELECT tart_ensure_partition(%s::date)", (day,))
            c.execute(
                "INSERT INTO event_rows (id, event_id, timestamp, created_at, node_key, event_type, payload,"
                " decode_error) VALUES (%s, 0, %s, %s, %s, 11, %s, %s)",
                (d, now, now - dt.timedelta(days=d), key, b"\x01\x02" if d == 5 else frame[9:],
                 "err" if d == 5 else None))
        c.execute("INSERT INTO event_counts_hourly VALUES (%s, %s, 11, 3)", (now - dt.timedelta(days=5), key))
        archive = data_dir / "archive"
        dropped = apply_retention(c, 3, str(archive), now=now)
        # wholly older than 3 days: the partitions of days -4 and -5 (day -3 ends after the cutoff)
        assert dropped == ["event_rows_20261121", "event_rows_20261122"]
        left = [r[0] for r in c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'event_rows'::regclass ORDER BY 1")]
        assert left == ["event_rows_20261123", "event_rows_20261124", "event_rows_20261125", "event_rows_20261126"]
        assert count(fresh_db, "SELECT count(*) FROM event_stats_hourly") == 1
        assert apply_retention(c, 0, str(archive), now=now) == []
    lines = [orjson.loads(x) for x in gzip.open(archive / "event_rows_20261121.jsonl.gz").read().splitlines()]
    assert lines == [{"id": 5, "node_id": hexid(1), "event_id": 0, "event_type": 11,
                      # the tart-export --raw envelope
                      "timestamp": "2026-11-26T12:00:00.000000Z", "data": None,
                      "node_name": "", "node_version": "", "received_at": "2026-11-21T12:00:00.000000Z",
                      "decode_error": "err", "raw": "0x0102"}]
    day4 = [orjson.loads(x) for x in gzip.open(archive / "event_rows_20261122.jsonl.gz").read().splitlines()]
    assert day4[0]["data"] == {"BestBlockChanged": {"timestamp": ts, "slot": 7, "hash": "0x" + "cd" * 32}}
    assert sorted(p.name for p in archive.iterdir()) == ["event_rows_20261121.jsonl.gz", "event_rows_20261122.jsonl.gz"]


def test_retention_without_archive_dir(fresh_db):
    with connect(fresh_db) as c:  # autocommit off, as tart.engine.db.connect gives by default
        c.execute("SELECT tart_ensure_partition('2020-01-01'::date)")
        c.commit()
        assert apply_retention(c, 30, "") == ["event_rows_20200101"]
    assert count(fresh_db, "SELECT count(*) FROM pg_class WHERE relname = 'event_rows_20200101'") == 0


def test_missing_partition_is_created(rings, fresh_db, data_dir):
    """A record whose arrival day has no partition (clock jump) is stored after creating it."""
    prod = Producer(rings[0])
    rec, id_ = prod.event(9, 11, {"slot": 1}, ts=1)
    # rewrite received_at to 10 days ahead
    future = now_us() + 10 * 86_400_000_000
    r = unpack_event(rec)
    rec = pack_event(flags=0, event_type=11, id=id_, received_at=future, timestamp=1, event_id=0,
                     peer_id=peer(9), json=r.json, raw=r.raw)
    prod.put([rec])
    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: count(fresh_db) == 1, what="row in a new partition")
    finally:
        stop_writer(w)
    assert count(fresh_db, "SELECT count(*) FROM events WHERE decode_error IS NULL") == 1


def test_restart_skips_what_the_stored_cursor_covers(rings, fresh_db, data_dir):
    """A writer that committed a batch to PostgreSQL but died before releasing it in the ring: its
    successor must resume at the stored cursor, not at the ring's gate (else duplicates)."""
    prod = Producer(rings[0])
    made = [prod.event(10, 11, {"slot": i}) for i in range(10)]
    prod.put([r for r, _ in made])
    peek = rings[0].gate_reader()
    peek.read(4)
    with connect(fresh_db, autocommit=True) as c:
        c.execute("INSERT INTO ring_cursors (ring_name, ring_uuid, position) VALUES (%s, %s, %s), (%s, %s, %s)",
                  (rings[0].name, rings[0].uuid, peek.position, rings[1].name, "another-ring", 10**9))
    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: count(fresh_db) >= 6, what="6 rows")
        rings[1].write_many([Producer(rings[1]).event(11, 11, {})[0]])  # stale uuid: read from the gate
        wait_for(lambda: count(fresh_db) >= 7, what="7 rows")
    finally:
        stop_writer(w)
    assert ids_in_db(fresh_db)[:6] == [id_ for _, id_ in made[4:]]
    assert count(fresh_db) == 7


def test_escape_nul_json_keeps_escaped_backslashes():
    from tart.engine.copyfmt import escape_nul_json

    src = orjson.dumps({"a": "x\x00y", "b": "lit\\u0000", "c": "\\\x00", "d": "\\\\u0000"})
    out = orjson.loads(escape_nul_json(src))
    assert out == {"a": "x\\u0000y", "b": "lit\\u0000", "c": "\\\\u0000", "d": "\\\\u0000"}
    assert "\x00" not in escape_nul_json(src).decode()


def test_unreadable_ring_records_are_skipped_not_fatal(rings, fresh_db, data_dir):
    prod = Producer(rings[0])
    good = [prod.event(12, 11, {"slot": i}) for i in range(3)]
    prod.put([good[0][0], b"\x01short", good[1][0], b"\x09unknown kind", good[2][0]])
    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: count(fresh_db) == 3 and rings[0].gate_pos == rings[0].write_pos, what="3 rows")
        assert w.is_alive()
    finally:
        stop_writer(w)
    assert ids_in_db(fresh_db) == [id_ for _, id_ in good]


def test_table_level_failure_holds_the_batch_instead_of_rejecting_rows(rings, fresh_db, data_dir):
    """An error no row is to blame for (here: the table is missing) keeps the events in the ring
    until it is fixed; they are then stored normally, not as 'rejected' rows."""
    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: (data_dir / "writer.health").exists(), what="writer running")
        with connect(fresh_db, autocommit=True) as c:
            c.execute("ALTER TABLE event_rows RENAME TO events_away")
        prod = Producer(rings[0])
        made = [prod.event(13, 11, {"slot": i}) for i in range(50)]
        prod.put([r for r, _ in made])
        time.sleep(2)
        assert rings[0].gate_pos == 0 and w.is_alive()
        with connect(fresh_db, autocommit=True) as c:
            c.execute("ALTER TABLE events_away RENAME TO event_rows")
        wait_for(lambda: count(fresh_db) == 50, what="50 rows once the table is back")
    finally:
        stop_writer(w)
    assert ids_in_db(fresh_db) == [id_ for _, id_ in made]
    assert count(fresh_db, "SELECT count(*) FROM events WHERE decode_error IS NOT NULL") == 0


def test_corrupt_ring_record_is_skipped_and_the_rest_stored(rings, fresh_db, data_dir):
    """A record whose ring header is impossible (a stray write, not a torn record) is skipped to
    the next plausible one, instead of crashing the writer on every restart; the stretch is
    released so the acceptor is not blocked behind it."""
    prod = Producer(rings[0])
    made = [prod.event(14, 11, {"slot": i}) for i in range(10)]
    prod.put([r for r, _ in made])
    # the 4th record's length field becomes garbage
    pos = 0
    for rec, _ in made[:3]:
        pos += 16 + ((len(rec) + 7) & -8)
    rings[0]._data[pos:pos + 4] = b"\xfe\xff\xff\x7f"
    w = start_writer(rings, fresh_db, settings_for(data_dir))
    try:
        wait_for(lambda: count(fresh_db) == 9 and rings[0].gate_pos == rings[0].write_pos, what="9 rows, ring released")
        more = [prod.event(14, 11, {"slot": 100 + i}) for i in range(5)]
        prod.put([r for r, _ in more])
        wait_for(lambda: count(fresh_db) == 14, what="later records too")
        assert w.is_alive()
    finally:
        stop_writer(w)
    assert ids_in_db(fresh_db) == sorted([id_ for i, (_, id_) in enumerate(made) if i != 3] + [i for _, i in more])
