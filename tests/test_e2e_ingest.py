"""End to end: real `tart-backend` (supervisor, acceptors, writer, web), real TCP nodes, real
PostgreSQL. What a node sends and tart accepts must be exactly what PostgreSQL holds."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from tartproc import TartProcess

from tart.engine.codec import encode_event, encode_node_info
from tart.engine.loadgen import make_node_info
from tart.engine.pgcluster import EmbeddedCluster
from tart.engine.writer.rollups import COUNTS_FLUSH_S

LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def node_hello(index: int, core_count: int = 2) -> tuple[bytes, str]:
    info = make_node_info(random.Random(1000 + index), core_count, index)
    return frame(encode_node_info(info)), info.node_id


def best_block(ts: int, slot: int) -> bytes:
    return frame(encode_event(11, {"timestamp": ts, "slot": slot, "hash": "0x" + "ab" * 32}, 2))


def dropped(ts: int, num: int) -> bytes:
    return frame(encode_event(0, {"timestamp": ts, "last_timestamp": ts, "num": num}, 2))


def loadgen(tart: TartProcess, nodes: int, rate: float, duration: float, seed: int = 1) -> dict:
    out = subprocess.run(
        [LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", str(nodes), "--rate", str(rate),
         "--duration", str(duration), "--seed", str(seed)],
        capture_output=True, text=True, timeout=duration + 60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def start_loadgen(tart: TartProcess, nodes: int, rate: float, duration: float, seed: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", str(nodes), "--rate", str(rate),
         "--duration", str(duration), "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stored_by_node_type(dsn: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(dsn) as c:
        for node_id, et, n in c.execute("SELECT node_id, event_type, count(*) FROM events GROUP BY 1, 2"):
            out.setdefault(node_id, {})[str(et)] = n
    return out


def count_rows(dsn: str, sql: str = "SELECT count(*), count(DISTINCT id) FROM events") -> tuple[int, ...]:
    with psycopg.connect(dsn) as c:
        return tuple(c.execute(sql).fetchone())


def wait_rows(dsn: str, expected: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = count_rows(dsn)[0]
        if n >= expected:
            return n
        time.sleep(0.2)
    return n


def wait_stable(dsn: str, quiet: float = 2.0, timeout: float = 60.0) -> int:
    """Row count once it has stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = count_rows(dsn)[0]
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n
        time.sleep(0.2)
    return last


def expected_by_node(report: dict) -> dict[str, dict[str, int]]:
    return {n["node_id"]: {k: v for k, v in n["by_type"].items() if v} for n in report["per_node"]}


@pytest.fixture
def tart(tmp_path, fresh_db):
    with TartProcess(tmp_path, database_url=fresh_db, env={"TART_RATE_LIMIT": "0"}) as t:
        t.dsn = fresh_db
        yield t


def test_many_nodes_every_event_stored_per_node_and_type(tart):
    report = loadgen(tart, nodes=40, rate=150, duration=4)
    assert report["sent_total"] > 40 * 150 * 2
    wait_rows(tart.dsn, report["sent_total"])
    assert wait_stable(tart.dsn, quiet=1.0) == report["sent_total"]
    assert stored_by_node_type(tart.dsn) == expected_by_node(report)
    total, distinct = count_rows(tart.dsn)
    assert total == distinct
    # JIP-3 event ids: 0..n-1 on each connection (loadgen sends no Dropped events).
    with psycopg.connect(tart.dsn) as c:
        rows = c.execute("SELECT node_id, min(event_id), max(event_id), count(*) FROM events GROUP BY 1").fetchall()
    for node_id, lo, hi, n in rows:
        assert (lo, hi) == (0, n - 1), node_id
    # Node rows: every node known, disconnected after loadgen closed, event_count exact (the
    # writer's rollup thread adds counts every COUNTS_FLUSH_S, after the rows are committed).
    sent = {n["node_id"]: n["sent"] for n in report["per_node"]}
    deadline = time.monotonic() + 10 + 3 * COUNTS_FLUSH_S
    while time.monotonic() < deadline:
        status, body = tart.get("/api/nodes")
        nodes = {n["node_id"]: n for n in body["nodes"]}
        if (len(nodes) == 40 and not any(n["is_connected"] for n in nodes.values())
                and all(nodes.get(k, {}).get("event_count") == v for k, v in sent.items())):
            break
        time.sleep(0.3)
    assert len(nodes) == 40
    for n in report["per_node"]:
        assert nodes[n["node_id"]]["event_count"] == n["sent"]
        assert nodes[n["node_id"]]["is_connected"] is False


def test_event_ids_follow_dropped_and_reconnect_keeps_node_row(tart):
    hello, node_id = node_hello(7)
    with socket.create_connection(tart.telemetry) as s:
        s.sendall(hello + best_block(10, 1) + best_block(11, 2) + dropped(12, 5) + best_block(13, 3)
                  + frame(b"\x00" * 8 + b"\xfe") + best_block(14, 4))
        wait_rows(tart.dsn, 6)
    with psycopg.connect(tart.dsn) as c:
        got = c.execute(
            "SELECT event_id, event_type, decode_error IS NOT NULL FROM events WHERE node_id = %s ORDER BY id",
            (node_id,)).fetchall()
    # 0, 1, Dropped at 2 with num 5 -> next is 7; the undecodable type 254 still takes id 8.
    assert got == [(0, 11, False), (1, 11, False), (2, 0, False), (7, 11, False), (8, 254, True), (9, 11, False)]
    # Reconnect: same row, counts accumulate, connected again.
    with socket.create_connection(tart.telemetry) as s:
        s.sendall(hello + best_block(20, 5))
        wait_rows(tart.dsn, 7)
        deadline = time.monotonic() + 10 + 3 * COUNTS_FLUSH_S
        while time.monotonic() < deadline:
            _, node = tart.get(f"/api/nodes/{node_id}")
            if node.get("is_connected") and node.get("event_count") == 7:
                break
            time.sleep(0.2)
        assert node["is_connected"] is True and node["event_count"] == 7
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, node = tart.get(f"/api/nodes/{node_id}")
        if not node["is_connected"]:
            break
        time.sleep(0.2)
    assert node["is_connected"] is False and node["disconnected_at"]
    with psycopg.connect(tart.dsn) as c:
        assert c.execute("SELECT count(*) FROM nodes").fetchone()[0] == 1


def test_bad_nodes_affect_only_their_own_connection(tart):
    good = start_loadgen(tart, nodes=10, rate=200, duration=4)
    time.sleep(0.5)
    socks = []
    # garbage instead of node information
    s = socket.create_connection(tart.telemetry)
    s.sendall(os.urandom(3000))
    socks.append(s)
    # oversize length prefix after a valid hello
    hello, _ = node_hello(1)
    s = socket.create_connection(tart.telemetry)
    s.sendall(hello + struct.pack("<I", 50 * 1024 * 1024) + b"x" * 100)
    socks.append(s)
    # a wrong first frame: an event where node information must be
    s = socket.create_connection(tart.telemetry)
    s.sendall(best_block(1, 1))
    socks.append(s)
    # half a frame, then silence (half-open)
    hello2, half_node = node_hello(2)
    s = socket.create_connection(tart.telemetry)
    s.sendall(hello2 + best_block(5, 5)[:7])
    socks.append(s)
    # malformed events in the middle of a good stream: stored raw, connection goes on
    hello3, mixed_node = node_hello(3)
    s = socket.create_connection(tart.telemetry)
    s.sendall(hello3 + best_block(1, 1) + frame(b"\x01\x02") + frame(b"\x00" * 8 + b"\x0b" + b"\x00" * 5)
              + best_block(2, 2))
    socks.append(s)
    out, err = good.communicate(timeout=60)
    assert good.returncode == 0, err
    report = json.loads(out)
    for s in socks:
        s.close()
    wait_stable(tart.dsn, quiet=1.5)
    stored = stored_by_node_type(tart.dsn)
    for node_id, by_type in expected_by_node(report).items():
        assert stored[node_id] == by_type
    assert half_node not in stored  # nothing complete arrived after the hello
    with psycopg.connect(tart.dsn) as c:
        mixed = c.execute("SELECT event_id, decode_error IS NOT NULL FROM events WHERE node_id = %s ORDER BY id",
                          (mixed_node,)).fetchall()
    assert mixed == [(0, False), (1, True), (2, True), (3, False)]
    _, metrics = tart.get("/api/health")  # still up
    assert tart.metric("telemetry_frame_errors_total", kind="oversize") >= 1
    assert tart.metric("telemetry_decode_errors_total") >= 2


def test_postgres_down_for_ten_seconds_loses_and_duplicates_nothing(tmp_path):
    root = Path(f"/tmp/tart-pgdown-{os.getpid()}")
    root.mkdir(mode=0o755, exist_ok=True)
    cluster = EmbeddedCluster(root / "var", settings={"fsync": "off"})
    dsn = cluster.start()
    try:
        with TartProcess(tmp_path, database_url=dsn, env={"TART_RATE_LIMIT": "0"}) as tart:
            lg = start_loadgen(tart, nodes=8, rate=300, duration=16)
            time.sleep(3)
            cluster.stop()
            time.sleep(10)
            cluster.start()
            out, err = lg.communicate(timeout=90)
            assert lg.returncode == 0, err
            report = json.loads(out)
            wait_rows(dsn, report["sent_total"], timeout=60)
            assert wait_stable(dsn, quiet=1.5) == report["sent_total"]
            assert count_rows(dsn) == (report["sent_total"], report["sent_total"])
            assert stored_by_node_type(dsn) == expected_by_node(report)
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(root)])


def test_kill_9_acceptor_and_writer_are_restarted_without_loss(tart):
    lg = start_loadgen(tart, nodes=12, rate=200, duration=8)
    time.sleep(2)
    roles = tart.children()
    assert len(roles["acceptor"]) == 2 and len(roles["writer"]) == 1
    os.kill(roles["writer"][0], signal.SIGKILL)
    time.sleep(1.5)
    victim = roles["acceptor"][0]
    os.kill(victim, signal.SIGKILL)
    out, err = lg.communicate(timeout=60)
    assert lg.returncode == 0, err
    report = json.loads(out)
    # Supervisor restarted both: new pids, and tart is healthy again.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = tart.children()
        if len(now["acceptor"]) == 2 and victim not in now["acceptor"] and now["writer"] != roles["writer"]:
            break
        time.sleep(0.3)
    assert victim not in now["acceptor"] and now["writer"] != roles["writer"]
    wait_stable(tart.dsn, quiet=2.0)
    stored = stored_by_node_type(tart.dsn)
    total, distinct = count_rows(tart.dsn)
    assert total == distinct  # nothing duplicated by the writer's restart
    # Nodes whose connection lived on the surviving acceptor lost nothing; nodes on the killed one
    # lost at most what the dead process had read but not yet put in its ring (a prefix is kept).
    complete = [n for n in report["per_node"] if not n.get("closed_early")]
    assert complete, "some connections must have survived"
    for n in complete:
        assert stored.get(n["node_id"], {}) == {k: v for k, v in n["by_type"].items() if v}
    with psycopg.connect(tart.dsn) as c:
        for _node_id, n, hi in c.execute("SELECT node_id, count(*), max(event_id) FROM events GROUP BY 1"):
            assert hi == n - 1, "stored events of every node form a gap-free prefix"
    # The killed acceptor never said goodbye for its connections; its successor's RING_RESET did.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, body = tart.get("/api/nodes")
        if not any(n["is_connected"] for n in body["nodes"]):
            break
        time.sleep(0.3)
    assert [n["node_id"] for n in body["nodes"] if n["is_connected"]] == []


def test_same_node_twice_stays_connected_until_both_connections_close(tart):
    hello, node_id = node_hello(9)
    first = socket.create_connection(tart.telemetry)
    first.sendall(hello + best_block(1, 1))
    second = socket.create_connection(tart.telemetry)
    second.sendall(hello + best_block(2, 2))
    wait_rows(tart.dsn, 2)
    second.close()

    def connected() -> bool:
        return tart.get(f"/api/nodes/{node_id}")[1]["is_connected"]

    time.sleep(1.5)  # the second connection's NODE_DOWN has been written by now
    first.sendall(best_block(3, 3))
    wait_rows(tart.dsn, 3)
    assert connected() is True
    first.close()
    deadline = time.monotonic() + 10
    while connected() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert connected() is False


def test_sigterm_under_load_stores_every_accepted_event(tmp_path, fresh_db):
    tart = TartProcess(tmp_path, database_url=fresh_db, env={"TART_RATE_LIMIT": "0"}).start()
    try:
        lg = start_loadgen(tart, nodes=16, rate=1000, duration=30)
        time.sleep(3)
        t0 = time.monotonic()
        code = tart.stop(timeout=15)
        took = time.monotonic() - t0
        lg.kill()
        lg.communicate()
    finally:
        tart.kill_all()
    assert code == 0
    assert took < 10, f"shutdown took {took:.1f}s"
    accepted = 0
    for line in tart.log_path.read_text().splitlines():
        if "acceptor stopped" in line and "events_accepted=" in line:
            accepted += int(line.split("events_accepted=")[1].split()[0])
    assert accepted > 0
    total, distinct = count_rows(fresh_db)
    assert total == distinct == accepted
