"""One writer process: drains its rings into PostgreSQL (the supervisor forks TART_WRITERS of
them, each with a disjoint set of rings).

Main thread: read records from the rings (up to ``batch_max`` events, or what arrived within
``batch_interval_ms``), turn them into COPY rows (batch.py), hand batches to the database
pipeline (pipeline.py), release ring space for the batches it committed. Beside it: the rollup
thread (rollups.py), the maintenance thread (partitions and retention, retention.py), and the
health file (health.py).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
import time

import psycopg

from tart.engine import derived, metrics, nodekeys, reload
from tart.engine.config import Settings, live_options
from tart.engine.migrate import ensure_partitions
from tart.engine.ring import Ring
from tart.engine.writer import retention
from tart.engine.writer.batch import Batch, event_peers
from tart.engine.writer.conn import Connector, is_connection_error
from tart.engine.writer.health import Health, health_file_name
from tart.engine.writer.pipeline import Pipeline
from tart.engine.writer.rollups import Rollups

log = logging.getLogger("tart.writer")

MAINTENANCE_INTERVAL = 3600.0
READ_MAX_BYTES = 16 << 20
IDLE_SLEEP = 0.002
DRAIN_INDEX = -1  # the supervisor's drain of a previous run's rings (drain_rings)
# The database thread sends a batch's COPY data in 128 KiB pieces and needs the GIL back after
# each one; with the default 5 ms switch interval the main thread's encoding kept it waiting
# while PostgreSQL sat idle (half the database thread's time at 64 nodes x 1000 events/s).
GIL_SWITCH_INTERVAL_S = 0.0005
# What SIGHUP changes in a running writer (the option table says); the rest needs a restart.
LIVE_OPTIONS = live_options("writer")


class _Source:
    __slots__ = ("name", "ring", "reader")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ring = Ring.attach(name)
        self.reader = self.ring.gate_reader()


def lock_key(ring_names: list[str], role: str) -> int:
    digest = hashlib.blake2b(f"tart-{role}:{','.join(sorted(ring_names))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Writer:
    def __init__(self, ring_names: list[str], dsn: str, settings: Settings, index: int = 0) -> None:
        self.dsn = dsn
        self.settings = settings
        self.index = index
        self.sources = [_Source(n) for n in ring_names]
        self.stopping = False
        self.reload_requested = False  # set by the SIGHUP handler, acted on by the main loop
        self.batch_max = settings.batch_max
        self.interval = settings.batch_interval_ms / 1000.0
        self.pg_ok = False
        self.db = Connector(dsn, lock_key(ring_names, "writer"), "batches", on_state=self._pg_state)
        self.keys_db = Connector(dsn, None, "node-keys")
        self.keys = nodekeys.NodeKeys()
        self.tracker = derived.SlotTracker()
        self.rollups = Rollups(Connector(dsn, lock_key(ring_names, "rollups"), "rollups"), ring_names,
                               summarize_brin=index == 0)
        self.health = Health(settings.data_path / health_file_name(index), [s.ring for s in self.sources],
                             lambda: (self.pipeline.last_commit, self.pg_ok))
        rings = {s.name: (s.ring.uuid, s.ring.ring_index) for s in self.sources}
        self.pipeline = Pipeline(self.db, rings, self.rollups.committed, self.health.write)
        self.maint_stop = threading.Event()
        self.maint_wake = threading.Event()  # stop, or retention settings changed

    def _pg_state(self, ok: bool) -> None:
        self.pg_ok = ok
        self.health.write(force=True)

    # --- start ---------------------------------------------------------------------------

    def start(self) -> None:
        while True:
            conn = self.db.connect()
            try:
                ensure_partitions(conn, 1, 3)
                rows = conn.execute("SELECT ring_name, ring_uuid, position FROM ring_cursors").fetchall()
                break
            except psycopg.Error as e:
                # e.g. the schema is not there (yet): wait for it like for a server that is down
                if not is_connection_error(e, conn):
                    log.error("cannot start writing", extra={"error": str(e).strip()})
                self.db.failed("start", e)
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
        # Counts missed by a predecessor are recounted from what is stored before anything new
        # commits (rollups.recover): afterwards they could not be told apart.
        self.rollups.start()
        while not self.rollups.recovered.wait(0.1):
            self.health.write()
        self.rollups.check()
        if self.index == 0:
            threading.Thread(target=self._maintenance, name="writer-maintenance", daemon=True).start()

    # --- main loop -----------------------------------------------------------------------

    def _resolve(self, recs: list[bytes]) -> None:
        peers = event_peers(recs)
        while True:
            conn = self.keys_db.connect()
            try:
                self.keys.lookup(conn, peers)
                return
            except psycopg.Error as e:
                self.keys_db.failed("node_keys", e)
                self.health.write()

    def run(self) -> None:
        pipe = self.pipeline
        pipe.start()
        batch = Batch()
        rr = 0
        n_src = len(self.sources)
        keys = self.keys.keys
        while True:
            self._release_done()
            pipe.check()
            self.rollups.check()
            if self.reload_requested:
                self.reload()
            stopping = self.stopping
            want = self.batch_max - len(batch)
            got = 0
            for k in range(n_src):
                if want <= 0:
                    break
                src = self.sources[(rr + k) % n_src]
                try:
                    recs = src.reader.read(want, READ_MAX_BYTES)
                except RuntimeError as e:
                    self._skip_corrupt(src, batch, e)
                    continue
                if recs:
                    if not batch.records:
                        batch.started = time.monotonic()
                    batch.add(src.name, recs, keys, self._resolve, self.tracker)
                    batch.ends[src.name] = src.reader.position
                    got += len(recs)
                    want -= len(recs)
            rr += 1
            # While PostgreSQL is busy with the previous batch, keep filling this one: bigger
            # batches are what makes COPY cheap (its fixed cost per statement is large).
            if (batch.records or batch.skipped) and (len(batch) >= self.batch_max or stopping or (
                    time.monotonic() - batch.started >= self.interval and pipe.idle())):
                self._submit(batch)
                batch = Batch()
                continue
            if not got:
                if (stopping and not batch.records and not batch.skipped
                        and all(s.reader.pending() == 0 for s in self.sources)):
                    break
                self.health.write()
                time.sleep(IDLE_SLEEP)
        pipe.todo.put(None)
        while pipe.alive():
            pipe.thread.join(0.1)
            self._release_done()
        self._release_done()
        pipe.check()
        self.rollups.stop()
        self.rollups.check()

    def _skip_corrupt(self, src: _Source, batch: Batch, exc: RuntimeError) -> None:
        """A record the ring cannot frame (not torn: corrupt) must not stop the writer for good,
        which a restart would only repeat: skip to the next plausible record, count what was
        lost, and let this batch's commit release the bad stretch."""
        nbytes, records = src.reader.resync()
        metrics.RING_CORRUPT_RECORDS.inc(max(1, records))
        log.error("corrupt ring records skipped", extra={"ring": src.name, "bytes": nbytes, "records": records,
                                                          "error": str(exc)})
        if not batch.records:
            batch.started = time.monotonic()
        batch.skipped += max(1, records)
        batch.ends[src.name] = src.reader.position

    def reload(self) -> None:
        """SIGHUP: adopt the live options of the configuration as it is now. The batch being
        filled keeps going and closes under the new limits; retention runs at once if it changed."""
        self.reload_requested = False
        got = reload.reread(self.settings, LIVE_OPTIONS, f"writer-{self.index}", log)
        if got is None:
            return
        self.settings, changes = got
        self.batch_max = self.settings.batch_max
        self.interval = self.settings.batch_interval_ms / 1000.0
        if any(k.endswith("retention_days") or k == "archive_dir" for k in changes):
            self.maint_wake.set()
        log.info("configuration reloaded", extra={"changed": reload.describe(changes)})

    def _submit(self, batch: Batch) -> None:
        pipe = self.pipeline
        while True:
            try:
                pipe.todo.put(batch, timeout=0.05)
                return
            except queue.Full:
                self._release_done()  # release ring space while waiting for the database
                self.health.write()
                if self.reload_requested:
                    self.reload()  # PostgreSQL may be away for long: a reload should not wait
                if pipe.error is not None or not pipe.alive():
                    raise RuntimeError("writer database thread failed") from pipe.error

    def _release_done(self) -> None:
        """Let the producers reuse the space of every batch PostgreSQL has committed."""
        while True:
            try:
                batch = self.pipeline.done.get_nowait()
            except queue.Empty:
                return
            for src in self.sources:
                end = batch.ends.get(src.name)
                if end is not None and end > src.ring.gate_pos:
                    src.reader.commit(end)

    # --- maintenance thread --------------------------------------------------------------

    def _maintenance(self) -> None:
        conn = None
        while not self.maint_stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = _connect(self.dsn)
                ensure_partitions(conn, 1, 3)
                s = self.settings  # one snapshot: a reload may replace it meanwhile
                dropped = retention.apply_retention(conn, s.retention_days, s.archive_dir)
                dropped += retention.apply_retention(conn, s.rollup_retention_days, None, parent="event_counts_30s")
                if dropped:
                    log.info("retention dropped partitions", extra={"partitions": ",".join(dropped)})
                retention.apply_hourly_retention(conn, s.hourly_retention_days)
                wait = MAINTENANCE_INTERVAL
            except Exception as e:  # keep the thread alive: retried in a minute
                log.warning("maintenance failed", extra={"error": str(e).strip()})
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
                wait = 60.0
            self.maint_wake.wait(wait)
            self.maint_wake.clear()

    def close(self) -> None:
        self.maint_stop.set()
        self.maint_wake.set()
        self.db.close()
        self.keys_db.close()
        self.rollups.connector.close()
        self.health.write(force=True)


def _connect(dsn: str) -> psycopg.Connection:
    from tart.engine.db import connect

    return connect(dsn, autocommit=True)


def set_switch_interval() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
