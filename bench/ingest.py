"""Ingest benchmark: TCP -> decode -> ring -> COPY -> PostgreSQL, measured at PostgreSQL.

Starts a real tart (embedded PostgreSQL, rate limit off), drives `tart-loadgen` with 1, 64 and 1024
connections at rising rates, and prints per run: events/s that reached PostgreSQL (rows counted,
not sent), receipt-to-commit latency p50/p99 (from tart's histogram), RSS of all tart processes
per connection, CPU of tart and of PostgreSQL; then, against the same PostgreSQL, the rate of a bare
COPY of the same rows into an identical table (the ceiling) and the ratio.

    .venv/bin/python bench/ingest.py [--quick] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tartproc import TartProcess  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def split_pids(tart: TartProcess) -> tuple[list[int], list[int]]:
    """(tart processes, postgres processes) under the supervisor."""
    assert tart.proc is not None
    tart_pids, pg_pids = [], []
    for pid in descendants(tart.proc.pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        (pg_pids if comm.startswith("postgres") else tart_pids).append(pid)
    return tart_pids, pg_pids


def pg_pids_of(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as c:
        pm = c.execute("SELECT pg_postmaster_start_time(), current_setting('data_directory')").fetchone()
    pidfile = Path(pm[1]) / "postmaster.pid"
    try:
        master = int(pidfile.read_text().split()[0])
    except OSError:
        return []
    return descendants(master)


def row_count(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM events").fetchone()[0]


def latency_quantiles(api: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(api + "/metrics", timeout=10).read().decode()
    buckets: list[tuple[float, float]] = []
    for fam in text_string_to_metric_families(text):
        if fam.name == "telemetry_ingest_latency_seconds":
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return {}
    total = buckets[-1][1]

    def q(p: float) -> float:
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= p * total:
                if le == float("inf"):
                    return prev_le
                frac = (p * total - prev_c) / max(c - prev_c, 1e-9)
                return prev_le + (le - prev_le) * frac
            prev_le, prev_c = le, c
        return prev_le

    return {"p50_ms": q(0.5) * 1000, "p99_ms": q(0.99) * 1000}


def wait_drained(dsn: str, expected_min: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while time.monotonic() < deadline:
        n = row_count(dsn)
        if n >= expected_min or (n == last and (stable := stable + 1) >= 6):
            return n
        if n != last:
            stable = 0
        last = n
        time.sleep(0.5)
    return row_count(dsn)


def run_load(tart: TartProcess, dsn: str, nodes: int, rate: float, duration: float) -> dict:
    before = row_count(dsn)
    tart_pids, _ = split_pids(tart)
    pg_pids = pg_pids_of(dsn)
    _, cpu0 = proc_stats(tart_pids)
    _, pgcpu0 = proc_stats(pg_pids)
    t0 = time.monotonic()
    out = subprocess.run(
        [str(VENV_BIN / "tart-loadgen"), "--target", "%s:%d" % tart.telemetry, "--nodes", str(nodes),
         "--rate", str(rate), "--duration", str(duration)],
        capture_output=True, text=True, timeout=duration + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    sent = report["sent_total"]
    rss_loaded, _ = proc_stats(split_pids(tart)[0])
    stored = wait_drained(dsn, before + sent) - before
    elapsed = time.monotonic() - t0
    _, cpu1 = proc_stats(split_pids(tart)[0])
    _, pgcpu1 = proc_stats(pg_pids)
    return {
        "nodes": nodes,
        "rate_per_node": rate,
        "offered_eps": round(sent / duration),
        "stored_eps": round(stored / elapsed),
        "sent": sent,
        "stored": stored,
        "lost": sent - stored,
        "tart_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed),
        "pg_cpu_pct": round(100 * (pgcpu1 - pgcpu0) / elapsed),
        "rss_mb": round(rss_loaded / 2**20, 1),
        **{k: round(v, 1) for k, v in latency_quantiles(tart.api).items()},
    }


def idle_memory(tart: TartProcess, nodes: int, hold: float = 8.0) -> dict:
    """RSS growth of tart's own processes with `nodes` idle connected nodes."""
    base, _ = proc_stats(split_pids(tart)[0])
    proc = subprocess.Popen(
        [str(VENV_BIN / "tart-loadgen"), "--target", "%s:%d" % tart.telemetry, "--nodes", str(nodes),
         "--rate", "0.01", "--duration", str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(hold * 0.75)
    loaded, _ = proc_stats(split_pids(tart)[0])
    proc.communicate(timeout=hold + 60)
    return {"idle_nodes": nodes, "rss_base_mb": round(base / 2**20, 1), "rss_with_nodes_mb": round(loaded / 2**20, 1),
            "kb_per_node": round((loaded - base) / 1024 / nodes, 1)}


def copy_ceiling(dsn: str, rows: int = 200_000) -> float:
    """Bare binary COPY of rows shaped like tart's into an identical table: the ceiling."""
    with psycopg.connect(dsn) as c:
        c.execute("DROP TABLE IF EXISTS bench_events_copy")
        c.execute("CREATE TABLE bench_events_copy (LIKE events INCLUDING DEFAULTS)")
        c.execute("CREATE INDEX ON bench_events_copy (id)")
        c.execute("CREATE INDEX ON bench_events_copy (node_id, id)")
        c.execute("CREATE INDEX ON bench_events_copy (event_type, id)")
        sample = c.execute(
            "SELECT id, node_id, event_id, event_type, timestamp, data, created_at, raw, decode_error "
            "FROM events ORDER BY id DESC LIMIT 10000"
        ).fetchall()
        c.commit()
        if not sample:
            return 0.0
        batch = 10_000
        t0 = time.perf_counter()
        done = 0
        while done < rows:
            with c.cursor().copy(
                "COPY bench_events_copy (id, node_id, event_id, event_type, timestamp, data, created_at, raw,"
                " decode_error) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["int8", "text", "int8", "int2", "timestamptz", "jsonb", "timestamptz", "bytea", "text"])
                for i in range(batch):
                    r = sample[i % len(sample)]
                    cp.write_row((done + i, *r[1:]))
            c.commit()
            done += batch
        rate = done / (time.perf_counter() - t0)
        c.execute("DROP TABLE bench_events_copy")
        c.commit()
        return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = ap.parse_args()
    plan = [(1, 5000), (1, 20000), (64, 300), (64, 1000), (1024, 30), (1024, 60), (1024, 100)]
    if args.quick:
        plan = [(1, 5000), (64, 500), (1024, 50)]
        args.duration = min(args.duration, 6.0)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, Python {platform.python_version()}, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="tart-bench-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        env = {"TART_RATE_LIMIT": "0", "TART_RING_BYTES": str(64 * 2**20), "TART_LOG": "warning",
               "TART_ACCEPTORS": "2", "TART_WEB_WORKERS": "1"}
        with TartProcess(tmp_path, env=env, ready_timeout=120) as tart:
            tart.env["TART_RING_BYTES"] = env["TART_RING_BYTES"]
            dsn = _embedded_dsn(tart)
            results = []
            for nodes, rate in plan:
                r = run_load(tart, dsn, nodes, rate, args.duration)
                results.append(r)
                print(json.dumps(r), flush=True)
            mem = idle_memory(tart, 1024)
            print(json.dumps(mem), flush=True)
            ceiling = copy_ceiling(dsn)
        best = max(r["stored_eps"] for r in results)
        print()
        print(f"{'nodes':>6} {'rate/node':>9} {'offered/s':>10} {'stored/s':>9} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'tart cpu%':>9} {'pg cpu%':>8} {'rss MB':>7}")
        for r in results:
            print(f"{r['nodes']:>6} {r['rate_per_node']:>9} {r['offered_eps']:>10} {r['stored_eps']:>9} {r['lost']:>5} "
                  f"{r.get('p50_ms', '-'):>7} {r.get('p99_ms', '-'):>7} {r['tart_cpu_pct']:>9} {r['pg_cpu_pct']:>8} "
                  f"{r['rss_mb']:>7}")
        print(f"idle 1024 nodes: +{mem['kb_per_node']} KiB RSS per node "
              f"({mem['rss_base_mb']} -> {mem['rss_with_nodes_mb']} MB)")
        print(f"bare COPY ceiling (same rows, same indexes, same PostgreSQL): {ceiling:,.0f} rows/s; "
              f"best tart sustained {best:,} events/s = {best / ceiling:.2f} of the ceiling" if ceiling else "no ceiling")


def _embedded_dsn(tart: TartProcess) -> str:
    """The DSN tart's supervisor resolved for its embedded cluster (socket dir under the data dir)."""
    from tart.engine.config import load
    from tart.engine.db import resolve_database

    settings = load({**tart.env})
    dsn, cluster = resolve_database(settings)  # the running cluster is reused, not restarted
    return dsn


if __name__ == "__main__":
    main()
