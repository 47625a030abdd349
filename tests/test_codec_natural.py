"""Gray Paper natural-number encoding (NOTES.md), not LEB128; JIP-3 timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tart.engine.codec import JCE_EPOCH_UNIX_US, DecodeError, decode_natural, encode_natural, jce_to_datetime


@pytest.mark.parametrize(
    "n,raw",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x80"),
        (341, b"\x81\x55"),
        (16383, b"\xbf\xff"),
        (16384, b"\xc0\x00\x40"),
        (2**21 - 1, b"\xdf\xff\xff"),
        (2**21, b"\xe0\x00\x00\x20"),
        (2**56 - 1, b"\xfe" + b"\xff" * 7),
        (2**56, b"\xff" + (2**56).to_bytes(8, "little")),
        (2**64 - 1, b"\xff" + b"\xff" * 8),
    ],
)
def test_literal_encodings(n, raw):
    assert encode_natural(n) == raw
    assert decode_natural(raw, 0) == (n, len(raw))
    assert decode_natural(b"\xaa" + raw + b"\xbb", 1) == (n, 1 + len(raw))


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_roundtrip(n):
    raw = encode_natural(n)
    assert decode_natural(raw, 0) == (n, len(raw))


def test_out_of_range():
    for n in (-1, 2**64):
        with pytest.raises(ValueError):
            encode_natural(n)


@pytest.mark.parametrize("raw", [b"", b"\x80", b"\xc0\x00", b"\xff\x00\x00"])
def test_truncated(raw):
    with pytest.raises(DecodeError, match="truncated"):
        decode_natural(raw, 0)


@pytest.mark.parametrize("raw", [b"\x80\x05", b"\xc0\x7f\x00", b"\xff" + bytes(8)])
def test_non_canonical_rejected(raw):
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_natural(raw, 0)


def test_jce_epoch_is_noon_2025_01_01():
    assert JCE_EPOCH_UNIX_US == 1_735_732_800_000_000
    assert jce_to_datetime(0) == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert jce_to_datetime(1_500_000).isoformat() == "2025-01-01T12:00:01.500000+00:00"
    assert jce_to_datetime(0).timestamp() * 1_000_000 == JCE_EPOCH_UNIX_US
    with pytest.raises(ValueError):
        jce_to_datetime(2**64 - 1)
