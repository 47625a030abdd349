"""Ingest benchmark: TCP -> decode -> ring -> COPY -> PostgreSQL, measured at PostgreSQL.

Starts a real tart (embedded PostgreSQL with tart's durable default settings, rate limit off),
measures the RSS that 1024 idle nodes add, then drives `tart-loadgen` with 1, 64 and 1024
connections at rising rates. Per run it prints: events/s that reached PostgreSQL (rows counted,
and the committed-rows rate while the load lasted), events lost (sent - stored), receipt-to-commit
latency p50/p99 of that run (from tart's histogram), CPU of tart and of PostgreSQL, the load
average.

After the runs, against the same PostgreSQL:
- database growth per stored event: pg_total_relation_size of every event_rows partition (heap,
  TOAST, maps, indexes) over the events stored, with the heap and each index apart;
- the new-row ceiling, after each pass: a bare binary COPY of 10k rows tart stored in the middle
  of the pass's last run (their exact bytes, taken with COPY TO) into a table shaped like
  event_rows (same partitioning, the schema's indexes), 10k rows per durable COPY, 200k rows,
  median of 3 rounds; every run's rate is also given as a ratio to it;
- the old-format ceiling: the same events in the v3 format (taken from the `events` view, which
  gives exactly the old columns) into a v3-shaped table, the same way: the baseline.
Each repeated copy of the sample gets its ids shifted past the sample's, so the indexes see new
keys (repeated keys would shrink the btrees by deduplication and flatter both ceilings).
With --repeat N the plan runs N times on the same tart and the summary shows medians. --quick
runs 1024x10 and 64x160 (10k events/s, the latency targets) and 1024x100 (overload) for 12 s
each, once: about 1.4M events, enough for the growth figure (>= 300k).

    .venv/bin/python bench/ingest.py [--quick] [--duration 10] [--repeat 2] [--writers 2]
                                     [--set TART_BATCH_MAX=20000]
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
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg  # noqa: E402
import rowformat  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tartproc import TartProcess  # noqa: E402

from tart.engine import copyfmt  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.25
CEILING_BATCH = 10_000
CEILING_ROWS = 200_000
CEILING_ROUNDS = 3
ROW_OVERHEAD = copyfmt.ROW_HEAD.size + len(copyfmt.ROW_TAIL)  # a decoded event's COPY tuple minus its payload
GROWTH_MIN_EVENTS = 300_000
NEW_COLUMNS = ", ".join(copyfmt.COLUMNS)
OLD_COLUMNS = ", ".join(rowformat.OLD_COLUMNS)


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


def max_id(dsn: str, floor: int = 0) -> int:
    """The newest stored id, at least ``floor``. There is no btree on id: with a recent floor the
    BRIN index on id reads only the newest block ranges instead of every row."""
    with psycopg.connect(dsn) as c:
        return max_id_conn(c, floor)


def max_id_conn(c: psycopg.Connection, floor: int) -> int:
    return c.execute("SELECT coalesce(max(id), %s) FROM event_rows WHERE id > %s", (floor, floor)).fetchone()[0]


def rows_after(dsn: str, id_floor: int) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM event_rows WHERE id > %s", (id_floor,)).fetchone()[0]


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


def run_load(tart: TartProcess, dsn: str, nodes: int, rate: float, duration: float, floor: int) -> dict:
    """One loadgen run; ``floor`` is an id at or below the newest stored before it."""
    floor = max_id(dsn, floor)
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
        "floor": floor,
        "nodes": nodes,
        "rate_per_node": rate,
        "offered_eps": round(sent / report["duration_s"]),
        "stored_eps": round(sampler.commit_rate()),
        "sent": sent,
        "stored": stored,
        "lost": sent - stored,
        "closed_early": sum(1 for n in report["per_node"] if n["closed_early"]),
        # Loss has two causes with different owners: tart closed a node, or loadgen gave up
        # flushing bytes it had counted as sent.
        "unflushed_bytes": report.get("unflushed_bytes", 0),
        "errors": dict(Counter(e["error"][:80] for e in report.get("errors", [])).most_common(3)),
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


def ceiling_sample(c: psycopg.Connection, floor: int) -> int:
    """An id half-way (in arrival time) through the rows stored above ``floor``: the sample
    starts there, in the steady state of the last run rather than in the tail of its drain, when
    only the nodes with a backlog still have events."""
    top = max_id_conn(c, floor)
    return floor + (top - floor) // 2 if top > floor else 0


def _copy_out(c: psycopg.Connection, query: str) -> bytes:
    data = bytearray()
    with c.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as cp:
        for chunk in cp:
            data += chunk
    return bytes(data)


def copy_ceilings(dsn: str, lo_id: int, rounds: int = CEILING_ROUNDS) -> dict:
    """Bare binary COPY of the CEILING_BATCH stored rows from ``lo_id`` on, CEILING_BATCH rows per
    COPY, each its own (durable) transaction, CEILING_ROWS in all: as compact rows into a table
    shaped like event_rows, and as v3 rows into a v3-shaped table. Rates (median of ``rounds``,
    the two formats taking turns so that a burst of load elsewhere hits both) and bytes per row."""
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        where = f"WHERE id >= {int(lo_id)} ORDER BY id LIMIT {CEILING_BATCH}"
        # Both samples are built before any timing: the view renders `data` in SQL (~3 µs/row).
        new_blob = _copy_out(c, f"SELECT {NEW_COLUMNS} FROM event_rows {where}")
        old_blob = _copy_out(c, f"SELECT {OLD_COLUMNS} FROM events {where}")
        new_t, old_t = rowformat.split_copy(new_blob), rowformat.split_copy(old_blob)
        if not new_t or len(new_t) != len(old_t):
            return {}
        formats = (
            ("new", rowformat.NEW_TABLE_SQL, rowformat.index_specs(c), copyfmt.COLUMNS, new_t),
            ("old", rowformat.OLD_TABLE_SQL, list(rowformat.OLD_INDEXES), rowformat.OLD_COLUMNS, old_t),
        )
        blobs = {f[0]: rowformat.repeated_blobs(f[4], CEILING_ROWS) for f in formats}
        runs: dict[str, list[rowformat.Load]] = {"new": [], "old": []}
        for _ in range(rounds):
            for tag, table_sql, indexes, columns, tuples in formats:
                rows = len(tuples) * len(blobs[tag])
                runs[tag].append(rowformat.measure(c, f"bench_ceiling_{tag}", table_sql, indexes, columns,
                                                   blobs[tag], rows))
        for tag, tuples in (("new", new_t), ("old", old_t)):
            rows = len(tuples) * len(blobs[tag])
            r = runs[tag][-1]
            out[tag] = {"rows_s": round(statistics.median(x.rows_s for x in runs[tag])),
                        "rounds": [round(x.rows_s) for x in runs[tag]],
                        "bytes_per_row": round(r.total / rows, 1), "heap_per_row": round(r.heap / rows, 1),
                        "index_per_row": {k: round(v / rows, 1) for k, v in r.indexes.items()},
                        "load1": [x.load1 for x in runs[tag]]}
        out["sample"] = {"first_id": lo_id, "rows": len(new_t),
                         "payload_avg": round(sum(len(t) for t in new_t) / len(new_t) - ROW_OVERHEAD, 1)}
    return out


def growth(dsn: str) -> dict:
    """Bytes of every event_rows partition (pg_total_relation_size) and of the rollups, and the
    events stored."""
    with psycopg.connect(dsn) as c:
        total, heap, idx = rowformat.relation_bytes(c, "event_rows")
        events = c.execute("SELECT count(*) FROM event_rows").fetchone()[0]
        parts = c.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'event_rows'::regclass").fetchone()[0]
        r30 = rowformat.relation_bytes(c, "event_counts_30s")[0]
        hourly = c.execute("SELECT pg_total_relation_size('event_counts_hourly')").fetchone()[0]
    return {"events": events, "partitions": parts, "total": total, "heap": heap, "indexes": idx,
            "rollup_30s": r30, "rollup_hourly": hourly}


def settle(below: float = 2.0, max_wait: float = 120.0) -> float:
    """Wait (up to ``max_wait`` s) for the 1-minute load average to fall below ``below``: a
    ceiling measured right after a run would share the machine with that run's load average,
    which on 2 cores mostly means its own tail. Returns the load average at the end."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(2)
    return round(os.getloadavg()[0], 2)


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
    ap.add_argument("--writers", default="", help="TART_WRITERS (default: tart's own, auto)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra tart environment")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-connection memory measurement")
    ap.add_argument("--keep-log", default="", metavar="PATH", help="copy tart's log here at the end")
    args = ap.parse_args()
    plan = [(1, 5000), (1, 20000), (64, 160), (64, 1000), (1024, 10), (1024, 50), (1024, 100)]
    if args.quick:
        # The latency targets (10k events/s from 1024 and from 64 connections) and the overload
        # run, long enough together for the growth figure's 300k events.
        plan = [(1024, 10), (64, 160), (1024, 100)]
        args.duration = 12.0 if args.duration == ap.get_default("duration") else args.duration
        args.repeat = 1 if args.repeat == ap.get_default("repeat") else args.repeat
    if args.plan:
        plan = [(int(n), float(r)) for n, r in (p.split(":") for p in args.plan.split(","))]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, Python {platform.python_version()}, {platform.platform()}")
    print(f"command: {' '.join(sys.argv)}", flush=True)
    # Under /tmp with mode 0755: the embedded server runs as the postgres user and must get in.
    root = Path(tempfile.mkdtemp(prefix="tart-bench-", dir="/tmp"))
    root.chmod(0o755)
    env = {"TART_RATE_LIMIT": "0", "TART_RING_BYTES": str(64 * 2**20), "TART_LOG": "warning",
           "TART_ACCEPTORS": str(args.acceptors), "TART_WEB_WORKERS": "1", "TART_MAX_CONNECTIONS": "4096",
           # every load-generator node comes from 127.0.0.1: lift the per-address limits that
           # would (rightly) treat it as one hostile host
           "TART_MAX_CONNECTIONS_PER_ADDRESS": "4096", "TART_CONN_BYTE_RATE": "0", "TART_ADDR_BYTE_RATE": "0"}
    if args.writers:
        env["TART_WRITERS"] = args.writers
    env.update(kv.split("=", 1) for kv in args.set)
    results: list[dict] = []
    mems: list[dict] = []
    ceilings: list[dict] = []
    grown: dict = {}
    try:
        with TartProcess(root, env=env, ready_timeout=180) as tart:
            dsn = _embedded_dsn(tart)
            with psycopg.connect(dsn) as c:
                settings = dict(c.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync',"
                    " 'commit_delay', 'wal_buffers', 'max_wal_size', 'shared_buffers', 'wal_compression')"))
                version = c.execute("SHOW server_version").fetchone()[0]
            print(f"postgresql {version}:", " ".join(f"{k}={v}" for k, v in sorted(settings.items())))
            print("tart env:", " ".join(f"{k}={v}" for k, v in sorted(env.items())), flush=True)
            floor = max_id(dsn)
            for rep in range(args.repeat):
                if not args.no_idle:
                    mem = idle_memory(tart, 1024)
                    mems.append(mem)
                    print(json.dumps({"pass": rep, **mem}), flush=True)
                last_floor = floor
                for nodes, rate in plan:
                    r = run_load(tart, dsn, nodes, rate, args.duration, floor)
                    results.append(r)
                    last_floor, floor = r["floor"], r["floor"]
                    print(json.dumps({"pass": rep, **r}), flush=True)
                if rep == args.repeat - 1:
                    grown = growth(dsn)  # before the ceilings' checkpoints and drops touch anything
                    print(json.dumps({"pass": rep, "growth": grown}), flush=True)
                with psycopg.connect(dsn) as c:
                    lo = ceiling_sample(c, last_floor)
                settle()
                ceiling = copy_ceilings(dsn, lo)
                ceilings.append(ceiling)
                print(json.dumps({"pass": rep, "ceilings": ceiling}), flush=True)
    finally:
        if args.keep_log:
            shutil.copy(root / "tart.log", args.keep_log)
        shutil.rmtree(root, ignore_errors=True)
    report(args, results, mems, ceilings, grown)


def _median(vals: list[float]) -> float:
    return statistics.median(vals) if vals else 0.0


def report(args: argparse.Namespace, results: list[dict], mems: list[dict], ceilings: list[dict],
           grown: dict) -> None:
    new_c = _median([c["new"]["rows_s"] for c in ceilings if c])
    old_c = _median([c["old"]["rows_s"] for c in ceilings if c])
    print()
    print(f"medians of {args.repeat} pass(es); events/s counted at PostgreSQL; lost = worst run; "
          f"/ceiling = stored/s over the new-row ceiling")
    print(f"{'nodes':>6} {'rate/node':>9} {'offered/s':>10} {'stored/s':>9} {'/ceiling':>8} {'lost':>5} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'tart cpu%':>9} {'pg cpu%':>8} {'rss MB':>7} {'load1':>6}")
    rows = median_rows(results)
    for r in rows:
        ratio = f"{r['stored_eps'] / new_c:.2f}" if new_c else "-"
        print(f"{r['nodes']:>6} {r['rate_per_node']:>9g} {r['offered_eps']:>10.0f} {r['stored_eps']:>9.0f} {ratio:>8} "
              f"{r['lost']:>5} {r.get('p50_ms', '-'):>7} {r.get('p99_ms', '-'):>7} {r['tart_cpu_pct']:>9.0f} "
              f"{r['pg_cpu_pct']:>8.0f} {r['rss_mb']:>7} {r['load1']:>6}")
    for r in results:
        if r["lost"] or r["closed_early"] or r.get("unflushed_bytes"):
            print(f"  {r['nodes']}x{r['rate_per_node']:g}: lost {r['lost']} of {r['sent']:,} sent; "
                  f"{r['closed_early']} nodes closed early, {r.get('unflushed_bytes', 0):,} bytes loadgen could not "
                  f"flush; errors {r.get('errors') or '-'}")
    kb = 0.0
    if mems:
        # The worst pass: later passes start with heaps that earlier load already grew.
        kb = max(m["kb_per_node"] for m in mems)
        print(f"idle 1024 nodes: +{kb} KiB RSS per node (worst pass; per pass: "
              + ", ".join(f"{m['rss_base_mb']} -> {m['rss_with_nodes_mb']} MB, {m['connected']} connected"
                          for m in mems) + ")")
    per_ev = 0.0
    if grown and grown["events"]:
        n = grown["events"]
        per_ev = grown["total"] / n
        idx = ", ".join(f"{k} {v / n:.1f}" for k, v in grown["indexes"].items())
        print(f"database growth: {grown['total'] / 2**20:.1f} MiB in {grown['partitions']} event_rows partitions for "
              f"{n:,} events stored = {per_ev:.1f} B/event (heap {grown['heap'] / n:.1f}; indexes: {idx}); "
              f"rollups beside them: 30 s {grown['rollup_30s'] / n:.1f} B/event, hourly "
              f"{grown['rollup_hourly'] / n:.1f} B/event")
        if n < GROWTH_MIN_EVENTS:
            print(f"  (fewer than {GROWTH_MIN_EVENTS:,} events: run longer for the growth figure)")
    samples = [c["sample"] for c in ceilings if c]
    if samples:
        print(f"ceiling sample (last pass): {samples[-1]['rows']} rows from the middle of the last run, "
              f"average payload {samples[-1]['payload_avg']} B")
    for tag, title in (("new", "new-row ceiling (compact rows tart stored, event_rows' shape and indexes)"),
                       ("old", "old-format ceiling (the same events as v3 rows, v3 table and indexes)")):
        per = [c[tag] for c in ceilings if c]
        if not per:
            continue
        last = per[-1]
        idx = ", ".join(f"{k} {v}" for k, v in last["index_per_row"].items())
        print(f"{title}: {_median([p['rows_s'] for p in per]):,.0f} rows/s, {last['bytes_per_row']} B/row "
              f"(heap {last['heap_per_row']}; {idx}); {CEILING_BATCH} rows per durable COPY, {CEILING_ROWS} rows; "
              f"median of {CEILING_ROUNDS} rounds; per pass: "
              + ", ".join(f"{p['rounds']} rows/s at load {p['load1']}" for p in per))
    print()
    print("targets (this run):")
    if per_ev:
        print(f"  growth per stored event: {per_ev:.1f} B (target <= 220 B): {'met' if per_ev <= 220 else 'NOT met'}")
    over = [r for r in rows if r["nodes"] >= 1024]
    if over and new_c:
        o = max(over, key=lambda r: r["offered_eps"])
        ratio = o["stored_eps"] / new_c
        print(f"  {o['nodes']}x{o['rate_per_node']:g} stored/s over the new-row ceiling: {o['stored_eps']:,.0f} / "
              f"{new_c:,.0f} = {ratio:.2f} (target >= 0.6): {'met' if ratio >= 0.6 else 'NOT met'}")
    if new_c and old_c:
        ratio = new_c / old_c
        print(f"  new-row ceiling over the old-format ceiling: {new_c:,.0f} / {old_c:,.0f} = {ratio:.2f}x "
              f"(target >= 2x): {'met' if ratio >= 2 else 'NOT met'}")
    for r in rows:
        if 9000 <= r["nodes"] * r["rate_per_node"] <= 11000 and "p99_ms" in r:
            ok = r["p99_ms"] <= 100 and r["lost"] == 0
            print(f"  receipt-to-commit p99 at {r['nodes']}x{r['rate_per_node']:g}: {r['p99_ms']} ms, lost {r['lost']} "
                  f"(target <= 100 ms): {'met' if ok else 'NOT met'}")
    if mems:
        print(f"  memory per connected node: {kb / 1024:.3f} MB (target < 0.5 MB): {'met' if kb < 512 else 'NOT met'}")
    print(rowformat.machine_line())

if __name__ == "__main__":
    main()
