"""SIGHUP reloads configuration in place: real `tart-backend`, a real node on one TCP connection.

The rate limit is lifted while the node keeps sending on its connection: nothing restarts, the
connection stays, and from the reload on every event is stored."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import threading
import time

import psycopg
from tartproc import TartProcess

from tart.engine.codec import encode_event, encode_node_info
from tart.engine.loadgen import make_node_info

RATE = 500  # events/s the node sends, ten times the first limit


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


class Node(threading.Thread):
    """One node, one connection: BestBlockChanged with slot = its JIP-3 event id (no Dropped
    events), ~RATE per second, until stopped. A send error ends it and is kept in `error`."""

    def __init__(self, addr: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        info = make_node_info(random.Random(4242), 2, 0)
        self.node_id = info.node_id
        self.sock = socket.create_connection(addr)
        self.sock.sendall(frame(encode_node_info(info)))
        self.sent = 0
        self.error: OSError | None = None
        self.halt = threading.Event()

    def event(self, slot: int) -> bytes:
        return frame(encode_event(11, {"timestamp": 1000 + slot, "slot": slot, "hash": "0x" + "cd" * 32}, 2))

    def run(self) -> None:
        per_tick = RATE // 100
        next_tick = time.monotonic()
        while not self.halt.is_set():
            try:
                self.sock.sendall(b"".join(self.event(self.sent + i) for i in range(per_tick)))
            except OSError as e:
                self.error = e
                return
            self.sent += per_tick
            next_tick += 0.01
            time.sleep(max(0.0, next_tick - time.monotonic()))


def log_lines(tart: TartProcess, text: str) -> list[str]:
    return [line for line in tart.log_path.read_text(errors="replace").splitlines() if text in line]


def wait_log(tart: TartProcess, text: str, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(tart, text)
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"expected {count} log lines with {text!r}:\n{tart.log_tail()}")


def stored_event_ids(dsn: str, node_id: str) -> set[int]:
    with psycopg.connect(dsn) as c:
        return {r[0] for r in c.execute("SELECT event_id FROM events WHERE node_id = %s", (node_id,))}


def test_sighup_lifts_rate_limit_on_open_connection_without_restart(tmp_path, fresh_db):
    conf = tmp_path / "tart.env"
    conf.write_text("TART_RATE_LIMIT=50\n")
    tart = TartProcess(tmp_path, database_url=fresh_db, env={"TART_CONFIG": str(conf)})
    tart.env.pop("TART_RATE_LIMIT", None)  # the environment would win over the file
    with tart:
        before = tart.children()
        assert len(before["acceptor"]) == 2 and len(before["writer"]) == 1 and len(before["web"]) == 1
        # (readiness probes were connections too)
        conns0 = tart.metric("telemetry_connections_total")
        closed0 = tart.metric("telemetry_connections_closed_total")
        node = Node(tart.telemetry)
        node.start()
        try:
            # Limited: 50/s (burst 100) of the node's 500/s.
            time.sleep(2.5)
            limited_a = tart.metric("telemetry_events_rate_limited_total")
            time.sleep(1.5)
            limited_b = tart.metric("telemetry_events_rate_limited_total")
            assert 0 < limited_a < limited_b

            # An invalid file reaching the workers themselves (the supervisor would not forward
            # it): each logs the error and keeps its settings, nobody dies.
            conf.write_text("TART_RATE_LIMIT=-5\n")
            for pid in before["acceptor"] + before["writer"]:
                os.kill(pid, signal.SIGHUP)
            wait_log(tart, "reload rejected: invalid configuration", 3)
            time.sleep(1.5)
            assert tart.metric("telemetry_events_rate_limited_total") > limited_b + 200

            # The real reload, through the supervisor.
            conf.write_text("TART_RATE_LIMIT=0\nTART_BATCH_MAX=5000\nTART_IDLE_TIMEOUT=300\n")
            os.kill(tart.proc.pid, signal.SIGHUP)
            lines = wait_log(tart, "configuration reloaded", 4)  # supervisor, 2 acceptors, writer
            mark = node.sent  # every acceptor and the writer have applied it by now
            acceptor_lines = [ln for ln in lines if " proc=acceptor-" in ln]
            writer_lines = [ln for ln in lines if " proc=writer-" in ln]
            assert len(acceptor_lines) == 2 and len(writer_lines) == 1
            for ln in acceptor_lines:
                assert "rate_limit=50->0" in ln and "idle_timeout=120->300" in ln
            assert "batch_max=10000->5000" in writer_lines[0]

            # Events limited just before the reload reach the counter with the next push (1 s).
            time.sleep(1.5)
            limited_c = tart.metric("telemetry_events_rate_limited_total")
            time.sleep(2.0)
            assert tart.metric("telemetry_events_rate_limited_total") == limited_c
        finally:
            node.halt.set()
            node.join(5)
        assert node.error is None, node.error
        last = node.sent
        assert last - mark >= 3 * RATE

        # Every event sent after the reload is stored (event id = slot = send order).
        expected = set(range(mark, last))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = {i for i in stored_event_ids(fresh_db, node.node_id)
                   if i >= mark}
            if got >= expected:
                break
            time.sleep(0.3)
        assert got == expected, f"missing {len(expected - got)} of {len(expected)} events sent after the reload"

        # The same connection all along, still open and still carrying events.
        node.sock.sendall(node.event(last))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and last not in stored_event_ids(fresh_db, node.node_id):
            time.sleep(0.2)
        assert last in stored_event_ids(fresh_db, node.node_id)
        assert tart.metric("telemetry_connections_total") == conns0 + 1
        assert tart.metric("telemetry_connections_closed_total") == closed0
        status, body = tart.get(f"/api/nodes/{node.node_id}")
        assert status == 200 and body["is_connected"] is True
        node.sock.close()

        # Nothing was restarted.
        assert tart.children() == before
        assert tart.metric("tart_process_restarts_total") == 0
