"""Gray Paper general natural-number encoding (NOTES.md), used for every len++ and String length.

Not LEB128: the count of leading 1 bits in the first byte says how many little-endian bytes follow.
"""

from __future__ import annotations

from .errors import Bad, DecodeError

_MAX = 1 << 64


def encode_natural(n: int) -> bytes:
    if n < 0 or n >= _MAX:
        raise ValueError(f"natural {n} outside 0..2^64-1")
    if n < 128:
        return bytes((n,))
    for length in range(1, 8):
        if n < 1 << (7 * (length + 1)):
            first = 256 - (1 << (8 - length)) + (n >> (8 * length))
            return bytes((first,)) + (n & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
    return b"\xff" + n.to_bytes(8, "little")


def nat(buf, off: int) -> tuple[int, int]:
    """Decode at `off`; raises Bad (internal) on truncation or a non-canonical form."""
    try:
        first = buf[off]
    except IndexError:
        raise Bad("truncated: length prefix missing") from None
    if first < 128:
        return first, off + 1
    length = 8
    for k in range(1, 8):
        if not first & (0x80 >> k):
            length = k
            break
    end = off + 1 + length
    if end > len(buf):
        raise Bad(f"truncated: length prefix needs {length + 1} bytes, {len(buf) - off} left")
    low = int.from_bytes(buf[off + 1 : end], "little")
    if length == 8:
        n = low
    else:
        n = ((first & ((1 << (7 - length)) - 1)) << (8 * length)) | low
    # The GP encoding is a bijection; accepting a longer form than needed would make
    # encode(decode(x)) != x and let two byte strings mean the same frame.
    if n < 1 << (7 * length):
        raise Bad(f"non-canonical natural-number encoding of {n}")
    return n, end


def decode_natural(buf: bytes, offset: int = 0) -> tuple[int, int]:
    """Public form: (n, new_offset); raises DecodeError."""
    try:
        return nat(buf, offset)
    except Bad as exc:
        raise DecodeError(None, "natural", exc.reason) from None
