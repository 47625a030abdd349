"""The web tier without its database: health says so, data endpoints give 503 JSON, the live
WebSocket path (rings only) keeps working."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import websockets
from psycopg.conninfo import make_conninfo
from test_web_support import TestRing, assert_json_error, node_id, running_server


def test_database_unreachable(tmp_path: Path, pg_server: str) -> None:
    missing = make_conninfo(pg_server, dbname="tart_web_no_such_db")
    ring = TestRing(0)
    try:
        with running_server(tmp_path, missing, [ring.name], workers=1) as srv:
            assert srv.get("/api/health").status_code == 200
            r = srv.get("/api/health/detailed")
            assert r.status_code == 503
            assert r.json()["components"]["database"]["status"] == "unhealthy"
            body = assert_json_error(srv.get("/api/nodes"), 503)
            assert body["error"] == "database_unavailable"
            # No internal text in 5xx bodies (database name, socket path, role): it is in the log.
            for resp in (srv.get("/api/nodes"), srv.get("/api/health/detailed"), srv.get("/api/events")):
                assert resp.status_code == 503
                for secret in ("tart_web_no_such_db", "/tmp", ".s.PGSQL", "role", "FATAL"):
                    assert secret not in resp.text, (secret, resp.text)

            async def live() -> dict:
                async with websockets.connect(srv.ws_url) as ws:
                    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connected"
                    rec = ring.event(node_id(0x77), 11)
                    ring.write([rec])
                    while True:
                        m = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                        if m["type"] == "event":
                            return m

            assert asyncio.run(live())["data"]["node_id"] == node_id(0x77)
    finally:
        ring.close()
