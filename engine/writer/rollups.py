"""Rollups at ingest: events per node x type in 30-second buckets (``event_counts_30s``) and per
hour (``event_counts_hourly``), nodes.event_count/last_seen_at, and node_status/blocks.

Counted from the ring records of committed batches (``Rollups.committed``), never by re-reading
events, and flushed by this module's thread on its own connection: node_status/blocks every
``STATUS_FLUSH_S``, counts every ``COUNTS_FLUSH_S``, hours every ``HOURLY_FLUSH_S``. Upserting
every (node, type) key with every batch would cost as much as the COPY itself with a thousand
nodes; a flush upserts each key once per period instead, and never delays a batch.

Exactly once: each ring's cursor row stores the newest event id committed (``last_id``, with the
rows) and the newest id each rollup has counted (``counted_30s``/``counted_hourly``, with the
counts). Ids grow with the ring, so the events a rollup has not counted are exactly those of
that ring (the id's low 6 bits) in ``(counted, last_id]``. When a writer died between a batch and
the flush that counts it, ``recover`` counts that range from event_rows in one statement: at the
rollup thread's start for its own rings, and at tart's start for rings of earlier runs. A flush
whose commit is in doubt (the connection broke) is judged by the stored watermarks, so it is
neither lost nor applied twice.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

import psycopg

from tart.engine import derived, metrics
from tart.engine.writer.batch import BUCKET_US, Batch
from tart.engine.writer.conn import Connector, is_connection_error

log = logging.getLogger("tart.writer")

STATUS_FLUSH_S = 0.25
BRIN_SUMMARIZE_S = 1.0
COUNTS_FLUSH_S = 5.0
HOURLY_FLUSH_S = 60.0
HOUR_US = 3_600_000_000
BUCKETS_PER_HOUR = HOUR_US // BUCKET_US

# Arrays go in binary (%b): text arrays cost client and server ~8 us per element to print and
# parse, more than the upsert itself. (Never empty: binary dumping cannot type an empty list.)
COUNTS_30S_SQL = """
INSERT INTO event_counts_30s AS c (bucket, node_key, event_type, event_count)
SELECT * FROM unnest(%b::timestamptz[], %b::int4[], %b::int2[], %b::int8[])
ON CONFLICT (bucket, node_key, event_type) DO UPDATE SET event_count = c.event_count + excluded.event_count
"""
COUNTS_HOURLY_SQL = """
INSERT INTO event_counts_hourly AS c (hour, node_key, event_type, event_count)
SELECT * FROM unnest(%b::timestamptz[], %b::int4[], %b::int2[], %b::int8[])
ON CONFLICT (hour, node_key, event_type) DO UPDATE SET event_count = c.event_count + excluded.event_count
"""
NODE_COUNTS_SQL = """
UPDATE nodes AS n SET event_count = n.event_count + t.cnt, last_seen_at = greatest(n.last_seen_at, t.seen)
FROM unnest(%b::int4[], %b::int8[], %b::timestamptz[]) AS t(k, cnt, seen) WHERE n.node_key = t.k
"""
WATERMARK_SQL = """
UPDATE ring_cursors AS r SET {col} = greatest(r.{col}, t.id)
FROM unnest(%s::text[], %s::int8[]) AS t(n, id) WHERE r.ring_name = t.n
"""

# New block ranges of the BRIN indexes, summarized: until then every BRIN scan reads them all.
BRIN_SQL = """
SELECT coalesce(sum(brin_summarize_new_values(i.inhrelid)), 0) FROM pg_inherits i
WHERE i.inhparent IN ('event_rows_id_brin'::regclass, 'event_rows_ts_brin'::regclass)
"""

# A partition nobody has analyzed yet has no statistics: the planner then prices the BRIN index
# as if ids were scattered and reads the partition whole for every window of ids. Autovacuum
# analyzes within a minute or so; the writer does not wait for it.
UNANALYZED_SQL = """
SELECT relname FROM pg_stat_user_tables
WHERE relname LIKE 'event\\_rows\\_%%' AND n_live_tup > 1000 AND last_analyze IS NULL AND last_autoanalyze IS NULL
"""
ANALYZE_S = 10.0

# Recovery: the uncounted range of one ring, counted from the stored events.
_RANGE = "FROM event_rows WHERE id > %(lo)s AND id <= %(hi)s AND (id & 63) = %(ring)s"
RECOVER_SQL = {
    "counted_30s": [
        f"""INSERT INTO event_counts_30s AS c (bucket, node_key, event_type, event_count)
        SELECT to_timestamp(floor(extract(epoch FROM created_at) / 30) * 30), node_key, event_type, count(*)
        {_RANGE} GROUP BY 1, 2, 3
        ON CONFLICT (bucket, node_key, event_type) DO UPDATE SET event_count = c.event_count + excluded.event_count""",
        f"""UPDATE nodes AS n SET event_count = n.event_count + t.cnt, last_seen_at = greatest(n.last_seen_at, t.seen)
        FROM (SELECT node_key, count(*) AS cnt, max(created_at) AS seen {_RANGE} GROUP BY 1) AS t
        WHERE n.node_key = t.node_key""",
    ],
    "counted_hourly": [
        f"""INSERT INTO event_counts_hourly AS c (hour, node_key, event_type, event_count)
        SELECT date_trunc('hour', created_at), node_key, event_type, count(*) {_RANGE} GROUP BY 1, 2, 3
        ON CONFLICT (hour, node_key, event_type) DO UPDATE SET event_count = c.event_count + excluded.event_count""",
    ],
}


def recover(conn: psycopg.Connection, ring_names: list[str] | None = None) -> int:
    """Count what the rollups missed for ``ring_names`` (None: every ring) and advance their
    watermarks; returns the events counted. Each ring and rollup in a transaction of its own."""
    rows = conn.execute(
        "SELECT ring_name, ring_index, last_id, counted_30s, counted_hourly FROM ring_cursors"
        " WHERE (counted_30s < last_id OR counted_hourly < last_id)"
        + (" AND ring_name = ANY(%s)" if ring_names is not None else ""),
        (ring_names,) if ring_names is not None else None).fetchall()
    total = 0
    for name, index, last_id, c30, chour in rows:
        for col, lo in (("counted_30s", c30), ("counted_hourly", chour)):
            if lo >= last_id:
                continue
            args = {"lo": lo, "hi": last_id, "ring": index}
            with conn.transaction():
                if col == "counted_30s":
                    days = conn.execute(
                        "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date " + _RANGE, args).fetchall()
                    for (day,) in days:
                        conn.execute("SELECT tart_ensure_partition('event_counts_30s', %s::date)", (day,))
                    n = conn.execute("SELECT count(*) " + _RANGE, args).fetchone()[0]
                    total += n
                for sql in RECOVER_SQL[col]:
                    conn.execute(sql, args)
                conn.execute(f"UPDATE ring_cursors SET {col} = %s WHERE ring_name = %s", (last_id, name))
            log.info("rollup recovered", extra={"ring": name, "rollup": col, "from_id": lo, "to_id": last_id})
    return total


class Rollups:
    """Counts and derived state of committed batches, and the thread that flushes them."""

    def __init__(self, connector: Connector, ring_names: list[str], summarize_brin: bool = False) -> None:
        self.connector = connector
        self.ring_names = ring_names
        self.summarize_brin = summarize_brin  # one writer does it for all
        self.lock = threading.Lock()
        self.c30: dict[tuple[int, int, int], int] = {}
        self.seen: dict[int, int] = {}
        self.upto30: dict[str, int] = {}
        self.hourly: dict[tuple[int, int, int], int] = {}
        self.upto_hourly: dict[str, int] = {}
        self.agg = derived.BatchAggregates()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="writer-rollups", daemon=True)
        self.error: BaseException | None = None
        self.recovered = threading.Event()

    # --- fed by the database thread, after each commit ------------------------------------

    def committed(self, batch: Batch) -> None:
        with self.lock:
            c30 = self.c30
            for k, n in batch.counts.items():
                c30[k] = c30.get(k, 0) + n
            seen = self.seen
            for k, ra in batch.last_seen.items():
                if ra > seen.get(k, 0):
                    seen[k] = ra
            for ring, last in batch.last_ids.items():
                if last > self.upto30.get(ring, 0):
                    self.upto30[ring] = last
            if batch.agg:
                self.agg.merge(batch.agg)

    # --- the flushing thread --------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Flush everything (call after the last batch committed) and end the thread."""
        self.stop_event.set()
        self.thread.join()

    def _loop(self) -> None:
        try:
            while True:
                try:
                    recover(self.connector.connect(), self.ring_names)
                    break
                except psycopg.Error as e:
                    if self.stop_event.is_set():
                        raise
                    self.connector.failed("rollup_recover", e)
            self.recovered.set()
            now = time.monotonic()
            periods = {"status": STATUS_FLUSH_S, "counts": COUNTS_FLUSH_S, "hourly": HOURLY_FLUSH_S}
            if self.summarize_brin:
                periods["brin"] = BRIN_SUMMARIZE_S
                periods["analyze"] = ANALYZE_S
            due = {what: now + period for what, period in periods.items()}
            while not self.stop_event.wait(max(0.0, min(due.values()) - time.monotonic())):
                now = time.monotonic()
                for what, period in periods.items():
                    if now >= due[what]:
                        if what == "brin":
                            self._summarize()
                        elif what == "analyze":
                            self._analyze_new()
                        else:
                            self._flush(what)
                        due[what] = time.monotonic() + period
            for what in ("status", "counts", "hourly"):
                while not self._flush(what):
                    pass
        except BaseException as e:  # surfaced by the main thread
            log.exception("writer rollup thread crashed")
            self.error = e
            self.recovered.set()

    def _summarize(self) -> None:
        conn = self.connector.connect()
        try:
            conn.execute(BRIN_SQL)
        except psycopg.Error as e:
            if is_connection_error(e, conn):
                self.connector.failed("brin_summarize", e)
            else:
                log.debug("BRIN summarize skipped", extra={"error": str(e).strip()})

    def _analyze_new(self) -> None:
        conn = self.connector.connect()
        try:
            for (name,) in conn.execute(UNANALYZED_SQL).fetchall():
                conn.execute(f'ANALYZE "{name}"')
                log.info("new partition analyzed", extra={"partition": name})
        except psycopg.Error as e:
            if is_connection_error(e, conn):
                self.connector.failed("analyze", e)
            else:
                log.debug("ANALYZE skipped", extra={"error": str(e).strip()})

    def _flush(self, what: str) -> bool:
        """One flush; True when done or nothing to do, False when it must be retried."""
        with self.lock:
            if what == "status":
                taken = self.agg
                if not taken:
                    return True
                self.agg = derived.BatchAggregates()
            elif what == "counts":
                taken = (self.c30, self.seen, self.upto30)
                if not (taken[0] or taken[2]):
                    return True
                self.c30, self.seen, self.upto30 = {}, {}, {}
            else:
                taken = (self.hourly, self.upto_hourly)
                if not (taken[0] or taken[1]):
                    return True
                self.hourly, self.upto_hourly = {}, {}
        conn = self.connector.connect()
        t0 = time.monotonic()
        try:
            with conn.transaction():
                getattr(self, "_write_" + what)(conn, taken)
        except psycopg.Error as e:
            if is_connection_error(e, conn):
                self.connector.failed("rollup_" + what, e)
                conn = self.connector.connect()
                if what != "status" and self._committed(conn, what, taken[-1]):
                    self._after(what, taken)
                    return True
            else:
                metrics.DB_WRITE_ERRORS.labels(kind="rollup_" + what).inc()
                log.warning("rollup flush rejected, retrying", extra={"rollup": what, "error": str(e).strip()})
                time.sleep(0.5)
            self._give_back(what, taken)
            return False
        metrics.ROLLUP_FLUSH_DURATION.labels(rollup=what).observe(time.monotonic() - t0)
        self._after(what, taken)
        return True

    def _committed(self, conn: psycopg.Connection, what: str, upto: dict[str, int]) -> bool:
        """Whether a flush whose COMMIT went unanswered went through: its watermarks say so."""
        if not upto:
            return False
        col = "counted_30s" if what == "counts" else "counted_hourly"
        stored = dict(conn.execute(f"SELECT ring_name, {col} FROM ring_cursors WHERE ring_name = ANY(%s)",
                                   (list(upto),)).fetchall())
        return all(stored.get(n, -1) >= i for n, i in upto.items())

    def _after(self, what: str, taken: tuple) -> None:
        if what != "counts":
            return
        # Hours are folded from flushed 30-second counts, so an hour never counts an event
        # that its 30-second bucket does not.
        c30, _, upto = taken
        with self.lock:
            h = self.hourly
            for (key, etype, bucket), n in c30.items():
                hk = (key, etype, bucket // BUCKETS_PER_HOUR)
                h[hk] = h.get(hk, 0) + n
            for ring, last in upto.items():
                if last > self.upto_hourly.get(ring, 0):
                    self.upto_hourly[ring] = last

    def _give_back(self, what: str, taken: object) -> None:
        with self.lock:
            if what == "status":
                taken.merge(self.agg)  # what came since is newer
                self.agg = taken
                return
            if what == "counts":
                c30, seen, upto = taken
                pairs = ((self.c30, c30), (self.seen, seen), (self.upto30, upto))
            else:
                hourly, upto = taken
                pairs = ((self.hourly, hourly), (self.upto_hourly, upto))
            for i, (cur, old) in enumerate(pairs):
                add = i == 0
                for k, v in old.items():
                    cur[k] = cur.get(k, 0) + v if add else max(cur.get(k, 0), v)

    def _write_status(self, conn: psycopg.Connection, agg: derived.BatchAggregates) -> None:
        derived.apply_aggregates(conn.cursor(), agg)

    def _write_counts(self, conn: psycopg.Connection, taken: tuple) -> None:
        c30, seen, upto = taken
        if c30:
            buckets: dict[int, datetime] = {}
            days = set()
            cols: tuple[list, list, list, list] = ([], [], [], [])
            per_node: dict[int, int] = {}
            for (key, etype, bucket), n in c30.items():
                b = buckets.get(bucket)
                if b is None:
                    b = buckets[bucket] = derived.us_to_dt(bucket * BUCKET_US)
                    days.add(b.date())
                cols[0].append(b)
                cols[1].append(key)
                cols[2].append(etype)
                cols[3].append(n)
                per_node[key] = per_node.get(key, 0) + n
            for day in sorted(days):
                conn.execute("SELECT tart_ensure_partition('event_counts_30s', %s::date)", (day,))
            conn.execute(COUNTS_30S_SQL, cols)
            nodes = list(per_node)
            conn.execute(NODE_COUNTS_SQL, (nodes, [per_node[k] for k in nodes], [derived.us_to_dt(seen[k]) for k in nodes]))
        if upto:
            conn.execute(WATERMARK_SQL.format(col="counted_30s"), (list(upto), list(upto.values())))

    def _write_hourly(self, conn: psycopg.Connection, taken: tuple) -> None:
        hourly, upto = taken
        if hourly:
            cols: tuple[list, list, list, list] = ([], [], [], [])
            for (key, etype, hour), n in hourly.items():
                cols[0].append(derived.us_to_dt(hour * HOUR_US))
                cols[1].append(key)
                cols[2].append(etype)
                cols[3].append(n)
            conn.execute(COUNTS_HOURLY_SQL, cols)
        if upto:
            conn.execute(WATERMARK_SQL.format(col="counted_hourly"), (list(upto), list(upto.values())))

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("writer rollup thread failed") from self.error
