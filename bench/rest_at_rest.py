"""REST history at rest: what decoding stored payloads on read costs the API.

Starts a real tart (embedded PostgreSQL, 2 gunicorn workers), stores --fill events from
tart-loadgen, waits until every one is committed and the load has stopped, then times pages of
1000 events (the largest page) with one keep-alive client, sequentially:
/api/events?limit=1000 (the BRIN id windows), the same paged back with before_id,
/api/nodes/{id}/events?limit=1000 and ?event_type=11&limit=1000 (the two btrees). Prints p50/p99
per route, the body size, and the machine. Target (issue 9): /api/events?limit=1000 p99 <= 20 ms.

    .venv/bin/python bench/rest_at_rest.py [--fill 300000] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tartproc import TartProcess  # noqa: E402

from web import _roundtrip, cpu_model, loadgen, pct  # noqa: E402


async def timed(api: str, paths: list[str]) -> tuple[list[float], int]:
    host, port = api.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lat, size = [], 0
    for path in paths:
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        t0 = time.perf_counter()
        ok = await _roundtrip(reader, writer, req)
        lat.append(time.perf_counter() - t0)
        assert ok, path
    writer.close()
    with urllib.request.urlopen(api + paths[-1]) as r:
        size = len(r.read())
    return lat, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fill", type=int, default=300_000, help="events stored before the runs")
    ap.add_argument("--requests", type=int, default=300, help="requests per route")
    a = ap.parse_args()
    env = {"TART_RATE_LIMIT": "0", "TART_LOG": "warning", "TART_MAX_CONNECTIONS_PER_ADDRESS": "4096",
           "TART_CONN_BYTE_RATE": "0", "TART_ADDR_BYTE_RATE": "0"}
    with tempfile.TemporaryDirectory(prefix="tart-rest-bench-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        with TartProcess(Path(tmp), acceptors=2, web_workers=2, env=env, ready_timeout=180) as tart:
            rate, nodes = 20_000.0, 64
            gen = loadgen(tart.telemetry, nodes, rate / nodes, a.fill / rate)
            sent = json.loads(gen.communicate()[0])["sent_total"]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if tart.metric("telemetry_events_written_total") >= sent:
                    break
                time.sleep(0.5)
            time.sleep(12)  # the rollups flush, the BRIN summaries and the first ANALYZE catch up
            status, page = tart.get("/api/events?limit=1000")
            assert status == 200
            node = page["events"][0]["node_id"]
            cursors, cur = [], None
            for _ in range(a.requests):
                status, p = tart.get("/api/events?limit=1000" + (f"&before_id={cur}" if cur else ""))
                cur = p["next_before_id"] if p["has_more"] else None
                cursors.append(cur)
                if cur is None:
                    break
            routes = {
                "/api/events?limit=1000": ["/api/events?limit=1000"] * a.requests,
                "/api/events?limit=1000&before_id= (paging back)": [
                    f"/api/events?limit=1000&before_id={c}" for c in cursors if c],
                "/api/nodes/{id}/events?limit=1000": [f"/api/nodes/{node}/events?limit=1000"] * a.requests,
                "/api/events?event_type=11&limit=1000": ["/api/events?event_type=11&limit=1000"] * a.requests,
            }
            print(f"machine: {cpu_model()}, nproc {os.cpu_count()}; {sent:,} events stored "
                  f"({nodes} nodes); load average {os.getloadavg()[0]:.2f}; 2 web workers, at rest")
            print(f"{'route':52} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'body KiB':>8}")
            for name, paths in routes.items():
                lat, size = asyncio.run(timed(tart.api, paths))
                print(f"{name:52} {len(lat):>8} {pct(lat, 0.5) * 1e3:>7.1f} {pct(lat, 0.99) * 1e3:>7.1f} "
                      f"{size / 1024:>8.0f}")
            print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
