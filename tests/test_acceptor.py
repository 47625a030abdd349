"""The acceptor worker, end to end: real TCP clients, a real acceptor process, a real ring.

Each test creates its own ring and listening socket (port 0), starts `python -m
tart.engine.acceptor` with the socket passed as a file descriptor (as the supervisor's fork
would inherit it), and reads the ring with a gate reader, as the writer does.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from tart.engine.acceptor import decode_error_kind, format_address
from tart.engine.codec import DecodeError, decode_event, encode_event, encode_node_info
from tart.engine.framing import FrameSplitter
from tart.engine.loadgen import make_node_info, run_loadgen
from tart.engine.ratelimit import ConnectionLimit, TokenBucket
from tart.engine.record import (
    FLAG_HAS_NUL,
    FLAG_MALFORMED,
    KIND_EVENT,
    KIND_NODE_DOWN,
    KIND_NODE_UP,
    record_kind,
    unpack_event,
    unpack_node_down,
    unpack_node_up,
)
from tart.engine.ring import Ring

U32 = struct.Struct("<I")


def frame(content: bytes) -> bytes:
    return U32.pack(len(content)) + content


def node_info_frame(seed: int, core_count: int = 2) -> tuple[bytes, bytes]:
    info = make_node_info(random.Random(seed), core_count, seed)
    return frame(encode_node_info(info)), info.peer_id


def best_block(ts: int, slot: int) -> bytes:
    return encode_event(11, {"timestamp": ts, "slot": slot, "hash": "0x" + "ab" * 32}, 2)


def dropped(ts: int, num: int) -> bytes:
    return encode_event(0, {"timestamp": ts, "last_timestamp": ts + 1, "num": num}, 2)


class Collected:
    def __init__(self) -> None:
        self.events: list = []
        self.ups: list = []
        self.downs: list = []

    def by_peer(self) -> dict[bytes, list]:
        out: dict[bytes, list] = collections.defaultdict(list)
        for e in self.events:
            out[e.peer_id].append(e)
        return out


class AcceptorHarness:
    """One ring, one listening socket, one or more acceptor processes."""

    def __init__(self, tmp: Path, ring_bytes: int = 16 << 20, **env: str) -> None:
        self.tmp = tmp
        self.metrics_dir = tmp / "metrics"
        self.metrics_dir.mkdir(exist_ok=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.env = dict(os.environ, TART_DATA_DIR=str(tmp), PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
                        TART_RATE_LIMIT="0", TART_LOG="warning", MALLOC_TRIM_THRESHOLD_="268435456")
        self.env.update(env)
        self.ring_bytes = ring_bytes
        self.rings: list[Ring] = []
        self.readers: list = []
        self.procs: list[subprocess.Popen] = []
        self.got = Collected()

    def start(self, count: int = 1) -> AcceptorHarness:
        for i in range(count):
            name = f"tt{uuid.uuid4().hex[:12]}"
            ring = Ring.create(name, self.ring_bytes, i)
            self.rings.append(ring)
            self.readers.append(ring.gate_reader())
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tart.engine.acceptor", "--fd", str(self.sock.fileno()), "--ring", name,
                 "--index", str(i)],
                pass_fds=[self.sock.fileno()], env=self.env))
        deadline = time.monotonic() + 15
        while not all(r.heartbeat_at for r in self.rings):
            assert time.monotonic() < deadline, "acceptor did not start"
            assert all(p.poll() is None for p in self.procs), "acceptor exited at start"
            time.sleep(0.02)
        return self

    def drain(self) -> int:
        n = 0
        for reader in self.readers:
            while True:
                recs = reader.read(50_000)
                if not recs:
                    break
                reader.commit(reader.position)
                n += len(recs)
                for r in recs:
                    kind = record_kind(r)
                    if kind == KIND_EVENT:
                        self.got.events.append(unpack_event(r))
                    elif kind == KIND_NODE_UP:
                        self.got.ups.append(unpack_node_up(r))
                    elif kind == KIND_NODE_DOWN:
                        self.got.downs.append(unpack_node_down(r))
        return n

    def wait_until(self, pred, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if pred():
                return
            assert time.monotonic() < deadline, "timed out waiting for the ring"
            time.sleep(0.02)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        reg = CollectorRegistry()
        MultiProcessCollector(reg, path=str(self.metrics_dir))
        total = 0.0
        for fam in reg.collect():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def wait_metric(self, name: str, value: float, timeout: float = 5.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while (got := self.metric(name, **labels)) < value and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def stop(self) -> list[int]:
        codes = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=10))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        self.drain()
        return codes

    def close(self) -> None:
        self.stop()
        self.readers = []
        for ring in self.rings:
            ring.close()
            ring.unlink()
        self.sock.close()


@pytest.fixture
def harness(tmp_path):
    made: list[AcceptorHarness] = []

    def make(**kw) -> AcceptorHarness:
        d = tmp_path / f"h{len(made)}"
        d.mkdir()
        h = AcceptorHarness(d, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def loadgen(port: int, **kw) -> dict:
    return uvloop.run(run_loadgen(("127.0.0.1", port), **kw))


# --- end to end with the load generator -----------------------------------------------------------


def test_loadgen_nodes_every_event_arrives_in_order(harness):
    h = harness().start()
    report = loadgen(h.port, nodes=6, rate=3000, duration=1.5, seed=7, mix="all", max_events=2500)
    assert not report.get("errors")
    h.wait_until(lambda: len(h.got.downs) == 6)
    by_peer = h.got.by_peer()
    assert report["sent_total"] == sum(n["sent"] for n in report["per_node"]) == len(h.got.events)
    for node in report["per_node"]:
        events = by_peer[bytes.fromhex(node["peer_id"])]
        assert len(events) == node["sent"] == 2500
        types = collections.Counter(str(e.event_type) for e in events)
        assert dict(types) == node["by_type"]
        assert not any(e.flags for e in events)
        # JIP-3 ids rise, jump after each Dropped by its num, and end where the node says.
        ids = [e.event_id for e in events]
        assert ids[0] == 0 and ids[-1] == node["last_event_id"]
        for prev, cur in zip(events, events[1:], strict=False):
            step = orjson.loads(prev.json)["Dropped"]["num"] if prev.event_type == 0 else 1
            assert cur.event_id == prev.event_id + step
        # Linked events name the id of their cause.
        by_id = {e.event_id: e for e in events}
        for e in events:
            if e.event_type == 26:  # ConnectedOut -> ConnectingOut
                assert by_id[orjson.loads(e.json)["ConnectedOut"]["connecting_id"]].event_type == 24
            if e.event_type == 108:  # GuaranteeSent -> SendingGuarantee
                assert by_id[orjson.loads(e.json)["GuaranteeSent"]["sending_id"]].event_type == 106
    # tart ids: unique, increasing in arrival order, ring index in the low 6 bits.
    all_ids = [e.id for e in h.got.events]
    assert len(set(all_ids)) == len(all_ids) and all_ids == sorted(all_ids)
    assert all(i & 63 == 0 for i in all_ids)

    ups = {u.peer_id: u for u in h.got.ups}
    downs = {d.peer_id: d for d in h.got.downs}
    for node in report["per_node"]:
        pid = bytes.fromhex(node["peer_id"])
        up, down = ups[pid], downs[pid]
        doc = orjson.loads(up.info_json)
        assert doc["address"].startswith("127.0.0.1:")
        assert doc["node_info"]["details"]["peer_id"] == "0x" + node["peer_id"]
        assert doc["node_info"]["params"]["core_count"] == node["core_count"]
        assert doc["gp_version"] == "0.7.1" and doc["implementation_name"]
        assert down.conn_id == up.conn_id and down.connected_at == up.connected_at
        assert down.events == node["sent"] and down.disconnected_at >= up.connected_at
    assert h.wait_metric("telemetry_events_received_total", 15000) == 15000
    assert h.metric("telemetry_connections_total") == 6
    assert h.rings[0].counters["events_received"] == 15000
    assert h.rings[0].counters["node_up"] == h.rings[0].counters["node_down"] == 6


def test_event_ids_dropped_jump_malformed_and_nul(harness):
    h = harness().start()
    info, peer = node_info_frame(1)
    nul_event = encode_event(28, {"timestamp": 5, "peer": "0x" + "11" * 32, "reason": "bad\x00byte"}, 2)
    frames = [
        best_block(1, 10),  # id 0
        dropped(2, 5),  # id 1, next is 1 + 5
        best_block(3, 11),  # id 6
        bytes([4, 0, 0, 0, 0, 0, 0, 0, 250]),  # id 7: unknown type 250
        best_block(5, 12)[:-3],  # id 8: truncated
        nul_event,  # id 9: HAS_NUL
        b"\x01\x02",  # id 10: too short for a header
        best_block(6, 13),  # id 11
    ]
    with h.connect() as s:
        # One byte at a time for the first frames: the splitter must reassemble.
        data = info + b"".join(frame(f) for f in frames[:3])
        for i in range(0, len(data), 7):
            s.sendall(data[i : i + 7])
        s.sendall(b"".join(frame(f) for f in frames[3:]))
        h.wait_until(lambda: len(h.got.events) == 8)
    h.wait_until(lambda: len(h.got.downs) == 1)
    ev = h.got.events
    assert [e.event_id for e in ev] == [0, 1, 6, 7, 8, 9, 10, 11]
    assert all(e.peer_id == peer for e in ev)
    assert [e.event_type for e in ev] == [11, 0, 11, 250, 11, 28, 0, 11]
    assert [e.flags for e in ev] == [0, 0, 0, FLAG_MALFORMED, FLAG_MALFORMED, FLAG_HAS_NUL, FLAG_MALFORMED, 0]
    assert orjson.loads(ev[0].json) == {"BestBlockChanged": {"timestamp": 1, "slot": 10, "hash": "0x" + "ab" * 32}}
    # Every EVENT record carries the wire bytes the writer stores: for a decoded event the
    # payload after timestamp and discriminator, for a malformed one the whole frame.
    assert ev[0].timestamp == 1 and ev[0].raw == frames[0][9:]
    assert ev[1].raw == frames[1][9:] and ev[2].raw == frames[2][9:] and ev[7].raw == frames[7][9:]
    assert b"unknown event type 250" in ev[3].json and ev[3].raw == frames[3] and ev[3].timestamp == 4
    assert ev[4].raw == frames[4] and b"truncated" in ev[4].json
    assert ev[5].raw == nul_event[9:] and b"\\u0000" in ev[5].json
    assert orjson.loads(ev[5].json)["PeerMisbehaved"]["reason"] == "bad\x00byte"
    assert ev[6].raw == b"\x01\x02"
    assert h.got.downs[0].events == 8
    assert h.wait_metric("telemetry_decode_errors_total", 1, kind="unknown_type") == 1
    assert h.metric("telemetry_decode_errors_total", kind="truncated") == 2


def test_bad_clients_only_lose_their_own_connection(harness):
    h = harness(TART_IDLE_TIMEOUT="2", TART_MAX_FRAME="65536").start()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        loadgen(h.port, nodes=3, rate=1000, duration=2.5, seed=3, mix="default")))
    t.start()
    time.sleep(0.3)
    # Oversize length prefix right away.
    oversize = h.connect()
    oversize.sendall(U32.pack(65537) + b"x" * 100)
    # A first frame that is not node information (an event).
    wrong_first = h.connect()
    wrong_first.sendall(frame(best_block(1, 1)))
    # Random garbage.
    garbage = h.connect()
    garbage.sendall(random.Random(5).randbytes(3000))
    # Valid node information, then an oversize frame after some events: NODE_DOWN must follow.
    info, bad_peer = node_info_frame(99)
    late = h.connect()
    late.sendall(info + frame(best_block(1, 1)) + U32.pack(1 << 30))
    # Half a frame, then silence: closed by the idle timeout, not before.
    info2, half_peer = node_info_frame(98)
    half = h.connect()
    half.sendall(info2 + U32.pack(100) + b"y" * 40)

    for s in (oversize, wrong_first, garbage, late):
        assert closed_by_server(s)
    assert not closed_by_server(half, timeout=0.5)
    assert closed_by_server(half, timeout=5)
    t.join()
    assert not result.get("errors")
    h.wait_until(lambda: len(h.got.downs) == 5)
    by_peer = h.got.by_peer()
    for node in result["per_node"]:
        assert len(by_peer[bytes.fromhex(node["peer_id"])]) == node["sent"]
    assert len(by_peer[bad_peer]) == 1
    assert {d.peer_id for d in h.got.downs} >= {bad_peer, half_peer}
    # A first frame is node information, with its own, smaller limit (the garbage's first four
    # bytes happen to read as a huge length too); only `late` exceeds the event limit.
    assert h.wait_metric("telemetry_frame_errors_total", 2, kind="node_info_oversize") == 2
    assert h.wait_metric("telemetry_frame_errors_total", 1, kind="oversize") == 1
    assert h.metric("telemetry_frame_errors_total", kind="bad_node_info") == 1
    assert h.metric("telemetry_connections_closed_total", reason="idle") == 1
    for s in (oversize, wrong_first, garbage, late, half):
        s.close()


def test_max_connections_shared_by_all_acceptors(harness):
    h = harness(TART_MAX_CONNECTIONS="3").start(count=2)
    socks = []
    for i in range(6):
        s = h.connect()
        s.sendall(node_info_frame(i)[0])
        socks.append(s)
        time.sleep(0.05)
    closed = [closed_by_server(s, timeout=1.0) for s in socks]
    assert closed.count(True) == 3 and closed[:3] == [False] * 3
    assert h.wait_metric("telemetry_connections_rejected_total", 3) == 3
    h.wait_until(lambda: len(h.got.ups) == 3)
    # Places come back when connections close.
    socks[0].close()
    h.wait_until(lambda: len(h.got.downs) == 1)
    again = h.connect()
    again.sendall(node_info_frame(10)[0])
    assert not closed_by_server(again, timeout=0.5)
    h.wait_until(lambda: len(h.got.ups) == 4)
    for s in [*socks, again]:
        s.close()


def test_rate_limit_counts_and_still_consumes_ids(harness):
    h = harness(TART_RATE_LIMIT="50").start()  # burst 100
    info, peer = node_info_frame(4)
    with h.connect() as s:
        s.sendall(info + b"".join(frame(best_block(i, i)) for i in range(400)))
        time.sleep(1.2)
        s.sendall(frame(best_block(1000, 1000)))
        h.wait_until(lambda: any(e.event_id == 400 for e in h.got.events))
    stored = h.got.events
    first_burst = [e for e in stored if e.event_id < 400]
    assert 100 <= len(first_burst) <= 105
    assert [e.event_id for e in first_burst] == list(range(len(first_burst)))
    limited = h.wait_metric("telemetry_events_rate_limited_total", 400 - len(first_burst))
    assert limited == 400 - len(first_burst)


def test_ring_full_pauses_reading_and_loses_nothing(harness, tmp_path):
    h = harness(ring_bytes=1 << 20).start()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tart.engine.loadgen", "--target", f"127.0.0.1:{h.port}", "--nodes", "4",
         "--rate", "0", "--duration", "3", "--max-events", "15000", "--mix", "default", "--seed", "11"],
        stdout=subprocess.PIPE, env=env)
    ring = h.rings[0]
    deadline = time.monotonic() + 10
    while ring.counters["backpressure_pauses"] == 0:
        assert time.monotonic() < deadline, "the ring never filled"
        time.sleep(0.02)
    time.sleep(0.5)
    assert ring.free_bytes() < 64 * 1024  # full, and nothing was overwritten while we did not read
    h.wait_until(lambda: len(h.got.downs) == 4, timeout=30)
    out, _ = proc.communicate(timeout=30)
    report = orjson.loads(out)
    assert report["sent_total"] == 60000 and not report.get("errors")
    by_peer = h.got.by_peer()
    for node in report["per_node"]:
        events = by_peer[bytes.fromhex(node["peer_id"])]
        assert len(events) == node["sent"] == 15000
        assert dict(collections.Counter(str(e.event_type) for e in events)) == node["by_type"]
    assert h.wait_metric("telemetry_backpressure_pauses_total", 1) >= 1
    assert h.metric("telemetry_events_dropped_total") == 0


def test_sigterm_flushes_and_closes_connections(harness):
    h = harness().start()
    info, peer = node_info_frame(5)
    s = h.connect()
    s.sendall(info + b"".join(frame(best_block(i, i)) for i in range(50)))
    h.wait_until(lambda: len(h.got.events) == 50)
    t0 = time.monotonic()
    assert h.stop() == [0]
    assert time.monotonic() - t0 < 4
    assert closed_by_server(s, timeout=1)
    assert len(h.got.downs) == 1 and h.got.downs[0].events == 50
    assert h.metric("telemetry_connections_closed_total", reason="shutdown") == 1
    s.close()


# --- small pure parts ------------------------------------------------------------------------------


def test_format_address():
    assert format_address(("10.1.2.3", 5000)) == "10.1.2.3:5000"
    assert format_address(("::1", 5000, 0, 0)) == "[::1]:5000"


@pytest.mark.parametrize(("content", "kind"), [
    (bytes(9) + b"", "truncated"),
    (bytes(8) + bytes([250]), "unknown_type"),
    (best_block(1, 1) + b"\x00", "trailing"),
    (bytes(8) + bytes([13, 7]), "bad_bool"),
    (bytes(8) + bytes([28]) + bytes(32) + b"\x02\xff\xfe", "bad_string"),
    (bytes(8) + bytes([60]) + bytes(32) + b"\x05", "bad_enum"),
])
def test_decode_error_kind(content, kind):
    with pytest.raises(DecodeError) as info:
        decode_event(content, 2)
    assert decode_error_kind(info.value) == kind


@given(st.lists(st.binary(max_size=300), max_size=30), st.lists(st.integers(1, 700), min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_frame_splitter_any_chunking(contents, cuts):
    stream = b"".join(frame(c) for c in contents)
    splitter = FrameSplitter(300)
    got, off, i = [], 0, 0
    while off < len(stream):
        step = cuts[i % len(cuts)]
        got += splitter.feed(stream[off : off + step])
        off += step
        i += 1
    assert got == contents and splitter.buffered == 0 and splitter.oversize is None


def test_frame_splitter_oversize_keeps_the_frames_before_it():
    splitter = FrameSplitter(10)
    assert splitter.feed(frame(b"a" * 10) + frame(b"b") + U32.pack(11) + b"c" * 11) == [b"a" * 10, b"b"]
    assert splitter.oversize == 11
    assert splitter.feed(frame(b"d")) == []


def test_token_bucket():
    b = TokenBucket(10, now=100.0)  # burst 20
    assert b.take(30, 100.0) == 20
    assert b.take(5, 100.0) == 0
    assert b.take(5, 100.35) == 3  # 3.5 tokens refilled
    assert b.take(100, 200.0) == 20  # refill caps at the burst


def test_connection_limit_ignores_slots_of_dead_acceptors(tmp_path):
    path = tmp_path / "conns"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    a = ConnectionLimit(path, 0, 3)
    b = ConnectionLimit(path, 1, 3)
    assert a.try_acquire() and b.try_acquire() and a.try_acquire()
    assert not b.try_acquire() and a.total() == 3
    b.release()
    assert a.total() == 2
    # A crashed acceptor's slot (its pid is gone) holds no places.
    ConnectionLimit._SLOT.pack_into(b._map, 2 * 16, dead.pid, 50)
    assert a.try_acquire() and a.total() == 3
    a.close()
    b.close()
