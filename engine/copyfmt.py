"""PostgreSQL binary COPY rows for the compact ``event_rows`` table, built straight from ring records.

The stream is ``COPY_HEADER``, then one tuple per row, then ``COPY_TRAILER``. A tuple is an int16
field count and, per field, an int32 length (-1 = NULL) and the value in the type's binary
``recv`` format: int8/int4/int2 big-endian, timestamptz = int64 µs since 2000-01-01 UTC,
text/bytea = the bytes.

A row is the event's typed columns and its wire payload; the JSON is rendered on read (REST,
export, the ``events`` view). The common row (a decoded event) is one ``struct.pack`` call plus
the record's own payload bytes; nothing is parsed. Everything else goes through ``encode_slow``,
which stores the whole frame and says why in ``decode_error``: the invariant readers rely on is
"decode_error IS NULL: payload = the fields after timestamp and discriminator; otherwise payload
= the frame as received (or rebuilt) and there is no data".
"""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta

from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.record import EVENT_HEADER, FLAG_MALFORMED

COLUMNS = ("id", "event_id", "timestamp", "created_at", "node_key", "event_type", "payload", "decode_error")
COPY_SQL = f"COPY event_rows ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)

PG_EPOCH_UNIX_US = 946_684_800_000_000
JCE_TO_PG_US = JCE_EPOCH_UNIX_US - PG_EPOCH_UNIX_US
# Readers turn timestamptz into Python datetimes, which end at year 9999: a row beyond that would
# break every query that returns it, although PostgreSQL itself would accept it.
_DT_MAX_PG_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
                 - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
JCE_TS_MAX = _DT_MAX_PG_US - JCE_TO_PG_US

HDR_SIZE = EVENT_HEADER.size
unpack_header = EVENT_HEADER.unpack_from

# count, id, event_id, timestamp, created_at, node_key, event_type, payload length
ROW_HEAD = struct.Struct(">hiqiqiqiqiiihi")
pack_head = ROW_HEAD.pack
ROW_TAIL = b"\xff\xff\xff\xff"  # decode_error NULL
FIELDS = len(COLUMNS)

_I = struct.Struct(">i")
_FRAME_HEAD = struct.Struct("<QB")

# "\u0000" preceded by an even number of backslashes is a JSON escape of U+0000 (an odd number
# means the backslash itself was escaped and the text is literally "\u0000").
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def escape_nul_json(js: bytes) -> bytes:
    """JSON text with every U+0000 escape turned into the literal text ``\\u0000`` (an escaped
    backslash, then "u0000"): JSONB rejects U+0000, and this keeps the JSON valid and lossless
    in meaning for a reader who knows the convention."""
    return _NUL_ESCAPE.sub(rb"\1\\\\u0000", js)


def clean_text(b: bytes) -> bytes:
    """Bytes that PostgreSQL accepts as text: valid UTF-8 without NUL."""
    return b.decode("utf-8", "replace").replace("\x00", "\\u0000").encode()


def fast_row(id_: int, eid: int, ts: int, ra: int, node_key: int, etype: int, payload: bytes) -> bytes:
    """The row of a decoded event whose timestamp readers can represent (``ts <= JCE_TS_MAX``)."""
    return b"".join((pack_head(FIELDS, 8, id_, 8, eid, 8, ts + JCE_TO_PG_US, 8, ra - PG_EPOCH_UNIX_US,
                               4, node_key, 2, etype, len(payload)), payload, ROW_TAIL))


def encode_slow(rec: bytes, node_key: int, reject: str | None = None) -> bytes:
    """The row for any EVENT record, including the cases the hot path leaves out: MALFORMED
    (decode_error = message, payload = frame), a timestamp outside what readers can represent
    (the arrival time stands in, payload = frame, decode_error says so), and a row PostgreSQL
    rejected (``reject`` = its message, payload = frame)."""
    _, flags, etype, jlen, id_, ra, ts, eid, _peer = unpack_header(rec)
    body = rec[HDR_SIZE:HDR_SIZE + jlen]
    raw = rec[HDR_SIZE + jlen:]
    error: bytes | None = None
    if flags & FLAG_MALFORMED:
        payload, error = raw, clean_text(body) or b"malformed"
    else:
        payload = _FRAME_HEAD.pack(ts, etype) + raw  # the frame as the node sent it
    if 0 <= ts <= JCE_TS_MAX:
        ts_pg = ts + JCE_TO_PG_US
        if error is None and reject is None:
            return fast_row(id_, eid, ts, ra, node_key, etype, raw)
    else:
        ts_pg = ra - PG_EPOCH_UNIX_US
        if error is None:
            error = f"timestamp {ts} out of range; the timestamp column holds the arrival time".encode()
    if reject is not None:
        error = clean_text(f"rejected by PostgreSQL: {reject}".encode())
    return b"".join((
        pack_head(FIELDS, 8, id_, 8, eid, 8, ts_pg, 8, ra - PG_EPOCH_UNIX_US, 4, node_key, 2, etype, len(payload)),
        payload,
        _I.pack(len(error)), error,
    ))


def copy_stream(rows: list[bytes]) -> bytes:
    return b"".join((COPY_HEADER, b"".join(rows), COPY_TRAILER))
