"""REST endpoints against gunicorn running tart.web, with real rings and a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_web_support import (  # noqa: F401 - module_dsn is a fixture
    TestRing,
    WebServer,
    assert_json_error,
    insert_events,
    insert_node,
    module_dsn,
    node_id,
    running_server,
)

from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.db import connect
from tart.engine.timefmt import fmt_unix_us

EVENT_KEYS = {"id", "node_id", "event_id", "event_type", "timestamp", "data", "node_name", "node_version",
              "received_at"}
NODE_KEYS = {"node_id", "peer_id", "implementation_name", "implementation_version", "node_info", "is_connected",
             "event_count", "connected_at", "last_seen_at", "disconnected_at", "address"}


@pytest.fixture(scope="module")
def rings() -> Iterator[list[TestRing]]:
    rs = [TestRing(0), TestRing(1)]
    yield rs
    for r in rs:
        r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_dsn: str, rings: list[TestRing]  # noqa: F811
           ) -> Iterator[WebServer]:
    with running_server(tmp_path_factory.mktemp("web"), module_dsn, [r.name for r in rings], workers=2) as srv:
        yield srv


def _is_rfc3339_us(s: str) -> bool:
    return len(s) == 27 and s.endswith("Z") and s[19] == "." and datetime.fromisoformat(s) is not None


def test_health(server: WebServer) -> None:
    r = server.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "service": "tart-backend", "version": r.json()["version"]}
    assert r.headers["content-type"].startswith("application/json")
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}  # CORS off by default


def test_health_detailed(server: WebServer, rings: list[TestRing]) -> None:
    health_file = server.data_dir / "writer.health"
    health_file.unlink(missing_ok=True)
    r = server.get("/api/health/detailed")
    # No writer report and no acceptor heartbeat: unhealthy, 503, still the full JSON shape.
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unhealthy"
    assert body["components"]["writer"]["status"] == "unhealthy"

    health_file.write_bytes(orjson.dumps({"pid": 1, "last_commit_unix": time.time(), "lag_seconds": 0.01,
                                          "pending": 0, "pg_ok": True}))
    for ring in rings:
        ring.ring.heartbeat()
    r = server.get("/api/health/detailed")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] in ("healthy", "degraded")
    c = body["components"]
    assert c["database"]["status"] == "healthy" and c["database"]["latency_ms"] >= 0
    assert c["database"]["message"] == "Connected to PostgreSQL"
    assert c["writer"]["lag_seconds"] == 0.01 and c["writer"]["pending"] == 0
    assert c["writer"]["last_commit"].endswith("Z")
    assert c["acceptors"]["alive"] == 2 and c["acceptors"]["total"] == 2
    assert 0.0 <= c["acceptors"]["max_fill"] <= 1.0
    assert isinstance(c["broadcaster"]["subscribers"], int)
    assert 0 < c["memory"]["usage_percent"] <= 100 and c["memory"]["rss_bytes"] > 0
    assert isinstance(body["uptime_seconds"], int) and body["timestamp"].endswith("Z")

    health_file.write_bytes(orjson.dumps({"pid": 1, "last_commit_unix": time.time() - 30, "lag_seconds": 30.0,
                                          "pending": 5000, "pg_ok": False}))
    r = server.get("/api/health/detailed")
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    assert r.json()["components"]["writer"]["status"] == "degraded"


def test_nodes_order_and_shape(server: WebServer, module_dsn: str) -> None:  # noqa: F811
    now = datetime.now(UTC)
    insert_node(module_dsn, node_id(0x11), connected=False, last_seen=now)
    insert_node(module_dsn, node_id(0x12), connected=True, last_seen=now - timedelta(minutes=5), events=7)
    insert_node(module_dsn, node_id(0x13), connected=True, last_seen=now - timedelta(minutes=1))
    r = server.get("/api/nodes")
    assert r.status_code == 200
    nodes = [n for n in r.json()["nodes"] if n["node_id"] in {node_id(0x11), node_id(0x12), node_id(0x13)}]
    assert [n["node_id"] for n in nodes] == [node_id(0x13), node_id(0x12), node_id(0x11)]
    for n in nodes:
        assert NODE_KEYS <= set(n)
        assert _is_rfc3339_us(n["connected_at"]) and _is_rfc3339_us(n["last_seen_at"])
    assert nodes[1]["event_count"] == 7 and nodes[1]["disconnected_at"] is None
    assert nodes[2]["is_connected"] is False and _is_rfc3339_us(nodes[2]["disconnected_at"])
    assert nodes[0]["node_info"]["params"]["core_count"] == 2


def test_node_by_id(server: WebServer, module_dsn: str) -> None:  # noqa: F811
    insert_node(module_dsn, node_id(0x2a))
    r = server.get(f"/api/nodes/{node_id(0x2a)}")
    assert r.status_code == 200 and NODE_KEYS <= set(r.json())
    assert server.get(f"/api/nodes/{node_id(0x2a).upper()}").json()["node_id"] == node_id(0x2a)
    assert "64 hexadecimal" in assert_json_error(server.get("/api/nodes/abc"), 400)["detail"]
    assert_json_error(server.get("/api/nodes/" + "g" * 64), 400)
    assert_json_error(server.get("/api/nodes/" + "a" * 65), 400)
    assert_json_error(server.get("/api/nodes/" + "ef" * 32), 404)
    assert_json_error(server.get("/api/nodes/" + "zz" * 32 + "/events"), 400)


@pytest.mark.parametrize("bad", ["0", "1001", "-1", "abc", "", "1.5", "10&limit=20"])
def test_bad_limit_is_400_json(server: WebServer, bad: str) -> None:
    body = assert_json_error(server.get(f"/api/events?limit={bad}"), 400)
    assert "limit" in body["detail"]
    assert_json_error(server.get(f"/api/nodes/{node_id(1)}/events?limit={bad}"), 400)


@pytest.mark.parametrize("query", ["event_type=256", "event_type=x", "since=yesterday", "until=nan",
                                   "before_id=0", "before_id=-5"])
def test_bad_filters_are_400_json(server: WebServer, query: str) -> None:
    assert_json_error(server.get(f"/api/events?{query}"), 400)


def test_unknown_route_and_limits(server: WebServer) -> None:
    assert_json_error(server.get("/api/nope"), 404)
    assert_json_error(server.get("/"), 404)
    import requests

    assert_json_error(requests.post(server.base + "/api/events", data=b"x", timeout=5), 405)
    assert_json_error(requests.post(server.base + "/api/events", data=b"x" * 100_000, timeout=5), 413)
    assert_json_error(server.get("/api/events?limit=1&x=" + "a" * 5000), 414)


def test_events_ring_pg_merge_paging_and_filters(server: WebServer, module_dsn: str,  # noqa: F811
                                                 rings: list[TestRing]) -> None:
    a, b = node_id(0x31), node_id(0x32)
    insert_node(module_dsn, a, name="polkajam", version="0.1.0")
    r0, r1 = rings
    for r in rings:
        r.commit_all()  # earlier tests' records count as stored
    # 120 events stored in PostgreSQL (committed), then 30 still only in the rings.
    stored = [r0.event(a, 11 if i % 3 else 10) for i in range(60)] + [r1.event(b, 12) for i in range(60)]
    r0.write(stored[:60])
    r1.write(stored[60:])
    insert_events(module_dsn, stored)
    for r in rings:
        r.commit_all()
    pending = [r0.event(a, 11) for _ in range(15)] + [r1.event(b, 13) for _ in range(14)]
    pending.append(r1.event(b, 13, malformed=True))
    r1.write([r1.node_up(b, name="jamzig", version="0.9")])
    r0.write(pending[:15])
    r1.write(pending[15:])
    all_ids = {int.from_bytes(rec[8:16], "little") for rec in stored + pending}

    # Default page: 50 newest, README shape.
    body = server.get("/api/events").json()
    assert set(body) == {"events", "has_more", "next_before_id"}
    assert len(body["events"]) == 50 and body["has_more"] is True
    for e in body["events"]:
        assert EVENT_KEYS <= set(e)
        assert _is_rfc3339_us(e["timestamp"]) and _is_rfc3339_us(e["received_at"])
    ids = [e["id"] for e in body["events"]]
    assert ids == sorted(ids, reverse=True)
    assert body["next_before_id"] == ids[-1]

    # Ring-only events are visible, with names from PG or from the ring's NODE_UP.
    ev = {e["id"]: e for e in server.get("/api/events?limit=1000").json()["events"]}
    pend_ids = [int.from_bytes(rec[8:16], "little") for rec in pending]
    assert all(i in ev for i in pend_ids)
    assert ev[pend_ids[0]]["node_name"] == "polkajam"
    assert ev[pend_ids[0]]["data"]["BestBlockChanged"]["hash"] == "0x" + "ab" * 32
    assert ev[pend_ids[20]]["node_name"] == "jamzig" and ev[pend_ids[20]]["node_version"] == "0.9"
    bad = ev[pend_ids[-1]]
    assert bad["data"] is None and bad["decode_error"] == "truncated Status event"

    # Data keys alphabetical at every level, as JSONB readers get them.
    raw = server.get("/api/events?limit=1&event_type=11").content
    data = raw[raw.index(b'"BestBlockChanged"'):]
    assert data.index(b'"hash"') < data.index(b'"slot"') < data.index(b'"timestamp"')

    # Walking the whole history with before_id returns every event exactly once, newest first.
    def walk(query: str, limit: int) -> list[int]:
        seen: list[int] = []
        before = None
        while True:
            q = f"{query}&limit={limit}" + (f"&before_id={before}" if before else "")
            page = server.get(f"/api/events?{q}").json()
            seen.extend(e["id"] for e in page["events"])
            if not page["has_more"]:
                assert page["next_before_id"] is None
                return seen
            before = page["next_before_id"]

    walked = walk("", 37)
    assert len(walked) == len(set(walked)) and walked == sorted(walked, reverse=True)
    assert all_ids <= set(walked)

    # Now the writer stores the pending events; until it commits the gate they are in both places.
    insert_events(module_dsn, pending)
    walked2 = walk("", 23)
    assert walked2 == walked
    for r in rings:
        r.commit_all()
    assert walk("", 1000) == walked

    # Filters: types (comma list and repeated), node, time.
    t11 = walk("event_type=11", 17)
    assert len(t11) == 40 + 15
    assert walk("event_type=12,13", 50) == walk("event_type=12&event_type=13", 50)
    assert len(walk("event_type=12,13", 50)) == 60 + 15
    node_b = server.get(f"/api/nodes/{b}/events?limit=1000").json()["events"]
    assert len(node_b) == 75 and {e["node_id"] for e in node_b} == {b}
    assert server.get(f"/api/nodes/{b.upper()}/events?limit=5&event_type=13").json()["events"][0]["event_type"] == 13
    # r0's event ids (JIP-3 timestamps ts = r0.ts0 + event_id * 1 ms) 0..74 live on node a, r1's on node b.
    since = fmt_unix_us(JCE_EPOCH_UNIX_US + r0.ts0 + 10_000)
    until = str((JCE_EPOCH_UNIX_US + r0.ts0) // 1_000_000 + 0.020)  # unix seconds form
    win = server.get(f"/api/nodes/{a}/events?since={since}&until={until}&limit=100").json()["events"]
    assert sorted(e["event_id"] for e in win) == list(range(10, 20))


def test_stats_from_derived_tables_shared_cache(server: WebServer, module_dsn: str) -> None:  # noqa: F811
    with connect(module_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM stats_cache")
        conn.execute("INSERT INTO node_status (node_id, best_slot, finalized_slot) VALUES (%s, 120, 118),"
                     " (%s, 121, 119)", (node_id(0x11), node_id(0x12)))
        conn.execute("INSERT INTO blocks (slot, authored_by) VALUES (120, %s), (121, %s), (122, '{}')",
                     ([node_id(0x11)], [node_id(0x12), node_id(0x13)]))
    body = server.get("/api/stats").json()
    for k in ("total_blocks_authored", "best_block", "finalized_block", "total_nodes", "connected_nodes",
              "total_events"):
        assert isinstance(body[k], int), k
    assert body["best_block"] == 121 and body["finalized_block"] == 119
    assert body["total_blocks_authored"] == 3
    with connect(module_dsn, autocommit=True) as conn:
        conn.execute("UPDATE node_status SET best_slot = 500")
        total_nodes = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
    assert body["total_nodes"] == total_nodes
    # Within 5 s every worker serves the same cached snapshot (several requests reach both workers).
    for _ in range(6):
        assert server.get("/api/stats").json()["best_block"] == 121
    with connect(module_dsn, autocommit=True) as conn:
        conn.execute("UPDATE stats_cache SET updated_at = now() - interval '1 minute'")
    assert server.get("/api/stats").json()["best_block"] == 500


def test_metrics_exposition(server: WebServer) -> None:
    server.get("/api/health")
    server.get("/api/nodes")
    text = server.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    fams = {f.name: f for f in families}
    types = {s.name: f.type for f in families for s in f.samples}
    # {counter: the reference's bare name, repeated untyped}
    for name, bare in (("telemetry_events_received", "telemetry_events_received"),
                       ("telemetry_connections_rejected", "telemetry_connections_rejected"),
                       ("telemetry_events_rate_limited", "telemetry_events_rate_limited"),
                       ("telemetry_broadcaster_messages_sent", "telemetry_broadcaster_total_broadcast"),
                       ("telemetry_events_dropped", "telemetry_events_dropped")):
        assert types[name + "_total"] == "counter", name
        assert types[bare] == "unknown", name
    assert "telemetry_broadcaster_subscribers" in fams
    assert "telemetry_database_pool_connections" in fams
    reqs = fams["tart_http_requests"]
    routes = {s.labels["route"] for s in reqs.samples}
    assert {"/api/health", "/api/nodes"} <= routes
    assert "tart_http_request_duration_seconds" in fams


def test_filtered_page_reaches_past_the_first_ring_window(server: WebServer, rings: list[TestRing]) -> None:
    # A lagging writer: 6,000 uncommitted records, the only ones of node `c` the oldest. A request
    # first reads the newest few thousand records per ring; it must read further back to find them.
    c, d = node_id(0x51), node_id(0x52)
    r0 = rings[0]
    for r in rings:
        r.commit_all()
    old_c = [r0.event(c, 11) for _ in range(3)]
    newer_d = [r0.event(d, 11) for _ in range(6000)]
    r0.write(old_c)
    for i in range(0, len(newer_d), 1000):
        r0.write(newer_d[i:i + 1000])
    body = server.get(f"/api/nodes/{c}/events?limit=10").json()
    assert [e["id"] for e in body["events"]] == sorted((_rid(x) for x in old_c), reverse=True)
    assert body["has_more"] is False
    page = server.get("/api/events?limit=5").json()["events"]
    assert [e["id"] for e in page] == sorted((_rid(x) for x in newer_d), reverse=True)[:5]
    for r in rings:
        r.commit_all()


def _rid(rec: bytes) -> int:
    return int.from_bytes(rec[8:16], "little")
