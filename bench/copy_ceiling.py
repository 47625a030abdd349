"""Ingest ceiling vs the writer, on the same rows.

Records are real events: tart-loadgen's default mix replayed offline (bench/rowformat.py), each
an EVENT ring record with the codec's JSON of its frame and its wire payload, as an acceptor
writes it, spread over two rings as two acceptors would.

1. encode: the writer's per-event CPU to turn ring records into COPY rows (Batch.add), in-process.
2. ceiling: bare binary COPY of those rows into ``event_rows`` (the schema's table, indexes and
   partitions), ``--batch`` rows per COPY and one commit each: what PostgreSQL alone sustains
   from one client.
3. writer: the same records pre-filled into two rings, then ``run_writer`` in a child process
   drains them (COPY + ring cursors per batch, rollups and node state on their own thread);
   rows/s from its start until both rings are released.

Usage: python bench/copy_ceiling.py [--dsn DSN] [--rows 200000] [--batch 10000] [--nodes 1024] [--rate 100]
Without --dsn a private cluster with tart's default (durable) settings is started under /tmp.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time
import uuid
from pathlib import Path

from rowformat import Ev, bench_database, load1, loadgen_events, machine_line

from tart.engine import copyfmt, derived, nodekeys
from tart.engine.codec.events import decode_event
from tart.engine.config import Settings
from tart.engine.db import connect
from tart.engine.migrate import ensure_partitions
from tart.engine.record import pack_event
from tart.engine.ring import Ring
from tart.engine.writer import Batch, run_writer


def make_records(evs: list[Ev]) -> list[list[bytes]]:
    """Ring records of ``evs``, one list per ring, as the acceptors write them: the event JSON
    that the codec makes of the frame, and the wire payload."""
    rings: list[list[bytes]] = [[], []]
    for e in evs:
        d = decode_event(e.frame, e.cores)
        rings[e.ring].append(pack_event(flags=0, event_type=e.event_type, id=e.id, received_at=e.received_at,
                                        timestamp=e.timestamp, event_id=e.event_id, peer_id=e.peer_id,
                                        json=d.json(), raw=e.frame[9:]))
    return rings


def _no_resolve(recs: list[bytes]) -> None:
    raise AssertionError("every peer has a key already")


def encode(per_ring: list[list[bytes]], keys: dict[bytes, int], chunk: int = 10_000) -> Batch:
    b = Batch()
    tracker = derived.SlotTracker()
    for i, recs in enumerate(per_ring):
        for k in range(0, len(recs), chunk):
            b.add(f"ring-{i}", recs[k:k + chunk], keys, _no_resolve, tracker)
    return b


def bench_encode(per_ring: list[list[bytes]], keys: dict[bytes, int]) -> float:
    n = sum(map(len, per_ring))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        encode(per_ring, keys)
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def bench_ceiling(dsn: str, per_ring: list[list[bytes]], keys: dict[bytes, int], batch: int) -> float:
    rows = encode(per_ring, keys).rows
    with connect(dsn, autocommit=True) as c:
        ensure_partitions(c, 1, 3)
        c.execute("TRUNCATE event_rows")
        c.execute("CHECKPOINT")
        t = time.perf_counter()
        for k in range(0, len(rows), batch):
            with c.transaction(), c.cursor().copy(copyfmt.COPY_SQL) as cp:
                cp.write(copyfmt.copy_stream(rows[k:k + batch]))
        el = time.perf_counter() - t
        c.execute("TRUNCATE event_rows")
    return len(rows) / el


def bench_writer(dsn: str, per_ring: list[list[bytes]], batch: int, data_dir: Path) -> float:
    tag = uuid.uuid4().hex[:8]
    n = sum(map(len, per_ring))
    rings = []
    try:
        for i, recs in enumerate(per_ring):
            size = (sum((len(r) + 23) & -8 for r in recs) + (1 << 20) + 4095) & -4096
            rings.append(Ring.create(f"tart-bench-{tag}-{i}", size, i))
            assert rings[-1].write_many(recs) == len(recs), "ring too small"
        with connect(dsn, autocommit=True) as c:
            c.execute("TRUNCATE event_rows, nodes, event_counts_30s, event_counts_hourly, ring_cursors,"
                      " node_status, blocks")
            c.execute("CHECKPOINT")
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
            stored = c.execute("SELECT count(*) FROM event_rows").fetchone()[0]
            counted = c.execute("SELECT coalesce(sum(event_count), 0) FROM event_counts_30s").fetchone()[0]
        print(f"writer stored {stored} of {n} rows; rollup counted {counted}")
        return n / el
    finally:
        for r in rings:
            r.close()
            r.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default="")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=100.0, help="events/s per node of the replayed loadgen mix")
    args = ap.parse_args()
    with bench_database(args.dsn, "tart-bench-") as (dsn, root):
        evs = loadgen_events(args.rows, args.nodes, args.rate)
        per_ring = make_records(evs)
        recs = [r for rs in per_ring for r in rs]
        with connect(dsn, autocommit=True) as c:
            found = nodekeys.resolve(c, {e.peer_id.hex() for e in evs})
        keys = {bytes.fromhex(h): k for h, k in found.items()}
        print(machine_line())
        print(f"rows: {len(recs)} of the loadgen default mix ({args.nodes} nodes at {args.rate:g} events/s each),"
              f" average record {sum(map(len, recs)) / len(recs):.0f} B, payload"
              f" {sum(len(e.frame) - 9 for e in evs) / len(evs):.0f} B; 2 rings; batch {args.batch}")
        print(f"writer encode (Batch.add): {bench_encode(per_ring, keys):.2f} us/event (load1 {load1()})")
        print(f"bare COPY ceiling into event_rows: {bench_ceiling(dsn, per_ring, keys, args.batch):,.0f} rows/s"
              f" (load1 {load1()})", flush=True)
        rate = bench_writer(dsn, per_ring, args.batch, root)
        print(f"writer drain (COPY + cursors, rollups beside): {rate:,.0f} rows/s (load1 {load1()})")
        print(machine_line())


if __name__ == "__main__":
    main()
