"""Shared-memory ring: one producer (an acceptor), one gating reader (the writer), many tail readers.

Segment layout (``multiprocessing.shared_memory``; name given by the supervisor)::

    [0, 4096)            header, u64 slots (native little-endian; see the _H_* indices below)
    [4096, 4096 + cap)   data area, ``cap`` = capacity bytes (multiple of 8; power of two advised)

Positions are monotonic u64 *byte* positions; ``position % capacity`` is the offset in the data area.
A record is ``u32 length, u32 zero, u64 seq`` (16 bytes) then the payload, padded to 8 bytes.
``seq`` numbers records from 0 per ring, so a lapped reader can count what it missed. When a record
does not fit before the end of the data area, the producer writes the u32 WRAP marker (an 8-byte
slot is always left) and starts again at offset 0. Payloads are limited to ``capacity // 4 - 16``.

Owner (the supervisor): ``Ring.create(name, capacity, ring_index)`` (FileExistsError if the name
exists), ``ring.unlink()`` at shutdown, ``Ring.remove(name)`` for a stale segment. Anyone:
``Ring.attach(name)``, ``ring.status()``, ``ring.counters`` (read), ``ring.close()``.

Producer (exactly one process and one ``Ring`` object per ring: it caches its cursor):
``try_write``, ``write_many`` (one publish per batch), ``free_bytes``, ``next_id`` / ``next_ids``,
``counters`` (write), ``heartbeat``. The producer never overwrites bytes at or after ``gate_pos``:
``try_write`` returns False / ``write_many`` writes a prefix instead, and the acceptor stops reading
its sockets. A restarted producer attaches and continues write_pos, seq and the id clock.

Gating reader (the writer): ``ring.gate_reader()`` starts at ``gate_pos``; ``read`` returns copies;
``commit(position)`` moves ``gate_pos`` forward; ``seek(position)`` after a restart.

Tail readers (web workers): ``ring.tail_reader(from_gate=False)``; ``read`` returns
``(records, missed)``. They never hold up the producer; a lapped one is resynchronised to the
live edge (``write_pos``) and told exactly how many records it skipped (from seq numbers).

Publication protocol and memory ordering
----------------------------------------
Producer, per batch: store ``reserve_pos`` (end of the bytes it is about to write), copy the
records (payload and header in one memcpy), then bump ``pub_ver`` to odd, store ``write_seq`` and
``write_pos``, bump ``pub_ver`` to even. Every header slot is stored and loaded through a
``memoryview.cast("Q")`` item, which CPython compiles to one aligned 8-byte ``memcpy`` (a single
mov/str on x86-64 and arm64), so no reader sees a half-written u64. (``struct.pack_into("<Q")``
writes byte by byte and must not be used for shared cursors.)

Readers load ``write_pos`` before the data and ``reserve_pos`` after it (seqlock): bytes copied
from position ``q`` are intact iff ``q >= reserve_pos - capacity`` at the re-check, because the
producer announces every range before overwriting it. The gating reader needs no re-check: the
producer never reserves past ``gate_pos + capacity``.

Why this is safe enough in CPython: each step above is a separate C call separated by bytecode
dispatch, so the compiler cannot reorder them, and x86-64 (TSO) keeps stores in program order
and loads in program order. On arm64 the hardware may reorder plain stores and loads and pure
Python cannot emit barriers: in theory a reader could observe the new ``write_pos`` before the
payload bytes, or (for tail readers) load ``reserve_pos`` before finishing its copy. In practice
the hundreds of instructions between the steps make this very unlikely, but it is not
guaranteed; tart's servers are x86-64. A gate reader that meets an impossible header raises
RuntimeError rather than returning garbage.

Resource tracker (Python 3.11): ``SharedMemory`` registers every segment it opens with the
resource tracker, which unlinks it when that process exits. Both ``create`` and ``attach``
unregister immediately, so a segment lives until ``Ring.unlink`` / ``Ring.remove`` is called
explicitly (by the supervisor, which owns the rings).
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing import resource_tracker, shared_memory

if sys.byteorder != "little":  # header slots are native u64 and records are little-endian
    raise ImportError("tart.engine.ring needs a little-endian machine")

HEADER_SIZE = 4096
MAGIC = b"TARTRNG\x01"
LAYOUT_VERSION = 1
MAX_RINGS = 64

# Header u64 slot indices. Hot, differently-owned words sit on separate 64-byte cache lines.
_H_MAGIC = 0
_H_VERSION = 1
_H_CAPACITY = 2
_H_RING_INDEX = 3
_H_UUID = 4  # two slots: 16 bytes
_H_PID = 6
_H_HEARTBEAT = 7  # unix µs
_H_WPOS = 8  # producer line
_H_WSEQ = 9
_H_PUBVER = 10
_H_RESERVE = 11
_H_GATE = 16  # gating reader line
_H_GATE_SEQ = 17
_H_LAST_T = 24  # id clock
_H_VISIBLE = 25  # every id up to this one is in the ring (producer; see mark_visible)
_H_COUNTERS = 32
COUNTER_SLOTS = 32

COUNTER_NAMES: tuple[str, ...] = (
    "events_received",
    "events_dropped",
    "rate_limited",
    "decode_errors",
    "connections_active",
    "connections_total",
    "connections_rejected",
    "bytes_received",
    "backpressure_pauses",
    "node_up",
    "node_down",
    "frames_too_large",
)
# Slots past the named ones are spare: a new counter takes the next one without a layout change.
_COUNTER_INDEX = {name: _H_COUNTERS + i for i, name in enumerate(COUNTER_NAMES)}

REC_HEADER = struct.Struct("<IIQ")
REC_HEADER_SIZE = REC_HEADER.size
WRAP = 0xFFFFFFFF
_WRAP_MARK = struct.Struct("<I")
_SEQ = struct.Struct("<Q")
_ZEROS = tuple(b"\0" * i for i in range(8))
_PUBLISH_WAIT = 0.5  # seconds
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux value; 3.11 lacks the name


def _framed(n: int) -> int:
    return REC_HEADER_SIZE + ((n + 7) & -8)


def _open_untracked(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name, create=create, size=size)
    # Without this, the first process to exit (even a mere reader) would unlink the segment.
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    return shm


def _populate(shm: shared_memory.SharedMemory) -> None:
    # Allocate every page at creation, so the producer's first lap does not pay for allocating
    # and zeroing a page per 4 KiB on its hot path (~2x slower writes). Attachers only take cheap
    # minor faults, and do not inflate their RSS with the whole ring up front.
    try:
        shm._mmap.madvise(_MADV_POPULATE_WRITE)  # noqa: SLF001
    except (OSError, ValueError, AttributeError):
        pass  # kernel < 5.14: the first lap is just slower


class Counters:
    """Named u64 counters in the ring header. Only the producer writes them."""

    __slots__ = ("_hq",)

    def __init__(self, hq: memoryview) -> None:
        self._hq = hq

    def __getitem__(self, name: str) -> int:
        return self._hq[_COUNTER_INDEX[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self._hq[_COUNTER_INDEX[name]] = value

    def add(self, name: str, n: int = 1) -> None:
        i = _COUNTER_INDEX[name]
        self._hq[i] += n

    def get(self, name: str) -> int:
        return self._hq[_COUNTER_INDEX[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(COUNTER_NAMES)

    def __len__(self) -> int:
        return len(COUNTER_NAMES)

    def as_dict(self) -> dict[str, int]:
        hq = self._hq
        return {name: hq[i] for name, i in _COUNTER_INDEX.items()}


class Ring:
    """One shared-memory segment. See the module docstring for roles and the protocol."""

    def __init__(self, shm: shared_memory.SharedMemory) -> None:
        self._shm = shm
        self.name: str = shm.name.lstrip("/")
        hq = shm.buf[:HEADER_SIZE].cast("Q")
        if bytes(shm.buf[:8]) != MAGIC:
            hq.release()
            raise ValueError(f"shared memory {self.name!r} is not a tart ring")
        if hq[_H_VERSION] != LAYOUT_VERSION:
            v = hq[_H_VERSION]
            hq.release()
            raise ValueError(f"ring {self.name!r} has layout version {v}, expected {LAYOUT_VERSION}")
        cap = hq[_H_CAPACITY]
        if shm.size < HEADER_SIZE + cap:
            hq.release()
            raise ValueError(f"ring {self.name!r} segment is smaller than its header says")
        self._hq = hq
        self._data = shm.buf[HEADER_SIZE : HEADER_SIZE + cap]
        self.capacity: int = cap
        self.ring_index: int = hq[_H_RING_INDEX]
        self.uuid_bytes: bytes = bytes(shm.buf[_H_UUID * 8 : _H_UUID * 8 + 16])
        self.uuid: str = self.uuid_bytes.hex()
        self.max_payload: int = min(cap // 4 - REC_HEADER_SIZE, WRAP - 1)
        self.counters = Counters(hq)
        self._shm_closed: shared_memory.SharedMemory | None = None
        self._producer_ready = False
        self._wpos = 0
        self._wseq = 0
        self._pubver = 0
        self._reserve = 0

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, capacity: int, ring_index: int) -> Ring:
        if capacity < 4096 or capacity % 8:
            raise ValueError("capacity must be a multiple of 8 and at least 4096 bytes")
        if not 0 <= ring_index < MAX_RINGS:
            raise ValueError(f"ring_index must be in 0..{MAX_RINGS - 1}")
        shm = _open_untracked(name, True, HEADER_SIZE + capacity)
        _populate(shm)
        hq = shm.buf[:HEADER_SIZE].cast("Q")
        try:
            hq[_H_VERSION] = LAYOUT_VERSION
            hq[_H_CAPACITY] = capacity
            hq[_H_RING_INDEX] = ring_index
            shm.buf[_H_UUID * 8 : _H_UUID * 8 + 16] = secrets.token_bytes(16)
            # Magic last: an attacher that sees it sees a complete header.
            shm.buf[:8] = MAGIC
        finally:
            hq.release()
        return cls(shm)

    @classmethod
    def attach(cls, name: str) -> Ring:
        shm = _open_untracked(name, False)
        try:
            return cls(shm)
        except BaseException:
            shm.close()
            raise

    @staticmethod
    def remove(name: str) -> bool:
        """Unlink a (possibly stale) segment by name; False if there was none."""
        try:
            shm = _open_untracked(name, False)
        except FileNotFoundError:
            return False
        shm.close()
        _unlink(shm)
        return True

    def close(self) -> None:
        """Unmap in this process (the segment stays; see ``unlink``). Readers of this object stop working."""
        if getattr(self, "_shm", None) is None:
            return
        self.counters = None  # type: ignore[assignment]
        self._data.release()
        self._hq.release()
        self._shm.close()
        self._shm_closed = self._shm
        self._shm = None  # type: ignore[assignment]

    def __del__(self) -> None:
        # Release our views first, or SharedMemory.__del__ complains about exported pointers.
        try:
            self.close()
        except Exception:
            pass

    def unlink(self) -> None:
        """Remove the segment name; mappings stay valid until every process closes them."""
        _unlink(self._shm if self._shm is not None else self._shm_closed)

    # --- header views ----------------------------------------------------------------------

    @property
    def write_pos(self) -> int:
        return self._hq[_H_WPOS]

    @property
    def write_seq(self) -> int:
        return self._published()[1]

    @property
    def gate_pos(self) -> int:
        return self._hq[_H_GATE]

    @property
    def gate_seq(self) -> int:
        return self._hq[_H_GATE_SEQ]

    @property
    def last_t(self) -> int:
        return self._hq[_H_LAST_T]

    @property
    def producer_pid(self) -> int:
        return self._hq[_H_PID]

    @property
    def heartbeat_at(self) -> float:
        """Unix time of the producer's last ``heartbeat()`` (0.0 if never)."""
        return self._hq[_H_HEARTBEAT] / 1e6

    def heartbeat(self) -> None:
        """Producer: record its pid and the time, so the supervisor can see it is alive."""
        self._hq[_H_PID] = os.getpid()
        self._hq[_H_HEARTBEAT] = time.time_ns() // 1000

    def status(self) -> dict[str, object]:
        """Everything health checks and the dashboard want, in one dict (any process)."""
        wpos, wseq = self._published()
        gate = self._hq[_H_GATE]
        return {
            "name": self.name,
            "uuid": self.uuid,
            "ring_index": self.ring_index,
            "capacity": self.capacity,
            "write_pos": wpos,
            "write_seq": wseq,
            "gate_pos": gate,
            "gate_seq": self._hq[_H_GATE_SEQ],
            "uncommitted_bytes": wpos - gate,
            "producer_pid": self.producer_pid,
            "heartbeat_at": self.heartbeat_at,
            "counters": self.counters.as_dict(),
        }

    def free_bytes(self) -> int:
        return self._hq[_H_GATE] + self.capacity - self._hq[_H_WPOS]

    def _published(self) -> tuple[int, int]:
        """A consistent (write_pos, write_seq) pair."""
        hq = self._hq
        deadline = 0.0
        spins = 0
        while True:
            v = hq[_H_PUBVER]
            if not v & 1:
                pos = hq[_H_WPOS]
                seq = hq[_H_WSEQ]
                if hq[_H_PUBVER] == v:
                    return pos, seq
            spins += 1
            if spins > 1000:
                # The producer was descheduled mid-publish (or died there; its successor
                # repairs the pair): stop burning the CPU it needs.
                now = time.monotonic()
                if not deadline:
                    deadline = now + _PUBLISH_WAIT
                elif now > deadline:
                    return hq[_H_WPOS], hq[_H_WSEQ]
                time.sleep(0.0001)

    # --- ids -------------------------------------------------------------------------------

    def next_id(self) -> int:
        """Producer only: a unique, increasing id ``(t << 6) | ring_index``."""
        hq = self._hq
        t = time.time_ns() // 1000
        last = hq[_H_LAST_T]
        if t <= last:
            t = last + 1
        hq[_H_LAST_T] = t
        return (t << 6) | self.ring_index

    def mark_visible(self) -> None:
        """Producer only, when nothing it assigned an id to waits outside the ring: every id up
        to the clock is now readable here. Forward paging (REST ``after_id``) reads no further,
        so that a poller never steps past an event that is still on its way into a ring."""
        hq = self._hq
        # Any id assigned from now on is later than the clock and than this microsecond, so
        # everything before both is in the ring, whatever ring index it carries.
        t = max(hq[_H_LAST_T], time.time_ns() // 1000 - 1)
        hq[_H_VISIBLE] = (t << 6) | 63

    @property
    def visible_through(self) -> int:
        """The id up to which this ring's producer has made every record readable (0: none yet)."""
        return self._hq[_H_VISIBLE]

    def next_ids(self, n: int) -> range:
        """Producer only: ``n`` consecutive ids (as ``next_id`` called n times, one clock read)."""
        hq = self._hq
        t = time.time_ns() // 1000
        last = hq[_H_LAST_T]
        if t <= last:
            t = last + 1
        hq[_H_LAST_T] = t + n - 1
        start = (t << 6) | self.ring_index
        return range(start, start + (n << 6), 64)

    # --- producer --------------------------------------------------------------------------

    def _init_producer(self) -> None:
        hq = self._hq
        self._wpos = hq[_H_WPOS]
        self._wseq = hq[_H_WSEQ]
        self._reserve = max(hq[_H_RESERVE], self._wpos)
        ver = hq[_H_PUBVER]
        if ver & 1:
            # The previous producer died mid-publish: write_pos may be stored without write_seq.
            # The records up to write_pos carry their own seq; recount from the gate.
            self._wseq = self._seq_at_end(hq[_H_GATE], self._wpos, hq[_H_GATE_SEQ])
            hq[_H_WSEQ] = self._wseq
            ver += 1
            hq[_H_PUBVER] = ver
        self._pubver = ver
        self._producer_ready = True

    def _seq_at_end(self, pos: int, end: int, seq: int) -> int:
        data, cap, up = self._data, self.capacity, REC_HEADER.unpack_from
        while pos < end:
            off = pos % cap
            if off > cap - REC_HEADER_SIZE or _WRAP_MARK.unpack_from(data, off)[0] == WRAP:
                pos += cap - off
                continue
            n, _, s = up(data, off)
            seq = s + 1
            pos += _framed(n)
        return seq

    def try_write(self, payload: bytes | bytearray | memoryview) -> bool:
        """Append one record; False (nothing written) when the gating reader holds the space."""
        return self.write_many((payload,)) == 1

    def write_many(self, payloads: Sequence[bytes | bytearray | memoryview]) -> int:
        """Append a prefix of ``payloads`` that fits before the gate; publish once; return its length."""
        if not payloads:
            return 0
        if max(map(len, payloads)) > self.max_payload:
            raise ValueError(f"record larger than the ring's maximum of {self.max_payload} bytes")
        if not self._producer_ready:
            self._init_producer()
        hq, data, cap = self._hq, self._data, self.capacity
        limit = hq[_H_GATE] + cap
        pos = self._wpos
        seq = self._wseq
        off = pos % cap
        seg_off = off
        parts: list = []
        ap = parts.append
        pack = REC_HEADER.pack
        zeros = _ZEROS
        count = 0
        for p in payloads:
            n = len(p)
            s = REC_HEADER_SIZE + ((n + 7) & -8)
            if off + s > cap:
                skip = cap - off
                if pos + skip + s > limit:
                    break
                if parts:
                    self._flush(parts, seg_off, pos)
                    parts = []
                    ap = parts.append
                if skip:  # skip == 0: the last record ended exactly at the end, no marker needed
                    pos += skip
                    self._reserve_to(pos)
                    _WRAP_MARK.pack_into(data, off, WRAP)
                off = seg_off = 0
            if pos + s > limit:
                break
            ap(pack(n, 0, seq))
            ap(p)
            pad = s - REC_HEADER_SIZE - n
            if pad:
                ap(zeros[pad])
            pos += s
            off += s
            seq += 1
            count += 1
        if parts:
            self._flush(parts, seg_off, pos)
        if pos != self._wpos:
            self._wpos = pos
            self._wseq = seq
            ver = self._pubver
            hq[_H_PUBVER] = ver + 1
            hq[_H_WSEQ] = seq
            hq[_H_WPOS] = pos
            hq[_H_PUBVER] = ver + 2
            self._pubver = ver + 2
        return count

    def _reserve_to(self, end: int) -> None:
        if end > self._reserve:
            self._reserve = end
            self._hq[_H_RESERVE] = end

    def _flush(self, parts: list, seg_off: int, end_pos: int) -> None:
        blob = b"".join(parts)
        self._reserve_to(end_pos)
        self._data[seg_off : seg_off + len(blob)] = blob

    # --- readers ---------------------------------------------------------------------------

    def gate_reader(self) -> GateReader:
        return GateReader(self)

    def tail_reader(self, from_gate: bool = False) -> TailReader:
        return TailReader(self, from_gate)

    def _stable_seq_at(self, pos: int) -> int | None:
        """Seq of the record at boundary ``pos``; None if ``pos`` was overwritten meanwhile."""
        wpos, wseq = self._published()
        if pos >= wpos:
            return wseq
        cap = self.capacity
        off = pos % cap
        if off > cap - REC_HEADER_SIZE or _WRAP_MARK.unpack_from(self._data, off)[0] == WRAP:
            if pos + cap - off >= wpos:
                return wseq
            off = 0
        seq = REC_HEADER.unpack_from(self._data, off)[2]
        if pos < self._hq[_H_RESERVE] - cap:
            return None
        return seq

    def snapshot_uncommitted(self, max_records: int) -> list[bytes]:
        """Copies of the newest ``max_records`` records in [gate_pos, write_pos), oldest first."""
        if max_records <= 0:
            return []
        hq, data, cap = self._hq, self._data, self.capacity
        up = REC_HEADER.unpack_from
        lim = cap - REC_HEADER_SIZE
        for _ in range(16):
            start = hq[_H_GATE]  # gate before write_pos: gate never passes a published write_pos
            end = hq[_H_WPOS]
            spans: deque[tuple[int, int]] = deque(maxlen=max_records)
            pos = start
            ok = True
            while pos < end:
                off = pos % cap
                if off > lim:
                    pos += cap - off
                    continue
                n = up(data, off)[0]
                if n == WRAP:
                    pos += cap - off
                    continue
                if n > self.max_payload:
                    ok = False
                    break
                spans.append((off, n))
                pos += _framed(n)
            out = [data[o + REC_HEADER_SIZE : o + REC_HEADER_SIZE + n].tobytes() for o, n in spans]
            if start >= hq[_H_RESERVE] - cap:
                if not ok:
                    raise RuntimeError(f"ring {self.name!r}: bad record header at position {pos}")
                return out
        return []


def _unlink(shm: shared_memory.SharedMemory) -> None:
    # SharedMemory.unlink() also unregisters from the tracker; register first so the pair
    # balances (we unregistered at open) and the tracker does not print a KeyError.
    resource_tracker.register(shm._name, "shared_memory")  # noqa: SLF001
    shm.unlink()


def _copy_records(
    ring: Ring, pos: int, end: int, max_records: int, max_bytes: int
) -> tuple[list[bytes], int, int, int, bool]:
    """Copy records from ``pos`` (a boundary) towards ``end``: (records, new position, first seq,
    last seq, bad header seen). Hot loop: one u32 load, one copy and a few integer ops per record."""
    data, cap, maxp = ring._data, ring.capacity, ring.max_payload
    u32 = _WRAP_MARK.unpack_from
    seq_at = _SEQ.unpack_from
    lim = cap - REC_HEADER_SIZE
    out: list[bytes] = []
    ap = out.append
    nbytes = 0
    first = last_off = -1
    bad = False
    while pos < end:
        off = pos % cap
        if off > lim:  # only a wrap marker fits in the last 8 bytes
            pos += cap - off
            continue
        n = u32(data, off)[0]
        if n == WRAP:
            pos += cap - off
            continue
        if n > maxp:
            bad = True
            break
        if first < 0:
            first = seq_at(data, off + 8)[0]
        # Records up to min(end, end of the data area) are contiguous from here.
        stop = off + min(end - pos, cap - off)
        o = off
        for _ in range(max_records - len(out)):
            n = u32(data, o)[0]
            if n > maxp:  # a wrap marker (or garbage, which the outer loop reports)
                break
            ap(data[o + 16 : o + 16 + n].tobytes())
            last_off = o
            o += 16 + ((n + 7) & -8)
            nbytes += n
            if o >= stop or nbytes >= max_bytes:
                break
        pos += o - off
        if len(out) >= max_records or nbytes >= max_bytes:
            break
    last = seq_at(data, last_off + 8)[0] if out else -1
    return out, pos, first, last, bad


class GateReader:
    """The writer's cursor. The producer never overwrites what this reader has not committed."""

    def __init__(self, ring: Ring) -> None:
        self._ring = ring
        self._pos = ring._hq[_H_GATE]
        seq = ring._stable_seq_at(self._pos)
        if seq is None:  # at or after the gate nothing is ever overwritten
            raise RuntimeError(f"ring {ring.name!r}: gate position {self._pos} was overwritten")
        self._seq = seq

    @property
    def position(self) -> int:
        """Byte position after the last record returned by ``read``."""
        return self._pos

    @property
    def seq(self) -> int:
        """Seq of the next record this reader will return."""
        return self._seq

    def pending(self) -> int:
        return self._ring._hq[_H_WPOS] - self._pos

    def read(self, max_records: int, max_bytes: int = 1 << 62) -> list[bytes]:
        """Copies of the next records: at most ``max_records``, and stop once ``max_bytes`` of
        payload are reached (at least one record is returned when one is available)."""
        ring = self._ring
        end = ring._hq[_H_WPOS]
        if self._pos >= end or max_records <= 0:
            return []
        out, pos, first, last, bad = _copy_records(ring, self._pos, end, max_records, max_bytes)
        if out and (first != self._seq or last - first + 1 != len(out)):
            raise RuntimeError(
                f"ring {ring.name!r}: bad record sequence before position {pos} (seq {first}..{last} for "
                f"{len(out)} records, expected {self._seq})"
            )
        # The good records before a bad header are returned; the next read raises at the bad
        # one (where ``resync`` can take over).
        if bad and not out:
            raise RuntimeError(f"ring {ring.name!r}: bad record header at position {pos} (seq {self._seq} expected)")
        if out:
            self._seq = last + 1
        self._pos = pos
        return out

    def commit(self, position: int) -> None:
        """Let the producer overwrite everything before ``position`` (a boundary this reader reached)."""
        ring = self._ring
        hq = ring._hq
        gate = hq[_H_GATE]
        if position == gate:
            return
        if not gate < position <= self._pos:
            raise ValueError(f"commit({position}) outside (gate {gate}, read position {self._pos}]")
        seq = self._seq if position == self._pos else ring._stable_seq_at(position)
        hq[_H_GATE_SEQ] = seq
        hq[_H_GATE] = position

    def resync(self) -> tuple[int, int]:
        """After ``read`` raised on an impossible header (a corrupt record: a bug or a stray
        write, never a torn one), continue at the next header that is plausible and chains to
        the one after it, or at write_pos. Returns (bytes, records) skipped; nothing is committed
        here, so the writer's next commit releases the bad stretch with its batch."""
        ring = self._ring
        data, cap, maxp = ring._data, ring.capacity, ring.max_payload
        end, wseq = ring._hq[_H_WPOS], ring._hq[_H_WSEQ]
        start, start_seq = self._pos, self._seq

        def header(pos: int, seq_lo: int) -> int | None:
            """The seq of a plausible header at ``pos`` with seq in [seq_lo, wseq), else None."""
            off = pos % cap
            if off > cap - REC_HEADER_SIZE:
                return None
            n, zero, seq = REC_HEADER.unpack_from(data, off)
            if n > maxp or zero or not seq_lo <= seq < wseq or off + _framed(n) > cap:
                return None
            return seq

        pos, seq = end, wseq
        p = start + 8
        while p < end:
            off = p % cap
            got = header(p, start_seq + 1)
            if got is not None:
                nxt = p + _framed(REC_HEADER.unpack_from(data, off)[0])
                noff = nxt % cap
                wraps = noff > cap - REC_HEADER_SIZE or _WRAP_MARK.unpack_from(data, noff)[0] == WRAP
                if nxt >= end or wraps or header(nxt, got + 1) == got + 1:
                    pos, seq = p, got
                    break
            p += 8
        self._pos, self._seq = pos, seq
        return pos - start, seq - start_seq

    def seek(self, position: int) -> None:
        """Continue from ``position``: a record boundary in [gate_pos, write_pos] (writer restart)."""
        ring = self._ring
        gate = ring._hq[_H_GATE]
        wpos = ring._hq[_H_WPOS]
        if not gate <= position <= wpos:
            raise ValueError(f"seek({position}) outside [gate {gate}, write_pos {wpos}]")
        cap, data = ring.capacity, ring._data
        pos = gate
        while pos < position:  # walk from the gate so a non-boundary is refused, not misread
            off = pos % cap
            if off > cap - REC_HEADER_SIZE or _WRAP_MARK.unpack_from(data, off)[0] == WRAP:
                pos += cap - off
                continue
            pos += _framed(REC_HEADER.unpack_from(data, off)[0])
        if pos != position:
            raise ValueError(f"seek({position}) is not a record boundary")
        seq = ring._stable_seq_at(position)
        if seq is None:
            raise RuntimeError(f"ring {ring.name!r}: position {position} was overwritten")
        self._pos = position
        self._seq = seq


class TailReader:
    """A non-gating reader: never slows the producer, may be lapped and is told how much it missed."""

    def __init__(self, ring: Ring, from_gate: bool) -> None:
        self._ring = ring
        if from_gate:
            while True:
                pos = ring._hq[_H_GATE]
                seq = ring._stable_seq_at(pos)
                if seq is not None:
                    break
        else:
            pos, seq = ring._published()
        self._pos = pos
        self._seq = seq

    @property
    def position(self) -> int:
        return self._pos

    @property
    def seq(self) -> int:
        """Seq of the next record this reader expects."""
        return self._seq

    def pending(self) -> int:
        """Bytes between this reader and ``write_pos``."""
        return max(0, self._ring._hq[_H_WPOS] - self._pos)

    def read(self, max_records: int) -> tuple[list[bytes], int]:
        """Up to ``max_records`` intact copies and the number of records skipped since the last call."""
        ring = self._ring
        hq, cap = ring._hq, ring.capacity
        missed = 0
        for _ in range(64):
            end = hq[_H_WPOS]
            start = self._pos
            if start >= end or max_records <= 0:
                return [], missed
            out, pos, first, last, bad = _copy_records(ring, start, end, max_records, 1 << 62)
            if start >= hq[_H_RESERVE] - cap:
                # Nothing we copied can have been touched since we loaded write_pos.
                if bad or (out and (first != self._seq or last - first + 1 != len(out))):
                    raise RuntimeError(f"ring {ring.name!r}: tail reader saw bad records at {start}..{pos}")
                if out:
                    self._seq = last + 1
                self._pos = pos
                return out, missed
            # Lapped (the bytes may be torn): jump to the live edge, where seq is known exactly.
            wpos, wseq = ring._published()
            missed += wseq - self._seq
            self._pos, self._seq = wpos, wseq
        return [], missed
