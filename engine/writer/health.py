"""The writer's health file and gauges: ``<data_dir>/writer.health`` (writer 0) or
``writer-<i>.health`` (JSON: pid, rings, last_commit_unix, lag_seconds, pending, pg_ok), rewritten
at most once a second; the web tier's /api/health/detailed reads every ``writer*.health``.

``telemetry_buffer_pending`` counts records (events and node records) in this writer's rings that
are not yet committed to PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tart.engine import metrics
from tart.engine.record import KIND_EVENT, event_received_at
from tart.engine.ring import Ring

log = logging.getLogger("tart.writer")

HEALTH_INTERVAL = 1.0


def health_file_name(index: int) -> str:
    if index < 0:
        return "writer-drain.health"  # the supervisor draining a previous run's rings
    return "writer.health" if index == 0 else f"writer-{index}.health"


class Health:
    def __init__(self, path: Path, rings: list[Ring], state: Callable[[], tuple[float, bool]]) -> None:
        self.path = path
        self.rings = rings
        self.state = state  # () -> (last commit unix time, PostgreSQL reachable)
        self.next = 0.0
        self.lock = threading.Lock()

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        with self.lock:
            self.next = now + HEALTH_INTERVAL
            self._write()

    def _write(self) -> None:
        pending = 0
        for ring in self.rings:
            with contextlib.suppress(Exception):
                pending += max(0, ring.write_seq - ring.gate_seq)
        lag = 0.0
        if pending:
            oldest = self._oldest_pending_us()
            if oldest:
                lag = max(0.0, time.time() - oldest / 1e6)
        metrics.BUFFER_PENDING.set(pending)
        metrics.WRITER_LAG.set(lag)
        last_commit, pg_ok = self.state()
        doc = {"pid": os.getpid(), "rings": len(self.rings), "last_commit_unix": last_commit or None,
               "lag_seconds": round(lag, 3), "pending": pending, "pg_ok": pg_ok}
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(orjson.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as e:
            log.debug("cannot write the health file", extra={"error": str(e)})

    def _oldest_pending_us(self) -> int:
        """received_at of the oldest uncommitted event record at the rings' gates."""
        oldest = 0
        for ring in self.rings:
            reader = ring.gate_reader()  # a fresh reader starts at the gate; reading does not commit
            recs = reader.read(1, 1)
            if recs and recs[0][0] == KIND_EVENT:
                ra = event_received_at(recs[0])
                oldest = ra if not oldest else min(oldest, ra)
        return oldest
