"""What the console knows, updated on the UI thread from REST snapshots and live events.

Rates come from counter deltas between consecutive polls (never from wall-clock guesses), and
every derived figure is None when its inputs are missing, which the screens show as "-".
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from . import metrics as m
from .feed import Live, Snapshot
from .fmt import get

HISTORY_SECONDS = 600.0
EVENT_BUFFER = 5000
DETAIL_WINDOW = 1000
RATE_WINDOW = 5.0


class RateMeter:
    """Rate of a monotonic counter over a sliding window of polls. The backend updates counters
    in batches, so a delta between two adjacent polls jumps between 0 and twice the truth; a few
    seconds of window smooth that out. A counter going down (backend restart) starts over."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, at: float, value: float) -> float | None:
        if self.samples and (value < self.samples[-1][1] or at <= self.samples[-1][0]):
            self.samples.clear()
        self.samples.append((at, value))
        # Keep one sample at or beyond the window edge so the span covers the whole window.
        while len(self.samples) > 2 and self.samples[1][0] <= at - self.window:
            self.samples.popleft()
        if len(self.samples) < 2:
            return None
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0)


@dataclass
class NodeRow:
    node_id: str
    raw: dict
    rate: float | None = None
    best: int | None = None

    def get(self, key: str) -> Any:
        return self.raw.get(key)


@dataclass
class Totals:
    received: float | None = None
    dropped: float | None = None
    rate_limited: float | None = None
    decode_errors: float | None = None
    writer_lag: float | None = None
    pending: float | None = None


@dataclass
class EventLog:
    """The live stream as an append-only buffer with absolute sequence numbers, so list views can
    keep their position while old entries fall off the front."""

    maxlen: int = EVENT_BUFFER
    items: deque = field(default_factory=deque)
    first_seq: int = 0

    def extend(self, events: list[dict]) -> None:
        self.items.extend(events)
        extra = len(self.items) - self.maxlen
        for _ in range(max(0, extra)):
            self.items.popleft()
            self.first_seq += 1

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.items)


class Model:
    def __init__(self) -> None:
        self.reachable: bool | None = None  # None until the first poll answers or fails
        self.error: str | None = None
        self.last_ok: float | None = None
        self.down_since: float | None = None
        self.health: dict | None = None
        self.detailed: dict | None = None
        self.stats: dict | None = None
        self.totals = Totals()
        self.rate: float | None = None
        self.history: deque[tuple[float, float]] = deque()
        self.nodes: dict[str, NodeRow] = {}
        self.nodes_known = False
        self.ws_state = "connecting"
        self.ws_stats: dict | None = None
        self.lagged = 0
        self.overflow = 0
        self.events = EventLog()
        self.best: dict[str, int] = {}
        self.finalized: dict[str, int] = {}
        self.status: dict[str, dict] = {}
        self.detail_id: str | None = None
        self.detail: dict | None = None
        self.detail_events: dict[int, dict] = {}
        self.restarts = 0
        self._meter = RateMeter()
        self._node_meters: dict[str, RateMeter] = {}

    # --- inputs -------------------------------------------------------------------------------
    def apply(self, snap: Snapshot | None, live: Live) -> bool:
        """Fold in one hand-off; True if the backend came back after being unreachable."""
        came_back = False
        if snap is not None:
            came_back = self._apply_snapshot(snap)
        self.ws_state = live.state
        if live.ws_stats is not None:
            self.ws_stats = live.ws_stats
        self.lagged += live.lagged
        self.overflow += live.overflow
        self.best.update(live.best)
        self.finalized.update(live.finalized)
        self.status.update(live.status)
        if live.events:
            self.events.extend(live.events)
            if self.detail_id:
                for ev in live.events:
                    if ev.get("node_id") == self.detail_id and isinstance(ev.get("id"), int):
                        self.detail_events[ev["id"]] = ev
                self._trim_detail()
        for nid, best in self.best.items():
            row = self.nodes.get(nid)
            if row is not None:
                row.best = best
        return came_back

    def _apply_snapshot(self, snap: Snapshot) -> bool:
        if not snap.ok:
            if self.reachable is not False:
                self.down_since = snap.at
            self.reachable = False
            self.error = snap.error
            self.rate = None
            self._meter = RateMeter()
            self._node_meters.clear()
            return False
        came_back = self.reachable is False
        if came_back:
            self.restarts += 1
        self.reachable = True
        self.error = None
        self.down_since = None
        self.last_ok = snap.at
        self.health = snap.health
        self.detailed = snap.detailed
        self.stats = snap.stats
        self._apply_metrics(snap)
        if snap.nodes is not None:
            self._apply_nodes(snap.at, snap.nodes)
        if snap.detail_id and snap.detail_id == self.detail_id:
            if snap.detail is not None:
                self.detail = snap.detail
            for ev in snap.detail_events or ():
                if isinstance(ev.get("id"), int):
                    self.detail_events.setdefault(ev["id"], ev)
            self._trim_detail()
        return came_back

    def _apply_metrics(self, snap: Snapshot) -> None:
        mt = snap.metrics or {}
        lag = get(self.detailed, "components", "writer", "lag_seconds")
        pending = get(self.detailed, "components", "writer", "pending")
        self.totals = Totals(
            received=mt.get(m.RECEIVED),
            dropped=mt.get(m.DROPPED, 0.0 if mt else None),
            rate_limited=mt.get(m.RATE_LIMITED, 0.0 if mt else None),
            decode_errors=mt.get(m.DECODE_ERRORS, 0.0 if mt else None),
            writer_lag=mt.get(m.WRITER_LAG, lag if isinstance(lag, (int, float)) else None),
            pending=mt.get(m.PENDING, pending if isinstance(pending, (int, float)) else None),
        )
        counter = self.totals.received
        if counter is None:
            total = get(self.stats, "total_events")
            counter = float(total) if isinstance(total, (int, float)) else None
        if counter is None:
            self.rate = None
            return
        self.rate = self._meter.add(snap.at, counter)
        if self.rate is None:
            return
        self.history.append((snap.at, self.rate))
        while self.history and self.history[0][0] < snap.at - HISTORY_SECONDS:
            self.history.popleft()

    def _apply_nodes(self, at: float, nodes: list[dict]) -> None:
        self.nodes_known = True
        fresh: dict[str, NodeRow] = {}
        for raw in nodes:
            if not isinstance(raw, dict):
                continue
            nid = raw.get("node_id") or raw.get("peer_id")
            if not isinstance(nid, str):
                continue
            row = NodeRow(nid, raw, best=self.best.get(nid))
            count = raw.get("event_count")
            if isinstance(count, int):
                meter = self._node_meters.setdefault(nid, RateMeter())
                row.rate = meter.add(at, count)
            fresh[nid] = row
        self.nodes = fresh

    def _trim_detail(self) -> None:
        extra = len(self.detail_events) - DETAIL_WINDOW
        if extra > 0:
            for key in sorted(self.detail_events)[:extra]:
                del self.detail_events[key]

    def select_node(self, node_id: str | None) -> None:
        if node_id != self.detail_id:
            self.detail_id = node_id
            self.detail = None
            self.detail_events = {}

    # --- derived figures ----------------------------------------------------------------------
    def connected_total(self) -> tuple[int | None, int | None]:
        conn, total = get(self.stats, "connected_nodes"), get(self.stats, "total_nodes")
        if self.nodes_known:
            if not isinstance(total, int):
                total = len(self.nodes)
            if not isinstance(conn, int):
                conn = sum(1 for r in self.nodes.values() if r.get("is_connected"))
        return (conn if isinstance(conn, int) else None, total if isinstance(total, int) else None)

    def detail_breakdown(self) -> Counter:
        return Counter(ev.get("event_type") for ev in self.detail_events.values())

    def detail_recent(self, n: int) -> list[dict]:
        return [self.detail_events[k] for k in sorted(self.detail_events, reverse=True)[:n]]

    def detail_status(self) -> dict | None:
        """Latest Status of the selected node: live if seen, else the newest stored one."""
        if self.detail_id in self.status:
            return self.status[self.detail_id]
        for ev in self.detail_recent(len(self.detail_events)):
            body = get(ev, "event", "Status")
            if isinstance(body, dict):
                return {"time": ev.get("time"), **body}
        return None

    def sparkline(self, buckets: int, span: float = 300.0, now: float | None = None) -> list[float | None]:
        """Average events/s per bucket over the last `span` seconds, oldest first."""
        now = time.monotonic() if now is None else now
        sums = [0.0] * buckets
        counts = [0] * buckets
        width = span / buckets
        for t, r in self.history:
            i = int((t - (now - span)) / width)
            if 0 <= i < buckets:
                sums[i] += r
                counts[i] += 1
            elif i == buckets:  # the sample taken this very instant
                sums[-1] += r
                counts[-1] += 1
        return [s / c if c else None for s, c in zip(sums, counts, strict=True)]
