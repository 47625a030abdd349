"""Splitting a TCP byte stream into JIP-3 frames: u32 little-endian length, then the content.

Offset scanning over the bytes each read delivered; only an incomplete tail is kept (in a
bytearray) for the next read, so a read of many whole frames costs one slice per frame.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")


class FrameSplitter:
    """Feed it reads; get back complete frame contents (bytes).

    A length prefix over `max_frame` stops splitting: `oversize` is set to that length and the
    frames before it are still returned, so the caller can keep them and then close.
    """

    __slots__ = ("max_frame", "oversize", "_tail", "_need")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.oversize: int | None = None
        self._tail = bytearray()
        self._need = 0  # bytes the tail must reach before another frame can be complete

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held over from earlier reads."""
        return len(self._tail)

    def feed(self, data: bytes) -> list[bytes]:
        if self.oversize is not None:
            return []
        tail = self._tail
        if tail:
            tail += data
            if len(tail) < self._need:
                return []  # a large frame still arriving: no rescan per read
            data = bytes(tail)
            tail.clear()
        frames: list[bytes] = []
        append = frames.append
        unpack = _U32.unpack_from
        limit = self.max_frame
        n = len(data)
        off = 0
        need = 0
        while n - off >= 4:
            (length,) = unpack(data, off)
            if length > limit:
                self.oversize = length
                return frames
            end = off + 4 + length
            if end > n:
                need = end - off
                break
            append(data[off + 4 : end])
            off = end
        if off < n:
            tail += memoryview(data)[off:]
            self._need = need or 4
        return frames
