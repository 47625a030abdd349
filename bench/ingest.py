"""Ingest benchmark: TCP -> decode -> ring -> COPY -> PostgreSQL, measured at PostgreSQL.

Starts a real tart (embedded PostgreSQL with tart's durable default settings, rate limit off),
measures the RSS that 1024 idle nodes add, then drives `tart-loadgen` with 1, 64 and 1024
connections at rising rates. Per run it prints: events/s that reached PostgreSQL (rows counted,
and the committed-rows rate while the load lasted), events lost (sent - stored), receipt-to-commit
latency p50/p99 of that run (from tart's histogram), CPU of tart and of PostgreSQL, the load
average. After each pass over the plan it measures, against the same PostgreSQL, a bare binary
COPY of the same rows into an identical table (same partitioning and indexes, 10k rows per COPY,
one durable commit each): the ceiling; every run's rate is also given as a ratio to it.
With --repeat N the plan runs N times on the same tart and the summary shows medians.

    .venv/bin/python bench/ingest.py [--quick] [--duration 10] [--repeat 2] [--set TART_BATCH_MAX=20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tartproc import TartProcess  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.25
CEILING_BATCH = 10_000
CEILING_ROWS = 200_000
COPY_COLUMNS = "id, node_id, event_id, event_type, timestamp, data, created_at, raw, decode_error"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def proc_stats(pids: list[int]) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) summed over pids."""
    rss, cpu = 0, 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return rss, cpu


def tart_pids(tart: TartProcess) -> list[int]:
    """The supervisor and everything it forked or exec'd (PostgreSQL is not among them: pg_ctl
    daemonizes the postmaster)."""
    assert tart.proc is not None
    return [p for p in descendants(tart.proc.pid) if not _comm(p).startswith("postgres")]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pg_pids_of(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as c:
        pgdata = c.execute("SELECT current_setting('data_directory')").fetchone()[0]
    try:
        master = int((Path(pgdata) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return descendants(master)


def scrape(api: str) -> tuple[float, list[tuple[float, float]]]:
    """(telemetry_events_written_total, latency histogram buckets [(le, cumulative count)])."""
    text = urllib.request.urlopen(api + "/metrics", timeout=10).read().decode()
    written, buckets = 0.0, {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "telemetry_events_written":
            written = sum(s.value for s in fam.samples if s.name == "telemetry_events_written_total")
        elif fam.name == "telemetry_ingest_latency_seconds":
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
    return written, sorted(buckets.items())


def quantiles(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> dict[str, float]:
    """p50/p99 of the observations between two scrapes (linear within a bucket)."""
    prior = dict(before)
    buckets = [(le, c - prior.get(le, 0.0)) for le, c in after]
    if not buckets or buckets[-1][1] <= 0:
        return {}
    total = buckets[-1][1]

    def q(p: float) -> float:
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= p * total:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * (p * total - prev_c) / max(c - prev_c, 1e-9)
            prev_le, prev_c = le, c
        return prev_le

    return {"p50_ms": q(0.5) * 1000, "p99_ms": q(0.99) * 1000}


def max_id(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


def rows_after(dsn: str, id_floor: int) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM events WHERE id > %s", (id_floor,)).fetchone()[0]


class Sampler(threading.Thread):
    """telemetry_events_written_total every SAMPLE_S seconds, with the time of each sample."""

    def __init__(self, api: str) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.samples: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.monotonic()
            try:
                self.samples.append((t, scrape(self.api)[0]))
            except OSError:
                pass
            self.halt.wait(max(0.0, SAMPLE_S - (time.monotonic() - t)))

    def commit_rate(self) -> float:
        """Committed events/s from the first sample that saw new rows to the first that saw the
        final count: the rate PostgreSQL received while the load lasted (drain included)."""
        s = self.samples
        if len(s) < 3 or s[-1][1] <= s[0][1]:
            return 0.0
        start = next(i for i in range(len(s)) if s[i][1] > s[0][1]) - 1
        end = next(i for i in range(len(s)) if s[i][1] >= s[-1][1])
        return (s[end][1] - s[start][1]) / max(s[end][0] - s[start][0], 1e-9)


def run_load(tart: TartProcess, dsn: str, nodes: int, rate: float, duration: float) -> dict:
    floor = max_id(dsn)
    pg_pids = pg_pids_of(dsn)
    _, cpu0 = proc_stats(tart_pids(tart))
    _, pgcpu0 = proc_stats(pg_pids)
    written0, hist0 = scrape(tart.api)
    load0 = os.getloadavg()[0]
    sampler = Sampler(tart.api)
    sampler.start()
    t0 = time.monotonic()
    # The report (~1 MB with 1024 nodes) goes to a file: through a pipe it once arrived cut short.
    with tempfile.TemporaryFile("w+") as report_f:
        out = subprocess.run(
            [str(VENV_BIN / "tart-loadgen"), "--target", "%s:%d" % tart.telemetry, "--nodes", str(nodes),
             "--rate", str(rate), "--duration", str(duration)],
            stdout=report_f, stderr=subprocess.PIPE, text=True, timeout=duration + 180,
        )
        if out.returncode != 0:
            sampler.halt.set()
            raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
        report_f.seek(0)
        report = json.load(report_f)
    sent = report["sent_total"]
    rss_loaded, _ = proc_stats(tart_pids(tart))
    # Drained: the writer has committed as many events as were sent (or stopped progressing).
    deadline, last, since = time.monotonic() + 60, -1.0, time.monotonic()
    while time.monotonic() < deadline:
        written = scrape(tart.api)[0]
        if written - written0 >= sent:
            break
        if written != last:
            last, since = written, time.monotonic()
        elif time.monotonic() - since > 5:
            break
        time.sleep(SAMPLE_S)
    time.sleep(2 * SAMPLE_S)
    sampler.halt.set()
    sampler.join()
    elapsed = time.monotonic() - t0
    _, cpu1 = proc_stats(tart_pids(tart))
    _, pgcpu1 = proc_stats(pg_pids)
    _, hist1 = scrape(tart.api)
    # Count at PostgreSQL once the row count has held still for 2 s: the metric-based wait above
    # can end on a stale scrape, and a loss figure must never come from counting too early.
    stored, still_since = rows_after(dsn, floor), time.monotonic()
    while time.monotonic() - still_since < 2 and time.monotonic() < deadline + 60:
        time.sleep(0.25)
        now_rows = rows_after(dsn, floor)
        if now_rows != stored:
            stored, still_since = now_rows, time.monotonic()
    return {
        "nodes": nodes,
        "rate_per_node": rate,
        "offered_eps": round(sent / report["duration_s"]),
        "stored_eps": round(sampler.commit_rate()),
        "sent": sent,
        "stored": stored,
        "lost": sent - stored,
        "closed_early": sum(1 for n in report["per_node"] if n["closed_early"]),
        "tart_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed),
        "pg_cpu_pct": round(100 * (pgcpu1 - pgcpu0) / elapsed),
        "rss_mb": round(rss_loaded / 2**20, 1),
        "load1": round((load0 + os.getloadavg()[0]) / 2, 2),
        **{k: round(v, 1) for k, v in quantiles(hist0, hist1).items()},
    }


def idle_memory(tart: TartProcess, nodes: int, hold: float = 10.0) -> dict:
    """RSS that `nodes` connected, silent nodes add to tart's processes (all of them, summed)."""
    base, _ = proc_stats(tart_pids(tart))
    proc = subprocess.Popen(
        [str(VENV_BIN / "tart-loadgen"), "--target", "%s:%d" % tart.telemetry, "--nodes", str(nodes),
         "--rate", "0.01", "--duration", str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Wait until every node is connected (the acceptors count them), then let things settle.
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(tart.api + "/metrics", timeout=10).read().decode()
        if _gauge(text, "telemetry_active_connections") >= nodes:
            break
        time.sleep(0.25)
    connected = _gauge(text, "telemetry_active_connections")
    time.sleep(1.0)
    loaded, _ = proc_stats(tart_pids(tart))
    proc.communicate(timeout=hold + 60)
    return {"idle_nodes": nodes, "connected": int(connected), "rss_base_mb": round(base / 2**20, 1),
            "rss_with_nodes_mb": round(loaded / 2**20, 1),
            "kb_per_node": round((loaded - base) / 1024 / max(connected, 1), 1)}


def _gauge(text: str, name: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def copy_ceiling(dsn: str) -> float:
    """Bare binary COPY of rows tart stored (their exact bytes, taken with COPY TO) into an
    identical table: partitioned by created_at, the same three indexes; CEILING_BATCH rows per
    COPY, each its own (durable) transaction, CEILING_ROWS in all."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS bench_ceiling")
        c.execute("CREATE TABLE bench_ceiling (LIKE events) PARTITION BY RANGE (created_at)")
        c.execute("CREATE TABLE bench_ceiling_all PARTITION OF bench_ceiling FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
        c.execute("CREATE INDEX ON bench_ceiling (id)")
        c.execute("CREATE INDEX ON bench_ceiling (node_id, id)")
        c.execute("CREATE INDEX ON bench_ceiling (event_type, id)")
        data = bytearray()
        with c.cursor().copy(f"COPY (SELECT {COPY_COLUMNS} FROM events ORDER BY id DESC LIMIT {CEILING_BATCH})"
                             " TO STDOUT (FORMAT BINARY)") as cp:
            for chunk in cp:
                data += chunk
        blob = bytes(data)
        n_rows = c.execute(f"SELECT count(*) FROM (SELECT 1 FROM events ORDER BY id DESC LIMIT {CEILING_BATCH}) t"
                           ).fetchone()[0]
        if not n_rows:
            return 0.0
        done = 0
        t0 = time.perf_counter()
        while done < CEILING_ROWS:
            with c.cursor().copy(f"COPY bench_ceiling ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.write(blob)
            done += n_rows
        rate = done / (time.perf_counter() - t0)
        c.execute("DROP TABLE bench_ceiling")
        return rate


def _embedded_dsn(tart: TartProcess) -> str:
    """The DSN of the embedded cluster tart's supervisor started. resolve_database on the same
    data dir adopts the running server (it only starts one when none runs). The EmbeddedCluster it
    returns is dropped without stop(), and it has no finalizer: tart's supervisor owns the server
    and stops it at shutdown."""
    from tart.engine.config import load
    from tart.engine.db import resolve_database

    dsn, _cluster = resolve_database(load(dict(tart.env)))
    return dsn


def median_rows(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["nodes"], r["rate_per_node"]), []).append(r)
    out = []
    for runs in groups.values():
        row = dict(runs[0])
        for k, v in runs[0].items():
            if isinstance(v, (int, float)) and k not in ("nodes", "rate_per_node"):
                vals = [r[k] for r in runs if k in r]
                row[k] = round(statistics.median(vals), 2)
        row["lost"] = max(r["lost"] for r in runs)  # loss: the worst run, not the median
        row["n"] = len(runs)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    ap.add_argument("--repeat", type=int, default=2, help="passes over the plan (medians are reported)")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    ap.add_argument("--plan", default="", help="NODES:RATE,... (rate = events/s per node)")
    ap.add_argument("--acceptors", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra tart environment")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-connection memory measurement")
    args = ap.parse_args()
    plan = [(1, 5000), (1, 20000), (64, 160), (64, 1000), (1024, 10), (1024, 50), (1024, 100)]
    if args.quick:
        plan = [(1, 5000), (64, 500), (1024, 50)]
        args.duration = min(args.duration, 6.0)
    if args.plan:
        plan = [(int(n), float(r)) for n, r in (p.split(":") for p in args.plan.split(","))]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, Python {platform.python_version()}, {platform.platform()}")
    print(f"command: {' '.join(sys.argv)}", flush=True)
    # Under /tmp with mode 0755: the embedded server runs as the postgres user and must get in.
    root = Path(tempfile.mkdtemp(prefix="tart-bench-", dir="/tmp"))
    root.chmod(0o755)
    env = {"TART_RATE_LIMIT": "0", "TART_RING_BYTES": str(64 * 2**20), "TART_LOG": "warning",
           "TART_ACCEPTORS": str(args.acceptors), "TART_WEB_WORKERS": "1", "TART_MAX_CONNECTIONS": "4096"}
    env.update(kv.split("=", 1) for kv in args.set)
    results: list[dict] = []
    mems: list[dict] = []
    ceilings: list[float] = []
    try:
        with TartProcess(root, env=env, ready_timeout=180) as tart:
            dsn = _embedded_dsn(tart)
            with psycopg.connect(dsn) as c:
                settings = dict(c.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync',"
                    " 'commit_delay', 'wal_buffers', 'max_wal_size', 'shared_buffers', 'wal_compression')"))
            print("postgresql:", " ".join(f"{k}={v}" for k, v in sorted(settings.items())))
            print("tart env:", " ".join(f"{k}={v}" for k, v in sorted(env.items())), flush=True)
            for rep in range(args.repeat):
                if not args.no_idle:
                    mem = idle_memory(tart, 1024)
                    mems.append(mem)
                    print(json.dumps({"pass": rep, **mem}), flush=True)
                for nodes, rate in plan:
                    r = run_load(tart, dsn, nodes, rate, args.duration)
                    results.append(r)
                    print(json.dumps({"pass": rep, **r}), flush=True)
                ceiling = copy_ceiling(dsn)
                ceilings.append(ceiling)
                print(json.dumps({"pass": rep, "copy_ceiling_rows_s": round(ceiling),
                                  "load1": round(os.getloadavg()[0], 2)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ceiling = statistics.median(ceilings) if ceilings else 0.0
    print()
    print(f"medians of {args.repeat} pass(es); events/s counted at PostgreSQL; lost = worst run")
    print(f"{'nodes':>6} {'rate/node':>9} {'offered/s':>10} {'stored/s':>9} {'/ceiling':>8} {'lost':>5} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'tart cpu%':>9} {'pg cpu%':>8} {'rss MB':>7} {'load1':>6}")
    for r in median_rows(results):
        ratio = f"{r['stored_eps'] / ceiling:.2f}" if ceiling else "-"
        print(f"{r['nodes']:>6} {r['rate_per_node']:>9g} {r['offered_eps']:>10.0f} {r['stored_eps']:>9.0f} {ratio:>8} "
              f"{r['lost']:>5} {r.get('p50_ms', '-'):>7} {r.get('p99_ms', '-'):>7} {r['tart_cpu_pct']:>9.0f} "
              f"{r['pg_cpu_pct']:>8.0f} {r['rss_mb']:>7} {r['load1']:>6}")
    if mems:
        # The worst pass: later passes start with heaps that earlier load already grew.
        kb = max(m["kb_per_node"] for m in mems)
        print(f"idle 1024 nodes: +{kb} KiB RSS per node (worst pass; per pass: "
              + ", ".join(f"{m['rss_base_mb']} -> {m['rss_with_nodes_mb']} MB, {m['connected']} connected"
                          for m in mems) + ")")
    print(f"bare COPY ceiling (same rows, same table shape, {CEILING_BATCH} rows per durable COPY): "
          f"{ceiling:,.0f} rows/s (per pass: {', '.join(f'{c:,.0f}' for c in ceilings)})")


if __name__ == "__main__":
    main()
