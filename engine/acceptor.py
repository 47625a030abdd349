"""Acceptor worker: JIP-3 TCP connections in, ring records out (one process per ring).

The supervisor forks N of these; each accepts on its own inherited SO_REUSEPORT listening socket
(the kernel spreads connections; the supervisor keeps the sockets across restarts). Each runs a
uvloop event loop with one asyncio Protocol per node connection:

- frames are split by offset scanning (framing.py) and decoded in the read callback; the records
  of a whole read are appended to one per-acceptor pending list, and that list goes into the ring
  with one `write_many` per loop iteration (call_soon), not one write per event;
- when the ring is full the rest stays pending, reading pauses on every connection of this
  acceptor (TCP backpressure reaches the nodes) and the flush is retried every few ms; reads that
  were already on their way are kept as raw bytes and decoded on resume, so nothing is dropped;
- bad input costs only its own connection: every per-connection exception is caught, logged once
  and counted, and the connection is closed.

Prometheus counters (and the ring header's counters) are summed locally and pushed once a
second (metrics.py: hot paths count in batches); the same timer refreshes the ring heartbeat and
closes idle connections.

Limits: TART_MAX_CONNECTIONS is shared by all acceptors through `<data_dir>/run/connections`
(ratelimit.ConnectionLimit: one flock'd slot per acceptor index); TART_RATE_LIMIT is a token
bucket per connection (a node is one connection); TART_IDLE_TIMEOUT closes silent connections.
Close reasons in telemetry_connections_closed: eof, reset, idle, oversize, bad node info, error,
shutdown, handshake_timeout, node_info_oversize, banned.

What one hostile host can take (the same file holds a table of source addresses, so the limits
hold across acceptors): TART_MAX_CONNECTIONS_PER_ADDRESS places; a node-information frame of
TART_MAX_NODE_INFO bytes, sent within TART_HANDSHAKE_TIMEOUT; TART_CONN_BYTE_RATE bytes/s per
connection, enforced by no longer reading the socket (TCP backpressure: a fast node is slowed,
never silently dropped); TART_ADDR_BYTE_RATE bytes/s per address, and TART_BAN_STRIKES abuses
(bad handshakes, oversize frames, refusals over the per-address cap) within a minute, after which
the address is banned for TART_BAN_SECONDS, its connections closed, and one line logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import time
from typing import Any

import orjson

from tart.engine import metrics as m
from tart.engine import reload
from tart.engine.codec import DecodeError, decode_event, decode_node_info
from tart.engine.codec.eventtype import EventType
from tart.engine.config import Settings, live_options
from tart.engine.framing import FrameSplitter
from tart.engine.ratelimit import (
    REFUSED_LIMIT,
    ConnectionLimit,
    TokenBucket,
    address_key,
    address_text,
)
from tart.engine.record import (
    EVENT_HEADER,
    FLAG_HAS_NUL,
    FLAG_MALFORMED,
    KIND_EVENT,
    pack_node_down,
    pack_node_up,
    pack_ring_reset,
)

log = logging.getLogger("tart.acceptor")

RETRY_FLUSH_S = 0.002  # ring full: how soon to try again
HOUSEKEEPING_S = 1.0  # heartbeat, idle sweep, metric push
# What SIGHUP changes in a running acceptor; the rest needs a restart (tart.engine.reload).
LIVE_OPTIONS = live_options("acceptor")
PENDING_SOFT_CAP = 50_000  # records: beyond this (or TART_ACCEPTOR_PENDING_BYTES), pause reading
# event_id is stored as BIGINT: a Dropped count that would pass this leaves the id here.
EVENT_ID_MAX = (1 << 63) - 1
REFUSAL_LOG_EVERY_S = 10.0  # a connection flood must not become a log flood
SHUTDOWN_FLUSH_S = 3.0  # the supervisor allows an acceptor 4 s to stop

_ev_pack = EVENT_HEADER.pack
_TS_TYPE = struct.Struct("<QB")
_U64 = struct.Struct("<Q")
# A Dropped frame: timestamp u64, discriminator, last_timestamp u64, num u64 (JIP-3).
_DROPPED_LEN = 25
_DROPPED_NUM_AT = 17
_NUL_ESCAPE = b"\\u0000"


def _now_us() -> int:
    return time.time_ns() // 1000


def decode_error_kind(err: DecodeError) -> str:
    """Short label for DECODE_ERRORS{kind}: what class of mistake the frame made."""
    reason = err.reason
    if err.field == "discriminator" and reason.startswith("unknown event type"):
        return "unknown_type"
    if "truncated" in reason or "too short" in reason or "larger than remaining" in reason:
        return "truncated"
    if "trailing bytes" in reason:
        return "trailing"
    if "UTF-8" in reason or "over bound" in reason:
        return "bad_string"
    if reason.startswith("enum byte"):
        return "bad_enum"
    if reason.startswith(("bool byte", "option byte")):
        return "bad_bool"
    if "non-canonical" in reason:
        return "bad_length"
    return "other"


def format_address(peername: Any) -> str:
    """`1.2.3.4:5678` or `[::1]:5678` (peername as the socket module gives it)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peername)


def _set_keepalive(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:
        pass  # the peer may already be gone; the read path will notice


class Acceptor:
    """State shared by the connections of one acceptor process: the ring and the pending list."""

    def __init__(self, index: int, ring: Any, settings: Settings, limit: ConnectionLimit,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.ring = ring
        self.settings = settings
        self.limit = limit
        self.loop = loop
        # First record of every acceptor incarnation: connections announced by a predecessor that
        # died (kill -9) never sent NODE_DOWN; the writer marks them gone when it reads this.
        self.pending: list[bytes] = [pack_ring_reset(at=_now_us(), reset_id=ring.next_id())]
        self.conns: set[NodeConnection] = set()
        self.paused = False
        self.resume_turn = 0
        self.flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.next_id = ring.next_id
        self.max_record: int = ring.max_payload
        # Local tallies, pushed to Prometheus and the ring header counters by push_metrics().
        self.n_events = 0
        self.n_bytes = 0
        self.n_rate_limited = 0
        self.n_dropped_too_large = 0
        self.n_throttles = 0
        self.n_refused: dict[str, int] = {}
        self.refusal_log_at = 0.0
        self.pending_bytes = 0  # of the records in `pending`
        self.events_total = 0  # lifetime of this process, for the stop log line
        self.nodes_total = 0
        self.decode_errors: dict[str, int] = {}

    # --- ring ------------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_handle = None
        pending = self.pending
        if pending:
            written = self.ring.write_many(pending)
            if written >= len(pending):
                pending.clear()
                self.pending_bytes = 0
                self.ring.mark_visible()
            else:
                self.pending_bytes -= sum(map(len, pending[:written]))
                del pending[:written]
                self.pause_all()
                self.flush_handle = self.loop.call_later(RETRY_FLUSH_S, self.flush)
                return
        if self.paused:
            self.resume_all()

    def pause_all(self) -> None:
        if self.paused:
            return
        self.paused = True
        m.BACKPRESSURE_PAUSES.inc()
        self.ring.counters.add("backpressure_pauses")
        for conn in self.conns:
            conn.pause()

    def resume_all(self) -> None:
        self.paused = False
        now = self.loop.time()
        conns = list(self.conns)
        if conns:
            # Start at a different connection each time: if decoding deferred reads re-pauses us
            # part way, the same connections must not always be first.
            self.resume_turn = k = (self.resume_turn + 1) % len(conns)
            conns = conns[k:] + conns[:k]
        for conn in conns:
            if self.paused:
                break  # decoding a deferred read refilled the pending list; the rest wait
            conn.resume(now)
        if self.pending:
            self.schedule_flush()

    # --- configuration ---------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: adopt the live options of the configuration as it is now. Open connections
        stay open; their token buckets, frame limits and idle deadlines follow the new values."""
        got = reload.reread(self.settings, LIVE_OPTIONS, f"acceptor-{self.index}", log)
        if got is None:
            return
        self.settings, changes = got
        s = self.settings
        if "rate_limit" in changes:
            now = self.loop.time()
            for conn in self.conns:
                conn.set_rate(s.rate_limit, now)
        if "max_frame" in changes:
            for conn in self.conns:
                conn.splitter.max_frame = s.max_frame
        if "max_node_info" in changes:
            for conn in self.conns:
                if conn.splitter.first_max is not None:
                    conn.splitter.first_max = s.max_node_info
        if "conn_byte_rate" in changes:
            now = self.loop.time()
            for conn in self.conns:
                conn.set_byte_rate(s.conn_byte_rate, now)
        # Connections already over a lowered limit stay; new ones wait for room.
        self.limit.limit = s.max_connections
        self.limit.per_address = s.per_address_limit
        self.limit.ban_strikes = s.ban_strikes
        self.limit.ban_seconds = s.ban_seconds
        self.limit.addr_byte_rate = s.addr_byte_rate
        log.info("configuration reloaded", extra={"changed": reload.describe(changes)})

    # --- periodic --------------------------------------------------------------------------
    def housekeeping(self) -> None:
        try:
            self.ring.heartbeat()
            if not self.pending:
                self.ring.mark_visible()  # an idle ring must not hold back forward paging
        except Exception:
            log.exception("ring heartbeat failed")
        if not self.paused:
            # While paused the silence is ours, not the node's.
            now = self.loop.time()
            deadline = now - self.settings.idle_timeout
            for conn in [c for c in self.conns if c.last_read < deadline]:
                conn.close("idle")
            handshake = now - self.settings.handshake_timeout
            for conn in [c for c in self.conns if c.peer_id is None and c.opened < handshake]:
                conn.close("handshake_timeout")
                self.strike(conn.addr_key, "handshake_timeout")
        self.account_bytes()
        self.push_metrics()

    # --- per-address limits ---------------------------------------------------------------------
    def account_bytes(self) -> None:
        """Once a second: add what each address sent here to its shared byte bucket, and close
        the connections of every address that is banned now (by any acceptor)."""
        by_key: dict[bytes, int] = {}
        for conn in self.conns:
            if conn.addr_key:
                by_key[conn.addr_key] = by_key.get(conn.addr_key, 0) + conn.tick_bytes
                conn.tick_bytes = 0
        if not by_key:
            return
        try:
            newly, banned = self.limit.account(by_key)
        except OSError:
            log.exception("address accounting failed")
            return
        for key in newly:
            self.banned(key, "byte_rate")
        if banned:
            for conn in [c for c in self.conns if c.addr_key in banned]:
                conn.close("banned")

    def strike(self, key: bytes, why: str) -> None:
        if key and self.limit.strike(key):
            self.banned(key, "abuse", why)

    def banned(self, key: bytes, reason: str, why: str = "") -> None:
        """This acceptor banned `key` just now: count it, log it once, close its connections."""
        m.ADDRESS_BANS.labels(reason=reason).inc()
        log.warning("address banned", extra={"addr": address_text(key), "reason": reason, "last": why or reason,
                                             "ban_s": self.settings.ban_seconds})
        for conn in [c for c in self.conns if c.addr_key == key]:
            conn.close("banned")

    def refused(self, reason: str, addr: str) -> None:
        self.n_refused[reason] = self.n_refused.get(reason, 0) + 1
        now = self.loop.time()
        if reason == REFUSED_LIMIT and now >= self.refusal_log_at:
            self.refusal_log_at = now + REFUSAL_LOG_EVERY_S
            log.warning("connection rejected", extra={"addr": addr, "limit": self.limit.limit})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("connection refused", extra={"addr": addr, "reason": reason})

    def push_metrics(self) -> None:
        rc = self.ring.counters
        if self.n_events:
            m.EVENTS_RECEIVED.inc(self.n_events)
            rc.add("events_received", self.n_events)
            self.n_events = 0
        if self.n_bytes:
            m.BYTES_RECEIVED.inc(self.n_bytes)
            rc.add("bytes_received", self.n_bytes)
            self.n_bytes = 0
        if self.n_rate_limited:
            m.EVENTS_RATE_LIMITED.inc(self.n_rate_limited)
            rc.add("rate_limited", self.n_rate_limited)
            self.n_rate_limited = 0
        if self.n_dropped_too_large:
            m.EVENTS_DROPPED.labels(reason="too_large").inc(self.n_dropped_too_large)
            rc.add("events_dropped", self.n_dropped_too_large)
            self.n_dropped_too_large = 0
        if self.n_throttles:
            m.CONNECTION_THROTTLES.inc(self.n_throttles)
            self.n_throttles = 0
        if self.n_refused:
            for reason, n in self.n_refused.items():
                m.CONNECTIONS_REFUSED.labels(reason=reason).inc(n)
                if reason == REFUSED_LIMIT:
                    m.CONNECTIONS_REJECTED.inc(n)
            rc.add("connections_rejected", sum(self.n_refused.values()))
            self.n_refused = {}
        m.ACCEPTOR_PENDING_BYTES.set(self.pending_bytes)
        if self.decode_errors:
            for kind, n in self.decode_errors.items():
                m.DECODE_ERRORS.labels(kind=kind).inc(n)
                rc.add("decode_errors", n)
            self.decode_errors = {}
        rc["connections_active"] = len(self.conns)


class NodeConnection(asyncio.Protocol):
    """One node's TCP connection: node information first, then events."""

    def __init__(self, acc: Acceptor) -> None:
        self.acc = acc
        self.transport: asyncio.Transport | None = None
        self.splitter = FrameSplitter(acc.settings.max_frame, acc.settings.max_node_info)
        self.admitted = False
        self.addr_key = b""
        self.opened = 0.0  # loop time of connection_made: the handshake deadline counts from it
        self.tick_bytes = 0  # read since the last per-address accounting
        self.throttle: asyncio.TimerHandle | None = None  # set while over TART_CONN_BYTE_RATE
        self.saturated = False
        self.closing = False
        self.close_reason: str | None = None
        self.address = "?"
        self.peer_id: bytes | None = None
        self.node_id = ""
        self.core_count = 0
        self.conn_id = 0
        self.connected_at = 0
        self.next_event_id = 0
        self.events = 0
        self.last_read = 0.0
        self.deferred: bytearray | None = None  # bytes read after a pause, decoded on resume
        rate = acc.settings.rate_limit
        self.bucket = TokenBucket(rate, acc.loop.time()) if rate > 0 else None
        brate = acc.settings.conn_byte_rate
        self.byte_bucket = TokenBucket(brate, acc.loop.time()) if brate > 0 else None

    # --- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        acc = self.acc
        peername = transport.get_extra_info("peername")
        key = address_key(peername[0]) if isinstance(peername, tuple) and peername else b""
        refused, banned_now = acc.limit.admit(key)
        if refused is not None:
            self.closing = True
            transport.abort()
            acc.refused(refused, format_address(peername))
            if banned_now:
                acc.banned(key, "abuse", refused)
            return
        self.admitted = True
        self.addr_key = key
        self.address = format_address(peername)
        self.connected_at = _now_us()
        self.last_read = self.opened = acc.loop.time()
        _set_keepalive(transport)
        acc.conns.add(self)
        m.ACTIVE_CONNECTIONS.inc()
        m.CONNECTIONS_TOTAL.inc()
        acc.ring.counters.add("connections_total")
        if acc.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        acc = self.acc
        n = len(data)
        acc.n_bytes += n
        self.tick_bytes += n
        self.last_read = now = acc.loop.time()
        if self.byte_bucket is not None:
            wait = self.byte_bucket.debit(n, now)
            if wait > 0 and self.throttle is None and self.transport is not None:
                # Over its byte rate: this read is kept, the next waits until the debt is paid.
                acc.n_throttles += 1
                self.transport.pause_reading()
                self.throttle = acc.loop.call_later(wait, self._unthrottle)
        if acc.paused:
            # A read already in flight when reading paused: keep the bytes, decode on resume.
            if self.deferred is None:
                self.deferred = bytearray(data)
            else:
                self.deferred += data
            return
        self._guarded(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        acc = self.acc
        if self.deferred and self.close_reason in (None, "shutdown", "idle"):
            # The node sent these before it went away: they are events like any other.
            data, self.deferred = bytes(self.deferred), None
            self._guarded(data)
        self.closing = True
        if self.throttle is not None:
            self.throttle.cancel()
            self.throttle = None
        acc.conns.discard(self)
        acc.limit.release(self.addr_key)
        m.ACTIVE_CONNECTIONS.dec()
        reason = self.close_reason or ("eof" if exc is None else "reset")
        m.CONNECTIONS_CLOSED.labels(reason=reason).inc()
        if self.peer_id is not None:
            rec = pack_node_down(disconnected_at=_now_us(), conn_id=self.conn_id, peer_id=self.peer_id,
                                 connected_at=self.connected_at, events=self.events)
            acc.pending.append(rec)
            acc.pending_bytes += len(rec)
            acc.schedule_flush()
            acc.ring.counters.add("node_down")
            log.info("node disconnected", extra={"node_id": self.node_id, "addr": self.address, "reason": reason,
                                                 "events": self.events})

    def set_rate(self, rate: int, now: float) -> None:
        """Rate limit changed by a reload; 0 turns it off for this connection too."""
        if rate <= 0:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(rate, now)
        else:
            self.bucket.set_rate(rate, now)

    def set_byte_rate(self, rate: int, now: float) -> None:
        if rate <= 0:
            self.byte_bucket = None
        elif self.byte_bucket is None:
            self.byte_bucket = TokenBucket(rate, now)
        else:
            self.byte_bucket.set_rate(rate, now)

    # --- flow control --------------------------------------------------------------------------
    def pause(self) -> None:
        if not self.closing and self.transport is not None:
            self.transport.pause_reading()

    def _unthrottle(self) -> None:
        self.throttle = None
        if self.closing or self.transport is None:
            return
        self.last_read = self.acc.loop.time()  # the silence was ours
        if not self.acc.paused:
            self.transport.resume_reading()

    def resume(self, now: float) -> None:
        if self.closing or self.transport is None:
            return
        self.last_read = now
        if self.throttle is None:
            self.transport.resume_reading()
        if self.deferred:
            data, self.deferred = bytes(self.deferred), None
            self._guarded(data)

    def close(self, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        if reason == "idle":
            log.info("connection idle", extra={"node_id": self.node_id or "-", "addr": self.address,
                                               "idle_timeout_s": self.acc.settings.idle_timeout})
        if self.transport is not None:
            self.transport.close()

    # --- frames -----------------------------------------------------------------------------------
    def _guarded(self, data: bytes) -> None:
        try:
            self._process(data)
        except Exception as exc:
            log.error("connection error", extra={"node_id": self.node_id or "-", "addr": self.address,
                                                 "error": f"{type(exc).__name__}: {exc}"})
            m.FRAME_ERRORS.labels(kind="internal").inc()
            self.close("error")

    def _process(self, data: bytes) -> None:
        splitter = self.splitter
        frames = splitter.feed(data)
        if frames:
            if self.peer_id is None:
                if not self._node_info(frames[0]):
                    return
                del frames[0]
            if frames:
                self._events(frames)
        if splitter.oversize is not None:
            first = splitter.oversize_first
            log.warning("frame oversize", extra={"node_id": self.node_id or "-", "addr": self.address,
                                                 "length": splitter.oversize, "node_info": first,
                                                 "max": splitter.first_max if first else splitter.max_frame})
            kind = "node_info_oversize" if first else "oversize"
            m.FRAME_ERRORS.labels(kind=kind).inc()
            self.acc.ring.counters.add("frames_too_large")
            self.close(kind)
            self.acc.strike(self.addr_key, kind)

    def _node_info(self, frame: bytes) -> bool:
        try:
            info = decode_node_info(frame)
        except DecodeError as exc:
            log.warning("bad node info", extra={"addr": self.address, "field": exc.field, "reason": exc.reason,
                                                "bytes": len(frame)})
            m.FRAME_ERRORS.labels(kind="bad_node_info").inc()
            self.close("bad node info")
            self.acc.strike(self.addr_key, "bad_node_info")
            return False
        acc = self.acc
        self.peer_id = bytes(info.peer_id)
        self.node_id = info.node_id
        self.core_count = info.core_count
        self.conn_id = acc.next_id()
        doc = {
            "node_info": info.to_json_obj(),
            "address": self.address,
            "implementation_name": info.implementation_name,
            "implementation_version": info.implementation_version,
            "gp_version": info.gp_version,
        }
        rec = pack_node_up(connected_at=self.connected_at, conn_id=self.conn_id, peer_id=self.peer_id,
                           info_json=orjson.dumps(doc))
        acc.pending.append(rec)
        acc.pending_bytes += len(rec)
        acc.schedule_flush()
        acc.ring.counters.add("node_up")
        acc.nodes_total += 1
        log.info("node connected", extra={"node_id": self.node_id, "addr": self.address,
                                          "impl": info.implementation_name, "version": info.implementation_version,
                                          "gp": info.gp_version, "cores": info.core_count})
        return True

    def _events(self, frames: list[bytes]) -> None:
        acc = self.acc
        n = len(frames)
        keep = n if self.bucket is None else self.bucket.take(n, acc.loop.time())
        received_at = _now_us()
        peer_id = self.peer_id
        core_count = self.core_count
        ids = iter(acc.ring.next_ids(keep)) if keep else None
        pending = acc.pending
        append = pending.append
        before = len(pending)
        max_rec = acc.max_record
        eid = self.next_event_id
        for i in range(keep):
            frame = frames[i]
            try:
                d = decode_event(frame, core_count)
            except DecodeError as exc:
                kind = decode_error_kind(exc)
                errors = acc.decode_errors
                errors[kind] = errors.get(kind, 0) + 1
                if len(frame) >= 9:
                    ts, et = _TS_TYPE.unpack_from(frame)
                else:
                    ts, et = (_U64.unpack(frame)[0] if len(frame) == 8 else 0), 0
                js = str(exc).encode()
                rec = _ev_pack(KIND_EVENT, FLAG_MALFORMED, et, len(js), next(ids), received_at, ts, eid,
                               peer_id) + js + frame
                eid += 1
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("event malformed", extra={"node_id": self.node_id, "event_id": eid - 1,
                                                        "error": str(exc)})
            else:
                et = d.event_type
                js = d.json()
                # The JSON is for the live feed; the wire payload (after timestamp and
                # discriminator) is what the writer stores.
                rec = b"".join((_ev_pack(KIND_EVENT, FLAG_HAS_NUL if _NUL_ESCAPE in js else 0, et, len(js),
                                         next(ids), received_at, d.timestamp, eid, peer_id), js, frame[9:]))
                eid += d.value["num"] if et == EventType.Dropped else 1
                if eid > EVENT_ID_MAX:
                    eid = self._saturate()
            if len(rec) > max_rec:
                # Only possible with a ring smaller than 4x TART_MAX_FRAME: a record the ring can never take.
                acc.n_dropped_too_large += 1
                log.error("record too large", extra={"node_id": self.node_id, "bytes": len(rec),
                                                     "ring_max": max_rec})
                continue
            append(rec)
        stored = len(pending) - before
        self.events += stored
        acc.n_events += stored
        acc.events_total += stored
        if keep < n:
            # Over the rate limit: not stored, but they were events and consume JIP-3 ids.
            acc.n_rate_limited += n - keep
            for i in range(keep, n):
                frame = frames[i]
                if len(frame) == _DROPPED_LEN and frame[8] == EventType.Dropped:
                    eid += _U64.unpack_from(frame, _DROPPED_NUM_AT)[0]
                else:
                    eid += 1
                if eid > EVENT_ID_MAX:
                    eid = self._saturate()
        self.next_event_id = eid
        if stored:
            acc.pending_bytes += sum(map(len, pending[before:]))
        if len(pending) > PENDING_SOFT_CAP or acc.pending_bytes > acc.settings.acceptor_pending_bytes:
            acc.pause_all()
        acc.schedule_flush()

    def _saturate(self) -> int:
        """A Dropped count ran event_id past BIGINT: keep it at the maximum (later ids repeat it)."""
        m.EVENT_ID_SATURATED.inc()
        if not self.saturated:
            self.saturated = True
            log.warning("event_id saturated", extra={"node_id": self.node_id, "addr": self.address})
        return EVENT_ID_MAX


async def serve(index: int, listen_sock: socket.socket, ring: Any, settings: Settings,
                stop: asyncio.Event, limit: ConnectionLimit, hup_early: list[int] | None = None) -> None:
    """Accept and serve until `stop` is set, then shut down gracefully. SIGHUP reloads the
    configuration (`hup_early`: SIGHUPs that arrived before the loop could take them)."""
    loop = asyncio.get_running_loop()
    acc = Acceptor(index, ring, settings, limit, loop)
    acc.schedule_flush()  # the RING_RESET record goes out even if no node ever connects
    loop.add_signal_handler(signal.SIGHUP, acc.reload)
    if hup_early:
        acc.reload()
    server = await loop.create_server(lambda: NodeConnection(acc), sock=listen_sock)

    async def tick() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            acc.housekeeping()

    ticker = loop.create_task(tick())
    acc.ring.heartbeat()
    log.info("acceptor started", extra={"index": index, "ring": getattr(ring, "name", "?")})
    try:
        await stop.wait()
    finally:
        ticker.cancel()
        await _shutdown(acc, server)


async def _shutdown(acc: Acceptor, server: asyncio.AbstractServer) -> None:
    loop = acc.loop
    server.close()  # stop accepting; other acceptors (if still running) take new nodes
    for conn in list(acc.conns):
        conn.close("shutdown")
    deadline = loop.time() + SHUTDOWN_FLUSH_S
    while acc.conns and loop.time() < deadline:
        await asyncio.sleep(0.005)  # connection_lost runs and queues each NODE_DOWN
    # Deferred reads are decoded now even if the ring was full: the pending list holds them.
    if acc.flush_handle is not None:
        acc.flush_handle.cancel()
        acc.flush_handle = None
    while acc.pending and loop.time() < deadline:
        written = acc.ring.write_many(acc.pending)
        acc.pending_bytes -= sum(map(len, acc.pending[:written]))
        del acc.pending[:written]
        if acc.pending:
            acc.ring.heartbeat()
            await asyncio.sleep(RETRY_FLUSH_S)
    lost = 0
    if acc.pending:
        lost = sum(1 for rec in acc.pending if rec[0] == KIND_EVENT)
        m.EVENTS_DROPPED.labels(reason="shutdown").inc(lost)
        acc.ring.counters.add("events_dropped", lost)
        log.error("shutdown ring full", extra={"records_lost": len(acc.pending), "events_lost": lost})
        acc.pending.clear()
    acc.push_metrics()
    log.info("acceptor stopped", extra={"index": acc.index, "events_accepted": acc.events_total - lost,
                                        "nodes_served": acc.nodes_total})


def run_acceptor(index: int, listen_sock: socket.socket, ring_name: str, settings: Settings) -> None:
    """Entry point of an acceptor process (the supervisor calls it in a forked child)."""
    # Until the event loop handles SIGHUP, remember one: its default action would kill us.
    hup_early: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hup_early.append(signum))
    import uvloop

    from tart.engine.ring import Ring

    ring = Ring.attach(ring_name)
    limit = ConnectionLimit(settings.data_path / "run" / "connections", index, settings.max_connections,
                            per_address=settings.per_address_limit, ban_seconds=settings.ban_seconds,
                            ban_strikes=settings.ban_strikes, addr_byte_rate=settings.addr_byte_rate)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(serve(index, listen_sock, ring, settings, stop, limit, hup_early))
    finally:
        limit.close()
        try:
            ring.close()
        except Exception:
            pass
        loop.close()


def main(argv: list[str] | None = None) -> None:
    """Run one acceptor outside the supervisor (tests, debugging): the socket comes as an fd."""
    import argparse

    from tart.engine import config, logs

    p = argparse.ArgumentParser(description="tart acceptor worker (normally started by tart-backend)")
    p.add_argument("--fd", type=int, required=True, help="inherited listening socket file descriptor")
    p.add_argument("--ring", required=True, help="shared-memory ring name")
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args(argv)
    settings = config.load()
    logs.setup(f"acceptor-{args.index}", settings.log_level)
    sock = socket.socket(fileno=args.fd)
    run_acceptor(args.index, sock, args.ring, settings)
    os._exit(0)


if __name__ == "__main__":
    main()
