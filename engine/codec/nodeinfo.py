"""The node-information message (first frame on a connection) and its two known parameter layouts.

JAM Parameters carry no length prefix and their size depends on the node's Gray Paper version,
so the layout is detected as NOTES.md prescribes: the size after which the rest parses exactly.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from .errors import Bad, DecodeError
from .natural import encode_natural, nat
from .types import peer_address_text

# GP 0.7.x fetch selector 0 (EVENTS-JSON.md section 3.2): 134 bytes.
PARAMS_GP07: list[tuple[str, str]] = [
    ("deposit_per_item", "Q"),
    ("deposit_per_byte", "Q"),
    ("deposit_per_account", "Q"),
    ("core_count", "H"),
    ("min_turnaround_period", "I"),
    ("epoch_period", "I"),
    ("max_accumulate_gas", "Q"),
    ("max_is_authorized_gas", "Q"),
    ("max_refine_gas", "Q"),
    ("block_gas_limit", "Q"),
    ("recent_block_count", "H"),
    ("max_work_items", "H"),
    ("max_dependencies", "H"),
    ("max_tickets_per_block", "H"),
    ("max_lookup_anchor_age", "I"),
    ("tickets_attempts_number", "H"),
    ("auth_window", "H"),
    ("slot_period_sec", "H"),
    ("auth_queue_len", "H"),
    ("rotation_period", "H"),
    ("max_extrinsics", "H"),
    ("availability_timeout", "H"),
    ("val_count", "H"),
    ("max_authorizer_code_size", "I"),
    ("max_input", "I"),
    ("max_service_code_size", "I"),
    ("basic_piece_len", "I"),
    ("max_imports", "I"),
    ("segment_piece_count", "I"),
    ("max_report_elective_data", "I"),
    ("transfer_memo_size", "I"),
    ("max_exports", "I"),
    ("epoch_tail_start", "I"),
]
# GP 0.8.x dropped N, V, W_E and W_P from the fetch result: 122 bytes.
_GP08_DROPPED = {"tickets_attempts_number", "val_count", "basic_piece_len", "segment_piece_count"}
PARAMS_GP08: list[tuple[str, str]] = [(k, f) for k, f in PARAMS_GP07 if k not in _GP08_DROPPED]


class _Layout:
    def __init__(self, name: str, fields: list[tuple[str, str]], gp_prefix: str) -> None:
        self.name = name
        self.keys = [k for k, _ in fields]
        self.struct = struct.Struct("<" + "".join(f for _, f in fields))
        self.size = self.struct.size
        self.gp_prefix = gp_prefix


LAYOUTS = [_Layout("gp-0.7", PARAMS_GP07, "0.7"), _Layout("gp-0.8", PARAMS_GP08, "0.8")]
_BY_NAME = {lay.name: lay for lay in LAYOUTS}
assert [lay.size for lay in LAYOUTS] == [134, 122]

_CORE_COUNT_OFFSET = 24
_TAIL = struct.Struct("<32s32s16sHI")  # genesis, peer id, ipv6, port, flags
_STRINGS = (("implementation_name", 32), ("implementation_version", 32), ("gp_version", 16), ("additional_info", 512))
_VERSIONS = (0, 1)
# Only the unknown-length search uses this: shifting the tail can make other bytes parse as four
# strings (e.g. a stray trailing 0x00 reads as an empty note), and a real GP version string is the
# one thing that such accidents do not produce.
_GP_VERSION_LIKE = re.compile(r"v?\d+\.\d+")
# The unknown-length search considers parameter lengths up to this (the known layouts are 122
# and 134 bytes; a future GP version may add fields, hardly quadruple them). It bounds the
# search, and with it the largest node-information message tart accepts (MAX_NODE_INFO).
MAX_UNKNOWN_PARAMS = 512
_MIN_PARAMS = _CORE_COUNT_OFFSET + 2  # the parameters must at least reach core_count
# The four strings at their bounds, each with the GP natural length prefix that bound needs.
_MAX_STRINGS = sum(bound + len(encode_natural(bound)) for _, bound in _STRINGS)
_MIN_STRINGS = len(_STRINGS)  # four empty strings: four one-byte length prefixes
MAX_NODE_INFO = 1 + MAX_UNKNOWN_PARAMS + _TAIL.size + _MAX_STRINGS
"""The largest node-information message the layout allows: 1196 bytes (TART_MAX_NODE_INFO)."""


@dataclass
class NodeInfo:
    protocol_version: int
    params: dict[str, int]
    params_layout: str
    params_raw: bytes
    core_count: int
    genesis: bytes
    peer_id: bytes
    ipv6: bytes
    port: int
    flags: int
    implementation_name: str
    implementation_version: str
    gp_version: str
    additional_info: str

    @property
    def node_id(self) -> str:
        return self.peer_id.hex()

    @property
    def peer_address(self) -> str:
        return peer_address_text(self.ipv6, self.port)

    def to_json_obj(self) -> dict[str, Any]:
        """The stored node_info JSON: EVENTS-JSON.md section 3.1 with hex bytes, plus our keys."""
        obj: dict[str, Any] = {
            "params": dict(self.params),
            "genesis": "0x" + self.genesis.hex(),
            "details": {
                "peer_id": "0x" + self.peer_id.hex(),
                "peer_address": {
                    "ipv6": "0x" + self.ipv6.hex(),
                    "port": self.port,
                    "address": peer_address_text(self.ipv6, self.port),
                },
            },
            "flags": self.flags,
            "implementation_name": self.implementation_name,
            "implementation_version": self.implementation_version,
            "gp_version": self.gp_version,
            "additional_info": self.additional_info,
            "protocol_version": self.protocol_version,
            "params_layout": self.params_layout,
        }
        if self.params_layout == "unknown":
            obj["params_raw"] = "0x" + self.params_raw.hex()
        return obj


def _string(buf: bytes, off: int, bound: int) -> tuple[str, int]:
    n, off = nat(buf, off)
    if n > bound:
        raise Bad(f"string of {n} bytes over bound {bound}")
    end = off + n
    if end > len(buf):
        raise Bad(f"length prefix {n} larger than remaining {len(buf) - off} bytes")
    try:
        return str(buf[off:end], "utf-8"), end
    except UnicodeDecodeError as exc:
        raise Bad(f"invalid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _parse_tail(buf: bytes, off: int) -> tuple[tuple, list[str]]:
    """Everything after the parameters; raises Bad(reason, field) unless it ends exactly at the end."""
    if off + _TAIL.size > len(buf):
        raise Bad(f"truncated: {len(buf) - off} bytes left for genesis, peer id, address and flags", "genesis")
    fixed = _TAIL.unpack_from(buf, off)
    off += _TAIL.size
    strings = []
    for name, bound in _STRINGS:
        try:
            s, off = _string(buf, off, bound)
        except Bad as exc:
            raise Bad(exc.reason, name) from None
        strings.append(s)
    if off != len(buf):
        raise Bad(f"{len(buf) - off} trailing bytes after additional_info", "(end)")
    return fixed, strings


def decode_node_info(buf: bytes) -> NodeInfo:
    """Decode the node-information message; DecodeError(event_type=None, field=...) if malformed."""
    try:
        return _decode(buf)
    except DecodeError:
        raise
    except Bad as exc:
        raise DecodeError(None, exc.field or "?", exc.reason) from None
    except Exception as exc:  # the contract: nothing but DecodeError escapes
        raise DecodeError(None, "(message)", f"internal decoder error {type(exc).__name__}: {exc}") from None


def _decode(buf: bytes) -> NodeInfo:
    if len(buf) < 1:
        raise Bad("empty message", "protocol_version")
    version = buf[0]
    if version not in _VERSIONS:
        raise Bad(f"unsupported telemetry protocol version {version} (accepted: 0, 1)", "protocol_version")

    parsed: list[tuple[_Layout | None, int, tuple, list[str]]] = []
    first_error: Bad | None = None
    for lay in LAYOUTS:
        try:
            fixed, strings = _parse_tail(buf, 1 + lay.size)
        except Bad as exc:
            first_error = first_error or exc
            continue
        parsed.append((lay, lay.size, fixed, strings))
    if len(parsed) > 1:
        # Both sizes parse: the node's own GP version string (as read under each layout) decides.
        matching = [p for p in parsed if p[3][2].startswith(p[0].gp_prefix)]
        parsed = matching[:1] if len(matching) == 1 else parsed[:1]
    if not parsed:
        parsed = _search(buf)
        if not parsed:
            assert first_error is not None
            raise Bad(f"no parameter length makes the message parse (with 134 bytes: {first_error.reason})",
                      first_error.field or "params")

    lay, size, fixed, strings = parsed[0]
    raw = bytes(buf[1 : 1 + size])
    (core_count,) = struct.unpack_from("<H", raw, _CORE_COUNT_OFFSET)
    if lay is not None:
        params = dict(zip(lay.keys, lay.struct.unpack(raw), strict=True))
        layout_name = lay.name
    else:
        params = {"core_count": core_count}
        layout_name = "unknown"
    genesis, peer_id, ipv6, port, flags = fixed
    return NodeInfo(version, params, layout_name, raw, core_count, genesis, peer_id, ipv6, port, flags, *strings)


def _search(buf: bytes) -> list[tuple[None, int, tuple, list[str]]]:
    """The unique unknown parameter length after which the rest parses cleanly, if there is one.

    Cheap by construction: only lengths that leave between four empty and four full strings
    after the fixed tail are candidates (at most ~600 of them, whatever the message size), and
    each is first walked over its four length prefixes without building anything, so a
    garbage message costs microseconds rather than one failed full parse per byte."""
    found = []
    n = len(buf)
    strings_at = 1 + _TAIL.size  # offset of the strings for a parameter length of 0
    lo = max(_MIN_PARAMS, n - strings_at - _MAX_STRINGS)
    hi = min(MAX_UNKNOWN_PARAMS, n - strings_at - _MIN_STRINGS)
    for size in range(lo, hi + 1):
        if not _strings_end_exactly(buf, strings_at + size, n):
            continue
        try:
            fixed, strings = _parse_tail(buf, 1 + size)
        except Bad:
            continue
        if not _GP_VERSION_LIKE.match(strings[2]):
            continue
        found.append((None, size, fixed, strings))
        if len(found) > 1:
            raise Bad(f"parameter length ambiguous: both {found[0][1]} and {size} bytes parse", "params")
    return found


def _strings_end_exactly(buf: bytes, off: int, n: int) -> bool:
    """Do four in-bound length-prefixed strings starting at `off` end exactly at `n`? (Lengths
    only: UTF-8 and canonical prefixes are left to the full parse of the few that pass.)"""
    for _, bound in _STRINGS:
        if off >= n:
            return False
        first = buf[off]
        if first < 128:
            length, off = first, off + 1
        elif first < 192 and off + 1 < n:  # two-byte form: every bound is below 2^14
            length, off = ((first & 0x3F) << 8) | buf[off + 1], off + 2
        else:
            return False
        if length > bound:
            return False
        off += length
    return off == n


def encode_node_info(info: NodeInfo) -> bytes:
    """Exact inverse of decode_node_info. Known layouts encode `params`; unknown ones `params_raw`."""
    if info.protocol_version not in _VERSIONS:
        raise ValueError(f"protocol_version must be 0 or 1, got {info.protocol_version}")
    out = bytearray((info.protocol_version,))
    lay = _BY_NAME.get(info.params_layout)
    if lay is not None:
        if list(info.params) != lay.keys:
            raise ValueError(f"params for {lay.name} need keys {lay.keys}")
        out += lay.struct.pack(*info.params.values())
    elif info.params_layout == "unknown":
        out += info.params_raw
    else:
        raise ValueError(f"unknown params_layout {info.params_layout!r}")
    if len(info.genesis) != 32 or len(info.peer_id) != 32 or len(info.ipv6) != 16:
        raise ValueError("genesis and peer_id need 32 bytes, ipv6 16")
    out += _TAIL.pack(info.genesis, info.peer_id, info.ipv6, info.port, info.flags)
    for name, bound in _STRINGS:
        raw = getattr(info, name).encode("utf-8")
        if len(raw) > bound:
            raise ValueError(f"{name} of {len(raw)} bytes over bound {bound}")
        out += encode_natural(len(raw)) + raw
    return bytes(out)
