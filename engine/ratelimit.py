"""Admission limits of the acceptors: the per-node event rate and the global connection cap.

TokenBucket (TART_RATE_LIMIT): `rate` events/s sustained, bursts of 2 s worth. It is checked
once per read with the number of frames in it, not once per event: `take(n, now)` answers how
many of the next n events fit, so the acceptor's hot loop pays one call per batch.

ConnectionLimit (TART_MAX_CONNECTIONS): one count shared by every acceptor process.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from pathlib import Path


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 (a rate of 0 means no limiter at all)")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else 2 * rate)
        # A fresh connection starts with a full bucket: a node that reconnects may resend its backlog.
        self.tokens = self.burst
        self.stamp = now

    def take(self, n: int, now: float) -> int:
        """Consume up to n tokens; return how many were granted (0..n)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        granted = int(self.tokens)
        if granted >= n:
            self.tokens -= n
            return n
        self.tokens -= granted
        return granted

    def set_rate(self, rate: float, now: float) -> None:
        """Adopt a new rate (configuration reload): time so far is credited at the old rate,
        the burst follows the new rate, and saved tokens never exceed the new burst."""
        if rate <= 0:
            raise ValueError("rate must be > 0 (drop the bucket to turn the limit off)")
        self.take(0, now)
        self.rate = float(rate)
        self.burst = 2 * self.rate
        if self.tokens > self.burst:
            self.tokens = self.burst


class ConnectionLimit:
    """TART_MAX_CONNECTIONS across all acceptor processes.

    A small shared file (`path`, mmap'd) holds one (pid, count) slot per acceptor index. Each
    acceptor changes only its own slot; admission sums the slots under an exclusive flock, so two
    acceptors cannot both take the last place. A slot whose pid is dead (an acceptor that
    crashed) counts as zero, and a restarted acceptor overwrites its slot, so a crash never
    leaks places. Cost: two flock calls per connect/disconnect, nothing per event.
    """

    SLOTS = 64
    _SLOT = struct.Struct("<QQ")

    def __init__(self, path: str | os.PathLike, index: int, limit: int) -> None:
        if not 0 <= index < self.SLOTS:
            raise ValueError(f"acceptor index {index} outside 0..{self.SLOTS - 1}")
        self.index = index
        self.limit = limit
        self.pid = os.getpid()
        self.count = 0
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = self.SLOTS * self._SLOT.size
        with self._locked():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
            self._store()

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _store(self) -> None:
        self._SLOT.pack_into(self._map, self.index * self._SLOT.size, self.pid, self.count)

    def _others(self) -> int:
        total = 0
        for i in range(self.SLOTS):
            if i == self.index:
                continue
            pid, count = self._SLOT.unpack_from(self._map, i * self._SLOT.size)
            if count and _alive(pid):
                total += count
        return total

    def total(self) -> int:
        """Connections open now across all acceptors."""
        with self._locked():
            return self._others() + self.count

    def try_acquire(self) -> bool:
        with self._locked():
            if self._others() + self.count >= self.limit:
                return False
            self.count += 1
            self._store()
            return True

    def release(self) -> None:
        with self._locked():
            self.count = max(0, self.count - 1)
            self._store()

    def close(self) -> None:
        if self._fd < 0:
            return
        with self._locked():
            self.count = 0
            self._store()
        self._map.close()
        os.close(self._fd)
        self._fd = -1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
