"""Network side of the console: a REST poller thread and a WebSocket reader thread.

Neither thread touches a widget. They hand data to the UI through an `Inbox` (one lock) and wake
the urwid loop with a callback that must be safe to call from any thread (the app passes one that
writes a byte to a `watch_pipe` pipe), so no network wait can ever stall drawing or key handling.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tart.engine.codec.eventtype import EventType

try:
    import orjson

    _decode: Callable[[str | bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency, json is the safety net
    _decode = json.loads

from websockets.sync.client import connect as ws_connect

from .fmt import clean_tree, might_be_unsafe
from .metrics import parse_metrics


def _loads(raw: str | bytes) -> Any:
    """Every JSON document the console reads (REST and WebSocket) enters here: strings in it come
    from nodes (names, versions, reasons, event fields) and are cleaned of terminal controls and
    bidi overrides once, before any screen sees them (fmt.clean)."""
    doc = _decode(raw)
    return clean_tree(doc) if might_be_unsafe(raw) else doc

STATUS = EventType.Status
BEST_BLOCK = EventType.BestBlockChanged
FINALIZED_BLOCK = EventType.FinalizedBlockChanged
# How many live events wait for the UI; beyond this the oldest go (the UI shows only a screenful).
PENDING_EVENTS = 5000
DETAIL_EVENTS = 500


@dataclass
class Snapshot:
    """One REST poll. `ok` is False when /api/health did not answer; other parts are None when
    their endpoint failed or is missing, and the UI shows "-" for them."""

    at: float
    ok: bool
    error: str | None = None
    health: dict | None = None
    detailed: dict | None = None
    stats: dict | None = None
    nodes: list[dict] | None = None
    metrics: dict[str, float] | None = None
    detail_id: str | None = None
    detail: dict | None = None
    detail_events: list[dict] | None = None


@dataclass
class Live:
    """Everything the WebSocket thread collected since the UI last looked."""

    events: list[dict] = field(default_factory=list)
    overflow: int = 0
    lagged: int = 0
    state: str = "connecting"
    ws_stats: dict | None = None
    best: dict[str, int] = field(default_factory=dict)
    finalized: dict[str, int] = field(default_factory=dict)
    status: dict[str, dict] = field(default_factory=dict)


def normalize_event(raw: dict) -> dict:
    """REST (`data`) and WebSocket (`event`) envelopes -> one shape for the UI."""
    event = raw.get("event", raw.get("data"))
    return {
        "id": raw.get("id"),
        "node_id": raw.get("node_id"),
        "event_type": raw.get("event_type"),
        "event": event,
        "time": raw.get("received_at") or raw.get("time") or raw.get("timestamp"),
        "latency_ms": raw.get("latency_ms"),
    }


class Inbox:
    """Thread-safe hand-off from the network threads to the UI thread."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._wake = wake
        self._snapshot: Snapshot | None = None
        self._events: deque[dict] = deque(maxlen=PENDING_EVENTS)
        self._overflow = 0
        self._lagged = 0
        self._state = "connecting"
        self._ws_stats: dict | None = None
        # Per-node latest block numbers and Status are kept here, not derived in the UI, so they
        # survive the pending queue overflowing under heavy load.
        self._best: dict[str, int] = {}
        self._finalized: dict[str, int] = {}
        self._status: dict[str, dict] = {}
        self._last_wake = 0.0
        self.wake_interval = 0.2

    # --- producers (network threads) --------------------------------------------------------
    def put_snapshot(self, snap: Snapshot) -> None:
        with self._lock:
            self._snapshot = snap
        self._wake()

    def put_ws_state(self, state: str) -> None:
        with self._lock:
            self._state = state
        self._wake()

    def put_ws_message(self, msg: dict) -> None:
        kind = msg.get("type")
        data = msg.get("data")
        if kind == "event" and isinstance(data, dict):
            ev = normalize_event(data)
            if ev["time"] is None:
                ev["time"] = msg.get("timestamp")
            self._put_event(ev)
        elif kind == "lagged":
            n = data.get("skipped", data.get("missed", 1)) if isinstance(data, dict) else data
            with self._lock:
                self._lagged += n if isinstance(n, int) else 1
        elif kind in ("stats", "connected") and isinstance(data, dict):
            with self._lock:
                self._ws_stats = data
        else:
            return
        self._maybe_wake()

    def _put_event(self, ev: dict) -> None:
        node, et, body = ev["node_id"], ev["event_type"], ev["event"]
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self._overflow += 1
            self._events.append(ev)
            if isinstance(node, str) and isinstance(body, dict) and len(body) == 1:
                (inner,) = body.values()
                if isinstance(inner, dict):
                    if et == BEST_BLOCK and isinstance(inner.get("slot"), int):
                        self._best[node] = inner["slot"]
                    elif et == FINALIZED_BLOCK and isinstance(inner.get("slot"), int):
                        self._finalized[node] = inner["slot"]
                    elif et == STATUS:
                        self._status[node] = {"time": ev["time"], **inner}

    def _maybe_wake(self) -> None:
        # Coalesce wake-ups: at thousands of events/s the UI redraws a few times a second.
        now = time.monotonic()
        if now - self._last_wake >= self.wake_interval:
            self._last_wake = now
            self._wake()

    # --- consumer (UI thread) ---------------------------------------------------------------
    def take(self) -> tuple[Snapshot | None, Live]:
        with self._lock:
            snap, self._snapshot = self._snapshot, None
            live = Live(
                events=list(self._events),
                overflow=self._overflow,
                lagged=self._lagged,
                state=self._state,
                ws_stats=self._ws_stats,
                best=dict(self._best),
                finalized=dict(self._finalized),
                status=dict(self._status),
            )
            self._events.clear()
            self._overflow = 0
            self._lagged = 0
        return snap, live

    def forget_node_state(self) -> None:
        """After the backend restarts the UI starts over; old per-node blocks would mislead."""
        with self._lock:
            self._best.clear()
            self._finalized.clear()
            self._status.clear()


class Http:
    """Tiny JSON/text GET client on urllib; ignores proxy settings (the API is usually local)."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base = base
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def text(self, path: str) -> str:
        with self._opener.open(self.base + path, timeout=self.timeout) as r:
            return r.read().decode("utf-8", "replace")

    def json(self, path: str) -> Any:
        with self._opener.open(self.base + path, timeout=self.timeout) as r:
            return _loads(r.read())

    def try_json(self, path: str) -> Any:
        try:
            return self.json(path)
        except urllib.error.HTTPError as e:
            # /api/health/detailed answers 503 with a body when unhealthy: still worth showing.
            # Other errors (404 for a node that is gone) carry no data for the screens.
            if e.code != 503:
                return None
            try:
                return _loads(e.read())
            except Exception:
                return None
        except Exception:
            return None


class RestPoller(threading.Thread):
    def __init__(self, base: str, inbox: Inbox, refresh_s: float) -> None:
        super().__init__(name="tart-dash-rest", daemon=True)
        self.http = Http(base, timeout=max(2.0, min(5.0, refresh_s * 2)))
        self.inbox = inbox
        self.refresh_s = refresh_s
        self._stop_ev = threading.Event()
        self._poke = threading.Event()
        self._detail_id: str | None = None
        self._detail_polls = 0

    def stop(self) -> None:
        self._stop_ev.set()
        self._poke.set()

    def want_detail(self, node_id: str | None) -> None:
        """Also poll this node's record and recent events (None: stop). Polls at once."""
        if node_id != self._detail_id:
            self._detail_id = node_id
            self._detail_polls = 0
            self._poke.set()

    def run(self) -> None:
        while not self._stop_ev.is_set():
            started = time.monotonic()
            self._poke.clear()
            try:
                snap = self.poll()
            except Exception as e:  # never let a surprise kill the poller: the UI would freeze
                snap = Snapshot(at=time.monotonic(), ok=False, error=f"{type(e).__name__}: {e}")
            if self._stop_ev.is_set():
                return
            self.inbox.put_snapshot(snap)
            self._poke.wait(max(0.0, self.refresh_s - (time.monotonic() - started)))

    def poll(self) -> Snapshot:
        try:
            health = self.http.json("/api/health")
        except urllib.error.HTTPError as e:
            health = {"status": f"HTTP {e.code}"}
        except Exception as e:
            reason = getattr(e, "reason", None) or e
            return Snapshot(at=time.monotonic(), ok=False, error=str(reason))
        h = self.http
        nodes = h.try_json("/api/nodes")
        metrics_text: str | None
        try:
            metrics_text = h.text("/metrics")
        except Exception:
            metrics_text = None
        snap = Snapshot(
            at=time.monotonic(),
            ok=True,
            health=health if isinstance(health, dict) else None,
            detailed=_dict(h.try_json("/api/health/detailed")),
            stats=_dict(h.try_json("/api/stats")),
            nodes=nodes.get("nodes") if isinstance(nodes, dict) and isinstance(nodes.get("nodes"), list) else None,
            metrics=parse_metrics(metrics_text) if metrics_text is not None else None,
        )
        node_id = self._detail_id
        if node_id:
            path = "/api/nodes/" + quote(node_id, safe="")
            snap.detail_id = node_id
            snap.detail = _dict(h.try_json(path))
            # The stored history is fetched now and then; live events come over the WebSocket.
            if self._detail_polls % 5 == 0:
                evs = _dict(h.try_json(f"{path}/events?limit={DETAIL_EVENTS}"))
                if evs is not None and isinstance(evs.get("events"), list):
                    snap.detail_events = [normalize_event(e) for e in evs["events"] if isinstance(e, dict)]
            self._detail_polls += 1
        return snap


def _dict(v: Any) -> dict | None:
    return v if isinstance(v, dict) else None


class WsReader(threading.Thread):
    """Reads /api/ws; reconnects with backoff whenever the backend goes away."""

    def __init__(self, url: str, inbox: Inbox) -> None:
        super().__init__(name="tart-dash-ws", daemon=True)
        self.url = url
        self.inbox = inbox
        self._stop_ev = threading.Event()
        self._ws: Any = None

    def stop(self) -> None:
        self._stop_ev.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    def run(self) -> None:
        backoff = 0.5
        while not self._stop_ev.is_set():
            try:
                with ws_connect(self.url, open_timeout=3, close_timeout=1, proxy=None,
                                max_size=None, compression=None) as ws:
                    self._ws = ws
                    ws.send(json.dumps({"type": "Subscribe", "filter": {"type": "All"}}))
                    self.inbox.put_ws_state("live")
                    backoff = 0.5
                    self._read(ws)
            except Exception as e:
                if self._stop_ev.is_set():
                    return
                self.inbox.put_ws_state(f"reconnecting ({type(e).__name__})")
            finally:
                self._ws = None
            self._stop_ev.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _read(self, ws: Any) -> None:
        while not self._stop_ev.is_set():
            try:
                raw = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            try:
                msg = _loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self.inbox.put_ws_message(msg)
        ws.close()
