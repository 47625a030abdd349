"""Admission limits of the acceptors: rates, the connection cap, and per-address accounting.

TokenBucket (TART_RATE_LIMIT): `rate` events/s sustained, bursts of 2 s worth. It is checked
once per read with the number of frames in it, not once per event: `take(n, now)` answers how
many of the next n events fit, so the acceptor's hot loop pays one call per batch. The same
bucket meters bytes (TART_CONN_BYTE_RATE) with `debit`, which may run into debt: the answer is
how long the connection must stop reading to pay it back.

ConnectionLimit (TART_MAX_CONNECTIONS): one count shared by every acceptor process, and in the
same flock'd file a table of source addresses: connections per address
(TART_MAX_CONNECTIONS_PER_ADDRESS), abuse strikes, bans (TART_BAN_SECONDS), and a leaky bucket
of bytes per address summed over all acceptors (TART_ADDR_BYTE_RATE). A connection from one
address may land on any acceptor (SO_REUSEPORT hashes the 4-tuple), so only shared state can
hold an address to its share.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import mmap
import os
import secrets
import struct
import time
from pathlib import Path

# Why an address was refused at connect time (and the label of tart_connections_refused).
REFUSED_LIMIT = "limit"
REFUSED_PER_ADDRESS = "per_address"
REFUSED_BANNED = "banned"
BYTE_BURST_S = 2.0  # the per-address byte bucket holds this many seconds of its rate
STRIKE_WINDOW_S = 60.0  # strikes older than this are forgotten


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

    def debit(self, n: int, now: float) -> float:
        """Charge n (bytes) even beyond what is saved; return the seconds until the debt is
        paid (0.0 if there is none): the caller stops reading for that long."""
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

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


def address_key(host: str) -> bytes:
    """16 bytes naming a source address (IPv4 as IPv4-mapped IPv6); b"" if it is no IP."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return b""
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def address_text(key: bytes) -> str:
    ip = ipaddress.IPv6Address(key)
    return str(ip.ipv4_mapped or ip)


class ConnectionLimit:
    """TART_MAX_CONNECTIONS and the per-address limits, across all acceptor processes.

    A small shared file (`path`, mmap'd) holds one (pid, count) slot per acceptor index. Each
    acceptor changes only its own slot; admission sums the slots under an exclusive flock, so two
    acceptors cannot both take the last place. A slot whose pid is dead (an acceptor that
    crashed) counts as zero, and a restarted acceptor overwrites its slot, so a crash never
    leaks places. Cost: two flock calls per connect/disconnect, nothing per event.

    After the slots, an open-addressing table of source addresses (keyed hash, a bounded probe
    window, no tombstones: a lookup scans the whole window). An entry holds the address, its
    ban deadline, its strikes, its byte bucket, and one connection count per acceptor index
    (again zeroed by a restarted acceptor and ignored for a dead one). A full window fails open:
    the global limit still holds, the per-address ones lapse for that address only.
    """

    SLOTS = 64
    _SLOT = struct.Struct("<QQ")
    ENTRIES = 4096
    WINDOW = 64
    # key, ban_until, strike_since, strikes, pad, level, stamp, counts per acceptor index
    _ENTRY = struct.Struct("<16sddIIdd64H")
    _SECRET_AT = 64 * 16
    _TABLE_AT = _SECRET_AT + 64

    def __init__(self, path: str | os.PathLike, index: int, limit: int, per_address: int = 0,
                 ban_seconds: float = 600.0, ban_strikes: int = 10, addr_byte_rate: float = 0.0) -> None:
        if not 0 <= index < self.SLOTS:
            raise ValueError(f"acceptor index {index} outside 0..{self.SLOTS - 1}")
        self.index = index
        self.limit = limit
        self.per_address = per_address  # 0: no cap per address
        self.ban_seconds = ban_seconds
        self.ban_strikes = ban_strikes  # 0: strikes never ban
        self.addr_byte_rate = addr_byte_rate  # 0: bytes never ban
        self.pid = os.getpid()
        self.count = 0
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = self._TABLE_AT + self.ENTRIES * self._ENTRY.size
        with self._locked():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
            secret = bytes(self._map[self._SECRET_AT:self._SECRET_AT + 16])
            if secret == bytes(16):
                secret = secrets.token_bytes(16)
                self._map[self._SECRET_AT:self._SECRET_AT + 16] = secret
            self._secret = secret
            self._store()
            self._zero_my_column()

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _store(self) -> None:
        self._SLOT.pack_into(self._map, self.index * self._SLOT.size, self.pid, self.count)

    def _live(self) -> list[int]:
        """Acceptor indexes whose counts are real: open connections and a live process."""
        live = []
        for i in range(self.SLOTS):
            if i == self.index:
                live.append(i)
                continue
            pid, count = self._SLOT.unpack_from(self._map, i * self._SLOT.size)
            if count and _alive(pid):
                live.append(i)
        return live

    def _others(self) -> int:
        total = 0
        for i in range(self.SLOTS):
            if i == self.index:
                continue
            pid, count = self._SLOT.unpack_from(self._map, i * self._SLOT.size)
            if count and _alive(pid):
                total += count
        return total

    # --- the address table (call with the lock held) ------------------------------------------
    def _entry_at(self, slot: int) -> list:
        return list(self._ENTRY.unpack_from(self._map, self._TABLE_AT + slot * self._ENTRY.size))

    def _put(self, slot: int, e: list) -> None:
        self._ENTRY.pack_into(self._map, self._TABLE_AT + slot * self._ENTRY.size, *e)

    def _is_free(self, e: list, now: float) -> bool:
        if any(e[7:]) or e[1] > now or (e[3] and now - e[2] < STRIKE_WINDOW_S):
            return False
        if not self.addr_byte_rate:
            return True
        return e[5] - (now - e[6]) * self.addr_byte_rate <= 0  # its byte bucket has drained

    def _find(self, key: bytes, now: float, create: bool) -> tuple[int, list] | None:
        if not key:
            return None
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8, key=self._secret).digest(), "little")
        free = None
        for k in range(self.WINDOW):
            slot = (h + k) % self.ENTRIES
            e = self._entry_at(slot)
            if e[0] == key:
                return slot, e
            if free is None and self._is_free(e, now):
                free = slot
        if not create or free is None:
            return None
        e = [key, 0.0, 0.0, 0, 0, 0.0, now] + [0] * self.SLOTS
        return free, e

    def _zero_my_column(self) -> None:
        col = 7 + self.index
        for slot in range(self.ENTRIES):
            off = self._TABLE_AT + slot * self._ENTRY.size
            if self._map[off:off + 16] != bytes(16):
                e = self._entry_at(slot)
                if e[col]:
                    e[col] = 0
                    self._put(slot, e)

    def _strike(self, slot: int, e: list, now: float) -> bool:
        """One more abuse; True if it bans the address now."""
        if e[1] > now:
            return False  # already banned: no second ban, no second log line
        if not e[3] or now - e[2] >= STRIKE_WINDOW_S:
            e[2], e[3] = now, 0
        e[3] += 1
        if self.ban_strikes and e[3] >= self.ban_strikes:
            e[1], e[3] = now + self.ban_seconds, 0
            return True
        return False

    # --- public --------------------------------------------------------------------------------
    def total(self) -> int:
        """Connections open now across all acceptors."""
        with self._locked():
            return self._others() + self.count

    def try_acquire(self, key: bytes = b"") -> bool:
        """Take a place for a connection (from address `key`); False if refused."""
        return self.admit(key)[0] is None

    def admit(self, key: bytes = b"", now: float | None = None) -> tuple[str | None, bool]:
        """Take a place for a connection from address `key`: (None, False) when admitted, else
        (why refused, whether that refusal just banned the address)."""
        now = time.time() if now is None else now
        with self._locked():
            found = self._find(key, now, create=True)
            if found is not None and found[1][1] > now:
                return REFUSED_BANNED, False
            if self._others() + self.count >= self.limit:
                return REFUSED_LIMIT, False
            if found is not None:
                slot, e = found
                if self.per_address:
                    live = self._live()
                    if sum(e[7 + i] for i in live) >= self.per_address:
                        banned = self._strike(slot, e, now)
                        self._put(slot, e)
                        return REFUSED_PER_ADDRESS, banned
                e[7 + self.index] += 1
                self._put(slot, e)
            self.count += 1
            self._store()
            return None, False

    def release(self, key: bytes = b"") -> None:
        with self._locked():
            self.count = max(0, self.count - 1)
            self._store()
            found = self._find(key, time.time(), create=False)
            if found is not None:
                slot, e = found
                col = 7 + self.index
                if e[col]:
                    e[col] -= 1
                    self._put(slot, e)

    def strike(self, key: bytes, now: float | None = None) -> bool:
        """Record an abuse by `key` (bad handshake, oversize frame...); True if it banned it now."""
        now = time.time() if now is None else now
        with self._locked():
            found = self._find(key, now, create=True)
            if found is None:
                return False
            slot, e = found
            banned = self._strike(slot, e, now)
            self._put(slot, e)
            return banned

    def account(self, bytes_by_key: dict[bytes, int], now: float | None = None) -> tuple[set[bytes], set[bytes]]:
        """Add the bytes each address sent to this acceptor since the last call to its shared
        leaky bucket; return (addresses banned by this call, all of them that are banned now)."""
        now = time.time() if now is None else now
        rate = self.addr_byte_rate
        newly: set[bytes] = set()
        banned: set[bytes] = set()
        with self._locked():
            for key, n in bytes_by_key.items():
                found = self._find(key, now, create=bool(rate and n))
                if found is None:
                    continue
                slot, e = found
                if rate:
                    e[5] = max(0.0, e[5] - max(0.0, now - e[6]) * rate) + n
                    e[6] = now
                    if e[5] > rate * BYTE_BURST_S and e[1] <= now:
                        e[1], e[5] = now + self.ban_seconds, 0.0
                        newly.add(key)
                    self._put(slot, e)
                if e[1] > now:
                    banned.add(key)
        return newly, banned

    def banned_until(self, key: bytes) -> float:
        """Unix time the ban of `key` ends (0.0 if it is not banned)."""
        now = time.time()
        with self._locked():
            found = self._find(key, now, create=False)
            return found[1][1] if found is not None and found[1][1] > now else 0.0

    def close(self) -> None:
        if self._fd < 0:
            return
        with self._locked():
            self.count = 0
            self._store()
            self._zero_my_column()
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
