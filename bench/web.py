"""Web-tier benchmark: REST latency/throughput and WebSocket delivery latency on a full tart.

Starts a real tart (`tart-backend`: acceptors, writer, gunicorn web tier with 2 workers), fills it
with `tart-loadgen`, then prints:
- REST p50/p99 latency and requests/s for /api/events?limit=50, /api/nodes and
  /api/nodes/{id}/events?limit=50 (C keep-alive connections from one asyncio client process);
- WebSocket latency, node receipt -> client (client receive time minus the receipt time encoded
  in the event id, `id >> 6` = unix µs), p50/p99 over every event of the first 10 subscribers
  (the rest are only counted, to keep the client's own CPU low), for 1, 100 and 1000
  subscribers, with the events delivered to all and the events skipped for lagging subscribers.

The benchmark client, the load generator, tart and PostgreSQL share the machine; the figures are
for this whole setup, not for the web tier alone.

    .venv/bin/python bench/web.py [--database-url DSN] [--duration 5] [--rate 10000] [--quick]

Every run happens while tart-loadgen sends --rate events/s (default 10,000, the issue's load).
REST: a closed-loop run (--connections back to back: the most it serves) and an open-loop run at
--rest-rate requests/s (latency from each request's scheduled time). WebSocket: 1, 100, 1000
subscribers, All and Node filters, per-event messages and batched ("batch_ms") delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
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
PROBES = 10  # WebSocket subscribers whose every message is parsed for latency
EVENTS_PREFIX = b'{"type":"events","data":{"count":'
EVENT_PREFIX = b'{"type":"event",'
LAGGED_PREFIX = b'{"type":"lagged",'
ID_RE = re.compile(rb'\{"id":(\d+),"node_id":"')  # the start of each event data object


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

async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> bool:
    """One keep-alive GET: send, read the head and the whole body; True for a 200."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def _http_client(host: str, port: int, path: str, stop_at: float, lat: list[float]) -> int:
    """One keep-alive HTTP/1.1 connection issuing GETs back to back; a minimal client keeps the
    benchmark's own cost low."""
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    errors = 0
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        ok = await _roundtrip(reader, writer, req)
        lat.append(time.perf_counter() - t0)
        errors += not ok
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


async def rest_paced(api: str, path: str, rate: float, duration: float, conns: int = 32) -> dict:
    """Open loop: one request every 1/rate s spread over `conns` keep-alive connections; latency
    counts from the scheduled start, so a slow server shows up as queueing, not as fewer requests."""
    host, port = api.removeprefix("http://").split(":")
    lat: list[float] = []
    errors = [0]
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    t_start = time.perf_counter() + 0.05
    n_total = int(rate * duration)

    async def conn(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in range(k, n_total, conns):
            due = t_start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ok = await _roundtrip(reader, writer, req)
            lat.append(time.perf_counter() - due)
            errors[0] += not ok
        writer.close()

    await asyncio.gather(*[conn(k) for k in range(conns)])
    elapsed = time.perf_counter() - t_start
    return {"path": path, "requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": pct(lat, 0.5) * 1e3,
            "p99_ms": pct(lat, 0.99) * 1e3, "non_200": errors[0]}


# --- WebSocket -------------------------------------------------------------------------------

async def ws_bench(tart: TartProcess, subscribers: int, rate_total: float, duration: float, nodes: int,
                   node_filter: str | None, batch_ms: int) -> dict:
    """`subscribers` sockets (All, or Node(node_filter)), per-event or batched (`batch_ms` > 0)
    delivery, while `nodes` loadgen nodes send `rate_total` events/s for `duration` s."""
    url = tart.api.replace("http://", "ws://") + "/api/ws"
    lat: list[float] = []
    lagged = [0]
    received = [0]
    frames = [0]
    socks = []
    sub_msg = None
    if node_filter is not None or batch_ms:
        m: dict = {"type": "Subscribe", "filter": {"type": "Node", "node_id": node_filter} if node_filter
                   else {"type": "All"}}
        if batch_ms:
            m["batch_ms"] = batch_ms
        sub_msg = json.dumps(m)
    for i in range(subscribers):
        ws = await websockets.connect(url, max_size=None, max_queue=None)
        if sub_msg is not None:
            await ws.send(sub_msg)
        socks.append(ws)
        if i % 100 == 99:
            await asyncio.sleep(0)

    async def reader(ws, probe: bool) -> None:
        # Probes read the id of every event for latency; the others only count, so the client (one
        # Python process on the same 2 cores) spends its CPU on reading sockets, not on JSON.
        try:
            while True:
                raw = await ws.recv(decode=False)
                if probe and raw.startswith((EVENTS_PREFIX, EVENT_PREFIX)):
                    # Only the ids are needed: a regex over the bytes, not a full parse.
                    now_us = time.time_ns() // 1000
                    ids = ID_RE.findall(raw)
                    lat.extend((now_us - (int(i) >> 6)) / 1000.0 for i in ids)
                    received[0] += len(ids)
                    frames[0] += 1
                elif raw.startswith(EVENTS_PREFIX):
                    received[0] += int(raw[len(EVENTS_PREFIX):raw.index(b",", len(EVENTS_PREFIX))])
                    frames[0] += 1
                elif raw.startswith(EVENT_PREFIX):
                    received[0] += 1
                    frames[0] += 1
                elif raw.startswith(LAGGED_PREFIX):
                    lagged[0] += orjson.loads(raw)["data"]["skipped"]
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(reader(ws, i < PROBES)) for i, ws in enumerate(socks)]
    await asyncio.sleep(1.0)
    lat.clear()
    received[0] = frames[0] = 0
    gen = loadgen(tart.telemetry, nodes, rate_total / nodes, duration)
    out, _ = await asyncio.get_running_loop().run_in_executor(None, gen.communicate)
    await asyncio.sleep(2.0)  # let the tail drain
    summary = json.loads(out.decode().strip().splitlines()[-1]) if out else {"sent_total": 0, "per_node": []}
    sent = summary["sent_total"]
    if node_filter is not None:
        sent = sum(n["sent"] for n in summary["per_node"] if n["node_id"] == node_filter)
    for ws in socks:
        await ws.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"subscribers": subscribers, "events_sent": sent, "messages_received": received[0],
            "frames": frames[0], "expected": sent * subscribers, "lagged_skipped": lagged[0],
            "rate": summary.get("rate_achieved", 0.0),
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat) if lat else float("nan")}


def run_rest(tart: TartProcess, a: argparse.Namespace, node: str) -> None:
    print(f"\nREST while tart-loadgen sends {a.rate:.0f} events/s ({a.nodes} nodes); 2 gunicorn workers")
    print(f"{'path':48} {'mode':>10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    paths = ("/api/events?limit=50", "/api/nodes", f"/api/nodes/{node}/events?limit=50")
    if not a.quick:
        paths += ("/api/stats", "/api/health")
    gen = loadgen(tart.telemetry, a.nodes, a.rate / a.nodes, 3600)
    try:
        time.sleep(2.0)
        for path in paths:
            shown = path if len(path) < 48 else path[:20] + "…" + path[-27:]
            r = asyncio.run(rest_bench(tart.api, path, a.connections, a.duration))
            print(f"{shown:48} {'max':>10} {r['rps']:8.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{r['non_200']:8d}", flush=True)
            r = asyncio.run(rest_paced(tart.api, path, a.rest_rate, a.duration))
            print(f"{shown:48} {f'{a.rest_rate:.0f}/s':>10} {r['rps']:8.0f} {r['p50_ms']:8.2f} "
                  f"{r['p99_ms']:8.2f} {r['non_200']:8d}", flush=True)
    finally:
        gen.terminate()
        gen.wait()


def run_ws(tart: TartProcess, a: argparse.Namespace, node_ids: list[str]) -> None:
    print(f"\nWebSocket latency, node receipt -> client, {a.rate:.0f} events/s from {a.nodes} nodes "
          "(one client process holds every socket)")
    print(f"{'subs':>5} {'filter':>6} {'batch':>6} {'ev/s':>6} {'sent':>7} {'delivered':>10} {'expected':>10} "
          f"{'frames':>8} {'lagged':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    subs_list = [int(x) for x in a.subs.split(",")] if a.subs else [1, 100] if a.quick else [1, 100, 1000]
    filters = a.filters.split(",") if a.filters else ["All"] if a.quick else ["All", "Node"]
    batches = [b for m in a.modes.split(",") for b in ([0] if m == "event" else
                                                          [int(x) for x in a.batch_ms.split(",")])]
    for batch in batches:
        for subs in subs_list:
            for flt in filters:
                r = asyncio.run(ws_bench(tart, subs, a.rate, a.duration, a.nodes,
                                         node_ids[0] if flt == "Node" else None, batch))
                print(f"{subs:5d} {flt:>6} {batch or '-':>6} {r['rate']:6.0f} {r['events_sent']:7d} "
                      f"{r['messages_received']:10d} {r['expected']:10d} {r['frames']:8d} {r['lagged_skipped']:9d} "
                      f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or None,
                   help="PostgreSQL to use (default: tart's embedded cluster)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--rate", type=float, default=10_000.0, help="events/s tart-loadgen sends during every run")
    p.add_argument("--nodes", type=int, default=20, help="loadgen nodes")
    p.add_argument("--connections", type=int, default=8, help="REST keep-alive connections (max-rate runs)")
    p.add_argument("--rest-rate", type=float, default=500.0, help="requests/s of the paced REST runs")
    p.add_argument("--batch-ms", default="5,20", help="batch_ms values of the batched WebSocket runs")
    p.add_argument("--subs", default=None, help="WebSocket subscriber counts, e.g. 1,100,1000")
    p.add_argument("--filters", default=None, help="WebSocket filters: All,Node")
    p.add_argument("--modes", default="event,batch", help="WebSocket delivery: event,batch")
    p.add_argument("--fill-events", type=int, default=100_000, help="events loaded before the runs")
    p.add_argument("--quick", action="store_true", help="short runs, 2,000 events/s, fewer cases")
    p.add_argument("--only", choices=("rest", "ws"), default=None, help="run one half only")
    a = p.parse_args()
    if a.quick:
        a.duration, a.fill_events, a.rate = 2.0, 20_000, 2000.0

    print(f"CPU: {cpu_model()} x{os.cpu_count()}; python {platform.python_version()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="tart-bench-web-") as tmp:
        os.chmod(tmp, 0o755)
        env = {"TART_RATE_LIMIT": "0", "TART_LOG": "warning"}
        tart = TartProcess(Path(tmp), database_url=a.database_url, acceptors=1, web_workers=2, env=env,
                           ready_timeout=120)
        with tart:
            fill_rate = 10_000.0
            t0 = time.time()
            # The same node count (and loadgen seed) as the runs: the same node ids, so the Node
            # filter and /api/nodes/{id}/events name a node that is sending.
            gen = loadgen(tart.telemetry, a.nodes, fill_rate / a.nodes, a.fill_events / fill_rate)
            out, _ = gen.communicate()
            summary = json.loads(out.decode().strip().splitlines()[-1])
            time.sleep(2.0)
            print(f"filled: {summary['sent_total']} events from {a.nodes} nodes in {time.time() - t0:.1f} s")
            node_ids = [n["node_id"] for n in summary["per_node"]]

            if a.only != "ws":
                run_rest(tart, a, node_ids[0])
            if a.only != "rest":
                run_ws(tart, a, node_ids)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
