"""The writer: drains every ring into PostgreSQL (one process, forked by the supervisor).

Loop: read records from all rings (up to ``batch_max`` events, or what arrived within
``batch_interval_ms``), turn events into binary COPY rows while aggregating the derived tables
(engine/derived.py), then in ONE transaction: NODE_UP/NODE_DOWN in ring order, COPY the rows,
update the derived tables, upsert each ring's cursor (ring_cursors). Only after the commit does
the writer release the ring space (``reader.commit``). A writer killed at any moment therefore
restarts from the committed cursor: nothing the rings still hold is lost or stored twice.

Failures:
- connection trouble (PostgreSQL down, restarting, network): keep the batch, reconnect with
  exponential backoff and jitter (cap 5 s), then first check whether the last commit went
  through before the connection died (the stored cursor says so), and retry otherwise. The rings
  fill meanwhile and the acceptors apply TCP backpressure.
- a statement rejected by PostgreSQL (bad data): redo the batch in "careful" mode: create any
  missing partition, apply node records one by one, COPY in halves recursively to isolate the bad
  rows (each stored as data NULL + decode_error "rejected by PostgreSQL: ..." + raw), and apply
  the derived tables in a savepoint whose failure is logged and skipped.

Also: daily partitions (today-1 .. today+3) at start and hourly, retention/archiving hourly
(``apply_retention``, in a thread with its own connection), metrics, and ``<data_dir>/writer.health``
(JSON: pid, last_commit_unix, lag_seconds, pending, pg_ok; rewritten at most once a second).

``telemetry_buffer_pending`` counts records (events and node records) in the rings that are not
yet committed to PostgreSQL, summed over the rings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import logging
import os
import queue
import random
import re
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import orjson
import psycopg

from tart.engine import copyfmt, derived, metrics, reload
from tart.engine.config import Settings
from tart.engine.db import connect
from tart.engine.migrate import ensure_partitions
from tart.engine.record import KIND_EVENT, KIND_NODE_DOWN, KIND_NODE_UP, KIND_RING_RESET
from tart.engine.ring import Ring

log = logging.getLogger("tart.writer")

BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
MAINTENANCE_INTERVAL = 3600.0
HEALTH_INTERVAL = 1.0
READ_MAX_BYTES = 16 << 20
IDLE_SLEEP = 0.002
# The database thread sends a batch's COPY data in 128 KiB pieces and needs the GIL back after
# each one; with the default 5 ms switch interval the main thread's encoding kept it waiting
# while PostgreSQL sat idle (half the database thread's time at 64 nodes x 1000 events/s).
GIL_SWITCH_INTERVAL_S = 0.0005
LOCK_WAIT_S = 10.0  # how long a previous session may hold the rings' lock (Writer._lock_rings)
# Every LATENCY_EVERY-th event of a batch is observed: a fixed number per batch would weigh a
# 50-event batch like a 10k-event one and hide the slow (big) batches from the percentiles.
LATENCY_EVERY = 16
# Seconds between two updates of a node's nodes.event_count / event_stats_hourly rows: at least
# COUNTS_FLUSH, and with many busy nodes longer, so that about COUNTS_NODES_PER_S nodes' rows are
# written per second, up to COUNTS_FLUSH_MAX (see Writer._take_counts).
COUNTS_FLUSH = 1.0
COUNTS_FLUSH_MAX = 10.0
COUNTS_NODES_PER_S = 100
DAY_US = 86_400_000_000
HOUR_US = derived.HOUR_US
# What SIGHUP changes in a running writer; the rest needs a restart (tart.engine.reload).
LIVE_OPTIONS = ("batch_max", "batch_interval_ms", "retention_days", "archive_dir", "log_level")


class _Source:
    __slots__ = ("name", "ring", "reader")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ring = Ring.attach(name)
        self.reader = self.ring.gate_reader()


def is_connection_error(exc: BaseException, conn: psycopg.Connection | None) -> bool:
    """True when the problem is the connection or the server's state, not the data."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    return conn is None or conn.closed or conn.broken


class Batch:
    """Records read from the rings and not yet committed, with everything derived from them."""

    def __init__(self) -> None:
        self.rows: list[bytes] = []  # COPY tuples, aligned with ev_recs
        self.ev_recs: list[bytes] = []
        self.node_ops: list[tuple[int, dict]] = []
        self.stats: dict[tuple[bytes, int, int], int] = {}
        self.last_seen: dict[bytes, int] = {}
        self.agg = derived.BatchAggregates()
        self.ends: dict[str, int] = {}  # ring name -> reader position after this batch
        self.records = 0
        self.started = 0.0  # monotonic time the batch got its first record
        self.careful = False
        self.retrying = False
        # (stats, last_seen) accumulated over several batches, applied with this one (see COUNTS_FLUSH)
        self.counts: tuple[dict, dict] | None = None

    def __len__(self) -> int:
        return self.records

    def add(self, recs: list[bytes], hexcache: dict[bytes, bytes], tracker: derived.SlotTracker) -> None:
        """Encode ``recs`` (one ring's records in ring order). The loop is the writer's hot path."""
        rows_ap = self.rows.append
        recs_ap = self.ev_recs.append
        stats = self.stats
        stats_get = stats.get
        last_seen = self.last_seen
        unpack = copyfmt.unpack_header
        pack_head, pack_tail = copyfmt.pack_head, copyfmt.pack_tail
        hdr = copyfmt.HDR_SIZE
        ts_max = copyfmt.JCE_TS_MAX
        jce_to_pg = copyfmt.JCE_TO_PG_US
        pg_epoch = copyfmt.PG_EPOCH_UNIX_US
        derived_types = derived.DERIVED_TYPES
        hour_us = HOUR_US
        for rec in recs:
            try:
                if rec[0] == KIND_EVENT:
                    _, flags, etype, jlen, id_, ra, ts, eid, peer = unpack(rec)
                    node = hexcache.get(peer)
                    if node is None:
                        if len(hexcache) > 100_000:
                            hexcache.clear()
                        node = hexcache[peer] = peer.hex().encode()
                    if not flags and ts <= ts_max and len(rec) == hdr + jlen:
                        rows_ap(pack_head(9, 8, id_, 64, node, 8, eid, 2, etype, 8, ts + jce_to_pg, jlen + 1, 1)
                                + rec[hdr:] + pack_tail(8, ra - pg_epoch, -1, -1))
                    else:
                        rows_ap(copyfmt.encode_slow(rec, node))
                    recs_ap(rec)
                    key = (node, etype, ra // hour_us)
                    stats[key] = stats_get(key, 0) + 1
                    last_seen[node] = ra
                    if etype in derived_types and not (flags & 1):
                        self.agg.feed(tracker, node, etype, eid, ra, rec[hdr:hdr + jlen])
                elif rec[0] == KIND_NODE_UP:
                    self.node_ops.append((KIND_NODE_UP, derived.node_up_params(rec)))
                elif rec[0] == KIND_NODE_DOWN:
                    self.node_ops.append((KIND_NODE_DOWN, derived.node_down_params(rec)))
                elif rec[0] == KIND_RING_RESET:
                    self.node_ops.append((KIND_RING_RESET, derived.ring_reset_params(rec)))
                else:
                    log.warning("unknown ring record kind skipped", extra={"kind": rec[0]})
            except (struct.error, ValueError, IndexError) as e:
                # A record the writer cannot parse must not stop every later one (it would come
                # back after each restart); it is counted and skipped.
                metrics.DB_WRITE_ERRORS.labels(kind="bad_record").inc()
                log.error("unreadable ring record skipped", extra={"error": str(e), "size": len(rec)})
        self.records += len(recs)


class Writer:
    def __init__(self, ring_names: list[str], dsn: str, settings: Settings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.sources = [_Source(n) for n in ring_names]
        digest = hashlib.blake2b(("tart-writer:" + ",".join(sorted(ring_names))).encode(), digest_size=8).digest()
        self.lock_key = int.from_bytes(digest, "big", signed=True)
        self.conn: psycopg.Connection | None = None
        self.stopping = False
        self.hexcache: dict[bytes, bytes] = {}
        self.tracker = derived.SlotTracker()
        self.backoff = BACKOFF_START
        self.pg_ok = False
        self.last_commit = 0.0
        self.health_path = settings.data_path / "writer.health"
        self.next_health = 0.0
        self.maint_stop = threading.Event()
        self.maint_wake = threading.Event()  # stop, or retention settings changed
        self.reload_requested = False  # set by the SIGHUP handler, acted on by the main loop
        self.batch_max = settings.batch_max
        self.interval = settings.batch_interval_ms / 1000.0
        # The main thread reads and encodes the next batch while this thread's batch is in
        # PostgreSQL (psycopg releases the GIL while it waits). Batches commit in order; the main
        # thread releases ring space for those that ``done`` reports.
        self.todo: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self.done: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self.db_thread: threading.Thread | None = None
        self.db_error: BaseException | None = None
        self.db_busy = False
        # node hex -> [{(event type, hour): count}, last seen µs, monotonic time it became dirty]
        self.pending_counts: dict[bytes, list] = {}
        self.counts_last = time.monotonic()
        self.counts_credit = 0.0  # nodes owed a flush by the even spread (see _take_counts)
        self.counts_flushed: dict[bytes, float] = {}  # node -> monotonic time of its last flush
        self.counts_next_due = float("inf")  # when the oldest pending counts are due
        self.health_lock = threading.Lock()

    # --- connection ------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        """A working connection, retrying forever (until stopped with nothing to write)."""
        while self.conn is None or self.conn.closed or self.conn.broken:
            self._close()
            try:
                self.conn = connect(self.dsn, autocommit=True)
                self._lock_rings(self.conn)
                self.pg_ok = True
                self.backoff = BACKOFF_START
                log.info("connected to PostgreSQL")
            except psycopg.Error as e:
                self._failed("connect", e)
        return self.conn

    def _lock_rings(self, conn: psycopg.Connection) -> None:
        """Hold a session lock on these rings before reading or writing their cursors.

        The server process of the previous session (a writer killed with -9, or a connection
        that broke) may still be finishing a COMMIT that this session cannot see yet; reading
        ring_cursors then would resume before that batch and store it twice. That process keeps
        the lock until it has finished and noticed its client is gone; one that does not notice
        (a half-open TCP connection to a remote server) is terminated after LOCK_WAIT_S, which
        is safe: a COMMIT in progress completes or not before the process exits."""
        t0 = time.monotonic()
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,)).fetchone()[0]:
            if time.monotonic() - t0 > LOCK_WAIT_S:
                hi, lo = (self.lock_key >> 32) & 0xFFFFFFFF, self.lock_key & 0xFFFFFFFF
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                    " AND classid = %s::int8::oid AND objid = %s::int8::oid AND pid <> pg_backend_pid()", (hi, lo))]
                log.warning("previous writer session still holds the rings' lock: terminating it",
                            extra={"pids": ",".join(map(str, pids))})
                for pid in pids:
                    conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
                t0 = time.monotonic()
            time.sleep(0.05)

    def _close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def _failed(self, kind: str, exc: BaseException) -> None:
        """Count, log (once per outage at warning), back off with jitter."""
        metrics.DB_WRITE_ERRORS.labels(kind=kind).inc()
        if self.pg_ok:
            log.warning("PostgreSQL unavailable, retrying", extra={"kind": kind, "error": str(exc).strip()})
        self.pg_ok = False
        self._close()
        self._write_health(force=True)
        time.sleep(self.backoff * (0.5 + random.random()))
        self.backoff = min(self.backoff * 2, BACKOFF_CAP)

    # --- start -----------------------------------------------------------------------------

    def start(self) -> None:
        while True:
            conn = self._connect()
            try:
                ensure_partitions(conn, 1, 3)
                rows = conn.execute("SELECT ring_name, ring_uuid, position FROM ring_cursors").fetchall()
                break
            except psycopg.Error as e:
                # e.g. the schema is not there (yet): wait for it like for a server that is down
                if not is_connection_error(e, conn):
                    log.error("cannot start writing", extra={"error": str(e).strip()})
                self._failed("start", e)
        stored = {name: (uuid, pos) for name, uuid, pos in rows}
        for src in self.sources:
            uuid, pos = stored.get(src.name, (None, 0))
            gate = src.reader.position
            if uuid == src.ring.uuid and pos > gate:
                if pos > src.ring.write_pos:
                    log.warning("stored ring cursor is ahead of the ring; reading from its gate",
                                extra={"ring": src.name, "stored": pos, "write_pos": src.ring.write_pos})
                else:
                    # The last batch committed to PostgreSQL but the writer died before releasing it.
                    src.reader.seek(pos)
                    src.reader.commit(pos)
            log.info("ring attached", extra={"ring": src.name, "position": src.reader.position,
                                             "stored": pos if uuid == src.ring.uuid else None})
        threading.Thread(target=self._maintenance, name="writer-maintenance", daemon=True).start()

    # --- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        self.db_thread = threading.Thread(target=self._db_loop, name="writer-db", daemon=True)
        self.db_thread.start()
        batch = Batch()
        rr = 0
        n_src = len(self.sources)
        while True:
            self._release_done()
            if self.db_error is not None:
                raise RuntimeError("writer database thread failed") from self.db_error
            if self.reload_requested:
                self.reload()
            stopping = self.stopping
            want = self.batch_max - len(batch)
            got = 0
            for k in range(n_src):
                if want <= 0:
                    break
                src = self.sources[(rr + k) % n_src]
                recs = src.reader.read(want, READ_MAX_BYTES)
                if recs:
                    if not batch.records:
                        batch.started = time.monotonic()
                    batch.add(recs, self.hexcache, self.tracker)
                    batch.ends[src.name] = src.reader.position
                    got += len(recs)
                    want -= len(recs)
            rr += 1
            # While PostgreSQL is busy with the previous batch, keep filling this one: bigger
            # batches are what makes COPY cheap (its fixed cost per statement is large).
            if batch.records and (len(batch) >= self.batch_max or stopping or (
                    time.monotonic() - batch.started >= self.interval
                    and not self.db_busy and self.todo.empty())):
                self._submit(batch)
                batch = Batch()
                continue
            if not got:
                if stopping and not batch.records and all(s.reader.pending() == 0 for s in self.sources):
                    break
                if (not batch.records and time.monotonic() >= self.counts_next_due and not self.db_busy
                        and self.todo.empty()):
                    self.counts_next_due = float("inf")  # the database thread sets the next one
                    self._submit(Batch())  # counts only: the rows were committed already
                    continue
                self._write_health()
                time.sleep(IDLE_SLEEP)
        self.todo.put(None)
        while self.db_thread.is_alive():
            self.db_thread.join(0.1)
            self._release_done()
        self._release_done()
        if self.db_error is not None:
            raise RuntimeError("writer database thread failed") from self.db_error

    def reload(self) -> None:
        """SIGHUP: adopt the live options of the configuration as it is now. The batch being
        filled keeps going and closes under the new limits; retention runs at once if it changed."""
        self.reload_requested = False
        got = reload.reread(self.settings, LIVE_OPTIONS, "writer", log)
        if got is None:
            return
        self.settings, changes = got
        self.batch_max = self.settings.batch_max
        self.interval = self.settings.batch_interval_ms / 1000.0
        if "retention_days" in changes or "archive_dir" in changes:
            self.maint_wake.set()
        log.info("configuration reloaded", extra={"changed": reload.describe(changes)})

    def _submit(self, batch: Batch) -> None:
        while True:
            try:
                self.todo.put(batch, timeout=0.05)
                return
            except queue.Full:
                self._release_done()  # release ring space while waiting for the database
                self._write_health()
                if self.reload_requested:
                    self.reload()  # PostgreSQL may be away for long: a reload should not wait
                if self.db_error is not None or not self.db_thread or not self.db_thread.is_alive():
                    raise RuntimeError("writer database thread failed") from self.db_error

    def _release_done(self) -> None:
        """Let the producers reuse the space of every batch PostgreSQL has committed."""
        while True:
            try:
                batch = self.done.get_nowait()
            except queue.Empty:
                return
            for src in self.sources:
                end = batch.ends.get(src.name)
                if end is not None and end > src.ring.gate_pos:
                    src.reader.commit(end)

    def _db_loop(self) -> None:
        try:
            while True:
                batch = self.todo.get()
                if batch is None:
                    break
                self.db_busy = True
                self._write_batch(batch)
                self.done.put(batch)
                self.db_busy = False
            self._flush_counts()
        except BaseException as e:  # surfaced by the main thread
            log.exception("writer database thread crashed")
            self.db_error = e

    def _take_counts(self, batch: Batch, force: bool = False, down: frozenset[bytes] = frozenset()) -> None:
        """Move the batch's per-node/hour counts into the pending totals, and hand this batch the
        totals of the nodes whose turn it is (``batch.counts``, set exactly once per batch).

        Counting every node in every batch would cost as much as the COPY itself with a thousand
        nodes (one upserted row per node, event type and hour), and flushing all nodes at once
        every second stalls the batch that carries it (0.1-0.5 s with a thousand busy nodes),
        which is what receipt-to-commit latency would show. So each node's counts are flushed
        every ``period`` seconds, oldest first, spread evenly over the batches. The rows cost
        grows with the distinct (node, type) pairs per flush, not with events (at 1024 nodes x
        50 events/s, flushing each node every second upserted 20k hourly rows/s against 27k
        events/s), so with many dirty nodes the period stretches (COUNTS_NODES_PER_S) up to
        COUNTS_FLUSH_MAX. A node's rows in event_stats_hourly and nodes.event_count always move
        in the same transaction. The price: a writer killed with -9 undercounts by up to a period
        of events (never overcounts: counts commit with or after their events), and a connected
        node's count trails by up to that long. A clean stop loses nothing; a node that disconnects
        (``down``: node ids of this batch's NODE_DOWN records) is flushed with its NODE_DOWN."""
        pend = self.pending_counts
        now = time.monotonic()
        period = min(COUNTS_FLUSH_MAX, max(COUNTS_FLUSH, len(pend) / COUNTS_NODES_PER_S))
        flushed, urgent = self.counts_flushed, []
        for (node, etype, hour), n in batch.stats.items():
            p = pend.get(node)
            if p is None:
                p = pend[node] = [{}, 0, now]  # counts by (type, hour), last seen, dirty since
                if now - flushed.get(node, -1e9) >= period:
                    urgent.append(node)  # quiet for a period (or new): its count shows at once
            c = p[0]
            k = (etype, hour)
            c[k] = c.get(k, 0) + n
        for node, seen in batch.last_seen.items():
            p = pend[node]
            if seen > p[1]:
                p[1] = seen
        batch.stats, batch.last_seen = {}, {}
        if force:
            take = list(pend)
        else:
            # Dict order is the order nodes became dirty: the front is the oldest.
            self.counts_credit += len(pend) * (now - self.counts_last) / period
            quota = int(self.counts_credit)
            take = []
            for node, p in pend.items():
                if len(take) >= quota and now - p[2] < period:
                    break
                take.append(node)
            self.counts_credit = max(0.0, self.counts_credit - len(take))
            taken = set(take)
            for n in (*urgent, *down):
                if n in pend and n not in taken:
                    taken.add(n)
                    take.append(n)
        if len(flushed) > 100_000:
            flushed.clear()
        self.counts_last = now
        stats: dict[tuple[bytes, int, int], int] = {}
        last: dict[bytes, int] = {}
        for node in take:
            counts, seen, _ = pend.pop(node)
            for (etype, hour), n in counts.items():
                stats[(node, etype, hour)] = n
            last[node] = seen
            flushed[node] = now
        batch.counts = (stats, last)
        # When the main loop has nothing else to write, it sends a counts-only batch by then.
        self.counts_next_due = next(iter(pend.values()))[2] + period if pend else float("inf")

    def _flush_counts(self) -> None:
        if not self.pending_counts:
            return
        batch = Batch()  # no rows and no ring positions: counts only
        self._take_counts(batch, force=True)
        self._write_batch(batch)

    def _write_batch(self, batch: Batch) -> None:
        t0 = time.monotonic()
        if batch.counts is None:
            # A disconnect shows the node's final count: its counts go with its NODE_DOWN.
            down = frozenset(p["id"].encode() for kind, p in batch.node_ops if kind == KIND_NODE_DOWN)
            self._take_counts(batch, down=down)
            if not (batch.records or batch.counts[0]):
                return  # a counts-only batch that found nothing due
        while True:
            conn = self._connect()
            try:
                if batch.retrying and batch.ends and self._already_committed(conn, batch):
                    log.info("batch was committed before the connection broke")
                    break
                with conn.transaction():
                    if batch.careful:
                        self._careful(conn, batch)
                    else:
                        self._fast(conn, batch)
                break
            except psycopg.Error as e:
                if is_connection_error(e, conn):
                    batch.retrying = True
                    self._failed("connection", e)
                    continue
                if batch.careful:
                    # Even row by row it fails: nothing left to isolate; keep trying, loudly.
                    log.error("batch rejected in careful mode", extra={"error": str(e).strip()})
                    self._failed("batch", e)
                    continue
                metrics.DB_WRITE_ERRORS.labels(kind=type(e).__name__).inc()
                log.info("batch rejected, isolating bad rows", extra={"error": str(e).strip().splitlines()[0]})
                batch.careful = True
        self.last_commit = time.time()
        self.pg_ok = True
        metrics.BATCH_WRITE_DURATION.observe(time.monotonic() - t0)
        metrics.EVENTS_WRITTEN.inc(len(batch.rows))
        recs = batch.ev_recs
        if recs:
            # receipt-to-commit latency, sampled in proportion to the events
            now_us = time.time_ns() // 1000
            observe, unpack = metrics.INGEST_LATENCY.observe, copyfmt.unpack_header
            for i in range(len(recs) % LATENCY_EVERY // 2, len(recs), LATENCY_EVERY):
                observe(max(0, now_us - unpack(recs[i])[5]) / 1e6)
        self._write_health()

    def _cursor_params(self, batch: Batch) -> tuple[list[str], list[str], list[int]]:
        names = list(batch.ends)
        uuids = [next(s.ring.uuid for s in self.sources if s.name == n) for n in names]
        return names, uuids, [batch.ends[n] for n in names]

    def _save_cursors(self, conn: psycopg.Connection, batch: Batch) -> None:
        conn.execute(
            "INSERT INTO ring_cursors (ring_name, ring_uuid, position, updated_at)"
            " SELECT n, u, p, now() FROM unnest(%s::text[], %s::text[], %s::int8[]) AS t(n, u, p)"
            " ON CONFLICT (ring_name) DO UPDATE SET ring_uuid = excluded.ring_uuid,"
            " position = excluded.position, updated_at = excluded.updated_at",
            self._cursor_params(batch))

    def _already_committed(self, conn: psycopg.Connection, batch: Batch) -> bool:
        names, uuids, ends = self._cursor_params(batch)
        stored = {n: (u, p) for n, u, p in conn.execute(
            "SELECT ring_name, ring_uuid, position FROM ring_cursors WHERE ring_name = ANY(%s)", (names,))}
        return all(stored.get(n, (None, -1))[0] == u and stored[n][1] >= e
                   for n, u, e in zip(names, uuids, ends, strict=True))

    def _fast(self, conn: psycopg.Connection, batch: Batch) -> None:
        cur = conn.cursor()
        if batch.node_ops:
            derived.apply_node_ops(cur, batch.node_ops)
        if batch.rows:
            with cur.copy(copyfmt.COPY_SQL) as cp:
                cp.write(copyfmt.copy_stream(batch.rows))
        if batch.counts:
            derived.apply_counts(cur, *batch.counts)
        if batch.agg:
            derived.apply_aggregates(cur, batch.agg)
        if batch.ends:
            self._save_cursors(conn, batch)

    def _careful(self, conn: psycopg.Connection, batch: Batch) -> None:
        cur = conn.cursor()
        days = sorted({copyfmt.unpack_header(r)[5] // DAY_US for r in batch.ev_recs})
        for day in days:
            conn.execute("SELECT tart_ensure_partition(%s::date)", (dt.date(1970, 1, 1) + dt.timedelta(days=day),))
        for op in batch.node_ops:
            self._savepoint(conn, "node", lambda op=op: derived.apply_node_ops(cur, [op]))
        if batch.rows:
            self._copy_bisect(conn, cur, batch)
        if batch.counts:
            self._savepoint(conn, "counts", lambda: derived.apply_counts(cur, *batch.counts))
        self._savepoint(conn, "derived", lambda: derived.apply_aggregates(cur, batch.agg))
        if batch.ends:
            self._save_cursors(conn, batch)

    def _savepoint(self, conn: psycopg.Connection, what: str, fn) -> bool:
        try:
            with conn.transaction():
                fn()
            return True
        except psycopg.Error as e:
            if is_connection_error(e, conn):
                raise
            metrics.DB_WRITE_ERRORS.labels(kind=what).inc()
            log.warning("skipped what PostgreSQL rejected", extra={"what": what, "error": str(e).strip()})
            return False

    def _copy_bisect(self, conn: psycopg.Connection, cur: psycopg.Cursor, batch: Batch) -> None:
        rows, recs = batch.rows, batch.ev_recs
        # An empty COPY fails only for reasons no row is to blame for (table gone, permissions):
        # then the whole batch waits in the ring, rather than every row being stored as rejected.
        with conn.transaction(), cur.copy(copyfmt.COPY_SQL) as cp:
            cp.write(copyfmt.copy_stream([]))
        todo = [(0, len(rows))]
        while todo:
            lo, hi = todo.pop()
            try:
                with conn.transaction(), cur.copy(copyfmt.COPY_SQL) as cp:
                    cp.write(copyfmt.copy_stream(rows[lo:hi]))
                continue
            except psycopg.Error as e:
                if is_connection_error(e, conn):
                    raise
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    todo.append((mid, hi))
                    todo.append((lo, mid))
                    continue
                msg = (getattr(e.diag, "message_primary", None) or str(e)).strip()
            metrics.DB_WRITE_ERRORS.labels(kind="rejected_row").inc()
            rec = recs[lo]
            node = copyfmt.unpack_header(rec)[8].hex().encode()
            fallback = copyfmt.encode_slow(rec, node, reject=msg)
            log.warning("row rejected by PostgreSQL, stored raw", extra={"error": msg})
            # If even the raw form is refused, the problem is not this row: the error aborts the
            # batch, which is retried with backoff and stays in the ring meanwhile.
            with conn.transaction(), cur.copy(copyfmt.COPY_SQL) as cp:
                cp.write(copyfmt.copy_stream([fallback]))
            rows[lo] = fallback

    # --- health and metrics ---------------------------------------------------------------

    def _write_health(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_health:
            return
        with self.health_lock:
            self.next_health = now + HEALTH_INTERVAL
            self._write_health_locked()

    def _write_health_locked(self) -> None:
        pending = 0
        for s in self.sources:
            with contextlib.suppress(Exception):
                pending += max(0, s.ring.write_seq - s.ring.gate_seq)
        lag = 0.0
        if pending:
            oldest = self._oldest_pending_us()
            if oldest:
                lag = max(0.0, time.time() - oldest / 1e6)
        metrics.BUFFER_PENDING.set(pending)
        metrics.WRITER_LAG.set(lag)
        doc = {"pid": os.getpid(), "last_commit_unix": self.last_commit or None, "lag_seconds": round(lag, 3),
               "pending": pending, "pg_ok": self.pg_ok}
        try:
            tmp = self.health_path.with_name(self.health_path.name + ".tmp")
            tmp.write_bytes(orjson.dumps(doc))
            os.replace(tmp, self.health_path)
        except OSError as e:
            log.debug("cannot write the health file", extra={"error": str(e)})

    def _oldest_pending_us(self) -> int:
        """received_at of the oldest uncommitted event record at the rings' gates."""
        oldest = 0
        for s in self.sources:
            rec = _peek_gate(s.ring)
            if rec and rec[0] == KIND_EVENT:
                ra = copyfmt.unpack_header(rec)[5]
                oldest = ra if not oldest else min(oldest, ra)
        return oldest

    # --- maintenance thread ----------------------------------------------------------------

    def _maintenance(self) -> None:
        conn = None
        while not self.maint_stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self.dsn, autocommit=True)
                ensure_partitions(conn, 1, 3)
                s = self.settings  # one snapshot: a reload may replace it meanwhile
                if s.retention_days:
                    dropped = apply_retention(conn, s.retention_days, s.archive_dir)
                    if dropped:
                        log.info("retention dropped partitions", extra={"partitions": ",".join(dropped)})
                wait = MAINTENANCE_INTERVAL
            except Exception as e:  # keep the thread alive: retried in a minute
                log.warning("maintenance failed", extra={"error": str(e).strip()})
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                wait = 60.0
            self.maint_wake.wait(wait)
            self.maint_wake.clear()

    def close(self) -> None:
        self.maint_stop.set()
        self.maint_wake.set()
        self._close()
        self._write_health(force=True)


def _peek_gate(ring: Ring) -> bytes | None:
    reader = ring.gate_reader()  # a fresh reader starts at the gate; reading does not commit
    recs = reader.read(1, 1)
    return recs[0] if recs else None


# --- retention -----------------------------------------------------------------------------

_PART_NAME = re.compile(r"^events_(\d{8})$")


def apply_retention(conn: psycopg.Connection, days: int, archive_dir: str | os.PathLike | None,
                    now: dt.datetime | None = None) -> list[str]:
    """Drop the daily ``events`` partitions that lie wholly before ``now - days``; with
    ``archive_dir``, first write each to ``<archive_dir>/events_YYYYMMDD.jsonl.gz`` (one JSON object
    per row, the envelope of ``tart-export --raw``: see tart.engine.export), streamed through a server-side cursor and fsynced before the DROP. Each partition is
    archived and dropped in one transaction of its own (the connection must not be inside one).
    ``days`` <= 0 does nothing. event_stats_hourly is not touched. Returns the dropped names."""
    if days <= 0:
        return []
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - dt.timedelta(days=days)
    parts = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass ORDER BY 1").fetchall()
    if not conn.autocommit:
        conn.commit()  # each partition below gets a transaction of its own
    dropped = []
    for (name,) in parts:
        m = _PART_NAME.match(name)
        if not m:
            continue
        day = dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
        if day + dt.timedelta(days=1) > cutoff:
            continue
        with conn.transaction():
            # SHARE: nothing can be added to the partition between the archive and the drop.
            conn.execute(f'LOCK TABLE "{name}" IN SHARE MODE')
            if archive_dir:
                n = _archive_partition(conn, name, Path(archive_dir))
                log.info("partition archived", extra={"partition": name, "rows": n})
            conn.execute(f'DROP TABLE "{name}"')
        dropped.append(name)
    return dropped


def _archive_partition(conn: psycopg.Connection, name: str, archive_dir: Path) -> int:
    from tart.engine.export import write_events

    archive_dir.mkdir(parents=True, exist_ok=True)
    final = archive_dir / f"{name}.jsonl.gz"
    tmp = archive_dir / f".{name}.jsonl.gz.tmp"
    with open(tmp, "wb") as raw_f:
        with gzip.GzipFile(fileobj=raw_f, mode="wb", compresslevel=6, mtime=0) as gz:
            # The lines of `tart-export --raw`: archives and exports are read by the same tools.
            n = write_events(conn, gz, "jsonl", table=name, raw=True, flush=False)
        raw_f.flush()
        os.fsync(raw_f.fileno())
    os.replace(tmp, final)
    dfd = os.open(archive_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return n


# --- entry point ---------------------------------------------------------------------------

def run_writer(ring_names: list[str], dsn: str, settings: Settings) -> None:
    """Supervisor entry point (in a forked child). Returns after SIGTERM/SIGINT once every ring
    is drained into PostgreSQL."""
    w = Writer(ring_names, dsn, settings)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    def _hup(signum: int, frame: object) -> None:
        w.reload_requested = True

    # First: until now SIGHUP's default action would kill the process (the supervisor forwards
    # every reload to its children).
    signal.signal(signal.SIGHUP, _hup)

    def _stop(signum: int, frame: object) -> None:
        if not w.stopping:
            log.info("stopping: draining the rings", extra={"signal": signal.Signals(signum).name})
        w.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        w.start()
        log.info("writer running", extra={"rings": len(ring_names), "batch_max": settings.batch_max})
        w.run()
        log.info("writer stopped: rings drained")
    finally:
        w.close()
