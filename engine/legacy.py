"""Upgrade in place: convert the v1-v3 JSONB ``events`` table (renamed ``events_legacy`` by
migration 004) into compact ``event_rows``, one daily partition per transaction.

Each legacy row becomes the row the writer would have written for the same event: its wire
payload is re-encoded from the stored JSON with the codec (or taken from ``raw`` where the old
writer kept the frame), so REST, export and the ``events`` view show the same JSON as before.
A partition is copied and dropped in one transaction, so an interrupted upgrade resumes with the
partitions that are left (the migration runner calls ``convert`` on every start until none is).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from tart.engine import copyfmt, nodekeys
from tart.engine.codec import EVENT_NAMES, encode_event

log = logging.getLogger("tart.migrate")

FETCH = 5000


def _core_count(event_type: int, value: dict) -> int:
    # The codec needs C only to check the C-sized fields' lengths: take it from the value itself.
    if event_type == 10:
        return len(value.get("num_guarantees") or [])
    if event_type == 126:
        bits = (value.get("statement") or {}).get("bitfield") or "0x"
        return 8 * ((len(bits) - 2) // 2)
    return 0


def legacy_payload(event_type: int, data: Any, raw: bytes | None, decode_error: str | None
                   ) -> tuple[bytes, str | None]:
    """(payload, decode_error) of a legacy row, following copyfmt's invariant."""
    if decode_error is None and raw:
        return raw[9:], None  # the old writer kept the frame of an event with U+0000 in a string
    frame = None
    if isinstance(data, dict) and len(data) == 1 and event_type in EVENT_NAMES:
        (value,) = data.values()
        try:
            frame = encode_event(event_type, value, _core_count(event_type, value))
        except (ValueError, TypeError, AttributeError) as e:
            if decode_error is None:
                import orjson

                return orjson.dumps(data), f"legacy row could not be re-encoded: {e}"
    if decode_error is None:
        if frame is None:
            return raw or b"", "legacy row without data"
        return frame[9:], None
    return raw or frame or b"", decode_error


def _row(r: tuple, key: int) -> bytes:
    id_, event_id, event_type, ts_pg, created_pg, data, raw, decode_error = r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8]
    payload, error = legacy_payload(event_type, data, raw, decode_error)
    head = copyfmt.pack_head(copyfmt.FIELDS, 8, id_, 8, event_id, 8, ts_pg, 8, created_pg, 4, key, 2, event_type,
                             len(payload))
    if error is None:
        return head + payload + copyfmt.ROW_TAIL
    err = copyfmt.clean_text(error.encode())
    return head + payload + copyfmt._I.pack(len(err)) + err


# Timestamps leave the server as µs since 2000-01-01, the binary COPY's own unit.
_SELECT = """
SELECT id, node_id, event_id, event_type,
       ((extract(epoch FROM timestamp) - 946684800) * 1000000)::int8,
       ((extract(epoch FROM created_at) - 946684800) * 1000000)::int8,
       data, raw, decode_error
FROM {table}
"""


def legacy_partitions(conn: psycopg.Connection) -> list[str]:
    if conn.execute("SELECT to_regclass('events_legacy')").fetchone()[0] is None:
        return []
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events_legacy'::regclass ORDER BY 1")]


def convert(conn: psycopg.Connection) -> int:
    """Move every legacy partition into event_rows, then drop events_legacy. Returns the rows
    moved. ``conn`` is an autocommit connection (each partition gets its own transaction)."""
    if conn.execute("SELECT to_regclass('events_legacy')").fetchone()[0] is None:
        return 0
    total = 0
    t0 = time.monotonic()
    for part in legacy_partitions(conn):
        with conn.transaction():
            days = [r[0] for r in conn.execute(
                f'SELECT DISTINCT (created_at AT TIME ZONE \'UTC\')::date FROM "{part}"')]
            for day in days:
                conn.execute("SELECT tart_ensure_partition('event_rows', %s::date)", (day,))
            ids = [r[0] for r in conn.execute(f'SELECT DISTINCT node_id FROM "{part}"')]
            keys = nodekeys.resolve(conn, ids)
            n = 0
            # FETCH and COPY cannot interleave on one connection: a chunk is fetched, then copied.
            with conn.cursor(name=f"legacy_{part}") as src:
                src.execute(_SELECT.format(table=f'"{part}"'))
                while rows := src.fetchmany(FETCH):
                    with conn.cursor().copy(copyfmt.COPY_SQL) as cp:
                        cp.write(copyfmt.copy_stream([_row(r, keys[r[1]]) for r in rows]))
                    n += len(rows)
            conn.execute(f'DROP TABLE "{part}"')
        total += n
        log.info("legacy partition converted", extra={"partition": part, "rows": n})
    conn.execute("DROP TABLE events_legacy")
    if total:
        log.info("legacy events converted", extra={"rows": total, "seconds": round(time.monotonic() - t0, 1)})
    return total
