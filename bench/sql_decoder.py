"""Benchmark: cost per event of decoding stored payloads to JSONB inside PostgreSQL (tart_event_data).

Rows are the payloads of tart.engine.loadgen's default (realistic) mix, in a temporary table.
Each figure is the best of several runs of a full scan, minus a baseline scan of the same rows
that reads the payload without decoding it (`length(payload)`), so what remains is the decoder.
Parallel query is off: the figure is per core.

Run: .venv/bin/python bench/sql_decoder.py [--dsn DSN] [--rows 200000] [--cores 341]
Without --dsn a private cluster is started under /tmp (the decoders go into a temporary database).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from pathlib import Path

import psycopg
from rowformat import bench_database

from tart.engine.codec import EVENT_NAMES
from tart.engine.codec.sqlgen import decoder_sql
from tart.engine.loadgen import build_template


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def mix_frames(cores: int, seed: int = 1) -> list[bytes]:
    """One loadgen cycle (1024 events of the default mix), as frames without length prefixes."""
    t = build_template(random.Random(seed), "default", cores)
    return [bytes(t.blob[t.starts[i] + 4:t.starts[i + 1]]) for i in range(len(t))]


def best_of(conn: psycopg.Connection, sql: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.execute(sql).fetchall()
        best = min(best, time.perf_counter() - t0)
    return best


def per_event_us(conn: psycopg.Connection, table: str, rows: int, runs: int) -> tuple[float, float]:
    """(decoder µs/event, baseline µs/event) over every row of `table`."""
    base = best_of(conn, f"SELECT sum(length(payload)) FROM {table}", runs)
    dec = best_of(conn, f"SELECT sum(length(payload)), count(tart_event_data(event_type, ts, payload))"
                        f" FROM {table}", runs)
    return (dec - base) / rows * 1e6, base / rows * 1e6


def run(conn: psycopg.Connection, args: argparse.Namespace) -> None:
    conn.execute("SET max_parallel_workers_per_gather = 0")
    conn.execute(decoder_sql())
    frames = mix_frames(args.cores)
    reps = max(1, args.rows // len(frames))
    conn.execute("CREATE TEMP TABLE bench_events (event_type integer, ts numeric, payload bytea)")
    with conn.cursor().copy("COPY bench_events FROM STDIN") as cp:
        for r in range(reps):
            for f in frames:
                cp.write_row((f[8], int.from_bytes(f[:8], "little") + r, f[9:]))
    conn.execute("ANALYZE bench_events")
    n = reps * len(frames)
    bad = conn.execute("SELECT count(*) FROM bench_events WHERE tart_event_data(event_type, ts, payload) IS NULL"
                       ).fetchone()[0]
    assert bad == 0, f"{bad} rows did not decode"

    load = os.getloadavg()
    version = conn.execute("SHOW server_version").fetchone()[0]
    print(f"machine: {cpu_model()}, nproc {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"PostgreSQL {version}; jit {conn.execute('SHOW jit').fetchone()[0]}; parallel query off")
    counts = Counter(f[8] for f in frames)
    avg = sum(len(f) - 9 for f in frames) / len(frames)
    print(f"rows: {n} (loadgen default mix, C = {args.cores}, average payload {avg:.0f} bytes, "
          f"{len(counts)} event types)")

    dec, base = per_event_us(conn, "bench_events", n, args.runs)
    print(f"mix: tart_event_data {dec:.2f} µs/event (baseline scan {base:.2f} µs/row, "
          f"{1e6 / dec:,.0f} events/s per core)")
    field = best_of(conn, "SELECT count(tart_event_data(event_type, ts, payload)->>'timestamp') FROM bench_events",
                    args.runs)
    print(f"mix: SELECT data->>'timestamp' whole query {field / n * 1e6:.2f} µs/row")

    if args.per_type:
        print(f"{'event':<36}{'n':>5}{'bytes':>7}{'µs/event':>10}")
        one = max(2000, args.rows // 20)
        conn.execute("CREATE TEMP TABLE bench_one (event_type integer, ts numeric, payload bytea)")
        samples = {f[8]: f for f in frames}
        status = build_template(random.Random(2), "status", args.cores, size=1)
        samples[10] = bytes(status.blob[4:status.starts[1]])
        for et in sorted(samples):
            f = samples[et]
            conn.execute("TRUNCATE bench_one")
            conn.execute("INSERT INTO bench_one SELECT %s, %s, %s FROM generate_series(1, %s)",
                         (et, int.from_bytes(f[:8], "little"), f[9:], one))
            us, _ = per_event_us(conn, "bench_one", one, args.runs)
            print(f"{et:>3} {EVENT_NAMES[et]:<32}{counts.get(et, 0):>5}{len(f) - 9:>7}{us:>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default="", help="server to use (default: a private cluster under /tmp)")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cores", type=int, default=341, help="C, the core count (sizes Status and bitfields)")
    ap.add_argument("--runs", type=int, default=5, help="best of this many scans")
    ap.add_argument("--per-type", action="store_true", help="also time each event type of the mix alone")
    args = ap.parse_args()
    settings = {"fsync": "off", "shared_buffers": "256MB"}
    with (bench_database(args.dsn, "tart-bench-sqldec-", settings, migrated=False) as (dsn, _root),
          psycopg.connect(dsn, autocommit=True) as conn):
        run(conn, args)

if __name__ == "__main__":
    main()
