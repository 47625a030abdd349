"""Node information: both parameter layouts, an unknown length, versions, strictness."""

from __future__ import annotations

import random
import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tart.engine.codec import DecodeError, NodeInfo, decode_node_info, encode_node_info

# (key, struct code) of GP 0.7 fetch selector 0, EVENTS-JSON.md section 3.2, written out here again.
GP07 = [
    ("deposit_per_item", "Q", 10), ("deposit_per_byte", "Q", 1), ("deposit_per_account", "Q", 100),
    ("core_count", "H", 341), ("min_turnaround_period", "I", 19200), ("epoch_period", "I", 600),
    ("max_accumulate_gas", "Q", 10_000_000), ("max_is_authorized_gas", "Q", 50_000_000),
    ("max_refine_gas", "Q", 5_000_000_000), ("block_gas_limit", "Q", 3_500_000_000),
    ("recent_block_count", "H", 8), ("max_work_items", "H", 16), ("max_dependencies", "H", 8),
    ("max_tickets_per_block", "H", 16), ("max_lookup_anchor_age", "I", 14400),
    ("tickets_attempts_number", "H", 2), ("auth_window", "H", 8), ("slot_period_sec", "H", 6),
    ("auth_queue_len", "H", 80), ("rotation_period", "H", 10), ("max_extrinsics", "H", 128),
    ("availability_timeout", "H", 5), ("val_count", "H", 1023), ("max_authorizer_code_size", "I", 64000),
    ("max_input", "I", 13_794_305), ("max_service_code_size", "I", 4_000_000), ("basic_piece_len", "I", 684),
    ("max_imports", "I", 3072), ("segment_piece_count", "I", 6), ("max_report_elective_data", "I", 49152),
    ("transfer_memo_size", "I", 128), ("max_exports", "I", 3072), ("epoch_tail_start", "I", 500),
]
DROPPED_IN_08 = {"tickets_attempts_number", "val_count", "basic_piece_len", "segment_piece_count"}
GP08 = [f for f in GP07 if f[0] not in DROPPED_IN_08]

GENESIS = bytes([7]) * 32
PEER = bytes(range(100, 132))
IPV6 = bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 5])


def params(fields) -> bytes:
    return b"".join(struct.pack("<" + code, value) for _, code, value in fields)


def s(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def message(version: int, param_bytes: bytes, gp: bytes = b"0.7.1", note: bytes = b"note") -> bytes:
    return (
        bytes([version]) + param_bytes + GENESIS + PEER + IPV6 + struct.pack("<H", 30333) + struct.pack("<I", 1)
        + s(b"PolkaJam") + s(b"0.1.0") + s(gp) + s(note)
    )


def check_common(info: NodeInfo) -> None:
    assert info.genesis == GENESIS
    assert info.peer_id == PEER
    assert info.node_id == PEER.hex()
    assert info.ipv6 == IPV6 and info.port == 30333 and info.flags == 1
    assert info.implementation_name == "PolkaJam" and info.implementation_version == "0.1.0"


def test_gp07_layout_134_bytes():
    raw = params(GP07)
    assert len(raw) == 134
    info = decode_node_info(message(0, raw))
    check_common(info)
    assert info.params_layout == "gp-0.7" and info.protocol_version == 0
    assert list(info.params.items()) == [(k, v) for k, _, v in GP07]
    assert info.core_count == 341 and info.params_raw == raw and info.gp_version == "0.7.1"
    obj = info.to_json_obj()
    assert list(obj) == ["params", "genesis", "details", "flags", "implementation_name", "implementation_version",
                         "gp_version", "additional_info", "protocol_version", "params_layout"]
    assert obj["genesis"] == "0x" + "07" * 32
    assert obj["details"] == {
        "peer_id": "0x" + PEER.hex(),
        "peer_address": {"ipv6": "0x00000000000000000000ffffcb007105", "port": 30333,
                         "address": "[::ffff:203.0.113.5]:30333"},
    }
    assert orjson.loads(orjson.dumps(obj)) == obj
    assert encode_node_info(info) == message(0, raw)


def test_gp08_layout_122_bytes():
    raw = params(GP08)
    assert len(raw) == 122
    info = decode_node_info(message(1, raw, gp=b"0.8.0"))
    check_common(info)
    assert info.params_layout == "gp-0.8" and info.protocol_version == 1
    assert list(info.params.items()) == [(k, v) for k, _, v in GP08]
    assert info.core_count == 341 and info.gp_version == "0.8.0"
    assert "params_raw" not in info.to_json_obj()
    assert encode_node_info(info) == message(1, raw, gp=b"0.8.0")


def test_unknown_length_keeps_raw_params():
    raw = params(GP07)[:24] + struct.pack("<H", 2) + bytes(range(104))  # 130 bytes
    assert len(raw) == 130
    info = decode_node_info(message(0, raw, gp=b"0.9.0"))
    check_common(info)
    assert info.params_layout == "unknown" and info.core_count == 2
    assert info.params_raw == raw
    obj = info.to_json_obj()
    assert obj["params_raw"] == "0x" + raw.hex() and obj["params_layout"] == "unknown"
    assert obj["params"] == {"core_count": 2}
    assert encode_node_info(info) == message(0, raw, gp=b"0.9.0")


def test_both_sizes_parse_gp_version_decides():
    # After 122 bytes of params the 122 reading sees name = 12 bytes ending in 0x00; the 134 reading
    # starts 12 bytes later, exactly on that 0x00 (an empty name), then reads the same version, GP
    # version and note. Both end exactly at the end of the message: only the GP string can decide.
    tail = GENESIS + PEER + IPV6 + struct.pack("<HI", 30333, 1)
    def msg(gp: bytes) -> bytes:
        return b"\x00" + params(GP08) + tail + s(b"ABCDEFGHIJK\x00") + s(b"1.0") + s(gp) + s(b"")
    info = decode_node_info(msg(b"0.8.0"))
    assert info.params_layout == "gp-0.8" and info.peer_id == PEER and info.implementation_name == "ABCDEFGHIJK\x00"
    info = decode_node_info(msg(b"0.7.1"))
    assert info.params_layout == "gp-0.7" and info.implementation_name == "" and info.peer_id != PEER


def test_stray_trailing_byte_is_not_taken_for_an_unknown_layout():
    # The unknown-length search could absorb a trailing 0x00 as an empty note by shifting the tail;
    # the shifted reading's GP version ("note") is no version, so the message is rejected.
    with pytest.raises(DecodeError):
        decode_node_info(message(0, params(GP07)) + b"\x00")


def test_versions():
    raw = params(GP07)
    assert decode_node_info(message(0, raw)).protocol_version == 0
    assert decode_node_info(message(1, raw)).protocol_version == 1
    for v in (2, 255):
        with pytest.raises(DecodeError) as info:
            decode_node_info(message(v, raw))
        assert info.value.field == "protocol_version" and info.value.event_type is None


def test_strictness():
    raw = params(GP07)
    good = message(0, raw)
    with pytest.raises(DecodeError):
        decode_node_info(b"")
    with pytest.raises(DecodeError):
        decode_node_info(good + b"\x00")  # trailing byte
    with pytest.raises(DecodeError):
        decode_node_info(good[:-1])
    with pytest.raises(DecodeError):
        decode_node_info(message(0, raw, gp=b"0.7.1-really-long-version"))  # 25 > 16
    with pytest.raises(DecodeError):
        decode_node_info(message(0, raw, note=b"\xff\xfe"))
    ok = decode_node_info(message(0, raw, note=b"a\x00b"))
    assert ok.additional_info == "a\x00b"
    assert b"a\\u0000b" in orjson.dumps(ok.to_json_obj())
    long_note = b"n" * 512
    info = decode_node_info(bytes([0]) + raw + GENESIS + PEER + IPV6 + struct.pack("<HI", 1, 0)
                            + s(b"x") + s(b"y") + s(b"0.7.1") + b"\x82\x00" + long_note)
    assert info.additional_info == "n" * 512


def test_fuzz_node_info_only_decode_error():
    rng = random.Random(99)
    base = [message(0, params(GP07)), message(1, params(GP08), gp=b"0.8.0")]
    for _ in range(1500):
        if rng.random() < 0.3:
            buf = rng.randbytes(rng.randrange(0, 400))
        else:
            b = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 4)):
                op = rng.random()
                if op < 0.5 and b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
                elif op < 0.75 and b:
                    del b[rng.randrange(len(b)) :]
                else:
                    pos = rng.randrange(len(b) + 1)
                    b[pos:pos] = rng.randbytes(rng.randrange(1, 4))
            buf = bytes(b)
        try:
            decode_node_info(buf)
        except DecodeError as exc:
            assert "internal" not in exc.reason


text = st.text(max_size=8)


def _bounded(n: int):
    return st.text(max_size=n).filter(lambda t: len(t.encode()) <= n)


@given(
    layout=st.sampled_from([GP07, GP08]),
    values=st.lists(st.integers(min_value=0, max_value=2**16 - 1), min_size=33, max_size=33),
    version=st.sampled_from([0, 1]),
    genesis=st.binary(min_size=32, max_size=32),
    peer=st.binary(min_size=32, max_size=32),
    ipv6=st.binary(min_size=16, max_size=16),
    port=st.integers(0, 65535),
    flags=st.integers(0, 2**32 - 1),
    name=_bounded(32),
    ver=_bounded(32),
    note=_bounded(512),
)
def test_roundtrip_both_layouts(layout, values, version, genesis, peer, ipv6, port, flags, name, ver, note):
    gp = "0.7.1" if layout is GP07 else "0.8.0"
    p = {k: v for (k, _, _), v in zip(layout, values, strict=False)}
    info = NodeInfo(version, p, "gp-0.7" if layout is GP07 else "gp-0.8", b"", p["core_count"], genesis, peer,
                    ipv6, port, flags, name, ver, gp, note)
    raw = encode_node_info(info)
    back = decode_node_info(raw)
    info.params_raw = raw[1 : 1 + (134 if layout is GP07 else 122)]
    assert back == info
    assert encode_node_info(back) == raw
