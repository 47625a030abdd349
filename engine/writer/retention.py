"""Partitions and retention: daily partitions ahead of time, old ones archived and dropped.

Raw events are kept ``TART_RETENTION_DAYS`` (0 = forever), 30-second counts
``TART_ROLLUP_RETENTION_DAYS``, hourly counts ``TART_HOURLY_RETENTION_DAYS``: the rollups
outlive the events they summarise. A DROP waits at most ``LOCK_TIMEOUT`` for its lock: a long
REST query holding the partition must not queue the DROP, with the writer's COPY queued behind
it; a DROP that could not get its lock is retried at the next run.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import os
import re
from pathlib import Path

import psycopg

log = logging.getLogger("tart.writer")

LOCK_TIMEOUT = "2s"
_PART = re.compile(r"^(event_rows|event_counts_30s)_(\d{8})$")


def _partitions(conn: psycopg.Connection, parent: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY 1", (parent,))]


def _old(name: str, cutoff: dt.datetime) -> bool:
    m = _PART.match(name)
    if not m:
        return False
    day = dt.datetime.strptime(m.group(2), "%Y%m%d").replace(tzinfo=dt.UTC)
    return day + dt.timedelta(days=1) <= cutoff


def apply_retention(conn: psycopg.Connection, days: int, archive_dir: str | os.PathLike | None,
                    now: dt.datetime | None = None, parent: str = "event_rows") -> list[str]:
    """Drop the daily partitions of ``parent`` that lie wholly before ``now - days``; for events
    with ``archive_dir``, first write each to ``<archive_dir>/event_rows_YYYYMMDD.jsonl.gz`` (one
    JSON object per row, the envelope of ``tart-export --raw``: see tart.engine.export), streamed
    through a server-side cursor and fsynced before the DROP. Each partition is archived and
    dropped in one transaction of its own (the connection must not be inside one). ``days`` <= 0
    does nothing. Returns the dropped names; a partition whose lock was not granted in time is
    left for the next run."""
    if days <= 0:
        return []
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    parts = _partitions(conn, parent)
    if not conn.autocommit:
        conn.commit()  # each partition below gets a transaction of its own
    dropped = []
    for name in parts:
        if not _old(name, cutoff):
            continue
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                # SHARE: nothing can be added to the partition between the archive and the drop.
                conn.execute(f'LOCK TABLE "{name}" IN SHARE MODE')
                if archive_dir and parent == "event_rows":
                    n = _archive_partition(conn, name, Path(archive_dir))
                    log.info("partition archived", extra={"partition": name, "rows": n})
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                conn.execute(f'DROP TABLE "{name}"')
        except psycopg.errors.LockNotAvailable:
            log.warning("partition busy, its drop is retried later", extra={"partition": name})
            continue
        dropped.append(name)
    return dropped


def apply_hourly_retention(conn: psycopg.Connection, days: int, now: dt.datetime | None = None) -> int:
    if days <= 0:
        return 0
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    return conn.execute("DELETE FROM event_counts_hourly WHERE hour < %s", (cutoff,)).rowcount


def _archive_partition(conn: psycopg.Connection, name: str, archive_dir: Path) -> int:
    from tart.engine.export import write_events

    archive_dir.mkdir(parents=True, exist_ok=True)
    final = archive_dir / f"{name}.jsonl.gz"
    tmp = archive_dir / f".{name}.jsonl.gz.tmp"
    with open(tmp, "wb") as raw_f:
        with gzip.GzipFile(fileobj=raw_f, mode="wb", compresslevel=6, mtime=0) as gz:
            # The lines of `tart-export --raw`: archives and exports are read by the same tools.
            n = write_events(conn, gz, "jsonl", table=name, raw=True, flush=False, ordered=False)
        raw_f.flush()
        os.fsync(raw_f.fileno())
    os.replace(tmp, final)
    dfd = os.open(archive_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return n
