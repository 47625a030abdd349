"""The web tier's view of the shared-memory rings: attach, snapshot the uncommitted tail, health.

This is the only module that knows the ring API (tart.engine.ring), so the rest of the web tier
works on record bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson

from tart.engine.record import (
    EVENT_HEADER,
    KIND_EVENT,
    KIND_NODE_UP,
    EventRecord,
    unpack_event,
    unpack_node_up,
)
from tart.engine.timefmt import fmt_unix_us, jce_to_unix_us
from tart.web.params import EventQuery

log = logging.getLogger("tart.web.rings")

_hdr = EVENT_HEADER.unpack_from
_HDR_SIZE = EVENT_HEADER.size
# A REST request never decodes more than this many uncommitted records; normally the writer keeps
# the uncommitted tail to a few batches.
SNAPSHOT_MAX = 100_000
# The first snapshot of a request copies only the newest records of each ring: a page needs the
# newest limit+1 matches, and when the writer lags (uncommitted tails of 10^5 records) copying and
# scanning the whole tail per request dominated REST latency. A ring whose window was cut short
# before enough matches is read again with a window 8x larger, up to SNAPSHOT_MAX.
SNAPSHOT_FIRST = 4096
ATTACH_RETRY_S = 1.0
# An acceptor heartbeats about once a second; three missed beats and more means it is gone.
HEARTBEAT_STALE_S = 5.0


class RingSet:
    """The rings named in TART_RINGS; rings that do not exist yet are retried, at most once a second."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = [n for n in names if n]
        self.rings: dict[str, Any] = {}
        self._next_try = 0.0

    def attach_missing(self) -> list[str]:
        """Attach rings not attached yet; returns the names attached by this call."""
        now = time.monotonic()
        if len(self.rings) == len(self.names) or now < self._next_try:
            return []
        self._next_try = now + ATTACH_RETRY_S
        from tart.engine.ring import Ring

        added = []
        for name in self.names:
            if name in self.rings:
                continue
            try:
                self.rings[name] = Ring.attach(name)
                added.append(name)
            except (OSError, ValueError) as e:
                log.warning("cannot attach ring", extra={"ring": name, "error": str(e)})
        return added

    def snapshot_uncommitted(self, max_records: int = SNAPSHOT_MAX) -> list[bytes]:
        out: list[bytes] = []
        for ring in list(self.rings.values()):
            out.extend(ring.snapshot_uncommitted(max_records))
        return out

    def select_uncommitted(self, q: EventQuery) -> tuple[list[EventRecord], dict[str, tuple[str, str]]]:
        """The newest limit+1 uncommitted events matching `q` over every ring, newest first, plus
        node names from NODE_UP records seen; reads each ring's tail only as far back as needed."""
        hits: list[EventRecord] = []
        names: dict[str, tuple[str, str]] = {}
        need = q.limit + 1
        for ring in list(self.rings.values()):
            window = max(SNAPSHOT_FIRST, 8 * need)
            while True:
                recs = ring.snapshot_uncommitted(window)
                found, seen = select_events(recs, q)
                if len(recs) < window or len(found) >= need or window >= SNAPSHOT_MAX:
                    break
                window = min(SNAPSHOT_MAX, window * 8)
            hits.extend(found)
            names.update(seen)
        if len(self.rings) > 1:
            hits.sort(key=lambda ev: ev.id, reverse=True)
            del hits[need:]
        return hits, names

    def visible_horizon(self) -> int:
        """The newest id up to which every event of every ring is readable (ring or PostgreSQL):
        forward paging (``after_id``) stops there, so a poller never skips an event that was
        still in an acceptor's hands. 0 when a ring is missing or has not said yet."""
        if len(self.rings) < len(self.names):
            self.attach_missing()
        if not self.rings or len(self.rings) < len(self.names):
            return 0
        return min(getattr(r, "visible_through", 0) for r in self.rings.values())

    def select_uncommitted_after(self, q: EventQuery, horizon: int) -> tuple[list[EventRecord],
                                                                        dict[str, tuple[str, str]]]:
        """The oldest limit+1 uncommitted events with q.after_id < id <= horizon matching `q`,
        oldest first, over every ring, plus node names from NODE_UP records seen."""
        hits: list[EventRecord] = []
        names: dict[str, tuple[str, str]] = {}
        need = q.limit + 1
        for ring in list(self.rings.values()):
            window = max(SNAPSHOT_FIRST, 8 * need)
            while True:
                recs = ring.snapshot_uncommitted(window)
                # The window holds the newest records; it reaches back far enough once its
                # oldest event is at or before the cursor (or it holds the whole tail).
                first = next((r for r in recs if r[0] == KIND_EVENT and len(r) >= _HDR_SIZE), None)
                if len(recs) < window or first is None or _hdr(first)[4] <= q.after_id or window >= SNAPSHOT_MAX:
                    break
                window = min(SNAPSHOT_MAX, window * 8)
            found, seen = select_events(recs, q, horizon=horizon)
            hits.extend(found)
            names.update(seen)
        hits.sort(key=lambda ev: ev.id)
        del hits[need:]
        return hits, names

    def close(self) -> None:
        for ring in self.rings.values():
            close = getattr(ring, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing at shutdown must not raise
                    pass
        self.rings.clear()

    def health(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names:
            ring = self.rings.get(name)
            if ring is None:
                out.append({"name": name, "attached": False})
                continue
            info: dict[str, Any] = {"name": name, "attached": True}
            try:
                wpos, gate, cap = ring.write_pos, ring.gate_pos, ring.capacity
                hb = ring.heartbeat_at
                info.update(
                    ring_index=ring.ring_index,
                    producer_pid=ring.producer_pid,
                    heartbeat_age_s=round(time.time() - hb, 3) if hb else None,
                    alive=bool(hb) and time.time() - hb < HEARTBEAT_STALE_S,
                    fill=round((wpos - gate) / cap, 6) if cap else 0.0,
                    uncommitted_bytes=wpos - gate,
                    capacity=cap,
                    counters=ring.counters.as_dict(),
                )
            except Exception as e:  # noqa: BLE001 - health must report, not fail
                log.warning("ring health failed", extra={"ring": name, "error": str(e)[:300]})
                info["error"] = type(e).__name__
            out.append(info)
        return out


def select_events(records: list[bytes], q: EventQuery, horizon: int | None = None
                  ) -> tuple[list[EventRecord], dict[str, tuple[str, str]]]:
    """Ring records matching `q`, newest id first, at most limit+1; plus node names seen in NODE_UP
    records. With ``q.after_id``: ids in (after_id, horizon], the oldest limit+1, oldest first."""
    types = frozenset(q.event_types) if q.event_types is not None else None
    peer = bytes.fromhex(q.node_id) if q.node_id is not None else None
    before = q.before_id
    after = q.after_id
    since, until = q.since_us, q.until_us
    hits: list[tuple[int, bytes]] = []
    names: dict[str, tuple[str, str]] = {}
    for rec in records:
        kind = rec[0]
        if kind == KIND_EVENT:
            if len(rec) < _HDR_SIZE:
                continue
            _, _, etype, _, id_, _, ts, _, pid = _hdr(rec)
            if before is not None and id_ >= before:
                continue
            if after is not None and (id_ <= after or id_ > horizon):
                continue
            if types is not None and etype not in types:
                continue
            if peer is not None and pid != peer:
                continue
            if since is not None or until is not None:
                t = jce_to_unix_us(ts)
                if since is not None and t < since:
                    continue
                if until is not None and t >= until:
                    continue
            hits.append((id_, rec))
        elif kind == KIND_NODE_UP:
            try:
                up = unpack_node_up(rec)
                info = orjson.loads(up.info_json)
                names[up.peer_id.hex()] = (
                    str(info.get("implementation_name", "")), str(info.get("implementation_version", ""))
                )
            except (ValueError, orjson.JSONDecodeError, AttributeError):
                continue
    hits.sort(key=lambda h: h[0], reverse=after is None)
    return [unpack_event(rec) for _, rec in hits[: q.limit + 1]], names


_SECOND_PREFIX: dict[int, str] = {}


def fmt_us(us: int) -> str:
    """fmt_unix_us with the date-time part cached per second: events of one page share seconds,
    and building a datetime per timestamp was a tenth of a REST request's CPU."""
    sec, frac = divmod(us, 1_000_000)
    prefix = _SECOND_PREFIX.get(sec)
    if prefix is None:
        if len(_SECOND_PREFIX) > 4096:
            _SECOND_PREFIX.clear()
        prefix = _SECOND_PREFIX[sec] = fmt_unix_us(sec * 1_000_000)[:19]
    return f"{prefix}.{frac:06d}Z"


def event_timestamp(ev: EventRecord) -> str:
    try:
        return fmt_us(jce_to_unix_us(ev.timestamp))
    except OverflowError:
        # Beyond year 9999: what the writer must also do, show the arrival time rather than fail.
        return fmt_unix_us(ev.received_at)


def event_data(ev: EventRecord) -> Any:
    if ev.malformed:
        return None
    try:
        return orjson.loads(ev.json)
    except orjson.JSONDecodeError:
        return None


def rest_envelope(ev: EventRecord, name: tuple[str, str]) -> dict[str, Any]:
    env = {
        "id": ev.id,
        "node_id": ev.peer_id.hex(),
        "event_id": ev.event_id,
        "event_type": ev.event_type,
        "timestamp": event_timestamp(ev),
        "data": event_data(ev),
        "node_name": name[0],
        "node_version": name[1],
        "received_at": fmt_us(ev.received_at),
    }
    if ev.malformed:
        env["decode_error"] = ev.json.decode("utf-8", "replace")
    return env
