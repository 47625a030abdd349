"""Issue 10 (web side) and issue 14 (HTTP): hostile or broken clients affect only themselves, and the
API behaves as HTTP clients, caches and operators expect. Real gunicorn running tart.web (or a real
tart-backend), real rings, real PostgreSQL, real HTTP and WebSocket clients; no timing assertions.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
import requests
import websockets
from prometheus_client.parser import text_string_to_metric_families
from tartproc import TartProcess
from test_web_support import (  # noqa: F401 - module_dsn is a fixture
    TestRing,
    WebServer,
    insert_events,
    insert_node,
    module_dsn,
    node_id,
    running_server,
)
from test_web_ws import StalledClient

from tart.engine.db import connect
from tart.web import dbrole

A = node_id(0x61)
BIG = "z" * 40_000  # one 40 KB event: large events are what byte caps are for


def metric(srv: WebServer, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(srv.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def big_event(ring: TestRing, pad: str = BIG) -> bytes:
    return ring.event(A, 11, body={"BestBlockChanged": {"timestamp": 1, "slot": 1, "hash": pad}})


def _id(rec: bytes) -> int:
    return int.from_bytes(rec[8:16], "little")


async def _open(url: str, **kw):
    ws = await websockets.connect(url, max_size=None, **kw)
    assert orjson.loads(await ws.recv())["type"] == "connected"
    return ws


async def _next(ws, kind: str, timeout: float = 20.0) -> dict:
    """The next message of `kind` within `timeout` (other messages, such as stats, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        m = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if m["type"] == kind:
            return m


@pytest.fixture
def ring() -> Iterator[TestRing]:
    r = TestRing(0, capacity=64 * 1024 * 1024)
    yield r
    r.close()


# --- memory caps by bytes ------------------------------------------------------------------------

def test_recent_buffer_and_subscriber_queue_are_capped_by_bytes(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                                ring: TestRing) -> None:
    env = {"TART_WS_RECENT_BUFFER_BYTES": "400000", "TART_WS_QUEUE_BYTES": "262144", "TART_WS_SEND_TIMEOUT": "300"}
    with running_server(tmp_path, module_dsn, [ring.name], workers=1, env=env) as srv:
        stalled = StalledClient(srv.port)
        recs = [big_event(ring) for _ in range(500)]  # 20 MB; 500 events is under the 1000-event count cap
        sentinel = ring.event(A, 12)

        async def reader() -> dict:
            ws = await _open(srv.ws_url)
            ring.write(recs + [sentinel])
            ring.commit_all()
            deadline = time.monotonic() + 60
            while True:  # until the broadcaster has read everything
                await ws.send('{"type":"GetRecentEvents"}')
                reply = (await _next(ws, "recent_events"))["data"]
                if reply["events"] and reply["events"][-1]["id"] == _id(sentinel):
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            await ws.close()
            return reply

        recent = asyncio.run(reader())
        # 400 KB of 40 KB events: the newest ten or so, not 10,000.
        assert 1 <= recent["count"] <= 11
        assert recent["events"][-1]["id"] == _id(sentinel)
        assert 0 < metric(srv, "tart_ws_recent_buffer_bytes") <= 400_000

        # The stalled subscriber's queue held at most 256 KB: the rest was skipped and reported.
        def accounted(ms: list[dict]) -> int:
            return sum(1 if m["type"] == "event" else m["data"]["skipped"] if m["type"] == "lagged" else 0
                       for m in ms)

        msgs = stalled.messages(lambda ms: accounted(ms) >= len(recs) + 1, timeout=60)
        stalled.close()
        skipped = sum(m["data"]["skipped"] for m in msgs if m["type"] == "lagged")
        assert skipped > 0 and accounted(msgs) == len(recs) + 1
        assert metric(srv, "telemetry_broadcaster_lagged_total") >= skipped


def test_rest_event_page_is_bounded_by_bytes_and_cursor_still_walks_everything(
        tmp_path: Path, module_dsn: str, ring: TestRing) -> None:  # noqa: F811
    nid = node_id(0x62)
    insert_node(module_dsn, nid)
    # Stored events are real ones (a few hundred bytes each as JSON): a 1-byte cap cuts every page
    # after its first event.
    recs = [ring.event(nid, 11, body={"BestBlockChanged": {"timestamp": 1, "slot": i, "hash": "0x" + "ab" * 32}})
            for i in range(30)]
    insert_events(module_dsn, recs)
    ring.commit_all()
    event_bytes = 600  # an upper bound of one BestBlockChanged envelope as REST serves it (~540 B)
    cap = 1
    with running_server(tmp_path, module_dsn, [ring.name], workers=1,
                        env={"TART_REST_MAX_BODY_BYTES": str(cap)}) as srv:
        seen: list[int] = []
        cursor = ""
        pages = 0
        while True:
            r = srv.get(f"/api/nodes/{nid}/events?limit=1000{cursor}")
            assert r.status_code == 200, r.text
            # Cut after the event that crosses the cap: at most one event over it.
            assert len(r.content) < cap + event_bytes
            body = r.json()
            assert list(body) == ["events", "has_more", "next_before_id"]
            seen += [e["id"] for e in body["events"]]
            pages += 1
            if not body["has_more"]:
                break
            assert body["next_before_id"] == body["events"][-1]["id"]
            cursor = f"&before_id={body['next_before_id']}"
        assert seen == sorted((_id(r) for r in recs), reverse=True)
        assert pages == len(recs)
        assert metric(srv, "tart_http_pages_truncated_total") >= pages - 1


# --- WebSocket limits -------------------------------------------------------------------------------

def test_get_recent_events_is_clamped_and_unread_replies_are_refused(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                                    ring: TestRing) -> None:
    env = {"TART_WS_RECENT_MAX_EVENTS": "50", "TART_WS_RECENT_MAX_BYTES": "4000000", "TART_WS_RECENT_INFLIGHT": "2",
           "TART_WS_SEND_TIMEOUT": "300"}
    with running_server(tmp_path, module_dsn, [ring.name], workers=1, env=env) as srv:
        small = [ring.event(A, 11) for _ in range(120)]
        recs = [big_event(ring) for _ in range(100)]  # 4 MB in the recent buffer
        ring.write(small + recs)
        ring.commit_all()

        async def clamp() -> dict:
            ws = await _open(srv.ws_url)
            await ws.send('{"type":"GetRecentEvents","limit":100000}')
            reply = (await _next(ws, "recent_events"))["data"]
            await ws.close()
            return reply

        def recent_in_buffer() -> bool:
            return metric(srv, "tart_ws_recent_buffer_bytes") > 3_000_000

        wait_for(recent_in_buffer, what="the broadcaster to read the ring")
        reply = asyncio.run(clamp())
        # At most 50 events and at most 4 MB, the newest ones, oldest first.
        assert reply["count"] == len(reply["events"]) <= 50
        assert reply["count"] <= 4_000_000 // 40_000 + 1
        assert [e["id"] for e in reply["events"]] == [_id(r) for r in recs[-reply["count"]:]]

        client = StalledClient(srv.port)
        for _ in range(20):
            client.send_text('{"type":"GetRecentEvents"}')
        wait_for(lambda: metric(srv, "tart_ws_requests_refused_total", reason="recent_inflight") >= 1,
                 what="a refused GetRecentEvents")

        def answered(ms: list[dict]) -> int:
            return sum(1 for m in ms if m["type"] == "recent_events"
                       or (m["type"] == "error" and m["data"]["error"] == "too_many_requests"))

        msgs = client.messages(lambda ms: answered(ms) >= 20, timeout=60)
        client.close()
        replies = sum(1 for m in msgs if m["type"] == "recent_events")
        # Every request answered exactly once; only a few big replies were built.
        assert answered(msgs) == 20 and 1 <= replies < 20
        assert all(m["type"] != "close" for m in msgs)


def test_client_that_does_not_read_is_closed_after_the_send_timeout(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                                    ring: TestRing) -> None:
    with running_server(tmp_path, module_dsn, [ring.name], workers=1, env={"TART_WS_SEND_TIMEOUT": "1"}) as srv:
        stalled = StalledClient(srv.port)

        async def run() -> None:
            # The reading client buffers without bound on its side, so that it keeps reading while
            # this test is busy polling /metrics.
            fast = await _open(srv.ws_url, max_queue=None)
            wait_for(lambda: metric(srv, "telemetry_broadcaster_subscribers") == 2, what="two subscribers")
            ring.write([big_event(ring) for _ in range(300)])  # 12 MB: far past every buffer
            ring.commit_all()
            # The reader that does not read is closed and forgotten; the one that reads stays.
            deadline = time.monotonic() + 60
            while metric(srv, "tart_ws_closed_total", reason="send_timeout") < 1:
                assert time.monotonic() < deadline, srv.log()[-2000:]
                await asyncio.sleep(0.2)
            while metric(srv, "telemetry_broadcaster_subscribers") != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            await fast.send('{"type":"Ping"}')
            await _next(fast, "pong", timeout=30)
            await fast.close()

        asyncio.run(run())
        stalled.close()


def test_connections_are_capped_per_address_and_per_worker(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                           ring: TestRing) -> None:
    env = {"TART_WS_MAX_PER_ADDRESS": "2", "TART_WS_MAX_CONNECTIONS": "3"}
    with running_server(tmp_path, module_dsn, [ring.name], workers=1, env=env) as srv:

        async def refused(local: str) -> int:
            ws = await websockets.connect(srv.ws_url, local_addr=(local, 0))
            with pytest.raises(websockets.ConnectionClosed) as exc:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return exc.value.rcvd.code

        async def run() -> None:
            a1 = await _open(srv.ws_url, local_addr=("127.0.0.1", 0))
            a2 = await _open(srv.ws_url, local_addr=("127.0.0.1", 0))
            assert await refused("127.0.0.1") == 1013
            b1 = await _open(srv.ws_url, local_addr=("127.0.0.2", 0))  # another host still gets in
            assert await refused("127.0.0.3") == 1013  # the worker is full
            await a1.close()
            deadline = time.monotonic() + 30
            while True:  # the slot comes back once the server has seen the close
                try:
                    a3 = await _open(srv.ws_url, local_addr=("127.0.0.1", 0))
                    break
                except websockets.ConnectionClosed:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            for ws in (a2, b1, a3):
                await ws.close()

        asyncio.run(run())
        assert metric(srv, "tart_ws_closed_total", reason="address_limit") >= 1
        assert metric(srv, "tart_ws_closed_total", reason="worker_limit") >= 1


def test_oversized_client_message_is_refused_by_gunicorn(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                         ring: TestRing) -> None:
    with running_server(tmp_path, module_dsn, [ring.name], workers=1, env={"TART_WS_MAX_MESSAGE": "65536"}) as srv:

        async def run() -> int:
            ws = await _open(srv.ws_url)
            await ws.send('{"type":"Ping","pad":"' + "p" * 60_000 + '"}')  # under the cap: answered
            await _next(ws, "pong")
            await ws.send("x" * 70_000)
            with pytest.raises(websockets.ConnectionClosed) as exc:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return exc.value.rcvd.code

        assert asyncio.run(run()) == 1009


def test_stats_message_is_rendered_once_per_tick_for_all_subscribers(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                                     ring: TestRing) -> None:
    with running_server(tmp_path, module_dsn, [ring.name], workers=1) as srv:

        async def collect(ws, node: str | None) -> list[dict]:
            if node is not None:
                await ws.send(orjson.dumps({"type": "Subscribe", "filter": {"type": "Node", "node_id": node}}).decode())
            stats: list[dict] = []
            while len(stats) < 4:  # the one sent on connect, then three ticks
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if m["type"] == "stats":
                    stats.append(m)
            await ws.close()
            return stats

        async def run() -> list[list[dict]]:
            clients = [await _open(srv.ws_url) for _ in range(3)]
            return list(await asyncio.gather(collect(clients[0], None), collect(clients[1], A),
                                             collect(clients[2], None)))

        got = asyncio.run(run())
        # One rendering per tick: every subscriber's message of a tick carries the same timestamp
        # (the shared part is rendered once; each subscriber's own part is spliced in).
        stamps = [[m["timestamp"] for m in msgs] for msgs in got]
        assert len(set(stamps[0]) & set(stamps[1]) & set(stamps[2])) >= 2, stamps
        assert len(set(stamps[0])) >= 3
        assert got[0][-1]["data"]["websocket"]["current_filter"] == {"type": "All"}
        assert got[1][-1]["data"]["websocket"]["current_filter"] == {"type": "Node", "node_id": A}
        assert list(got[0][-1]["data"]) == ["broadcaster", "connections", "database", "websocket"]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _web_worker(tart: TartProcess) -> int:
    (arbiter,) = tart.children()["web"]
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(arbiter)], capture_output=True, text=True).stdout
    (worker,) = [int(p) for p in out.split()]
    return worker


def test_recent_events_flood_from_clients_that_never_read_stays_bounded(tmp_path: Path, fresh_db: str) -> None:
    """The issue's attack: two clients each send 63 GetRecentEvents and never read. Before the
    caps this grew the worker by 222-322 MiB and held /api/health/detailed for 4-6 s."""
    with TartProcess(tmp_path, database_url=fresh_db, acceptors=1, web_workers=1) as tart:
        gen = subprocess.run([str(Path(sys.executable).parent / "tart-loadgen"), "--target",
                              f"{tart.telemetry[0]}:{tart.telemetry[1]}", "--nodes", "10", "--rate", "500",
                              "--duration", "3"], capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr

        def buffered() -> float:
            return tart.metric("tart_ws_recent_buffer_bytes")

        wait_for(lambda: buffered() > 0, what="events in the recent buffer")
        worker = _web_worker(tart)
        before = _rss_kib(worker)
        port = int(tart.api.rsplit(":", 1)[1])
        attackers = [StalledClient(port) for _ in range(2)]
        for c in attackers:
            for _ in range(63):
                try:
                    c.send_text('{"type":"GetRecentEvents"}')
                except OSError:
                    break
        t0 = time.monotonic()
        status, body = tart.get("/api/health/detailed", timeout=60)
        health_s = time.monotonic() - t0
        assert status in (200, 503) and "components" in body
        wait_for(lambda: tart.metric("tart_ws_requests_refused_total", reason="recent_inflight") >= 2,
                 what="refused requests")
        grown_mib = (_rss_kib(worker) - before) / 1024
        print(f"health/detailed under attack: {health_s * 1000:.0f} ms; worker RSS +{grown_mib:.1f} MiB")
        assert grown_mib < 64
        for c in attackers:
            c.close()


# --- database time and privileges ---------------------------------------------------------------

def test_slow_query_is_cancelled_and_answered_503(tmp_path: Path, module_dsn: str, ring: TestRing) -> None:  # noqa: F811
    with running_server(tmp_path, module_dsn, [ring.name], workers=1,
                        env={"TART_DB_STATEMENT_TIMEOUT_MS": "300"}) as srv:
        assert srv.get("/api/nodes").status_code == 200
        with connect(module_dsn) as locker:
            # A lock wait is query time as well: the query behind it is cancelled at the timeout.
            locker.execute("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE")
            r = srv.get("/api/nodes")
            locker.rollback()
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "query_timeout", "detail": r.json()["detail"]}
        assert "statement" not in r.text and "nodes" not in r.text  # no server text
        assert srv.get("/api/nodes").status_code == 200
        assert metric(srv, "tart_http_database_timeouts_total") >= 1


def test_web_sessions_are_read_only_and_stats_still_cached(tmp_path: Path, module_dsn: str,  # noqa: F811
                                                          ring: TestRing) -> None:
    ro = dbrole.session_conninfo(module_dsn, 5000, read_only=True)
    with psycopg.connect(ro, autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM stats_cache")
    with running_server(tmp_path, module_dsn, [ring.name], workers=1) as srv:
        r = srv.get("/api/stats")
        assert r.status_code == 200 and "total_nodes" in r.json()
    with connect(module_dsn) as conn:
        age = conn.execute("SELECT extract(epoch FROM now() - updated_at) FROM stats_cache WHERE key = 'api_stats'"
                           ).fetchone()
    assert age is not None and age[0] < 60  # the writable stats path refreshed the shared row


# The tart_web role itself (created by the migrations): tests/test_least_privilege.py.


# --- small ones and HTTP conventions -----------------------------------------------------------

@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory, module_dsn: str) -> Iterator[WebServer]:  # noqa: F811
    r = TestRing(0)
    try:
        with running_server(tmp_path_factory.mktemp("http"), module_dsn, [r.name], workers=1,
                            env={"TART_ACCESS_LOG": "1", "TART_GZIP_MIN_BYTES": "1024"}) as srv:
            yield srv
    finally:
        r.close()


def _raw_get(srv: WebServer, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close", **headers})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_gzip_when_asked_and_large_enough(http_server: WebServer) -> None:
    status, h, body = _raw_get(http_server, "/api/openapi.json", {"Accept-Encoding": "gzip"})
    assert status == 200 and h["content-encoding"] == "gzip" and "accept-encoding" in h["vary"].lower()
    doc = orjson.loads(gzip.decompress(body))
    assert "paths" in doc and int(h["content-length"]) == len(body)
    _, h, plain = _raw_get(http_server, "/api/openapi.json", {})
    assert "content-encoding" not in h and orjson.loads(plain) == doc
    _, h, _ = _raw_get(http_server, "/api/openapi.json", {"Accept-Encoding": "gzip;q=0, br"})
    assert "content-encoding" not in h
    _, h, small = _raw_get(http_server, "/api/health", {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in h and orjson.loads(small)["status"] == "ok"  # under the minimum
    _, h, body = _raw_get(http_server, "/metrics", {"Accept-Encoding": "gzip"})
    assert h["content-encoding"] == "gzip" and b"tart_http_requests_total" in gzip.decompress(body)


def test_cache_control(http_server: WebServer) -> None:
    assert http_server.get("/api/stats").headers["cache-control"] == "max-age=5"
    for path in ("/api/health", "/api/health/detailed", "/metrics", "/api/ws", "/api/nodes", "/api/events",
                 "/api/nodes/xyz"):
        assert http_server.get(path).headers["cache-control"] == "no-store", path


def test_access_log_lines(http_server: WebServer) -> None:
    http_server.get("/api/health?probe=1", headers={"User-Agent": "probe/1"})

    def logged() -> bool:
        return any("request" in ln and "path=/api/health" in ln and "status=200" in ln and "probe=1" in ln
                   for ln in http_server.log().splitlines())

    wait_for(logged, what="an access log line")
    line = next(ln for ln in http_server.log().splitlines() if "probe=1" in ln)
    for key in ("method=GET", "duration_ms=", "bytes=", "client=127.0.0.1", "query=", "probe/1"):
        assert key in line, line


def test_method_label_is_a_fixed_set(http_server: WebServer) -> None:
    for method in ("BREW", "PROPFIND", "X" * 40):
        requests.request(method, http_server.base + "/api/health", timeout=10, headers={"Connection": "close"})
    methods = {s.labels["method"] for f in text_string_to_metric_families(http_server.get("/metrics").text)
               for s in f.samples if s.name == "tart_http_requests_total"}
    assert "other" in methods and methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}


def test_one_node_id_rule_for_rest_and_websocket(http_server: WebServer, module_dsn: str) -> None:  # noqa: F811
    nid = node_id(0x6a)
    insert_node(module_dsn, nid)
    assert http_server.get(f"/api/nodes/{nid.upper()}").json()["node_id"] == nid
    for bad in (f"0x{nid[:62]}", f"%20{nid}", nid[:63], nid + "0", "g" * 64):
        assert http_server.get(f"/api/nodes/{bad}").status_code == 400, bad
        assert http_server.get(f"/api/nodes/{bad}/events").status_code == 400, bad

    async def ws_filter(value: str) -> dict:
        async with websockets.connect(http_server.ws_url) as ws:
            await ws.send(orjson.dumps({"type": "Subscribe", "filter": {"type": "Node", "node_id": value}}).decode())
            while True:
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if m["type"] in ("subscribed", "error"):
                    return m

    assert asyncio.run(ws_filter(nid.upper()))["data"]["filter"]["node_id"] == nid
    for bad in (f"0x{nid[:62]}", f" {nid}", nid[:63]):
        assert asyncio.run(ws_filter(bad))["data"]["error"] == "bad_filter", bad


def test_served_version_of_urllib_client_sees_json(http_server: WebServer) -> None:
    # urllib sends no Accept-Encoding: plain JSON, as every reference client expects.
    with urllib.request.urlopen(http_server.base + "/api/openapi.json", timeout=10) as r:
        assert r.headers.get("Content-Encoding") is None
        assert "paths" in orjson.loads(r.read())
