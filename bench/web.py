"""Web-tier benchmark: REST latency/throughput and WebSocket delivery latency on a full tart.

Starts a real tart (`tart-backend`: acceptors, writer, gunicorn web tier with 2 workers), fills it
with `tart-loadgen`, then prints:
- REST p50/p99 latency and requests/s for /api/events?limit=50, /api/nodes and
  /api/nodes/{id}/events?limit=50 (C keep-alive connections from one asyncio client process);
- WebSocket latency, node receipt -> client (client receive time minus the receipt time encoded
  in the event id, `id >> 6` = unix µs), p50/p99, for 1, 100 and 1000 subscribers, with the
  events delivered and the events skipped for lagging subscribers.

The benchmark client, the load generator, tart and PostgreSQL share the machine; the figures are
for this whole setup, not for the web tier alone.

    .venv/bin/python bench/web.py [--database-url DSN] [--duration 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import orjson  # noqa: E402
import websockets  # noqa: E402
from tartproc import TartProcess  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def loadgen(target: tuple[str, int], nodes: int, rate: float, duration: float) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "tart-loadgen"), "--target", f"{target[0]}:{target[1]}", "--nodes", str(nodes),
         "--rate", str(rate), "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


# --- REST ------------------------------------------------------------------------------------

async def _http_client(host: str, port: int, path: str, stop_at: float, lat: list[float]) -> int:
    """One keep-alive HTTP/1.1 connection issuing GETs back to back; a minimal client keeps the
    benchmark's own cost low."""
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    errors = 0
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        lat.append(time.perf_counter() - t0)
        if not head.startswith(b"HTTP/1.1 200"):
            errors += 1
    writer.close()
    return errors


async def rest_bench(api: str, path: str, conns: int, duration: float) -> dict:
    host, port = api.removeprefix("http://").split(":")
    lat: list[float] = []
    stop_at = time.perf_counter() + duration
    t0 = time.perf_counter()
    errs = await asyncio.gather(*[_http_client(host, int(port), path, stop_at, lat) for _ in range(conns)])
    elapsed = time.perf_counter() - t0
    return {"path": path, "requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": pct(lat, 0.5) * 1e3,
            "p99_ms": pct(lat, 0.99) * 1e3, "non_200": sum(errs)}


# --- WebSocket -------------------------------------------------------------------------------

async def ws_bench(tart: TartProcess, subscribers: int, rate_total: float, duration: float) -> dict:
    url = tart.api.replace("http://", "ws://") + "/api/ws"
    lat: list[float] = []
    server_lat: list[float] = []
    lagged = [0]
    received = [0]
    socks = []
    for i in range(subscribers):
        socks.append(await websockets.connect(url, max_size=None, max_queue=None))
        if i % 100 == 99:
            await asyncio.sleep(0)

    async def reader(ws) -> None:
        try:
            async for raw in ws:
                now_us = time.time_ns() // 1000
                m = orjson.loads(raw)
                t = m["type"]
                if t == "event":
                    lat.append((now_us - (m["data"]["id"] >> 6)) / 1000.0)
                    server_lat.append(m["data"]["latency_ms"])
                    received[0] += 1
                elif t == "lagged":
                    lagged[0] += m["data"]["skipped"]
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(reader(ws)) for ws in socks]
    await asyncio.sleep(1.0)
    lat.clear()
    server_lat.clear()
    received[0] = 0
    nodes = 10
    gen = loadgen(tart.telemetry, nodes, rate_total / nodes, duration)
    out, _ = await asyncio.get_running_loop().run_in_executor(None, gen.communicate)
    await asyncio.sleep(2.0)  # let the tail drain
    sent = json.loads(out.decode().strip().splitlines()[-1])["sent_total"] if out else 0
    for ws in socks:
        await ws.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"subscribers": subscribers, "events_sent": sent, "messages_received": received[0],
            "expected": sent * subscribers, "lagged_skipped": lagged[0],
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat) if lat else float("nan"),
            "server_p50_ms": pct(server_lat, 0.5), "server_p99_ms": pct(server_lat, 0.99)}


def run_rest(tart: TartProcess, a: argparse.Namespace, node: str) -> None:
    print(f"\nREST ({a.connections} keep-alive connections, {a.duration:.0f} s each, 2 gunicorn workers)")
    print(f"{'path':48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    for path in ("/api/events?limit=50", "/api/nodes", f"/api/nodes/{node}/events?limit=50",
                 "/api/stats", "/api/health"):
        r = asyncio.run(rest_bench(tart.api, path, a.connections, a.duration))
        shown = path if len(path) < 48 else path[:20] + "…" + path[-27:]
        print(f"{shown:48} {r['rps']:8.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['non_200']:8d}")


def run_ws(tart: TartProcess, a: argparse.Namespace) -> None:
    print("\nWebSocket latency, node receipt -> client (one client process holds every socket)")
    print(f"{'subs':>5} {'ev/s':>6} {'sent':>7} {'delivered':>10} {'expected':>9} {'lagged':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'srv p50':>8} {'srv p99':>8}")
    for subs, rate in ((1, 2000.0), (100, 200.0), (1000, 20.0)):
        r = asyncio.run(ws_bench(tart, subs, rate, a.duration))
        print(f"{subs:5d} {rate:6.0f} {r['events_sent']:7d} {r['messages_received']:10d} {r['expected']:9d} "
              f"{r['lagged_skipped']:7d} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f} "
              f"{r['server_p50_ms']:8.2f} {r['server_p99_ms']:8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or None,
                   help="PostgreSQL to use (default: tart's embedded cluster)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--connections", type=int, default=8, help="REST keep-alive connections")
    p.add_argument("--fill-events", type=int, default=100_000, help="events loaded before the REST runs")
    p.add_argument("--quick", action="store_true", help="short runs, fewer events")
    p.add_argument("--only", choices=("rest", "ws"), default=None, help="run one half only")
    a = p.parse_args()
    if a.quick:
        a.duration, a.fill_events = 2.0, 20_000

    print(f"CPU: {cpu_model()} x{os.cpu_count()}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="tart-bench-web-") as tmp:
        os.chmod(tmp, 0o755)
        env = {"TART_RATE_LIMIT": "0", "TART_LOG": "warning"}
        tart = TartProcess(Path(tmp), database_url=a.database_url, acceptors=1, web_workers=2, env=env,
                           ready_timeout=120)
        with tart:
            fill_nodes, fill_rate = 20, 5000.0
            t0 = time.time()
            gen = loadgen(tart.telemetry, fill_nodes, fill_rate / fill_nodes, a.fill_events / fill_rate)
            out, _ = gen.communicate()
            summary = json.loads(out.decode().strip().splitlines()[-1])
            time.sleep(2.0)
            print(f"filled: {summary['sent_total']} events from {fill_nodes} nodes in {time.time() - t0:.1f} s")
            node = summary["per_node"][0]["node_id"]

            if a.only != "ws":
                run_rest(tart, a, node)
            if a.only != "rest":
                run_ws(tart, a)


if __name__ == "__main__":
    main()
