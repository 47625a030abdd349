"""WebSocket /api/ws against gunicorn running tart.web: protocol, filters, recent events, slow clients."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Iterator

import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from test_web_support import (  # noqa: F401 - module_dsn is a fixture
    TestRing,
    WebServer,
    module_dsn,
    node_id,
    running_server,
)

A, B = node_id(0x41), node_id(0x42)


@pytest.fixture(scope="module")
def ring() -> Iterator[TestRing]:
    r = TestRing(0, capacity=32 * 1024 * 1024)
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_dsn: str, ring: TestRing  # noqa: F811
           ) -> Iterator[WebServer]:
    # One worker: every socket in a test meets the same broadcaster. CORS on to check the header.
    with running_server(tmp_path_factory.mktemp("ws"), module_dsn, [ring.name], workers=1,
                        env={"TART_CORS_ORIGINS": "https://dash.example",
                             # The stalled-client test keeps a whole 1000-event queue of 4 KB events.
                             "TART_WS_QUEUE_BYTES": str(16 << 20)}) as srv:
        yield srv


def _id(rec: bytes) -> int:
    return int.from_bytes(rec[8:16], "little")


async def _recv(ws, kind: str | None = None, timeout: float = 10.0) -> dict:
    """Next message (of `kind`, skipping periodic stats)."""
    while True:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if kind is None or msg["type"] == kind:
            return msg
        if msg["type"] not in ("stats",):
            raise AssertionError(f"expected {kind}, got {msg}")


async def _open(server: WebServer):
    ws = await websockets.connect(server.ws_url, max_size=None)
    hello = orjson.loads(await ws.recv())
    assert hello["type"] == "connected"
    first_stats = orjson.loads(await ws.recv())
    assert first_stats["type"] == "stats"  # right after connected, then every 5 s
    return ws, hello, first_stats


def test_cors_header_when_configured(server: WebServer) -> None:
    r = server.get("/api/health", headers={"Origin": "https://dash.example"})
    assert r.headers.get("access-control-allow-origin") == "https://dash.example"
    r = server.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_connected_stats_ping_and_errors(server: WebServer) -> None:
    async def run() -> None:
        ws, hello, stats = await _open(server)
        d = hello["data"]
        assert d["message"].startswith("Connected to TART telemetry")
        assert isinstance(d["recent_events"], int) and isinstance(d["total_nodes"], int)
        assert d["broadcaster_stats"]["active_subscribers"] >= 1
        assert list(hello) == ["type", "data", "timestamp"] and hello["timestamp"].endswith("Z")
        s = stats["data"]
        assert set(s) >= {"database", "broadcaster", "connections", "websocket"}
        assert set(s["database"]) >= {"best_block", "finalized_block", "total_blocks_authored"}
        assert s["websocket"]["current_filter"] == {"type": "All"}

        await ws.send('{"type":"Ping"}')
        pong = await _recv(ws, "pong")
        assert set(pong["data"]) == {"events_received", "uptime_ms"}
        for bad, err in [("not json", "bad_message"), ("[1,2]", "bad_message"), ('{"type":"Dance"}', "unknown_message"),
                         ('{"type":"Subscribe","filter":{"type":"Node","node_id":"xyz"}}', "bad_filter"),
                         ('{"type":"Subscribe","filter":{"type":"EventTypes","event_types":[300]}}', "bad_filter"),
                         ('{"type":"GetRecentEvents","limit":-1}', "bad_message")]:
            await ws.send(bad)
            msg = await _recv(ws, "error")
            assert msg["data"]["error"] == err and msg["data"]["detail"]
        await ws.send(b'\x00binary')
        assert (await _recv(ws, "error"))["data"]["error"] == "bad_message"
        # The socket is still usable after errors.
        await ws.send('{"type":"Ping"}')
        await _recv(ws, "pong")
        await ws.close()

    asyncio.run(run())


def test_filters_deliver_exactly_matching_events(server: WebServer, ring: TestRing) -> None:
    async def run() -> None:
        all_ws, _, _ = await _open(server)
        node_ws, _, _ = await _open(server)
        types_ws, _, _ = await _open(server)
        await node_ws.send(orjson.dumps({"type": "Subscribe", "filter": {"type": "Node", "node_id": B.upper()}}).decode())
        sub = await _recv(node_ws, "subscribed")
        assert sub["data"] == {"filter": {"type": "Node", "node_id": B}, "message": "Subscription updated"}
        await types_ws.send('{"type":"Subscribe","filter":{"type":"EventTypes","event_types":[12,13]}}')
        assert (await _recv(types_ws, "subscribed"))["data"]["filter"]["event_types"] == [12, 13]

        recs = [ring.event(A if i % 2 else B, 10 + i % 5) for i in range(100)]
        recs.append(ring.event(A, 11, malformed=True))
        sentinel = ring.event(B, 12)  # matches all three filters: everything before it has been fanned out
        ring.write(recs + [sentinel])

        async def collect(ws) -> list[dict]:
            got = []
            while True:
                m = await _recv(ws, "event")
                got.append(m)
                if m["data"]["id"] == _id(sentinel):
                    return got

        got_all, got_node, got_types = await asyncio.gather(collect(all_ws), collect(node_ws), collect(types_ws))
        everything = recs + [sentinel]
        assert [m["data"]["id"] for m in got_all] == [_id(r) for r in everything]
        assert [m["data"]["id"] for m in got_node] == [_id(r) for r in everything if bytes.fromhex(B) in r[40:72]]
        assert [m["data"]["id"] for m in got_types] == [_id(r) for r in everything if r[2] in (12, 13)]

        m = got_all[0]
        assert list(m) == ["type", "data", "timestamp"]
        assert list(m["data"]) == ["id", "node_id", "event_type", "latency_ms", "event"]
        assert isinstance(m["data"]["latency_ms"], float) and m["data"]["latency_ms"] >= 0
        # Live events keep declaration order (timestamp first), unlike REST.
        assert m["data"]["event_type"] == 10 and list(m["data"]["event"]["Status"]) == [
            "timestamp", "num_peers", "num_val_peers", "num_sync_peers", "num_guarantees", "num_shards",
            "shards_size", "num_preimages", "preimages_size"]
        best = next(x["data"]["event"] for x in got_all if x["data"]["event_type"] == 11)
        assert list(best["BestBlockChanged"]) == ["timestamp", "slot", "hash"]
        bad = got_all[-2]["data"]
        assert bad["event"] is None and bad["decode_error"] == "truncated Status event"

        await node_ws.send('{"type":"Unsubscribe"}')
        assert (await _recv(node_ws, "unsubscribed"))["data"]["message"] == "Reset to all events"
        await node_ws.send('{"type":"GetRecentEvents","limit":5}')
        recent = (await _recv(node_ws, "recent_events"))["data"]
        assert recent["count"] == 5
        assert [e["id"] for e in recent["events"]] == [_id(r) for r in everything[-5:]]
        assert set(recent["events"][0]) == {"event", "event_type", "id", "node_id", "timestamp"}
        for ws in (all_ws, node_ws, types_ws):
            await ws.close()

    ring.commit_all()
    asyncio.run(run())


class StalledClient:
    """A WebSocket client that completes the handshake, then does not read until told to."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        # A small receive window so that the kernel buffers fill after a few messages.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def messages(self, done, timeout: float = 20.0) -> list[dict]:
        """Read frames (server frames are unmasked) until `done(messages)` is true."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        out: list[dict] = []
        while not done(out):
            while True:
                frame = self._frame()
                if frame is not None:
                    break
                assert time.monotonic() < deadline, f"gave up; last messages {[m['type'] for m in out][-5:]}"
                chunk = self.sock.recv(1 << 20)
                assert chunk, "server closed"
                self.buf += chunk
            opcode, payload = frame
            out.append(orjson.loads(payload) if opcode == 1 else
                       {"type": "close", "code": struct.unpack(">H", payload[:2])[0] if opcode == 8 else None})
            if opcode == 8:
                return out
        return out

    def send_text(self, text: str) -> None:
        """One masked text frame (clients must mask)."""
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _frame(self) -> tuple[int, bytes] | None:
        b = self.buf
        if len(b) < 2:
            return None
        opcode = b[0] & 0x0F
        n, pos = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, pos = struct.unpack(">H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, pos = struct.unpack(">Q", b[2:10])[0], 10
        if len(b) < pos + n:
            return None
        self.buf = b[pos + n:]
        return opcode, b[pos:pos + n]

    def close(self) -> None:
        self.sock.close()


def test_stalled_client_does_not_delay_others_and_gets_lagged(server: WebServer, ring: TestRing) -> None:
    ring.commit_all()
    stalled = StalledClient(server.port)
    pad = "x" * 4000  # big messages fill the socket buffers quickly

    async def run() -> int:
        fast, _, _ = await _open(server)
        sent = 0
        for _batch in range(25):
            recs = [ring.event(A, 11, body={"BestBlockChanged": {"timestamp": 1, "slot": 1, "hash": pad}})
                    for _ in range(200)]
            ring.write(recs)
            ring.commit_all()
            want = {_id(r) for r in recs}
            # The fast client gets every event of the batch while the stalled one reads nothing.
            while want:
                m = await _recv(fast, None, timeout=10)
                assert m["type"] != "lagged", m
                if m["type"] == "event":
                    want.discard(m["data"]["id"])
            sent += len(recs)
        await fast.close()
        return sent

    sent = asyncio.run(run())
    # The stalled client starts reading: every event is either delivered to it or counted as skipped
    # in a `lagged` notice.
    def accounted(msgs: list[dict]) -> int:
        return sum(1 if m["type"] == "event" else m["data"]["skipped"] if m["type"] == "lagged" else 0
                   for m in msgs)

    msgs = stalled.messages(lambda ms: accounted(ms) >= sent)
    stalled.close()
    assert accounted(msgs) == sent
    events = [m for m in msgs if m["type"] == "event"]
    skipped = sum(m["data"]["skipped"] for m in msgs if m["type"] == "lagged")
    assert skipped > 0 and len(events) >= 1000  # its whole queue was kept
    ids = [m["data"]["id"] for m in events]
    assert ids == sorted(ids)
    text = server.get("/metrics").text
    lagged = [s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "telemetry_broadcaster_lagged_total"]
    assert lagged and lagged[0] >= skipped


def test_client_that_never_reads_its_replies_is_closed(server: WebServer, ring: TestRing) -> None:
    ring.commit_all()
    ring.write([ring.event(A, 11, body={"BestBlockChanged": {"timestamp": 1, "slot": 1, "hash": "y" * 4000}})
                for _ in range(300)])
    ring.commit_all()
    client = StalledClient(server.port)
    # Each reply is about 1.2 MB; the client asks for 200 without reading one.
    for _ in range(200):
        try:
            client.send_text('{"type":"GetRecentEvents","limit":300}')
        except OSError:
            break  # the server closed: expected
    msgs = client.messages(lambda ms: bool(ms) and ms[-1]["type"] == "close", timeout=30)
    client.close()
    assert msgs[-1]["code"] == 1008
    assert 1 <= sum(1 for m in msgs if m["type"] == "recent_events") <= 64


def test_batched_delivery_is_exact_and_opt_in(server: WebServer, ring: TestRing) -> None:
    ring.commit_all()

    async def collect_until(ws, last_id: int, kind: str) -> list[dict]:
        got = []
        while True:
            m = await _recv(ws, kind)
            got.append(m)
            ids = [e["id"] for e in m["data"]["events"]] if kind == "events" else [m["data"]["id"]]
            if last_id in ids:
                return got

    async def run() -> None:
        plain, _, _ = await _open(server)
        batched, _, _ = await _open(server)
        node_b, _, _ = await _open(server)
        await batched.send('{"type":"Subscribe","filter":{"type":"All"},"batch_ms":300,"max_events":50}')
        sub = await _recv(batched, "subscribed")
        assert sub["data"] == {"filter": {"type": "All"}, "message": "Subscription updated",
                               "batch_ms": 300, "max_events": 50}
        await node_b.send(orjson.dumps({"type": "Subscribe", "filter": {"type": "Node", "node_id": B},
                                        "batch_ms": 50}).decode())
        assert (await _recv(node_b, "subscribed"))["data"]["max_events"] == 1000
        for bad in ('{"type":"Subscribe","filter":{"type":"All"},"batch_ms":-1}',
                    '{"type":"Subscribe","filter":{"type":"All"},"batch_ms":"20"}',
                    '{"type":"Subscribe","filter":{"type":"All"},"batch_ms":20,"max_events":0}'):
            await plain.send(bad)
            assert (await _recv(plain, "error"))["data"]["error"] == "bad_message"

        recs = [ring.event(A if i % 2 else B, 10 + i % 5) for i in range(120)]
        recs.append(ring.event(A, 11, malformed=True))
        sentinel = ring.event(B, 12)
        everything = recs + [sentinel]
        ring.write(everything)

        got_plain, got_batched, got_b = await asyncio.gather(
            collect_until(plain, _id(sentinel), "event"), collect_until(batched, _id(sentinel), "events"),
            collect_until(node_b, _id(sentinel), "events"))
        # The default stays one `event` message per event.
        assert [m["data"]["id"] for m in got_plain] == [_id(r) for r in everything]
        # Batched: every event exactly once, in order, at most max_events per message, gathered
        # into far fewer messages than events.
        flat = [e for m in got_batched for e in m["data"]["events"]]
        assert [e["id"] for e in flat] == [_id(r) for r in everything]
        assert all(m["data"]["count"] == len(m["data"]["events"]) <= 50 for m in got_batched)
        assert len(got_batched) <= 10
        assert [e["id"] for m in got_b for e in m["data"]["events"]] == \
            [_id(r) for r in everything if bytes.fromhex(B) in r[40:72]]
        m = got_batched[0]
        assert list(m) == ["type", "data", "timestamp"] and m["timestamp"].endswith("Z")
        # The same data objects as the `event` message carries.
        by_id = {p["data"]["id"]: p["data"] for p in got_plain}
        for e in flat:
            assert list(e) == list(by_id[e["id"]])
            assert {k: v for k, v in e.items() if k != "latency_ms"} == \
                {k: v for k, v in by_id[e["id"]].items() if k != "latency_ms"}
        assert flat[-2]["event"] is None and flat[-2]["decode_error"] == "truncated Status event"

        # A batch that never fills goes out when batch_ms has passed; a reply queued behind events
        # keeps its place.
        few = [ring.event(A, 11) for _ in range(3)]
        ring.write(few)
        tail = await _recv(batched, "events")
        assert [e["id"] for e in tail["data"]["events"]] == [_id(r) for r in few]
        await batched.send('{"type":"Ping"}')
        await _recv(batched, "pong")

        # Unsubscribe resets to the default: All, one message per event.
        await batched.send('{"type":"Unsubscribe"}')
        await _recv(batched, "unsubscribed")
        more = [ring.event(B, 11) for _ in range(3)]
        ring.write(more)
        got = await collect_until(batched, _id(more[-1]), "event")
        assert [m["data"]["id"] for m in got] == [_id(r) for r in more]
        for ws in (plain, batched, node_b):
            await ws.close()

    asyncio.run(run())
