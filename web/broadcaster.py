"""Per-worker live fan-out: one task tails every ring and feeds bounded per-subscriber queues.

A subscriber that cannot keep up never slows the tailer or other subscribers: when its queue is
full (in events or in bytes), events are skipped for it (counted in BROADCAST_LAGGED) and, once its sender has written
out what was queued, it is sent one `lagged` notice with the number skipped. Fan-out works on
whole poll batches: subscribers sharing a filter share one filtered list, so the per-poll cost
grows with subscribers, not with subscribers times events.

Memory is bounded by bytes, not only by counts: one event may be up to TART_MAX_FRAME (256 KiB)
and is several times that as JSON, so 10,000 recent events or 1,000 queued ones could otherwise
be gigabytes. The recent buffer keeps at most RECENT_MAX records and `recent_bytes_max` bytes;
a queue at most `maxsize` events and `maxbytes` bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

from tart.engine import metrics
from tart.engine.record import EVENT_HEADER, FLAG_MALFORMED, KIND_EVENT
from tart.web import lifecycle
from tart.web.media import dumps
from tart.web.ringsource import RingSet

log = logging.getLogger("tart.web.broadcast")

RECENT_MAX = 10_000
RECENT_BYTES_MAX = 16 * 1024 * 1024
QUEUE_MAX = 1000
QUEUE_BYTES_MAX = 4 * 1024 * 1024
# What a queued event costs beyond its text: the EventItem and its strings' headers.
ITEM_OVERHEAD = 200
READ_BATCH = 4096
POLL_BUSY_S = 0.001
POLL_IDLE_MAX_S = 0.010
BUSY_GRACE_S = 0.2  # keep the busy poll interval this long after the last record

_hdr = EVENT_HEADER.unpack_from
_HDR = EVENT_HEADER.size


class EventItem:
    """One event, pre-rendered once for every subscriber; only latency and send time vary per send."""

    __slots__ = ("id", "node_id", "event_type", "received_at", "head", "event", "batched", "batch_text", "size")

    def __init__(self, rec: bytes) -> None:
        _, flags, etype, jlen, id_, received_at, _, _, peer = _hdr(rec)
        self.id = id_
        self.node_id = peer.hex()
        self.event_type = etype
        self.received_at = received_at
        body = rec[_HDR : _HDR + jlen]
        if flags & FLAG_MALFORMED:
            self.event = "null," + '"decode_error":' + dumps(body.decode("utf-8", "replace")).decode()
        else:
            self.event = body.decode("utf-8", "replace")
        self.head = f'{{"id":{id_},"node_id":"{self.node_id}","event_type":{etype},"latency_ms":'
        self.size = len(self.event) + len(self.head) + ITEM_OVERHEAD
        self.batched: str | None = None
        # (last item of the batch, its length, the message) of the last batch this event started.
        self.batch_text: tuple[EventItem, int, str] | None = None

    def render(self, now_us: int, now_str: str) -> str:
        """The reference `event` message, latency_ms measured now."""
        lat = (now_us - self.received_at) / 1000.0
        return f'{{"type":"event","data":{self.head}{lat:.3f},"event":{self.event}}},"timestamp":"{now_str}"}}'

    def data_json(self, now_us: int) -> str:
        """The `data` object of the event message, for batches: rendered by the first batch that
        carries the event and shared by every later one in this worker (latency_ms is then the
        time to that first batch), so a batch costs a join, not a render per event per subscriber."""
        d = self.batched
        if d is None:
            lat = (now_us - self.received_at) / 1000.0
            d = self.batched = f'{self.head}{lat:.3f},"event":{self.event}}}'
        return d


class Filter:
    """All | Node(node_id) | EventTypes(set); `key` groups subscribers that see the same events."""

    __slots__ = ("kind", "node_id", "types", "key", "doc")

    def __init__(self, kind: str, node_id: str | None = None, types: Iterable[int] | None = None,
                 doc: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.node_id = node_id
        self.types = frozenset(types) if types is not None else None
        self.key: Hashable = (kind, node_id, self.types)
        self.doc = doc if doc is not None else {"type": kind}

    def match(self, item: EventItem) -> bool:
        if self.kind == "All":
            return True
        if self.node_id is not None and item.node_id != self.node_id:
            return False
        return not (self.types is not None and item.event_type not in self.types)


ALL = Filter("All")


class Subscriber:
    __slots__ = ("filter", "items", "queued", "skipped", "wake", "events_sent", "connected_at", "maxsize",
                 "going_away", "control_pending", "batch_ms", "batch_max", "first_at", "maxbytes",
                 "queued_bytes", "recent_inflight", "stats_due", "sending_since", "address")

    def __init__(self, maxsize: int = QUEUE_MAX, maxbytes: int = QUEUE_BYTES_MAX) -> None:
        self.filter = ALL
        self.items: deque[Any] = deque()
        # Event items in `items` and their bytes. Control messages are bounded by ws.py instead:
        # by count (unread replies) and recent_events replies by number in flight and size.
        self.queued = 0
        self.queued_bytes = 0
        self.maxbytes = maxbytes
        self.skipped = 0  # skipped since the last lagged notice was sent
        self.wake = asyncio.Event()
        self.events_sent = 0
        self.connected_at = time.monotonic()
        self.maxsize = maxsize
        self.going_away = False  # the worker is stopping: the sender closes the socket
        self.control_pending = 0  # replies queued, not yet sent
        # Batched delivery (opt-in): 0 = one `event` message per event (the reference protocol).
        self.batch_ms = 0
        self.batch_max = maxsize
        self.first_at = 0.0  # monotonic time the oldest queued event was queued
        self.recent_inflight = 0  # recent_events replies queued or being sent
        self.stats_due = False  # a periodic `stats` message is to be sent (set by ws.StatsFeed)
        # Monotonic time the sender started the send it is blocked in (0 = not sending): a
        # per-worker watchdog closes a client that has not taken a message for TART_WS_SEND_TIMEOUT.
        self.sending_since = 0.0
        self.address = ""

    def offer(self, events: list[EventItem], now: float) -> int:
        """Queue what fits; returns how many were skipped. `now`: the poll's monotonic time, the
        same for every subscriber, so batching subscribers of one filter fall due together and
        share one rendered batch (see ws.events_message)."""
        room = self.maxsize - self.queued
        if room <= 0:
            self.skipped += len(events)
            return len(events)
        take = events if len(events) <= room else events[:room]
        budget = self.maxbytes - self.queued_bytes
        size = 0
        for i, it in enumerate(take):
            size += it.size
            # An empty queue takes one event whatever its size, so that a huge event still reaches
            # a subscriber that keeps up.
            if size > budget and (i or self.queued):
                take = take[:i]
                size -= it.size
                break
        if not take:
            self.skipped += len(events)
            return len(events)
        was_empty = self.queued == 0
        self.items.extend(take)
        self.queued += len(take)
        self.queued_bytes += size
        # A batching sender sleeps until its batch is due: wake it only to start a batch (it
        # then sets its deadline) or when the batch is full, not on every poll.
        if was_empty:
            self.first_at = now
            self.wake.set()
        elif not self.batch_ms or self.queued >= self.batch_max:
            self.wake.set()
        lost = len(events) - len(take)
        self.skipped += lost
        return lost

    def batch_due_in(self) -> float:
        """Seconds until the queued events must go out as a batch; 0 when due now or not batching."""
        if not self.batch_ms or not self.queued or self.control_pending or self.queued >= self.batch_max:
            return 0.0
        return max(0.0, self.first_at + self.batch_ms / 1000.0 - time.monotonic())

    def control(self, text: str) -> None:
        self.items.append(text)
        self.control_pending += 1
        self.wake.set()

    def take(self) -> list[Any]:
        out = list(self.items)
        self.items.clear()
        self.queued = 0
        self.queued_bytes = 0
        self.wake.clear()
        return out


class Broadcaster:
    def __init__(self, rings: RingSet, queue_max: int = QUEUE_MAX, queue_bytes: int = QUEUE_BYTES_MAX,
                 recent_bytes: int = RECENT_BYTES_MAX, recent_max: int = RECENT_MAX) -> None:
        self.rings = rings
        self.queue_max = queue_max
        self.queue_bytes = queue_bytes
        self.subscribers: set[Subscriber] = set()
        self.recent: deque[bytes] = deque()
        self.recent_bytes = 0
        self.recent_bytes_max = recent_bytes
        self.recent_max = recent_max
        self.events_seen = 0
        self.lagged_total = 0
        self.missed_total = 0
        self._groups: list[tuple[Filter, list[Subscriber]]] | None = None
        self._readers: dict[str, Any] = {}
        self._task: asyncio.Task | None = None

    # --- subscribers -------------------------------------------------------------------------
    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.queue_max, self.queue_bytes)
        self.subscribers.add(sub)
        self._groups = None
        metrics.BROADCASTER_SUBSCRIBERS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self._groups = None
            metrics.BROADCASTER_SUBSCRIBERS.dec()

    def set_filter(self, sub: Subscriber, flt: Filter) -> None:
        sub.filter = flt
        self._groups = None

    def stats(self) -> dict[str, Any]:
        return {
            "active_subscribers": len(self.subscribers),
            "events_in_buffer": len(self.recent),
            "total_events_broadcast": self.events_seen,
            "lagged_events": self.lagged_total,
            "missed_records": self.missed_total,
            "rings_attached": len(self._readers),
            "buffer_bytes": self.recent_bytes,
        }

    def queued_bytes(self) -> int:
        return sum(s.queued_bytes for s in self.subscribers)

    # --- the tailer --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tart-broadcaster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _attach(self) -> None:
        self.rings.attach_missing()
        for name, ring in self.rings.rings.items():
            if name not in self._readers:
                self._readers[name] = ring.tail_reader(from_gate=False)

    def poll(self) -> int:
        """Read every ring once and fan out; returns the number of records read."""
        if len(self._readers) < len(self.rings.names):
            self._attach()
        batch: list[bytes] = []
        n = 0
        for name, reader in self._readers.items():
            try:
                recs, missed = reader.read(READ_BATCH)
            except RuntimeError as e:
                # A torn read from a lap in progress: start again at the live edge.
                log.warning("ring tail read failed, resyncing", extra={"ring": name, "error": str(e)})
                self._readers[name] = self.rings.rings[name].tail_reader(from_gate=False)
                continue
            if missed:
                self.missed_total += missed
            n += len(recs)
            batch.extend(r for r in recs if r[0] == KIND_EVENT and len(r) >= _HDR)
        if not batch:
            return n
        if len(self._readers) > 1:
            batch.sort(key=_record_id)
        self._remember(batch)
        self.events_seen += len(batch)
        if self.subscribers:
            self._fanout([EventItem(r) for r in batch])
        return n

    def _remember(self, batch: list[bytes]) -> None:
        recent = self.recent
        cap_n, cap_b = self.recent_max, self.recent_bytes_max
        if len(batch) > cap_n:
            batch = batch[-cap_n:]
        recent.extend(batch)
        total = self.recent_bytes + sum(map(len, batch))
        while recent and (len(recent) > cap_n or total > cap_b):
            total -= len(recent.popleft())
        self.recent_bytes = total
        metrics.WS_RECENT_BUFFER_BYTES.set(total)

    def _fanout(self, items: list[EventItem]) -> None:
        groups = self._groups
        if groups is None:
            by_key: dict[Hashable, tuple[Filter, list[Subscriber]]] = {}
            for s in self.subscribers:
                by_key.setdefault(s.filter.key, (s.filter, []))[1].append(s)
            groups = self._groups = list(by_key.values())
        skipped = 0
        now = time.monotonic()
        for flt, subs in groups:
            matching = items if flt.kind == "All" else [it for it in items if flt.match(it)]
            if not matching:
                continue
            for s in subs:
                skipped += s.offer(matching, now)
        if skipped:
            self.lagged_total += skipped
            metrics.BROADCAST_LAGGED.inc(skipped)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_busy = loop.time()
        delay = POLL_BUSY_S
        while True:
            if lifecycle.shutting_down() and self.subscribers:
                for s in self.subscribers:
                    s.going_away = True
                    s.wake.set()
            try:
                n = self.poll()
            except Exception:  # noqa: BLE001 - the tailer must survive anything a ring throws at it
                log.exception("broadcaster poll failed")
                n = 0
                last_busy = 0.0
            if n >= READ_BATCH:
                await asyncio.sleep(0)
                continue
            now = loop.time()
            if n:
                last_busy = now
                delay = POLL_BUSY_S
            elif now - last_busy > BUSY_GRACE_S:
                # Nodes send in bursts: only a longer silence means idle, then back off.
                delay = min(delay * 2, POLL_IDLE_MAX_S)
            await asyncio.sleep(delay)


def _record_id(rec: bytes) -> int:
    return int.from_bytes(rec[8:16], "little")
