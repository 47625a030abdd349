"""A writer's PostgreSQL connection: reconnect with backoff and jitter, and a session lock that
keeps a restarted writer from racing the commit of the session it replaces."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable

import psycopg

from tart.engine import metrics
from tart.engine.db import connect

log = logging.getLogger("tart.writer")

BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
LOCK_WAIT_S = 10.0  # how long a previous session may hold our lock (Connector._lock)


def is_connection_error(exc: BaseException, conn: psycopg.Connection | None) -> bool:
    """True when the problem is the connection or the server's state, not the data."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    return conn is None or conn.closed or conn.broken


class Connector:
    """One connection, retried forever until ``stop`` says otherwise.

    ``lock_key``: a session advisory lock taken on every (re)connect before anything is read or
    written. The server process of the previous session (a writer killed with -9, or a connection
    that broke) may still be finishing a COMMIT that this session cannot see yet; reading
    ring_cursors then would resume before that batch and store it twice. That process keeps the
    lock until it has finished and noticed its client is gone; one that does not notice (a
    half-open TCP connection to a remote server) is terminated after LOCK_WAIT_S, which is safe:
    a COMMIT in progress completes or not before the process exits."""

    def __init__(self, dsn: str, lock_key: int | None, name: str, on_state: Callable[[bool], None] | None = None,
                 stop: threading.Event | None = None) -> None:
        self.dsn = dsn
        self.lock_key = lock_key
        self.name = name
        self.conn: psycopg.Connection | None = None
        self.ok = False
        self.backoff = BACKOFF_START
        self.on_state = on_state or (lambda ok: None)
        self.stop = stop

    def connect(self) -> psycopg.Connection:
        while self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            if self.stop is not None and self.stop.is_set():
                raise psycopg.OperationalError("stopping")
            try:
                self.conn = connect(self.dsn, autocommit=True)
                if self.lock_key is not None:
                    self._lock(self.conn)
                self.ok = True
                self.backoff = BACKOFF_START
                self.on_state(True)
                log.info("connected to PostgreSQL", extra={"conn": self.name})
            except psycopg.Error as e:
                self.failed("connect", e)
        return self.conn

    def _lock(self, conn: psycopg.Connection) -> None:
        assert self.lock_key is not None
        t0 = time.monotonic()
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,)).fetchone()[0]:
            if time.monotonic() - t0 > LOCK_WAIT_S:
                hi, lo = (self.lock_key >> 32) & 0xFFFFFFFF, self.lock_key & 0xFFFFFFFF
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                    " AND classid = %s::int8::oid AND objid = %s::int8::oid AND pid <> pg_backend_pid()", (hi, lo))]
                log.warning("previous writer session still holds the lock: terminating it",
                            extra={"conn": self.name, "pids": ",".join(map(str, pids))})
                for pid in pids:
                    conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
                t0 = time.monotonic()
            time.sleep(0.05)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def failed(self, kind: str, exc: BaseException) -> None:
        """Count, log (once per outage at warning), back off with jitter."""
        metrics.DB_WRITE_ERRORS.labels(kind=kind).inc()
        if self.ok:
            log.warning("PostgreSQL unavailable, retrying",
                        extra={"conn": self.name, "kind": kind, "error": str(exc).strip()})
        self.ok = False
        self.close()
        self.on_state(False)
        time.sleep(self.backoff * (0.5 + random.random()))
        self.backoff = min(self.backoff * 2, BACKOFF_CAP)
