"""Hypothesis values of any codec type, built by walking the schema as the codec does; shared by
the codec's round-trip tests and the SQL decoder's tests.

Values lean towards the edges: integer maxima, "::" runs of every length in IPv6 addresses,
IPv4-mapped and -compatible addresses, strings at their byte bound, with U+0000, multibyte
characters and the literal text "\\u0000".
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from tart.engine.codec import event_schema, peer_address_text
from tart.engine.codec.types import (
    BoolT,
    Bytes,
    Composite,
    CoreBits,
    CoreCounts,
    Enum,
    ImportSpecT,
    Int,
    Option,
    PeerAddressT,
    Seq,
    String,
)

U64_MAX = 2**64 - 1
INT_MAX = {"u8": 2**8 - 1, "u16": 2**16 - 1, "u32": 2**32 - 1, "u64": U64_MAX}


def hex_bytes(n: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n, max_size=n).map(lambda b: "0x" + b.hex())


# Hextets that are mostly zero, so that "::" runs of every length and position turn up.
_hextet = st.one_of(st.just(0), st.just(0), st.integers(1, 0xFFFF))
_ipv6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.lists(_hextet, min_size=8, max_size=8).map(lambda hs: struct.pack(">8H", *hs)),
    st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b),
    st.binary(min_size=4, max_size=4).map(lambda b: bytes(12) + b),
)
_text = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=130),
    st.sampled_from(["", "a\x00b", "\x00", "\x00" * 128, "é" * 64, "x" * 128, "x" * 127, "🦀\x00\\u0000\"\\",
                     "\u20ac\U0010ffff\ufffe\x7f\x01"]),
)


def _peer_address(ip: bytes, port: int) -> dict:
    # The decoder adds the text form; the encoder checks it when given.
    return {"ipv6": "0x" + ip.hex(), "port": port, "address": peer_address_text(ip, port)}


def strategy(t, c: int) -> st.SearchStrategy:
    """Values of codec type ``t`` in the codec's JSON-ready form, for core count ``c``."""
    if isinstance(t, Int):
        return st.one_of(st.integers(0, INT_MAX[t.label]), st.just(INT_MAX[t.label]))
    if isinstance(t, BoolT):
        return st.booleans()
    if isinstance(t, Enum):
        return st.sampled_from(t.names)
    if isinstance(t, Bytes):
        return hex_bytes(t.size)
    if isinstance(t, PeerAddressT):
        return st.builds(_peer_address, _ipv6, st.integers(0, 65535))
    if isinstance(t, ImportSpecT):
        return st.builds(
            lambda kind, h, i: {"root_identifier": {kind: h}, "export_index": i},
            st.sampled_from(["SegmentsRoot", "WorkPackageHash"]), hex_bytes(32), st.integers(0, 0x7FFF),
        )
    if isinstance(t, Composite):
        parts = [strategy(m, c) for _, m in t.members]
        if t.keyed:
            keys = [k for k, _ in t.members]
            return st.tuples(*parts).map(lambda vs: dict(zip(keys, vs, strict=True)))
        return st.tuples(*parts).map(list)
    if isinstance(t, String):
        return _text.filter(lambda s: len(s.encode()) <= t.bound)
    if isinstance(t, Option):
        return st.none() | strategy(t.inner, c)
    if isinstance(t, Seq):
        return st.lists(strategy(t.inner, c), max_size=3)
    if isinstance(t, CoreCounts):
        return st.lists(st.integers(0, 255), min_size=c, max_size=c)
    if isinstance(t, CoreBits):
        return hex_bytes((c + 7) // 8)
    raise AssertionError(f"no strategy for {t!r}")


def event_value(et: int, c: int) -> st.SearchStrategy[dict]:
    """A whole event value (timestamp first, then the fields in declaration order)."""
    fields = event_schema(et)
    keys = ["timestamp"] + [k for k, _ in fields]
    parts = [st.integers(0, U64_MAX)] + [strategy(t, c) for _, t in fields]
    return st.tuples(*parts).map(lambda vs: dict(zip(keys, vs, strict=True)))
