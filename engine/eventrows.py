"""Reading stored events: the SELECT over ``event_rows``, JSON rendered from the wire payload with
the codec, and id windows for walking events in id order without a btree on ``id``.

Used by the web tier's history (tart.web.store) and by tart-export and retention archives
(tart.engine.export): one place knows how a row turns into the REST envelope.

Ids are ``(t << 6) | ring`` with ``t`` the arrival time in µs (engine/ring.py), so "the newest
events before id X" lie in a window of ids just below X: the BRIN index on ``id`` finds a window
in a few block ranges, and a walk widens its window until it has enough rows.
"""

from __future__ import annotations

from typing import Any

from tart.engine.codec import DecodeError
from tart.engine.codec.events import EVENT_NAMES, decode_payload
from tart.engine.codec.jce import JCE_EPOCH_UNIX_US

# Times leave the server as unix µs: cheaper there than text, and here than datetimes.
SELECT = (
    "SELECT e.id, n.node_id, e.event_id, e.event_type,"
    " (extract(epoch FROM e.timestamp) * 1000000)::int8,"
    " e.payload,"
    " (extract(epoch FROM e.created_at) * 1000000)::int8,"
    " e.decode_error, n.implementation_name, n.implementation_version"
    " FROM {table} e LEFT JOIN nodes n ON n.node_key = e.node_key"
)
# Row positions in SELECT's result
R_ID, R_NODE, R_EID, R_TYPE, R_TS, R_PAYLOAD, R_CREATED, R_ERROR, R_NAME, R_VERSION = range(10)

ID_SHIFT = 6
# Newest-first walks start with 50 ms of ids (a page of 1000 at 20k events/s) and widen by what
# the last window yielded: a window's rows are all read and sorted (BRIN has no order), so a
# window much wider than the page needs costs in proportion, one much narrower a round trip.
FIRST_WINDOW_US = 50_000
WIDEN_MAX = 8
WIDEN_MIN = 2


def event_data(event_type: int, ts_unix_us: int, payload: bytes, decode_error: str | None) -> Any:
    """The event JSON object (``{"Tag": {...}}``) of a stored row, or None for a row that has a
    decode_error (its payload is the frame as received, not a decodable event)."""
    if decode_error is not None:
        return None
    try:
        d = decode_payload(event_type, ts_unix_us - JCE_EPOCH_UNIX_US, bytes(payload))
    except DecodeError:
        return None  # cannot happen for rows tart wrote; a hand-edited row shows no data
    return {EVENT_NAMES[event_type]: d[2]}


def id_of_unix_us(us: int) -> int:
    return us << ID_SHIFT


def next_width(width: int, found: int, missing: int) -> int:
    """The next window's width (in ids) after one of ``width`` found ``found`` rows and the page
    still lacks ``missing``: wide enough for the missing rows at the density just seen (with a
    margin), between WIDEN_MIN and WIDEN_MAX times the last."""
    if found <= 0:
        return width * WIDEN_MAX
    return int(width * min(WIDEN_MAX, max(WIDEN_MIN, 1.5 * missing / found)))


# Names of the daily event partitions, oldest first: every stored id is at or above the first
# one's day start (an id's time is its arrival time, which the partition bounds).
PARTITIONS_SQL = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'event_rows'::regclass ORDER BY 1"
)


def partition_day_start_us(name: str) -> int | None:
    """Unix µs at which the partition ``event_rows_YYYYMMDD`` begins (None for another name)."""
    import datetime as dt

    head, _, day = name.rpartition("_")
    if head != "event_rows" or len(day) != 8 or not day.isdigit():
        return None
    d = dt.datetime.strptime(day, "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(d.timestamp()) * 1_000_000
