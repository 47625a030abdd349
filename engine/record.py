"""Ring record formats: the only byte layout that crosses processes (see docs/DESIGN.md).

All little-endian; every record starts with ``kind: u8``.

EVENT (``KIND_EVENT`` = 1), header ``struct "<BBBxIQQQQ32s"`` (72 bytes) then the JSON part
(``json_len`` bytes) then the raw bytes (the rest of the record)::

    pack_event(*, flags, event_type, id, received_at, timestamp, event_id, peer_id, json, raw=b"")
    unpack_event(buf) -> EventRecord(flags, event_type, id, received_at, timestamp, event_id,
                                     peer_id, json, raw)   # .malformed, .has_nul

  ``id`` is tart's event id (``Ring.next_id()``), ``event_id`` the JIP-3 per-connection id,
  ``received_at`` unix µs, ``timestamp`` the raw JIP-3 timestamp (µs since the JAM epoch),
  ``peer_id`` 32 bytes, ``json`` the event JSON (or the decode error text when
  ``flags & FLAG_MALFORMED``), ``raw`` the wire payload (see below).

NODE_UP (``KIND_NODE_UP`` = 2), ``struct "<BxxxxxxxQQ32s"`` then the info JSON::

    pack_node_up(*, connected_at, conn_id, peer_id, info_json) -> bytes
    unpack_node_up(buf) -> NodeUpRecord(connected_at, conn_id, peer_id, info_json)

NODE_DOWN (``KIND_NODE_DOWN`` = 3), ``struct "<BxxxxxxxQQ32sQQ"``, nothing after it::

    pack_node_down(*, disconnected_at, conn_id, peer_id, connected_at, events) -> bytes
    unpack_node_down(buf) -> NodeDownRecord(disconnected_at, conn_id, peer_id, connected_at, events)

RING_RESET (``KIND_RING_RESET`` = 4), ``struct "<BxxxxxxxQQ"``: the first record a (re)started
acceptor writes. Every connection its ring announced before it is gone (the previous producer
died without writing their NODE_DOWN); ``reset_id`` is a fresh ``Ring.next_id()``, so its low 6 bits
name the ring and every earlier conn_id of that ring is smaller::

    pack_ring_reset(*, at, reset_id) -> bytes
    unpack_ring_reset(buf) -> RingResetRecord(at, reset_id)

For a decoded event the raw part is the wire payload (the frame after its 8-byte timestamp and
1-byte discriminator): the writer stores it as is. For a MALFORMED one it is the whole frame.

Hot paths read single fields through the accessors below (``event_id_of``, ``event_received_at``,
...), and whole headers with ``event_header`` (a tuple in ``EVENT_FIELDS`` order), so no other
module knows a field's position.

``record_kind(buf)`` returns the first byte. Unpackers accept bytes, bytearray or memoryview,
return ``bytes`` fields (copies), and raise ``ValueError`` on a wrong kind or a short buffer.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

KIND_EVENT = 1
KIND_NODE_UP = 2
KIND_NODE_DOWN = 3
KIND_RING_RESET = 4

FLAG_MALFORMED = 1
FLAG_HAS_NUL = 2

EVENT_HEADER = struct.Struct("<BBBxIQQQQ32s")
NODE_UP_HEADER = struct.Struct("<BxxxxxxxQQ32s")
NODE_DOWN_RECORD = struct.Struct("<BxxxxxxxQQ32sQQ")
RING_RESET_RECORD = struct.Struct("<BxxxxxxxQQ")

PEER_ID_LEN = 32

# Field order of ``event_header(buf)``; unpack it as
# ``kind, flags, etype, json_len, id, received_at, timestamp, event_id, peer_id = event_header(rec)``.
EVENT_FIELDS = ("kind", "flags", "event_type", "json_len", "id", "received_at", "timestamp", "event_id", "peer_id")
EVENT_HEADER_SIZE = EVENT_HEADER.size
event_header = EVENT_HEADER.unpack_from

_U64 = struct.Struct("<Q")
_OFF_ID, _OFF_RECEIVED = 8, 16


def event_id_of(rec: bytes) -> int:
    """tart's id of an EVENT record."""
    return _U64.unpack_from(rec, _OFF_ID)[0]


def event_received_at(rec: bytes) -> int:
    """received_at (unix µs) of an EVENT record."""
    return _U64.unpack_from(rec, _OFF_RECEIVED)[0]


def event_peer_id(rec: bytes) -> bytes:
    return rec[40:72]


_ev_pack = EVENT_HEADER.pack
_ev_unpack = EVENT_HEADER.unpack_from
_EV_SIZE = EVENT_HEADER.size


class EventRecord(NamedTuple):
    flags: int
    event_type: int
    id: int
    received_at: int
    timestamp: int
    event_id: int
    peer_id: bytes
    json: bytes
    raw: bytes

    @property
    def malformed(self) -> bool:
        return bool(self.flags & FLAG_MALFORMED)

    @property
    def has_nul(self) -> bool:
        return bool(self.flags & FLAG_HAS_NUL)


class NodeUpRecord(NamedTuple):
    connected_at: int
    conn_id: int
    peer_id: bytes
    info_json: bytes


class NodeDownRecord(NamedTuple):
    disconnected_at: int
    conn_id: int
    peer_id: bytes
    connected_at: int
    events: int


def _check_peer_id(peer_id: bytes) -> None:
    # struct's "32s" silently pads or truncates; a wrong-sized peer id is a caller bug.
    if len(peer_id) != PEER_ID_LEN:
        raise ValueError(f"peer_id must be {PEER_ID_LEN} bytes, got {len(peer_id)}")


def record_kind(buf: bytes | bytearray | memoryview) -> int:
    if not len(buf):
        raise ValueError("empty record")
    return buf[0]


def pack_event(
    *,
    flags: int,
    event_type: int,
    id: int,
    received_at: int,
    timestamp: int,
    event_id: int,
    peer_id: bytes,
    json: bytes,
    raw: bytes = b"",
) -> bytes:
    _check_peer_id(peer_id)
    head = _ev_pack(KIND_EVENT, flags, event_type, len(json), id, received_at, timestamp, event_id, peer_id)
    if raw:
        return b"".join((head, json, raw))
    return head + json


def unpack_event(buf: bytes | bytearray | memoryview) -> EventRecord:
    if len(buf) < _EV_SIZE:
        raise ValueError(f"EVENT record too short: {len(buf)} bytes")
    kind, flags, event_type, json_len, id_, received_at, timestamp, event_id, peer_id = _ev_unpack(buf)
    if kind != KIND_EVENT:
        raise ValueError(f"not an EVENT record (kind {kind})")
    end = _EV_SIZE + json_len
    if end > len(buf):
        raise ValueError(f"EVENT json_len {json_len} exceeds the record ({len(buf)} bytes)")
    data = bytes(buf)  # one copy; the slices below are then cheap bytes slices
    return EventRecord(
        flags, event_type, id_, received_at, timestamp, event_id, peer_id, data[_EV_SIZE:end], data[end:]
    )


def pack_node_up(*, connected_at: int, conn_id: int, peer_id: bytes, info_json: bytes) -> bytes:
    _check_peer_id(peer_id)
    return NODE_UP_HEADER.pack(KIND_NODE_UP, connected_at, conn_id, peer_id) + info_json


def unpack_node_up(buf: bytes | bytearray | memoryview) -> NodeUpRecord:
    size = NODE_UP_HEADER.size
    if len(buf) < size:
        raise ValueError(f"NODE_UP record too short: {len(buf)} bytes")
    kind, connected_at, conn_id, peer_id = NODE_UP_HEADER.unpack_from(buf)
    if kind != KIND_NODE_UP:
        raise ValueError(f"not a NODE_UP record (kind {kind})")
    return NodeUpRecord(connected_at, conn_id, peer_id, bytes(buf[size:]))


def pack_node_down(*, disconnected_at: int, conn_id: int, peer_id: bytes, connected_at: int, events: int) -> bytes:
    _check_peer_id(peer_id)
    return NODE_DOWN_RECORD.pack(KIND_NODE_DOWN, disconnected_at, conn_id, peer_id, connected_at, events)


def unpack_node_down(buf: bytes | bytearray | memoryview) -> NodeDownRecord:
    if len(buf) != NODE_DOWN_RECORD.size:
        raise ValueError(f"NODE_DOWN record must be {NODE_DOWN_RECORD.size} bytes, got {len(buf)}")
    kind, disconnected_at, conn_id, peer_id, connected_at, events = NODE_DOWN_RECORD.unpack(buf)
    if kind != KIND_NODE_DOWN:
        raise ValueError(f"not a NODE_DOWN record (kind {kind})")
    return NodeDownRecord(disconnected_at, conn_id, peer_id, connected_at, events)


class RingResetRecord(NamedTuple):
    at: int
    reset_id: int


def pack_ring_reset(*, at: int, reset_id: int) -> bytes:
    return RING_RESET_RECORD.pack(KIND_RING_RESET, at, reset_id)


def unpack_ring_reset(buf: bytes | bytearray | memoryview) -> RingResetRecord:
    if len(buf) != RING_RESET_RECORD.size:
        raise ValueError(f"RING_RESET record must be {RING_RESET_RECORD.size} bytes, got {len(buf)}")
    kind, at, reset_id = RING_RESET_RECORD.unpack(buf)
    if kind != KIND_RING_RESET:
        raise ValueError(f"not a RING_RESET record (kind {kind})")
    return RingResetRecord(at, reset_id)
