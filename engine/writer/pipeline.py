"""The database pipeline: batches are formatted by the writer's main thread and sent to PostgreSQL
by this one (the shape of psycopg's ``QueuedLibpqWriter``: format in one thread, send in another,
errors re-raised in the first).

Per batch, ONE transaction: NODE_UP/NODE_DOWN/RING_RESET in ring order, COPY of the rows, and
each ring's cursor (position, newest event id). Only after the commit does the main thread
release the ring space, so a writer killed at any moment restarts from the committed cursor:
nothing the rings still hold is lost or stored twice. Committed batches go to the rollups.

Failures:
- connection trouble (PostgreSQL down, restarting, network): keep the batch, reconnect with
  exponential backoff and jitter (cap 5 s), then first check whether the last commit went
  through before the connection died (the stored cursor says so), and retry otherwise.
- a statement rejected by PostgreSQL (bad data): redo the batch in "careful" mode: create any
  missing partition, apply node records one by one, COPY in halves recursively to isolate the bad
  rows (each stored with its frame and decode_error "rejected by PostgreSQL: ...").
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable

import psycopg

from tart.engine import copyfmt, derived, metrics
from tart.engine.record import event_received_at
from tart.engine.writer.batch import Batch
from tart.engine.writer.conn import Connector, is_connection_error

log = logging.getLogger("tart.writer")

DAY_US = 86_400_000_000
# Every LATENCY_EVERY-th event of a batch is observed: a fixed number per batch would weigh a
# 50-event batch like a 10k-event one and hide the slow (big) batches from the percentiles.
LATENCY_EVERY = 16

CURSORS_SQL = """
INSERT INTO ring_cursors (ring_name, ring_uuid, ring_index, position, last_id, updated_at)
SELECT n, u, i, p, l, now() FROM unnest(%s::text[], %s::text[], %s::int2[], %s::int8[], %s::int8[])
    AS t(n, u, i, p, l)
ON CONFLICT (ring_name) DO UPDATE SET ring_uuid = excluded.ring_uuid, ring_index = excluded.ring_index,
    position = excluded.position, last_id = greatest(ring_cursors.last_id, excluded.last_id),
    updated_at = excluded.updated_at
"""


class Pipeline:
    """The database thread: writes submitted batches in order, one transaction each."""

    def __init__(self, connector: Connector, rings: dict[str, tuple[str, int]],
                 committed: Callable[[Batch], None], health: Callable[..., None]) -> None:
        self.connector = connector
        self.rings = rings  # ring name -> (uuid, ring index)
        self.committed = committed  # called in this thread after each commit
        self.health = health
        self.todo: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self.done: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="writer-db", daemon=True)
        self.error: BaseException | None = None
        self.busy = False
        self.last_commit = 0.0

    def start(self) -> None:
        self.thread.start()

    def idle(self) -> bool:
        return not self.busy and self.todo.empty()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("writer database thread failed") from self.error

    def _loop(self) -> None:
        try:
            while True:
                batch = self.todo.get()
                if batch is None:
                    break
                self.busy = True
                self.write(batch)
                self.committed(batch)
                self.done.put(batch)
                self.busy = False
        except BaseException as e:  # surfaced by the main thread
            log.exception("writer database thread crashed")
            self.error = e

    # --- one batch ----------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        if not (batch.records or batch.node_ops or batch.ends):
            return
        t0 = time.monotonic()
        while True:
            conn = self.connector.connect()
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
                    self.connector.failed("connection", e)
                    continue
                if batch.careful:
                    # Even row by row it fails: nothing left to isolate; keep trying, loudly.
                    log.error("batch rejected in careful mode", extra={"error": str(e).strip()})
                    self.connector.failed("batch", e)
                    continue
                metrics.DB_WRITE_ERRORS.labels(kind=type(e).__name__).inc()
                log.info("batch rejected, isolating bad rows", extra={"error": str(e).strip().splitlines()[0]})
                batch.careful = True
        self.last_commit = time.time()
        metrics.BATCH_WRITE_DURATION.observe(time.monotonic() - t0)
        metrics.EVENTS_WRITTEN.inc(len(batch.rows))
        recs = batch.ev_recs
        if recs:
            # receipt-to-commit latency, sampled in proportion to the events
            now_us = time.time_ns() // 1000
            observe = metrics.INGEST_LATENCY.observe
            for i in range(len(recs) % LATENCY_EVERY // 2, len(recs), LATENCY_EVERY):
                observe(max(0, now_us - event_received_at(recs[i])) / 1e6)
        self.health()

    def _cursor_params(self, batch: Batch) -> tuple[list, list, list, list, list]:
        names = list(batch.ends)
        return (names, [self.rings[n][0] for n in names], [self.rings[n][1] for n in names],
                [batch.ends[n] for n in names], [batch.last_ids.get(n, 0) for n in names])

    def _save_cursors(self, conn: psycopg.Connection, batch: Batch) -> None:
        conn.execute(CURSORS_SQL, self._cursor_params(batch))

    def _already_committed(self, conn: psycopg.Connection, batch: Batch) -> bool:
        names, uuids, _, ends, _ = self._cursor_params(batch)
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
        if batch.ends:
            self._save_cursors(conn, batch)

    def _careful(self, conn: psycopg.Connection, batch: Batch) -> None:
        cur = conn.cursor()
        days = sorted({event_received_at(r) // DAY_US for r in batch.ev_recs})
        for day in days:
            conn.execute("SELECT tart_ensure_partition(%s::date)", (dt.date(1970, 1, 1) + dt.timedelta(days=day),))
        for op in batch.node_ops:
            self._savepoint(conn, "node", lambda op=op: derived.apply_node_ops(cur, [op]))
        if batch.rows:
            self._copy_bisect(conn, cur, batch)
        if batch.ends:
            self._save_cursors(conn, batch)

    def _savepoint(self, conn: psycopg.Connection, what: str, fn: Callable[[], None]) -> bool:
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
            fallback = copyfmt.encode_slow(recs[lo], batch.keys[lo], reject=msg)
            log.warning("row rejected by PostgreSQL, stored with its frame", extra={"error": msg})
            # If even that is refused, the problem is not this row: the error aborts the batch,
            # which is retried with backoff and stays in the ring meanwhile.
            with conn.transaction(), cur.copy(copyfmt.COPY_SQL) as cp:
                cp.write(copyfmt.copy_stream([fallback]))
            rows[lo] = fallback
