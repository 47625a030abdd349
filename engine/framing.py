"""Splitting a TCP byte stream into JIP-3 frames: u32 little-endian length, then the content.

Offset scanning over the bytes each read delivered; only an incomplete tail is kept (in a
bytearray) for the next read, so a read of many whole frames costs one slice per frame.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")


class FrameSplitter:
    """Feed it reads; get back complete frame contents (bytes).

    A length prefix over the limit stops splitting: `oversize` is set to that length and the
    frames before it are still returned, so the caller can keep them and then close.
    `first_max` (if given) is the limit of the first frame only: node information is far smaller
    than the largest event, and its length prefix alone is enough to refuse a huge one before
    a byte of it is buffered. `oversize_first` tells which limit was exceeded.
    """

    __slots__ = ("max_frame", "first_max", "oversize", "oversize_first", "_tail", "_need")

    def __init__(self, max_frame: int, first_max: int | None = None) -> None:
        self.max_frame = max_frame
        self.first_max = first_max  # None once the first frame has been split off
        self.oversize: int | None = None
        self.oversize_first = False
        self._tail = bytearray()
        self._need = 0  # bytes the tail must reach before another frame can be complete

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held over from earlier reads."""
        return len(self._tail)

    @property
    def limit(self) -> int:
        """The largest length prefix the next frame may have."""
        return self.max_frame if self.first_max is None else self.first_max

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
        n = len(data)
        off = 0
        need = 0
        if self.first_max is not None and n >= 4:
            (length,) = unpack(data, 0)
            if length > self.first_max:
                self.oversize = length
                self.oversize_first = True
                return frames
            end = 4 + length
            if end > n:
                tail += data
                self._need = end
                return frames
            append(data[4:end])
            off = end
            self.first_max = None
        limit = self.max_frame
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
