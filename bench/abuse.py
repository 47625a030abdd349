"""Attacks on the ingest and web sides of a real tart, each bounded and on loopback only, while a good node streams.

    .venv/bin/python bench/abuse.py [--duration 8] [--acceptors 1] [--web-workers 2]
        [--attacks garbage,idle,bytes,many,ws_recent,ws_many,rest_flood]

For each attack (played from its own 127.0.0.x address; nothing is ever sent elsewhere) it
prints: the good node's (127.0.0.1) events sent and stored in PostgreSQL (losses), the
receipt-to-commit p99 over the attack (the delta of the telemetry_ingest_latency_seconds
histogram: every stored event, sampled by the writer), what tart counted (refusals, bans,
closes, throttles), and for the garbage attack how long the acceptor took to answer another
connection (a probe whose first frame has an oversize length prefix: the close is the answer).
During every attack a probe from 127.0.0.1 asks GET /api/health/detailed every 0.25 s (latency
p50/max), and the resident memory of the gunicorn workers (sum of VmRSS from /proc) is sampled:
the growth printed is the largest sum seen during the attack minus the sum just before it.
Web attacks: two WebSocket clients (127.0.0.6) that each send 63 GetRecentEvents and never read;
200 WebSocket clients from 127.0.0.7 that subscribe and never read; 8 connections (127.0.0.8)
flooding GET /api/events?limit=1000. The WebSocket clients are raw sockets (handshake, masked
frames) with a 4 KiB receive buffer, so nothing ever reads for them.
Goals: the good node loses nothing, p99 <= 100 ms, the acceptor answers within 100 ms,
/api/health/detailed <= 200 ms, the web tier grows < 64 MiB.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import json
import os
import platform
import random
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tartproc import TartProcess  # noqa: E402

from tart.engine.codec import encode_event, encode_node_info  # noqa: E402
from tart.engine.loadgen import make_node_info  # noqa: E402

U32 = struct.Struct("<I")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
GOOD_RATE = 500  # events/s from the good node
MAX_CONNECTIONS_PER_ATTACK = 1024
MAX_BYTES_PER_ATTACK = 1 << 30
MAX_REQUESTS_PER_ATTACK = 200_000
HEALTH_GOAL_S = 0.2
WEB_GROWTH_GOAL = 64 << 20


def frame(content: bytes) -> bytes:
    return U32.pack(len(content)) + content


def node_info(seed: int) -> tuple[bytes, bytes]:
    info = make_node_info(random.Random(seed), 2, seed)
    return frame(encode_node_info(info)), info.peer_id


def on_loopback(src: str, target: tuple[str, int]) -> None:
    # Refuse to be pointed anywhere but loopback: this script opens floods.
    assert ipaddress.ip_address(src) in LOOPBACK and ipaddress.ip_address(target[0]) in LOOPBACK


def connect(src: str, target: tuple[str, int], timeout: float = 5.0, rcvbuf: int | None = None) -> socket.socket:
    on_loopback(src, target)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    s.bind((src, 0))
    s.connect(target)
    return s


def closed(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, OSError):
        return False


# --- /metrics ------------------------------------------------------------------------------------

def scrape(tart: TartProcess) -> dict:
    import urllib.request

    text = urllib.request.urlopen(tart.api + "/metrics", timeout=10).read().decode()
    out: dict = {"buckets": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "telemetry_ingest_latency_seconds_bucket":
                out["buckets"][float(s.labels["le"])] = out["buckets"].get(float(s.labels["le"]), 0) + s.value
            elif s.name.startswith(("tart_connections_refused_total", "tart_address_bans_total",
                                    "telemetry_connections_closed_total", "tart_connection_throttles_total",
                                    "telemetry_frame_errors_total", "tart_ws_closed_total",
                                    "tart_ws_requests_refused_total", "telemetry_broadcaster_lagged_total",
                                    "tart_http_database_timeouts_total", "tart_http_pages_truncated_total",
                                    "tart_process_restarts_total", "tart_process_hung_total")):
                key = s.name.replace("_total", "") + "".join(f"{{{v}}}" for v in s.labels.values())
                out[key] = out.get(key, 0) + s.value
            elif s.name == "tart_http_requests_total" and s.labels.get("route") == "/api/events":
                key = f"http /api/events {s.labels.get('status')}"
                out[key] = out.get(key, 0) + s.value
    return out


def p99(before: dict, after: dict) -> float | None:
    """The upper bound of the bucket holding the 99th percentile of the observations in between."""
    les = sorted(after["buckets"])
    counts = [after["buckets"][le] - before["buckets"].get(le, 0) for le in les]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    for le, c in zip(les, counts, strict=True):
        if c >= 0.99 * total:
            return le
    return les[-1]


def counted(before: dict, after: dict) -> dict:
    return {k: int(after[k] - before.get(k, 0)) for k in after if k != "buckets" and after[k] - before.get(k, 0)}


# --- the good node -------------------------------------------------------------------------------

class GoodNode(threading.Thread):
    def __init__(self, target: tuple[str, int], seed: int, duration: float) -> None:
        super().__init__(daemon=True)
        self.target, self.duration = target, duration
        self.info, self.peer = node_info(seed)
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with connect("127.0.0.1", self.target) as s:
                s.sendall(self.info)
                t0 = time.monotonic()
                while (now := time.monotonic()) - t0 < self.duration:
                    due = int((now - t0) * GOOD_RATE)
                    batch = b"".join(frame(encode_event(11, {"timestamp": i, "slot": i, "hash": "0x" + "ab" * 32}, 2))
                                     for i in range(self.sent, due))
                    if batch:
                        s.sendall(batch)
                        self.sent = due
                    time.sleep(0.01)
                time.sleep(0.3)
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"


def stored(dsn: str, peer: bytes, want: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn) as conn:
        while True:
            n = conn.execute("SELECT count(*) FROM events WHERE node_id = %s", (peer.hex(),)).fetchone()[0]
            if n >= want or time.monotonic() > deadline:
                return n
            time.sleep(0.2)


# --- attacks (each bounded in connections, bytes and time) --------------------------------------

def attack_garbage(target, duration: float, report: dict) -> None:
    """Garbage node information: the issue's frame (256 KiB of zeros after version 1) and garbage
    that fits the limit, over and over from 127.0.2.x, 8 frames per address (below the ban, so the
    acceptor keeps parsing garbage); meanwhile a probe from other addresses."""
    stop = time.monotonic() + duration
    sent = 0
    probes: list[float] = []

    def probe() -> None:
        i = 0
        while time.monotonic() < stop and i < 250:
            src = f"127.0.1.{1 + i % 250}"
            i += 1
            try:
                with connect(src, target) as s:
                    t0 = time.perf_counter()
                    s.sendall(U32.pack(0xFFFFFFFF))
                    if closed(s, 5.0):
                        probes.append(time.perf_counter() - t0)
            except OSError:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    big = U32.pack(1 + 256 * 1024) + b"\x01" + bytes(256 * 1024)
    small = frame(b"\x01" + bytes(1100))
    while time.monotonic() < stop and sent < MAX_CONNECTIONS_PER_ATTACK * 4:
        for payload in (big, small):
            try:
                with connect(f"127.0.2.{1 + (sent // 8) % 250}", target, timeout=2) as s:
                    s.sendall(payload)
                    closed(s, 2)
            except OSError:
                pass
            sent += 1
    t.join()
    report["garbage frames sent"] = sent
    if probes:
        probes.sort()
        report["probe answered ms (p50/max)"] = (f"{statistics.median(probes) * 1000:.1f}/"
                                                 f"{probes[-1] * 1000:.1f} over {len(probes)}")
        report["probe_max_s"] = probes[-1]


def attack_idle(target, duration: float, report: dict) -> None:
    """Connections that never send a byte, as many as 1024, from 127.0.0.3."""
    socks = []
    for _ in range(MAX_CONNECTIONS_PER_ATTACK):
        try:
            socks.append(connect("127.0.0.3", target, timeout=2))
        except OSError:
            break
    time.sleep(1.0)
    report["idle connections opened"] = len(socks)
    report["idle still open after 1 s"] = sum(not closed(s, 0.01) for s in socks)
    # A newcomer from the good node's host still gets a place.
    info, _ = node_info(991)
    with connect("127.0.0.1", target) as s:
        s.sendall(info)
        report["newcomer from 127.0.0.1 admitted"] = not closed(s, 1.0)
    time.sleep(max(0.0, duration - 2.0))
    report["idle still open at the end"] = sum(not closed(s, 0.01) for s in socks)
    for s in socks:
        s.close()


def attack_bytes(target, duration: float, report: dict) -> None:
    """Four handshaken connections from 127.0.0.4 blasting 60 kB malformed events as fast as they can."""
    junk = frame(b"\x00" * 8 + b"\xfa" + bytes(60_000))
    socks = []
    for i in range(4):
        s = connect("127.0.0.4", target)
        s.sendall(node_info(700 + i)[0])
        s.setblocking(False)
        socks.append(s)
    stop = time.monotonic() + duration
    sent = 0
    alive = set(range(len(socks)))
    while time.monotonic() < stop and alive and sent < MAX_BYTES_PER_ATTACK:
        for i in list(alive):
            try:
                sent += socks[i].send(junk)
            except BlockingIOError:
                pass
            except OSError:
                alive.discard(i)
        time.sleep(0.001)
    report["flood bytes sent"] = sent
    report["flood connections cut"] = len(socks) - len(alive)
    for s in socks:
        s.close()


def attack_many(target, duration: float, report: dict) -> None:
    """Up to 1024 well-formed nodes from 127.0.0.5, each sending a few events."""
    socks = []
    for i in range(MAX_CONNECTIONS_PER_ATTACK):
        try:
            s = connect("127.0.0.5", target, timeout=2)
            s.sendall(node_info(2000 + i)[0] + frame(encode_event(11, {"timestamp": 1, "slot": 1,
                                                                     "hash": "0x" + "cd" * 32}, 2)))
            socks.append(s)
        except OSError:
            break
    time.sleep(1.0)
    report["nodes attempted"] = len(socks)
    report["nodes admitted"] = sum(not closed(s, 0.01) for s in socks)
    time.sleep(max(0.0, duration - 1.0))
    for s in socks:
        s.close()


# --- the web side: raw WebSocket clients that never read, a REST flood, the probes -------------

def ws_open(src: str, api: tuple[str, int]) -> socket.socket:
    """A WebSocket handshake on a raw socket with a 4 KiB receive buffer; after the 101 nothing
    ever reads from it again."""
    s = connect(src, api, timeout=5, rcvbuf=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /api/ws HTTP/1.1\r\nHost: {api[0]}:{api[1]}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:
        chunk = s.recv(1)  # byte by byte: not one byte past the handshake is read
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return s


def ws_frame(text: str) -> bytes:
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(ln.split(":", 1) for ln in lines if ":" in ln)


def worker_rss(supervisor: int) -> dict[int, int]:
    """{pid: VmRSS bytes} of this tart's gunicorn workers: the children of the gunicorn master that
    `supervisor` (tart's pid) started; another tart on the machine (someone's tests) is not counted."""
    gunicorn: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if b"gunicorn" not in (d / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        ppid = _status(int(d.name)).get("PPid", "0").strip()
        gunicorn[int(d.name)] = int(ppid or 0)
    masters = {pid for pid, ppid in gunicorn.items() if ppid == supervisor}
    out = {}
    for pid, ppid in gunicorn.items():
        if ppid in masters:
            rss = _status(pid).get("VmRSS", "").split()
            if rss:
                out[pid] = int(rss[0]) * 1024
    return out


class WebProbe(threading.Thread):
    """GET /api/health/detailed from 127.0.0.1 every 0.25 s (a new connection each time), and the
    gunicorn workers' RSS sum sampled alongside."""

    def __init__(self, api: tuple[str, int], supervisor: int) -> None:
        super().__init__(daemon=True)
        self.api, self.supervisor = api, supervisor
        self.mine = set(worker_rss(supervisor))
        self.stop_ev = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.rss0 = sum(v for p, v in worker_rss(supervisor).items() if p in self.mine)
        self.rss_max = self.rss0

    def run(self) -> None:
        on_loopback("127.0.0.1", self.api)
        while not self.stop_ev.is_set():
            t0 = time.perf_counter()
            try:
                c = http.client.HTTPConnection(*self.api, timeout=10, source_address=("127.0.0.1", 0))
                c.request("GET", "/api/health/detailed")
                r = c.getresponse()
                r.read()
                c.close()
                self.latencies.append(time.perf_counter() - t0)
                if r.status != 200:
                    self.failures.append(str(r.status))
            except OSError as e:
                self.failures.append(type(e).__name__)
            rss = worker_rss(self.supervisor)
            self.rss_max = max(self.rss_max, sum(v for p, v in rss.items() if p in self.mine))
            self.stop_ev.wait(0.25)

    def report(self, report: dict) -> None:
        lat = sorted(self.latencies)
        if lat:
            report["health/detailed ms (p50/max)"] = (f"{statistics.median(lat) * 1000:.1f}/{lat[-1] * 1000:.1f} over "
                                                      f"{len(lat)} probes  [goal <= {HEALTH_GOAL_S * 1000:.0f} ms]")
            report["health_max_s"] = lat[-1]
        if self.failures:
            report["health probes failed"] = ", ".join(sorted(set(self.failures)))
            report["health_failed_s"] = len(self.failures)
        growth = self.rss_max - self.rss0
        now = set(worker_rss(self.supervisor))
        if now != self.mine:
            report["web workers replaced during the attack"] = f"{sorted(self.mine)} -> {sorted(now)}"
        report["web workers RSS growth MiB"] = (f"{growth / 2**20:+.1f} (sum over {len(self.mine)} workers, "
                                                f"{self.rss0 / 2**20:.0f} MiB before)  [goal < 64 MiB]")
        report["rss_growth_s"] = growth


def attack_ws_recent(api, duration: float, report: dict) -> None:
    """Two WebSocket clients (127.0.0.6) each send 63 GetRecentEvents and never read."""
    socks = []
    for _ in range(2):
        s = ws_open("127.0.0.6", api)
        ask = ws_frame(json.dumps({"type": "GetRecentEvents", "limit": 10000}))
        s.settimeout(5)
        sent = 0
        try:
            for _ in range(63):
                s.sendall(ask)
                sent += 1
        except OSError:
            pass
        report.setdefault("GetRecentEvents sent", []).append(sent)
        socks.append(s)
    time.sleep(duration)
    for s in socks:
        s.close()


def attack_ws_many(api, duration: float, report: dict) -> None:
    """200 WebSocket clients from 127.0.0.7 subscribe to everything and never read."""
    sub = ws_frame(json.dumps({"type": "Subscribe", "filter": {"type": "All"}}))
    socks, failed = [], 0
    for _ in range(200):
        try:
            s = ws_open("127.0.0.7", api)
            s.sendall(sub)
            socks.append(s)
        except OSError:
            failed += 1
    report["WebSocket handshakes completed"] = f"{len(socks)} of 200 ({failed} failed)"
    time.sleep(duration)
    for s in socks:
        s.close()


def attack_rest_flood(api, duration: float, report: dict) -> None:
    """8 keep-alive connections from 127.0.0.8 flooding GET /api/events?limit=1000."""
    stop = time.monotonic() + duration
    counts = {"requests": 0, "bytes": 0}
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def flood() -> None:
        on_loopback("127.0.0.8", api)
        c = None
        while time.monotonic() < stop and counts["requests"] < MAX_REQUESTS_PER_ATTACK:
            try:
                if c is None:
                    c = http.client.HTTPConnection(*api, timeout=30, source_address=("127.0.0.8", 0))
                c.request("GET", "/api/events?limit=1000")
                r = c.getresponse()
                n = len(r.read())
                with lock:
                    counts["requests"] += 1
                    counts["bytes"] += n
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            except (OSError, http.client.HTTPException):
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.05)
        if c is not None:
            c.close()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report["REST requests answered"] = (f"{counts['requests']} ({counts['requests'] / duration:.0f}/s, "
                                        f"{counts['bytes'] / 2**20:.0f} MiB), statuses {dict(sorted(statuses.items()))}")


WEB_ATTACKS = {"ws_recent", "ws_many", "rest_flood"}
ATTACKS = {"garbage": attack_garbage, "idle": attack_idle, "bytes": attack_bytes, "many": attack_many,
           "ws_recent": attack_ws_recent, "ws_many": attack_ws_many, "rest_flood": attack_rest_flood}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per attack")
    ap.add_argument("--acceptors", type=int, default=1)
    ap.add_argument("--web-workers", type=int, default=2, help="gunicorn workers (tart's default: 2)")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated: " + ",".join(ATTACKS))
    ap.add_argument("--database-url", default="", help="default: tart's own embedded cluster")
    ap.add_argument("--keep", action="store_true", help="keep tart's data directory (default: removed at the end)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="tart-abuse-", dir="/tmp"))
    root.chmod(0o755)  # the embedded server runs as another user and must get in
    env = {"TART_LOG": "warning", "TART_BAN_SECONDS": "600"}
    tart = TartProcess(root, database_url=args.database_url or None, acceptors=args.acceptors, env=env,
                       web_workers=args.web_workers, ready_timeout=180)
    failed = []
    with tart:
        from tart.engine.config import load
        from tart.engine.db import resolve_database

        dsn = args.database_url or resolve_database(load(dict(tart.env)))[0]
        api = ("127.0.0.1", tart.api_port)
        for k, name in enumerate(args.attacks.split(",")):
            good = GoodNode(tart.telemetry, 100 + k, args.duration + 1.0)
            before = scrape(tart)
            load0 = os.getloadavg()[0]
            good.start()
            time.sleep(0.5)
            report: dict = {}
            probe = WebProbe(api, tart.proc.pid)
            probe.start()
            ATTACKS[name](api if name in WEB_ATTACKS else tart.telemetry, args.duration, report)
            probe.stop_ev.set()
            probe.join()
            probe.report(report)
            good.join(args.duration + 30)
            n = stored(dsn, good.peer, good.sent)
            time.sleep(1.5)  # one more metrics push from every process
            after = scrape(tart)
            q = p99(before, after)
            lost = good.sent - n
            print(f"\n== {name}: {ATTACKS[name].__doc__.splitlines()[0]}")
            print(f"   good node: sent {good.sent}, stored {n}, lost {lost}"
                  f"{', error ' + good.error if good.error else ''}")
            print(f"   ingest p99 (receipt to commit, all events; histogram bucket bound): "
                  f"{'-' if q is None else f'<= {q * 1000:.0f} ms'}  [goal <= 100 ms]")
            for key, value in report.items():
                if not key.endswith("_s"):
                    print(f"   {key}: {value}")
            print(f"   counted: {counted(before, after)}")
            print(f"   load average (1 min): {load0:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
            ok = (lost == 0 and (q is None or q <= 0.1) and report.get("probe_max_s", 0) <= 0.1
                  and report.get("health_max_s", 0) <= HEALTH_GOAL_S and not report.get("health_failed_s")
                  and report.get("rss_growth_s", 0) < WEB_GROWTH_GOAL)
            if not ok:
                failed.append(name)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ngoals met: {'all' if not failed else 'not for ' + ', '.join(failed)}")


if __name__ == "__main__":
    main()
