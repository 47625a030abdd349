"""Hand-built JIP-3 byte vectors, one or more per discriminator, written from the spec text, and the
decoder's strictness against them (bad bytes, truncation, trailing bytes, fuzzing).

Bytes are assembled field by field with struct.pack and literals (never with tart's encoder);
each vector carries the JSON value that EVENTS-JSON.md section 2 + NOTES.md prescribe.
"""

from __future__ import annotations

import random
import struct

import orjson
import pytest

from tart.engine.codec import EVENT_NAMES, DecodeError, decode_event, encode_event, event_json

C = 4  # core count used with these vectors: Status carries 4 bytes, the bitfield 1 byte
TS = 1_000_000


def u8(x: int) -> bytes:
    return struct.pack("<B", x)


def u16(x: int) -> bytes:
    return struct.pack("<H", x)


def u32(x: int) -> bytes:
    return struct.pack("<I", x)


def u64(x: int) -> bytes:
    return struct.pack("<Q", x)


def H(i: int) -> bytes:  # noqa: N802 - reads as the spec's Hash
    return bytes([i]) * 32


def hx(i: int) -> str:
    return "0x" + f"{i:02x}" * 32


def s(text: bytes) -> bytes:
    """String with a one-byte GP length (valid below 128)."""
    assert len(text) < 128
    return bytes([len(text)]) + text


PA_BYTES = bytes(10) + b"\xff\xff" + bytes([1, 2, 3, 4]) + u16(30333)
PA_JSON = {"ipv6": "0x00000000000000000000ffff01020304", "port": 30333, "address": "[::ffff:1.2.3.4]:30333"}
PA6_BYTES = bytes(15) + b"\x01" + u16(40000)
PA6_JSON = {"ipv6": "0x00000000000000000000000000000001", "port": 40000, "address": "[::1]:40000"}

OUTLINE_BYTES = u32(1000) + H(0x11) + u32(1) + u32(2) + u32(3) + u32(4) + u32(5) + u32(6)
OUTLINE_JSON = {
    "size_bytes": 1000,
    "hash": hx(0x11),
    "num_tickets": 1,
    "num_preimages": 2,
    "total_preimages_size": 3,
    "num_guarantees": 4,
    "num_assurances": 5,
    "num_dispute_verdicts": 6,
}


def ec(g: int, t: int) -> dict:
    return {"gas_used": g, "elapsed_ns": t}


ACC_BYTES = (
    u32(1) + u32(2) + u32(3) + u64(4) + u64(5) + u64(6)
    + u64(1) + u64(1) + u64(2) + u64(2) + u64(3) + u64(3) + u64(4) + u64(4) + u64(5) + u64(5)
    + u64(9) + u64(6) + u64(6)
)
ACC_JSON = {
    "num_calls": 1,
    "num_transfers": 2,
    "num_items": 3,
    "total": ec(4, 5),
    "load_ns": 6,
    "host_call": {
        "state": ec(1, 1),
        "lookup": ec(2, 2),
        "preimage": ec(3, 3),
        "service": ec(4, 4),
        "transfer": ec(5, 5),
        "transfer_dest_gas": 9,
        "other": ec(6, 6),
    },
}
REFINE_BYTES = u64(1) + u64(2) + u64(3) + b"".join(u64(i) + u64(i) for i in range(1, 6))
REFINE_JSON = {
    "total": ec(1, 2),
    "load_ns": 3,
    "host_call": {"lookup": ec(1, 1), "vm": ec(2, 2), "mem": ec(3, 3), "invoke": ec(4, 4), "other": ec(5, 5)},
}
ITEM_BYTES = (
    u32(1) + u32(2) + u64(3) + u64(4) + u32(5)
    + b"\x02" + H(0x0B) + u16(3) + H(0x0C) + u16(0x8004)
    + u16(6)
)
ITEM_JSON = {
    "service_id": 1,
    "payload_size": 2,
    "refine_gas_limit": 3,
    "accumulate_gas_limit": 4,
    "sum_of_extrinsic_lengths": 5,
    "imports": [
        {"root_identifier": {"SegmentsRoot": hx(0x0B)}, "export_index": 3},
        {"root_identifier": {"WorkPackageHash": hx(0x0C)}, "export_index": 4},
    ],
    "num_exported_segments": 6,
}
WP_BYTES = u32(100) + H(8) + H(9) + u32(5) + b"\x01" + H(10) + b"\x01" + ITEM_BYTES
WP_JSON = {
    "work_package_size": 100,
    "work_package_hash": hx(8),
    "anchor": hx(9),
    "lookup_anchor_slot": 5,
    "prerequisites": [hx(10)],
    "work_items": [ITEM_JSON],
}
GUAR_BYTES = H(4) + u32(9) + b"\x03" + u16(1) + u16(2) + u16(3)
GUAR_JSON = {"work_report_hash": hx(4), "slot": 9, "guarantors": [1, 2, 3]}


def _id(key: str, n: int = 7) -> tuple[bytes, dict]:
    return u64(n), {key: n}


def _failed(key: str) -> tuple[bytes, dict]:
    return u64(7) + s(b"boom"), {key: 7, "reason": "boom"}


# (discriminator, body bytes after timestamp+discriminator, JSON value after "timestamp")
VECTORS: list[tuple[int, bytes, dict]] = [
    (0, u64(9) + u64(2**64 - 1), {"last_timestamp": 9, "num": 2**64 - 1}),
    (10, u32(1) + u32(2) + u32(3) + bytes([0, 1, 2, 255]) + u32(4) + u64(5) + u32(6) + u32(7),
     {"num_peers": 1, "num_val_peers": 2, "num_sync_peers": 3, "num_guarantees": [0, 1, 2, 255],
      "num_shards": 4, "shards_size": 5, "num_preimages": 6, "preimages_size": 7}),
    (11, u32(42) + H(0xAA), {"slot": 42, "hash": hx(0xAA)}),
    (12, u32(41) + H(0xBB), {"slot": 41, "hash": hx(0xBB)}),
    (13, b"\x01", {"synced": True}),
    (13, b"\x00", {"synced": False}),
    (20, PA_BYTES, {"from": PA_JSON}),
    (21, PA6_BYTES, {"from": PA6_JSON}),
    (22, *_failed("connecting_id")),
    (23, u64(3) + H(1), {"connecting_id": 3, "peer_id": hx(1)}),
    (24, H(2) + PA_BYTES, {"to": {"peer_id": hx(2), "peer_address": PA_JSON}}),
    (25, *_failed("connecting_id")),
    (26, *_id("connecting_id")),
    (27, H(1) + b"\x00" + s(b"bye"), {"peer": hx(1), "terminator": None, "reason": "bye"}),
    (27, H(1) + b"\x01\x01" + s(b""), {"peer": hx(1), "terminator": "Remote", "reason": ""}),
    (27, H(1) + b"\x01\x00" + s(b"x"), {"peer": hx(1), "terminator": "Local", "reason": "x"}),
    (28, H(3) + s(b"bad sig"), {"peer": hx(3), "reason": "bad sig"}),
    (40, u32(10) + H(5), {"slot": 10, "parent": hx(5)}),
    (41, *_failed("authoring_id")),
    (42, u64(8) + OUTLINE_BYTES, {"authoring_id": 8, "outline": OUTLINE_JSON}),
    (43, u32(11) + OUTLINE_BYTES, {"slot": 11, "outline": OUTLINE_JSON}),
    (44, *_failed("importing_id")),
    (45, *_id("importing_id")),
    (46, *_failed("authoring_or_importing_id")),
    (47, u64(3) + b"\x01" + u32(7) + ACC_BYTES, {"authoring_or_importing_id": 3, "accumulate_costs": [[7, ACC_JSON]]}),
    (47, u64(3) + b"\x00", {"authoring_or_importing_id": 3, "accumulate_costs": []}),
    (60, H(1) + b"\x00", {"peer": hx(1), "opener": "Local"}),
    (61, H(1) + b"\x01" + s(b"done"), {"peer": hx(1), "closer": "Remote", "reason": "done"}),
    (62, H(1) + b"\x01" + u32(77) + H(2), {"peer": hx(1), "announcer": "Remote", "slot": 77, "hash": hx(2)}),
    (63, H(5) + H(6) + b"\x01" + u32(10),
     {"recipient": hx(5), "hash": hx(6), "direction": "Descending", "max_blocks": 10}),
    (64, H(5), {"sender": hx(5)}),
    (65, *_failed("request_id")),
    (66, *_id("request_id")),
    (67, u64(4) + H(6) + b"\x00" + u32(3), {"request_id": 4, "hash": hx(6), "direction": "Ascending", "max_blocks": 3}),
    (68, u64(4) + u32(12) + OUTLINE_BYTES + b"\x01",
     {"request_id": 4, "slot": 12, "outline": OUTLINE_JSON, "last": True}),
    (80, u32(5), {"epoch": 5}),
    (81, *_failed("generating_id")),
    (82, u64(1) + b"\x02" + H(1) + H(2), {"generating_id": 1, "ids": [hx(1), hx(2)]}),
    (83, H(1) + b"\x00" + b"\x01" + s(b"t"), {"peer": hx(1), "sender": "Local", "from_proxy": True, "reason": "t"}),
    (84, H(1) + b"\x01" + b"\x00" + u32(6) + b"\x01" + H(9),
     {"peer": hx(1), "sender": "Remote", "from_proxy": False, "epoch": 6, "attempt": 1, "id": hx(9)}),
    (90, H(1) + b"\x01", {"builder": hx(1), "bundle": True}),
    (91, H(2), {"primary": hx(2)}),
    (92, *_failed("submission_or_share_id")),
    (93, u64(1) + u16(2) + H(3), {"submission_or_share_id": 1, "core": 2, "hash": hx(3)}),
    (94, u64(1) + u16(2) + WP_BYTES, {"submission_or_share_id": 1, "core": 2, "outline": WP_JSON}),
    (95, u64(2) + u64(1) + u64(2) + u64(3) + u64(4) + u64(5),
     {"submission_or_share_id": 2, "cost": {"total": ec(1, 2), "load_ns": 3, "host_call": ec(4, 5)}}),
    (96, *_id("submission_or_share_id")),
    (97, *_id("submission_or_share_id")),
    (98, u64(1) + H(4), {"submission_id": 1, "secondary": hx(4)}),
    (99, u64(1) + H(4) + s(b"nope"), {"submission_id": 1, "secondary": hx(4), "reason": "nope"}),
    (100, u64(1) + H(4), {"submission_id": 1, "secondary": hx(4)}),
    (101, u64(2) + b"\x01" + REFINE_BYTES, {"submission_or_share_id": 2, "costs": [REFINE_JSON]}),
    (102, u64(2) + H(1) + u32(500) + H(2) + H(3),
     {"submission_or_share_id": 2,
      "outline": {"work_report_hash": hx(1), "bundle_size": 500, "erasure_root": hx(2), "segments_root": hx(3)}}),
    (103, *_id("share_id")),
    (104, u64(1) + H(4), {"submission_id": 1, "secondary": hx(4)}),
    (105, u64(1) + GUAR_BYTES, {"submission_id": 1, "outline": GUAR_JSON}),
    (106, u64(1) + H(5), {"built_id": 1, "recipient": hx(5)}),
    (107, *_failed("sending_id")),
    (108, *_id("sending_id")),
    (109, *_id("submission_id")),
    (110, H(6), {"sender": hx(6)}),
    (111, *_failed("receiving_id")),
    (112, u64(1) + GUAR_BYTES, {"receiving_id": 1, "outline": GUAR_JSON}),
    (113, GUAR_BYTES + b"\x02", {"outline": GUAR_JSON, "reason": "CannotReportOnChain"}),
    (113, GUAR_BYTES + b"\x04", {"outline": GUAR_JSON, "reason": "Other"}),
    (120, H(1) + H(2) + u16(3), {"guarantor": hx(1), "erasure_root": hx(2), "shard": 3}),
    (121, H(1), {"assurer": hx(1)}),
    (122, *_failed("request_id")),
    (123, *_id("request_id")),
    (124, u64(1) + H(2) + u16(3), {"request_id": 1, "erasure_root": hx(2), "shard": 3}),
    (125, *_id("request_id")),
    (126, H(3) + b"\x0d", {"statement": {"anchor": hx(3), "bitfield": "0x0d"}}),
    (127, u64(1) + H(2) + s(b"r"), {"distributing_id": 1, "recipient": hx(2), "reason": "r"}),
    (128, u64(1) + H(2), {"distributing_id": 1, "recipient": hx(2)}),
    (129, *_id("distributing_id")),
    (130, H(2) + s(b"r"), {"sender": hx(2), "reason": "r"}),
    (131, H(2) + H(3), {"sender": hx(2), "anchor": hx(3)}),
    (140, u64(1) + H(2) + u16(3), {"audit_id": 1, "assurer": hx(2), "shard": 3}),
    (141, H(2), {"auditor": hx(2)}),
    (142, *_failed("request_id")),
    (143, *_id("request_id")),
    (144, u64(1) + H(2) + u16(3), {"request_id": 1, "erasure_root": hx(2), "shard": 3}),
    (145, *_id("request_id")),
    (146, u64(7) + b"\x01", {"audit_id": 7, "kind": "Trivial"}),
    (146, u64(7) + b"\x00", {"audit_id": 7, "kind": "NonTrivial"}),
    (147, *_id("audit_id")),
    (148, u64(1) + H(2), {"audit_id": 1, "guarantor": hx(2)}),
    (149, H(2), {"auditor": hx(2)}),
    (150, *_failed("request_id")),
    (151, *_id("request_id")),
    (152, u64(1) + H(2), {"request_id": 1, "erasure_root": hx(2)}),
    (153, *_id("request_id")),
    (160, u64(1) + H(2) + H(3), {"submission_id": 1, "work_package_hash": hx(2), "segments_root": hx(3)}),
    (161, u64(1) + H(3) + H(4), {"submission_id": 1, "segments_root": hx(3), "erasure_root": hx(4)}),
    (162, u64(1) + H(7) + b"\x01" + b"\x02" + u16(1) + u16(2) + u16(0x8003) + u16(4),
     {"submission_id": 1, "assurer": hx(7), "proofs": True, "shards": [[1, 2], [0x8003, 4]]}),
    (163, H(7) + b"\x00", {"sender": hx(7), "proofs": False}),
    (164, *_failed("request_id")),
    (165, *_id("request_id")),
    (166, u64(1) + u16(12), {"request_id": 1, "num": 12}),
    (167, *_id("request_id")),
    (168, u64(1) + b"\x02" + u16(5) + u16(0x8001) + b"\x00",
     {"submission_id": 1, "segments": [5, 0x8001], "kind": "NonTrivial"}),
    (169, *_failed("reconstructing_id")),
    (170, *_id("reconstructing_id")),
    (171, u64(1) + b"\x01" + u16(9) + s(b"proof"), {"submission_id": 1, "segments": [9], "reason": "proof"}),
    (172, u64(1) + b"\x02" + u16(1) + u16(2), {"submission_id": 1, "segments": [1, 2]}),
    (173, u64(1) + H(2) + b"\x01" + u16(3), {"submission_id": 1, "prev_guarantor": hx(2), "segments": [3]}),
    (174, H(2), {"guarantor": hx(2)}),
    (175, *_failed("request_id")),
    (176, *_id("request_id")),
    (177, u64(1) + u16(8), {"request_id": 1, "num": 8}),
    (178, *_id("request_id")),
    (190, H(1) + b"\x01" + s(b"no"), {"peer": hx(1), "announcer": "Remote", "reason": "no"}),
    (191, H(1) + b"\x00" + u32(5) + H(2) + u32(100),
     {"peer": hx(1), "announcer": "Local", "service": 5, "hash": hx(2), "length": 100}),
    (192, u32(5) + H(2) + u32(100) + b"\x04", {"service": 5, "hash": hx(2), "length": 100, "reason": "BadLength"}),
    (193, H(1) + H(2), {"recipient": hx(1), "hash": hx(2)}),
    (194, H(1), {"sender": hx(1)}),
    (195, *_failed("request_id")),
    (196, *_id("request_id")),
    (197, u64(1) + H(2), {"request_id": 1, "hash": hx(2)}),
    (198, u64(1) + u32(64), {"request_id": 1, "length": 64}),
    (199, H(2) + u32(64) + b"\x02", {"hash": hx(2), "length": 64, "reason": "TooManyPreimages"}),
]

TAGS = {
    0: "Dropped", 10: "Status", 11: "BestBlockChanged", 12: "FinalizedBlockChanged", 13: "SyncStatusChanged",
    20: "ConnectionRefused", 21: "ConnectingIn", 22: "ConnectInFailed", 23: "ConnectedIn", 24: "ConnectingOut",
    25: "ConnectOutFailed", 26: "ConnectedOut", 27: "Disconnected", 28: "PeerMisbehaved", 40: "Authoring",
    41: "AuthoringFailed", 42: "Authored", 43: "Importing", 44: "BlockVerificationFailed", 45: "BlockVerified",
    46: "BlockExecutionFailed", 47: "BlockExecuted", 60: "BlockAnnouncementStreamOpened",
    61: "BlockAnnouncementStreamClosed", 62: "BlockAnnounced", 63: "SendingBlockRequest",
    64: "ReceivingBlockRequest", 65: "BlockRequestFailed", 66: "BlockRequestSent", 67: "BlockRequestReceived",
    68: "BlockTransferred", 80: "GeneratingTickets", 81: "TicketGenerationFailed", 82: "TicketsGenerated",
    83: "TicketTransferFailed", 84: "TicketTransferred", 90: "WorkPackageSubmission", 91: "WorkPackageBeingShared",
    92: "WorkPackageFailed", 93: "DuplicateWorkPackage", 94: "WorkPackageReceived", 95: "Authorized",
    96: "ExtrinsicDataReceived", 97: "ImportsReceived", 98: "SharingWorkPackage", 99: "WorkPackageSharingFailed",
    100: "BundleSent", 101: "Refined", 102: "WorkReportBuilt", 103: "WorkReportSignatureSent",
    104: "WorkReportSignatureReceived", 105: "GuaranteeBuilt", 106: "SendingGuarantee", 107: "GuaranteeSendFailed",
    108: "GuaranteeSent", 109: "GuaranteesDistributed", 110: "ReceivingGuarantee", 111: "GuaranteeReceiveFailed",
    112: "GuaranteeReceived", 113: "GuaranteeDiscarded", 120: "SendingShardRequest", 121: "ReceivingShardRequest",
    122: "ShardRequestFailed", 123: "ShardRequestSent", 124: "ShardRequestReceived", 125: "ShardsTransferred",
    126: "DistributingAssurance", 127: "AssuranceSendFailed", 128: "AssuranceSent", 129: "AssuranceDistributed",
    130: "AssuranceReceiveFailed", 131: "AssuranceReceived", 140: "SendingBundleShardRequest",
    141: "ReceivingBundleShardRequest", 142: "BundleShardRequestFailed", 143: "BundleShardRequestSent",
    144: "BundleShardRequestReceived", 145: "BundleShardTransferred", 146: "ReconstructingBundle",
    147: "BundleReconstructed", 148: "SendingBundleRequest", 149: "ReceivingBundleRequest",
    150: "BundleRequestFailed", 151: "BundleRequestSent", 152: "BundleRequestReceived", 153: "BundleTransferred",
    160: "WorkPackageHashMapped", 161: "SegmentsRootMapped", 162: "SendingSegmentShardRequest",
    163: "ReceivingSegmentShardRequest", 164: "SegmentShardRequestFailed", 165: "SegmentShardRequestSent",
    166: "SegmentShardRequestReceived", 167: "SegmentShardsTransferred", 168: "ReconstructingSegments",
    169: "SegmentReconstructionFailed", 170: "SegmentsReconstructed", 171: "SegmentVerificationFailed",
    172: "SegmentsVerified", 173: "SendingSegmentRequest", 174: "ReceivingSegmentRequest",
    175: "SegmentRequestFailed", 176: "SegmentRequestSent", 177: "SegmentRequestReceived",
    178: "SegmentsTransferred", 190: "PreimageAnnouncementFailed", 191: "PreimageAnnounced",
    192: "AnnouncedPreimageForgotten", 193: "SendingPreimageRequest", 194: "ReceivingPreimageRequest",
    195: "PreimageRequestFailed", 196: "PreimageRequestSent", 197: "PreimageRequestReceived",
    198: "PreimageTransferred", 199: "PreimageDiscarded",
}


def frame(et: int, body: bytes, ts: int = TS) -> bytes:
    return u64(ts) + u8(et) + body


ALL_TYPES = sorted(TAGS)


def test_table_covers_every_spec_discriminator():
    expected = [0, *range(10, 14), *range(20, 29), *range(40, 48), *range(60, 69), *range(80, 85), *range(90, 114),
                *range(120, 132), *range(140, 154), *range(160, 179), *range(190, 200)]
    assert ALL_TYPES == expected
    assert EVENT_NAMES == TAGS
    assert {et for et, _, _ in VECTORS} == set(expected)


@pytest.mark.parametrize("et,body,expected", VECTORS, ids=[f"{et}-{i}" for i, (et, _, _) in enumerate(VECTORS)])
def test_vector_decodes_to_spec_json(et, body, expected):
    raw = frame(et, body)
    d = decode_event(raw, C)
    assert (d.timestamp, d.event_type) == (TS, et)
    want = {"timestamp": TS, **expected}
    assert d.value == want
    parsed = orjson.loads(d.json())
    assert parsed == {TAGS[et]: want}
    # Declaration order, nested objects included.
    assert orjson.dumps(parsed) == orjson.dumps({TAGS[et]: want})
    assert list(d.value) == ["timestamp", *expected]
    assert event_json(et, d.value) == d.json()
    # Exact inverse on the hand-built bytes.
    assert encode_event(et, d.value, C) == raw


def test_exact_json_text_for_a_few():
    d = decode_event(frame(11, u32(42) + H(0xAA)), C)
    assert d.json() == b'{"BestBlockChanged":{"timestamp":1000000,"slot":42,"hash":"0x' + b"aa" * 32 + b'"}}'
    d = decode_event(frame(24, H(2) + PA_BYTES), C)
    assert d.json() == (
        b'{"ConnectingOut":{"timestamp":1000000,"to":{"peer_id":"0x' + b"02" * 32
        + b'","peer_address":{"ipv6":"0x00000000000000000000ffff01020304","port":30333,'
        b'"address":"[::ffff:1.2.3.4]:30333"}}}}'
    )
    d = decode_event(frame(0, u64(9) + u64(2**64 - 1)), C)
    assert d.json() == b'{"Dropped":{"timestamp":1000000,"last_timestamp":9,"num":18446744073709551615}}'
    assert d.value["num"] == 2**64 - 1


def test_core_count_sizes_status_and_bitfield():
    body = u32(1) + u32(2) + u32(3) + bytes(range(9)) + u32(4) + u64(5) + u32(6) + u32(7)
    assert decode_event(frame(10, body), 9).value["num_guarantees"] == list(range(9))
    with pytest.raises(DecodeError):
        decode_event(frame(10, body), 4)  # 5 bytes left over
    assert decode_event(frame(126, H(3) + b"\xff\x01"), 9).value["statement"]["bitfield"] == "0xff01"
    assert decode_event(frame(126, H(3) + b"\xff"), 8).value["statement"]["bitfield"] == "0xff"
    assert decode_event(frame(126, H(3)), 0).value["statement"]["bitfield"] == "0x"
    with pytest.raises(DecodeError, match="field statement.bitfield"):
        decode_event(frame(126, H(3) + b"\xff"), 9)


def test_long_lengths_use_gp_natural_encoding():
    reason = b"r" * 128
    d = decode_event(frame(22, u64(1) + b"\x80\x80" + reason), C)
    assert d.value["reason"] == "r" * 128
    # 200 hashes: the list length 200 is 0x80 0xc8 in the GP encoding (LEB128 would be c8 01).
    d = decode_event(frame(82, u64(1) + b"\x80\xc8" + H(1) * 200), C)
    assert len(d.value["ids"]) == 200
    with pytest.raises(DecodeError):
        decode_event(frame(82, u64(1) + b"\xc8\x01" + H(1) * 200), C)


# --- strictness ------------------------------------------------------------------------------


def _err(et: int, body: bytes, c: int = C) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_event(frame(et, body), c)
    assert info.value.event_type == et
    return info.value


def test_string_bounds():
    assert decode_event(frame(28, H(3) + b"\x80\x80" + b"a" * 128), C).value["reason"] == "a" * 128
    e = _err(27, H(1) + b"\x00" + b"\x80\x82" + b"a" * 130)
    assert str(e) == "event 27 (Disconnected) field reason: string of 130 bytes over bound 128"
    assert (e.field, e.reason) == ("reason", "string of 130 bytes over bound 128")
    assert isinstance(e, ValueError)


def test_invalid_utf8():
    e = _err(28, H(3) + s(b"a\xffb"))
    assert e.field == "reason" and "UTF-8" in e.reason


def test_nul_inside_string_is_kept():
    d = decode_event(frame(28, H(3) + s(b"a\x00b")), C)
    assert d.value["reason"] == "a\x00b"
    assert b'"reason":"a\\u0000b"' in d.json()


def test_bad_bool_option_enum_bytes():
    assert _err(13, b"\x02").field == "synced"
    e = _err(27, H(1) + b"\x02" + s(b""))
    assert e.field == "terminator" and "option byte 2" in e.reason
    e = _err(27, H(1) + b"\x01\x02" + s(b""))
    assert e.field == "terminator" and "enum byte 2" in e.reason
    assert _err(63, H(5) + H(6) + b"\x02" + u32(10)).field == "direction"
    assert _err(113, GUAR_BYTES + b"\x05").field == "reason"
    assert _err(192, u32(5) + H(2) + u32(100) + b"\x06").field == "reason"
    assert _err(199, H(2) + u32(64) + b"\x04").field == "reason"
    assert _err(146, u64(7) + b"\x02").field == "kind"
    assert _err(68, u64(4) + u32(12) + OUTLINE_BYTES + b"\x02").field == "last"
    assert _err(162, u64(1) + H(7) + b"\x03" + b"\x00").field == "proofs"


def test_length_prefix_larger_than_remaining():
    e = _err(82, u64(1) + b"\x03" + H(1) * 2)
    assert e.field == "ids" and "larger than remaining" in e.reason
    e = _err(28, H(3) + b"\x05abc")
    assert e.field == "reason" and "larger than remaining" in e.reason
    e = _err(94, u64(1) + u16(2) + u32(100) + H(8) + H(9) + u32(5) + b"\x00" + b"\x7f")
    assert e.field == "outline.work_items"


def test_trailing_bytes():
    for et, body, _ in VECTORS:
        e = _err(et, body + b"\x00")
        assert e.field == "(end)" and "1 trailing bytes" in e.reason


def test_truncated_frames_name_the_field():
    for et, body, _ in VECTORS:
        for cut in range(len(body)):
            _err(et, body[:cut])
    assert _err(11, u32(42) + H(0xAA)[:31]).field == "hash"
    assert _err(11, u32(42)[:3]).field == "slot"
    assert _err(24, H(2) + PA_BYTES[:17]).field == "to.peer_address.port"
    assert _err(94, u64(1) + u16(2) + WP_BYTES[:-1]).field == "outline.work_items.num_exported_segments"


def test_short_frames_and_unknown_discriminator():
    for n in range(9):
        with pytest.raises(DecodeError) as info:
            decode_event(bytes(n), C)
        assert info.value.event_type is None
    for et in set(range(256)) - set(TAGS):
        e = _err(et, b"")
        assert e.field == "discriminator"
    with pytest.raises(DecodeError):
        decode_event(None, C)  # type: ignore[arg-type]


def test_accepts_memoryview_and_bytearray():
    et, body, expected = VECTORS[-1]
    raw = frame(et, body)
    assert decode_event(memoryview(raw), C).value == decode_event(bytearray(raw), C).value
    raw = frame(28, H(3) + s(b"hi"))
    assert decode_event(memoryview(raw), C).value["reason"] == "hi"


def test_fuzz_only_decode_error_escapes():
    rng = random.Random(0x71A27)
    valid = [frame(et, body) for et, body, _ in VECTORS]
    samples = decoded = 0
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.25:
            buf = rng.randbytes(rng.randrange(0, 80))
            if len(buf) > 8 and rng.random() < 0.7:
                buf = buf[:8] + bytes([rng.choice(ALL_TYPES)]) + buf[9:]
        else:
            buf = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                op = rng.random()
                if op < 0.5 and len(buf) > 9:
                    buf[rng.randrange(9, len(buf))] = rng.randrange(256)
                elif op < 0.7 and len(buf) > 9:
                    del buf[rng.randrange(9, len(buf)) :]
                elif op < 0.85:
                    buf += rng.randbytes(rng.randrange(1, 5))
                else:
                    pos = rng.randrange(9, len(buf) + 1)
                    buf[pos:pos] = bytes([rng.choice((0x80, 0xC0, 0xFF, 0x7F, 0x02))])
            buf = bytes(buf)
        for c in (0, 1, C, 341):
            samples += 1
            try:
                d = decode_event(buf, c)
            except DecodeError as exc:
                assert "internal" not in exc.reason, exc
                continue
            decoded += 1
            # Whatever decodes must encode back to exactly the same bytes.
            assert encode_event(d.event_type, d.value, c) == buf
    assert samples == 12000 and decoded > 100
