"""PostgreSQL binary COPY rows for the ``events`` table, built straight from ring records.

The stream is ``COPY_HEADER``, then one tuple per row, then ``COPY_TRAILER``. A tuple is an int16
field count and, per field, an int32 length (-1 = NULL) and the value in the type's binary
``recv`` format: int8/int2 big-endian, timestamptz = int64 µs since 2000-01-01 UTC, jsonb = a
version byte 1 then the JSON text, text/bytea = the bytes.

The common row (a decoded event without NUL) is two ``struct.pack`` calls around the record's
own JSON bytes; nothing is parsed. Everything else goes through ``encode_slow``.
"""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta

from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.record import EVENT_HEADER, FLAG_HAS_NUL, FLAG_MALFORMED

COLUMNS = ("id", "node_id", "event_id", "event_type", "timestamp", "data", "created_at", "raw", "decode_error")
COPY_SQL = f"COPY events ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

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

# count, id, node_id (64 hex chars), event_id, event_type, timestamp, jsonb length + version byte
ROW_HEAD = struct.Struct(">hiqi64siqihiqiB")
# created_at, raw NULL, decode_error NULL
ROW_TAIL = struct.Struct(">iqii")
pack_head = ROW_HEAD.pack
pack_tail = ROW_TAIL.pack

_I = struct.Struct(">i")
_TS = struct.Struct(">iq")
_FIXED = struct.Struct(">hiqi64siqih")  # count .. event_type

# "\u0000" preceded by an even number of backslashes is a JSON escape of U+0000 (an odd number
# means the backslash itself was escaped and the text is literally "\u0000").
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def escape_nul_json(js: bytes) -> bytes:
    """JSON text with every U+0000 escape turned into the literal text ``\\u0000`` (an escaped
    backslash, then "u0000"): JSONB rejects U+0000, and this keeps the JSON valid and lossless
    in meaning for a reader who knows the convention (the raw frame is kept as well)."""
    return _NUL_ESCAPE.sub(rb"\1\\\\u0000", js)


def clean_text(b: bytes) -> bytes:
    """Bytes that PostgreSQL accepts as text: valid UTF-8 without NUL."""
    return b.decode("utf-8", "replace").replace("\x00", "\\u0000").encode()


def _field(b: bytes | None) -> bytes:
    if b is None:
        return b"\xff\xff\xff\xff"
    return _I.pack(len(b)) + b


def encode_slow(rec: bytes, node_hex: bytes, reject: str | None = None) -> bytes:
    """The row for any EVENT record, including the cases the hot path leaves out: MALFORMED
    (data NULL, decode_error = message, raw = frame), HAS_NUL (escaped data, raw kept), a timestamp
    outside what readers can represent (the arrival time stands in, and decode_error says so), and
    a row PostgreSQL rejected (``reject`` = its message: data NULL, raw = frame or JSON)."""
    _, flags, etype, jlen, id_, ra, ts, eid, _peer = unpack_header(rec)
    body = rec[HDR_SIZE:HDR_SIZE + jlen]
    raw = rec[HDR_SIZE + jlen:]
    data: bytes | None
    error: bytes | None = None
    if flags & FLAG_MALFORMED:
        data, error = None, clean_text(body) or b"malformed"
    elif flags & FLAG_HAS_NUL:
        data = b"\x01" + escape_nul_json(body)
    else:
        data = b"\x01" + body
    if 0 <= ts <= JCE_TS_MAX:
        ts_pg = ts + JCE_TO_PG_US
    else:
        ts_pg = ra - PG_EPOCH_UNIX_US
        if error is None:
            error = f"timestamp {ts} out of range; the timestamp column holds the arrival time".encode()
    if reject is not None:
        if not raw and not (flags & FLAG_MALFORMED):
            raw = body  # a decoded event has no frame in the ring: keep its JSON
        data = None
        error = clean_text(f"rejected by PostgreSQL: {reject}".encode())
    return b"".join((
        _FIXED.pack(9, 8, id_, 64, node_hex, 8, eid, 2, etype),
        _TS.pack(8, ts_pg),
        _field(data),
        _TS.pack(8, ra - PG_EPOCH_UNIX_US),
        _field(raw or None),
        _field(error),
    ))


def copy_stream(rows: list[bytes]) -> bytes:
    return b"".join((COPY_HEADER, b"".join(rows), COPY_TRAILER))
