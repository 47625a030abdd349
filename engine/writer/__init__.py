"""The writer: drains rings into PostgreSQL exactly once, with rollups built at ingest.

Files by job: ``batch`` (ring records -> COPY rows and counts), ``pipeline`` (the database
thread: one transaction per batch with its ring cursors), ``rollups`` (30-second and hourly
counts, node_status and blocks, flushed on timers, recovered after a crash), ``retention``
(partitions, archives, drops), ``health`` (the health file), ``conn`` (reconnects and session
locks), ``process`` (one writer process's loop).
"""

from __future__ import annotations

import logging
import signal

from tart.engine.config import Settings
from tart.engine.writer.batch import Batch
from tart.engine.writer.process import DRAIN_INDEX, LIVE_OPTIONS, Writer, set_switch_interval
from tart.engine.writer.retention import apply_retention

__all__ = ["LIVE_OPTIONS", "Batch", "Writer", "apply_retention", "drain_rings", "run_writer"]

log = logging.getLogger("tart.writer")


def run_writer(ring_names: list[str], dsn: str, settings: Settings, index: int = 0) -> None:
    """Supervisor entry point (in a forked child). Returns after SIGTERM/SIGINT once its rings
    are drained into PostgreSQL and the rollups flushed."""
    w = Writer(ring_names, dsn, settings, index)
    set_switch_interval()

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
        log.info("writer running", extra={"index": index, "rings": len(ring_names), "batch_max": settings.batch_max})
        w.run()
        log.info("writer stopped: rings drained")
    finally:
        w.close()


def drain_rings(ring_names: list[str], dsn: str, settings: Settings) -> int:
    """Store what ``ring_names`` (rings no acceptor writes any more) hold beyond their committed
    cursors; returns the bytes that were pending. Run by the supervisor before it forks."""
    w = Writer(ring_names, dsn, settings, index=DRAIN_INDEX)
    w.stopping = True
    try:
        w.start()
        before = sum(s.reader.pending() for s in w.sources)
        w.run()
        return before
    finally:
        w.close()
