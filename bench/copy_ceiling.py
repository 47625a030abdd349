"""Ingest ceiling vs the writer, on the same rows.

1. encode: the writer's per-event CPU to turn ring records into COPY rows (Batch.add), in-process.
2. ceiling: bare binary COPY of pre-built rows into ``events`` (same table, indexes, partitions),
   ``--batch`` rows per COPY and one commit each: what PostgreSQL alone sustains from one client.
3. writer: the same number of records pre-filled into two rings, then ``run_writer`` in a child
   process drains them (COPY + derived tables + ring cursors, one commit per batch); rows/s from
   its start until both rings are released.

Usage: python bench/copy_ceiling.py [--dsn DSN] [--rows 200000] [--batch 10000]
Without --dsn a private cluster with tart's default (durable) settings is started under /tmp.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psycopg

from tart.engine import copyfmt, derived
from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.config import Settings
from tart.engine.db import connect
from tart.engine.migrate import ensure_partitions, migrate
from tart.engine.pgcluster import EmbeddedCluster
from tart.engine.record import pack_event
from tart.engine.ring import Ring
from tart.engine.writer import Batch, run_writer


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def make_records(n: int, ring_index: int, nodes: int = 1024) -> list[bytes]:
    now = time.time_ns() // 1000
    out = []
    for i in range(n):
        node = i % nodes
        ts = now - JCE_EPOCH_UNIX_US + i
        # ~2% Status/BestBlockChanged (they feed node_status), the rest plain events
        etype = 10 if i % 100 == 0 else 11 if i % 100 == 50 else (30, 31, 62, 90)[i % 4]
        body = {"timestamp": ts, "submission_or_share_id": i, "core": i % 4,
                "hash": "0x" + f"{i:064x}", "slot": i // 1000}
        out.append(pack_event(flags=0, event_type=etype, id=((now + i) << 6) | ring_index, received_at=now + i,
                              timestamp=ts, event_id=i // nodes, peer_id=node.to_bytes(32, "big"),
                              json=orjson.dumps({"WorkPackageReceived": body})))
    return out


def bench_encode(recs: list[bytes]) -> float:
    best = float("inf")
    for _ in range(3):
        b = Batch()
        t = time.perf_counter()
        for k in range(0, len(recs), 10000):
            b.add(recs[k:k + 10000], {}, derived.SlotTracker())
        best = min(best, time.perf_counter() - t)
    return best / len(recs) * 1e6


def bench_ceiling(dsn: str, recs: list[bytes], batch: int) -> float:
    b = Batch()
    b.add(recs, {}, derived.SlotTracker())
    rows = b.rows
    with connect(dsn, autocommit=True) as c:
        ensure_partitions(c, 1, 3)
        c.execute("TRUNCATE events")
        t = time.perf_counter()
        for k in range(0, len(rows), batch):
            with c.transaction(), c.cursor().copy(copyfmt.COPY_SQL) as cp:
                cp.write(copyfmt.copy_stream(rows[k:k + batch]))
        el = time.perf_counter() - t
        c.execute("TRUNCATE events")
    return len(rows) / el


def bench_writer(dsn: str, recs: list[bytes], batch: int, data_dir: Path) -> float:
    tag = uuid.uuid4().hex[:8]
    size = sum((len(r) + 23) & -8 for r in recs) // 2 + (1 << 20)
    size = (size + 4095) & -4096
    rings = [Ring.create(f"tart-bench-{tag}-{i}", size, i) for i in range(2)]
    try:
        half = len(recs) // 2
        for r, part in zip(rings, (recs[:half], recs[half:]), strict=True):
            assert r.write_many(part) == len(part), "ring too small"
        with connect(dsn, autocommit=True) as c:
            c.execute("TRUNCATE events, nodes, event_stats_hourly, ring_cursors")
        settings = Settings(data_dir=str(data_dir), batch_max=batch, retention_days=0)
        ctx = multiprocessing.get_context("fork")
        t = time.perf_counter()
        p = ctx.Process(target=run_writer, args=([r.name for r in rings], dsn, settings))
        p.start()
        while any(r.gate_pos != r.write_pos for r in rings):
            time.sleep(0.01)
        el = time.perf_counter() - t
        os.kill(p.pid, signal.SIGTERM)
        p.join(30)
        with connect(dsn, autocommit=True) as c:
            n = c.execute("SELECT count(*) FROM events").fetchone()[0]
        assert n == len(recs), (n, len(recs))
        return len(recs) / el
    finally:
        for r in rings:
            r.close()
            r.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default="")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tart-bench-", dir="/tmp"))
    root.chmod(0o755)
    cluster = None
    try:
        dsn = args.dsn
        if not dsn:
            cluster = EmbeddedCluster(root / "var")
            dsn = cluster.start()
        migrate(dsn)
        recs = make_records(args.rows // 2, 0) + make_records(args.rows - args.rows // 2, 1)
        avg = sum(map(len, recs)) / len(recs)
        print(f"cpu: {cpu_model()} x{os.cpu_count()}")
        print(f"rows: {len(recs)}, average record {avg:.0f} bytes, 1024 nodes, batch {args.batch}")
        print(f"writer encode (Batch.add): {bench_encode(recs):.2f} us/event")
        print(f"bare COPY ceiling: {bench_ceiling(dsn, recs, args.batch):,.0f} rows/s")
        print(f"writer drain (COPY + derived + cursors): {bench_writer(dsn, recs, args.batch, root):,.0f} rows/s")
    except psycopg.Error as e:
        raise SystemExit(f"database error: {e}") from e
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
