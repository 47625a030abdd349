"""Stored events for tests: rows of ``event_rows`` as the writer makes them.

Events are stored as their wire payload, so a test that wants an event in the database builds a
real one: ``store_event`` encodes it with the codec (random values of the right types, with the
fields the test cares about overridden) and returns the JSON that REST, export and the
``events`` view will show for it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tart.engine import nodekeys
from tart.engine.codec import EVENT_NAMES, encode_event
from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.loadgen import _value

CORES = 2
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
_rng = random.Random(7)


def jce_us(ts: datetime) -> int:
    return (ts - _UNIX) // timedelta(microseconds=1) - JCE_EPOCH_UNIX_US


def event_value(event_type: int, ts: datetime, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid value of ``event_type`` (random fields, ``fields`` overriding), timestamp ``ts``."""
    return {**_value(event_type, _rng, CORES), **(fields or {}), "timestamp": jce_us(ts)}


def store_event(conn: psycopg.Connection, *, id: int, node_id: str, event_id: int, event_type: int,
                timestamp: datetime, created_at: datetime, fields: dict[str, Any] | None = None,
                value: dict[str, Any] | None = None, decode_error: str | None = None,
                frame: bytes | None = None) -> dict[str, Any] | None:
    """Insert one row (creating the node's row if missing, as the writer does); returns the event
    JSON object readers will show (None for a row with decode_error, whose payload is ``frame``)."""
    key = nodekeys.resolve(conn, [node_id])[node_id]
    data: dict[str, Any] | None = None
    if decode_error is None:
        value = value or event_value(event_type, timestamp, fields)
        payload = encode_event(event_type, value, CORES)[9:]
        data = {EVENT_NAMES[event_type]: value}
    else:
        payload = frame or b""
    conn.execute(
        "INSERT INTO event_rows (id, event_id, timestamp, created_at, node_key, event_type, payload, decode_error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (id, event_id, timestamp, created_at, key, event_type, payload, decode_error))
    return data
