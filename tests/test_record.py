"""Ring record formats: exact byte layout (DESIGN.md) and round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tart.engine import record as rec

u8 = st.integers(0, 255)
u64 = st.integers(0, 2**64 - 1)
peer = st.binary(min_size=32, max_size=32)


def test_struct_sizes_match_design():
    assert rec.EVENT_HEADER.size == 72
    assert rec.NODE_UP_HEADER.size == 56
    assert rec.NODE_DOWN_RECORD.size == 72
    assert (rec.KIND_EVENT, rec.KIND_NODE_UP, rec.KIND_NODE_DOWN) == (1, 2, 3)
    assert (rec.FLAG_MALFORMED, rec.FLAG_HAS_NUL) == (1, 2)


def test_event_byte_layout():
    pid = bytes(range(32))
    b = rec.pack_event(
        flags=rec.FLAG_HAS_NUL, event_type=11, id=0x0102030405060708, received_at=2, timestamp=3,
        event_id=4, peer_id=pid, json=b'{"A":{}}', raw=b"\x00\x01",
    )
    assert b[0] == 1 and b[1] == 2 and b[2] == 11 and b[3] == 0
    assert struct.unpack_from("<I", b, 4)[0] == 8
    assert struct.unpack_from("<QQQQ", b, 8) == (0x0102030405060708, 2, 3, 4)
    assert b[40:72] == pid and b[72:80] == b'{"A":{}}' and b[80:] == b"\x00\x01"
    assert rec.record_kind(b) == rec.KIND_EVENT


def test_node_records_byte_layout():
    pid = b"\xaa" * 32
    up = rec.pack_node_up(connected_at=10, conn_id=20, peer_id=pid, info_json=b"{}")
    assert up[0] == 2 and up[1:8] == b"\0" * 7
    assert struct.unpack_from("<QQ", up, 8) == (10, 20) and up[24:56] == pid and up[56:] == b"{}"
    down = rec.pack_node_down(disconnected_at=30, conn_id=20, peer_id=pid, connected_at=10, events=99)
    assert down[0] == 3 and len(down) == 72
    assert struct.unpack_from("<QQ", down, 8) == (30, 20) and down[24:56] == pid
    assert struct.unpack_from("<QQ", down, 56) == (10, 99)
    assert rec.record_kind(up) == rec.KIND_NODE_UP and rec.record_kind(down) == rec.KIND_NODE_DOWN


@given(flags=st.integers(0, 3), event_type=u8, id_=u64, received_at=u64, timestamp=u64, event_id=u64,
       peer_id=peer, json=st.binary(max_size=400), raw=st.binary(max_size=200))
def test_event_round_trip(flags, event_type, id_, received_at, timestamp, event_id, peer_id, json, raw):
    b = rec.pack_event(flags=flags, event_type=event_type, id=id_, received_at=received_at,
                       timestamp=timestamp, event_id=event_id, peer_id=peer_id, json=json, raw=raw)
    e = rec.unpack_event(b)
    assert e == (flags, event_type, id_, received_at, timestamp, event_id, peer_id, json, raw)
    assert e.id == id_ and e.json == json and e.raw == raw
    assert e.malformed == bool(flags & 1) and e.has_nul == bool(flags & 2)
    assert rec.unpack_event(memoryview(b)) == e


@given(connected_at=u64, conn_id=u64, peer_id=peer, info=st.binary(max_size=300))
def test_node_up_round_trip(connected_at, conn_id, peer_id, info):
    b = rec.pack_node_up(connected_at=connected_at, conn_id=conn_id, peer_id=peer_id, info_json=info)
    assert rec.unpack_node_up(b) == rec.NodeUpRecord(connected_at, conn_id, peer_id, info)


@given(disconnected_at=u64, conn_id=u64, peer_id=peer, connected_at=u64, events=u64)
def test_node_down_round_trip(disconnected_at, conn_id, peer_id, connected_at, events):
    b = rec.pack_node_down(disconnected_at=disconnected_at, conn_id=conn_id, peer_id=peer_id,
                           connected_at=connected_at, events=events)
    r = rec.unpack_node_down(b)
    assert r == (disconnected_at, conn_id, peer_id, connected_at, events)
    assert r.events == events and r.connected_at == connected_at


def test_unpackers_reject_wrong_kind_and_short_buffers():
    pid = b"\x01" * 32
    ev = rec.pack_event(flags=0, event_type=0, id=1, received_at=0, timestamp=0, event_id=0,
                        peer_id=pid, json=b"{}")
    up = rec.pack_node_up(connected_at=1, conn_id=1, peer_id=pid, info_json=b"{}")
    down = rec.pack_node_down(disconnected_at=1, conn_id=1, peer_id=pid, connected_at=1, events=0)
    with pytest.raises(ValueError):
        rec.unpack_event(up)
    with pytest.raises(ValueError):
        rec.unpack_node_up(ev)
    with pytest.raises(ValueError):
        rec.unpack_node_down(b"\x02" + down[1:])
    with pytest.raises(ValueError):
        rec.unpack_event(ev[:71])
    with pytest.raises(ValueError):
        rec.unpack_event(ev[:73])  # json_len says 2 bytes, only 1 present
    with pytest.raises(ValueError):
        rec.unpack_node_down(down[:-1])
    with pytest.raises(ValueError):
        rec.record_kind(b"")


def test_peer_id_must_be_32_bytes():
    with pytest.raises(ValueError):
        rec.pack_event(flags=0, event_type=0, id=1, received_at=0, timestamp=0, event_id=0,
                       peer_id=b"short", json=b"{}")
    with pytest.raises(ValueError):
        rec.pack_node_up(connected_at=1, conn_id=1, peer_id=b"x" * 33, info_json=b"{}")
    with pytest.raises(ValueError):
        rec.pack_node_down(disconnected_at=1, conn_id=1, peer_id=b"", connected_at=1, events=0)
