"""WebSocket /api/ws: the reference protocol plus EventTypes filters, `error` and `lagged` messages.

Limits, so that one client can hurt only itself (issue 10): connections per worker and per client
address; a message size cap (gunicorn refuses a larger one before buffering it); GetRecentEvents
clamped in events and bytes, with at most a few replies unread per client; a send timeout after
which a client that does not read is closed; the periodic `stats` message rendered once per tick
per worker, not once per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi
import orjson

from tart.engine import metrics
from tart.engine.config import Settings
from tart.engine.record import EVENT_HEADER, FLAG_MALFORMED
from tart.engine.timefmt import fmt_unix_us, now_str
from tart.web import params
from tart.web.broadcaster import ALL, Broadcaster, EventItem, Filter, Subscriber
from tart.web.media import dumps
from tart.web.state import StatsProvider

log = logging.getLogger("tart.web.ws")

STATS_INTERVAL_S = 5.0
WATCHDOG_S = 1.0
MAX_CLIENT_MESSAGE = 64 * 1024
# Replies of any kind (pong, error, recent_events, ...) queued unread: a client that asks this far
# ahead of what it reads is broken or hostile, and is closed.
MAX_PENDING_REPLIES = 64
BATCH_MS_MAX = 10_000
CONNECTED_TEXT = "Connected to TART telemetry (1024-node scale)"
CLOSE_POLICY = 1008  # RFC 6455: policy violation
CLOSE_TRY_AGAIN = 1013  # RFC 6455 registry: try again later
_hdr = EVENT_HEADER.unpack_from
_HDR = EVENT_HEADER.size


def message(kind: str, data: Any) -> str:
    """Server message: keys in the reference's struct order (type, data, timestamp); `data` sorted."""
    return f'{{"type":"{kind}","data":{dumps(data).decode()},"timestamp":"{now_str()}"}}'


def error_message(error: str, detail: str) -> str:
    return message("error", {"error": error, "detail": detail})


@dataclass(frozen=True)
class WsLimits:
    """Per-worker WebSocket limits (TART_WS_*; see engine/config.py)."""

    recent_max_events: int = 1000
    recent_max_bytes: int = 2 * 1024 * 1024
    recent_inflight: int = 2
    send_timeout_s: float = 10.0
    max_connections: int = 1000
    max_per_address: int = 16
    max_message: int = MAX_CLIENT_MESSAGE

    @classmethod
    def from_settings(cls, s: Settings) -> WsLimits:
        return cls(recent_max_events=s.ws_recent_max_events, recent_max_bytes=s.ws_recent_max_bytes,
                   recent_inflight=s.ws_recent_inflight, send_timeout_s=float(s.ws_send_timeout),
                   max_connections=s.ws_max_connections, max_per_address=s.ws_max_per_address,
                   max_message=s.ws_max_message)


class RecentReply(str):
    """A recent_events reply: counted against the client's in-flight replies until it is sent."""

    __slots__ = ()


class BadMessage(ValueError):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def _u8(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise BadMessage("bad_filter", f"{what} must be an integer 0..255")
    return v


def parse_filter(f: Any) -> Filter:
    if not isinstance(f, dict):
        raise BadMessage("bad_filter", "filter must be an object with a type")
    kind = f.get("type")
    if kind == "All":
        return ALL
    if kind == "Node":
        nid = params.parse_node_id(f.get("node_id"))
        if nid is None:
            raise BadMessage("bad_filter", f"Node filter needs node_id: {params.NODE_ID_RULE}")
        return Filter("Node", node_id=nid, doc={"type": "Node", "node_id": nid})
    if kind == "EventTypes":
        types = f.get("event_types")
        if not isinstance(types, list) or not types or len(types) > 256:
            raise BadMessage("bad_filter", "EventTypes filter needs event_types: a non-empty list of 0..255")
        ts = sorted({_u8(t, "event_types[]") for t in types})
        return Filter("EventTypes", types=ts, doc={"type": "EventTypes", "event_types": ts})
    if kind == "EventType":
        t = _u8(f.get("event_type"), "event_type")
        return Filter("EventType", types=[t], doc={"type": "EventType", "event_type": t})
    if kind == "EventTypeRange":
        lo, hi = _u8(f.get("start"), "start"), _u8(f.get("end"), "end")
        if lo > hi:
            raise BadMessage("bad_filter", "EventTypeRange start must be <= end")
        return Filter("EventTypeRange", types=range(lo, hi + 1),
                      doc={"type": "EventTypeRange", "start": lo, "end": hi})
    raise BadMessage("bad_filter", f"unknown filter type {str(kind)[:40]!r} (All, Node, EventTypes)")


def parse_batching(msg: dict[str, Any], queue_max: int) -> tuple[int, int]:
    """Subscribe's optional batched delivery: `batch_ms` (1..BATCH_MS_MAX; absent or 0 = one
    `event` message per event) and `max_events` per batch (1..queue_max, default queue_max)."""
    ms = msg.get("batch_ms", 0)
    if ms is None:
        ms = 0
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= BATCH_MS_MAX:
        raise BadMessage("bad_message", f"batch_ms must be an integer 0..{BATCH_MS_MAX}")
    mx = msg.get("max_events", queue_max)
    if mx is None:
        mx = queue_max
    if isinstance(mx, bool) or not isinstance(mx, int) or not 1 <= mx <= queue_max:
        raise BadMessage("bad_message", f"max_events must be an integer 1..{queue_max}")
    return ms, mx


def recent_entry(rec: bytes) -> dict[str, Any]:
    _, flags, etype, jlen, id_, received_at, _, _, peer = _hdr(rec)
    body = rec[_HDR : _HDR + jlen]
    entry: dict[str, Any] = {"event_type": etype, "id": id_, "node_id": peer.hex(),
                             "timestamp": fmt_unix_us(received_at)}
    if flags & FLAG_MALFORMED:
        entry["event"] = None
        entry["decode_error"] = body.decode("utf-8", "replace")
    else:
        try:
            entry["event"] = orjson.loads(body)
        except orjson.JSONDecodeError:
            entry["event"] = None
    return entry


class StatsFeed:
    """The periodic `stats` message, rendered once per tick for the whole worker.

    Everything but the subscriber's own `websocket` object (its filter and count) is the same for
    every subscriber, and with 1024 nodes `connections.nodes` alone is 68 KB of JSON: the shared
    part is rendered once per tick and each subscriber's part is spliced in when it is sent. The
    `data` keys are sorted and `websocket` sorts last, so the shared part is a prefix.
    """

    def __init__(self, broadcaster: Broadcaster, stats: StatsProvider) -> None:
        self.broadcaster = broadcaster
        self.stats = stats
        self.prefix = ""
        self.suffix = ""
        self.rendered_at = 0.0
        self.renders = 0

    async def render(self) -> None:
        st = await self.stats.get_soon()
        shared = {
            "broadcaster": self.broadcaster.stats(),
            "connections": {"total": st.get("connected_nodes", 0), "nodes": st.get("connected_node_ids", [])},
            "database": {k: st.get(k, 0) for k in ("best_block", "finalized_block", "total_blocks_authored")},
        }
        body = dumps(shared).decode()
        self.prefix = f'{{"type":"stats","data":{body[:-1]},"websocket":'
        self.suffix = f'}},"timestamp":"{now_str()}"}}'
        self.rendered_at = time.monotonic()
        self.renders += 1

    async def ensure(self) -> None:
        if not self.prefix:
            await self.render()

    def text_for(self, sub: Subscriber) -> str:
        own = dumps({"current_filter": sub.filter.doc, "events_received": sub.events_sent}).decode()
        return self.prefix + own + self.suffix

    async def tick(self) -> None:
        """Render, then tell every subscriber's sender that a stats message is due."""
        await self.render()
        for sub in list(self.broadcaster.subscribers):
            sub.stats_due = True
            sub.wake.set()


class WebSocketResource:
    def __init__(self, broadcaster: Broadcaster, stats: StatsProvider, limits: WsLimits | None = None) -> None:
        self.broadcaster = broadcaster
        self.stats = stats
        self.limits = limits or WsLimits()
        self.feed = StatsFeed(broadcaster, stats)
        self.connections = 0
        self.by_address: Counter[str] = Counter()
        self._senders: dict[Subscriber, asyncio.Task] = {}
        self._timed_out: set[Subscriber] = set()
        self._task: asyncio.Task | None = None

    # --- the worker's periodic duties: stats ticks and the send watchdog ---------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._periodic(), name="tart-ws-periodic")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _periodic(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while True:
            await asyncio.sleep(WATCHDOG_S)
            try:
                self.watchdog()
                if time.monotonic() >= next_stats:
                    next_stats = max(next_stats + STATS_INTERVAL_S, time.monotonic() + WATCHDOG_S)
                    if self.broadcaster.subscribers:
                        await self.feed.tick()
            except Exception:  # noqa: BLE001 - the periodic task must outlive one bad tick
                log.exception("websocket periodic task failed")

    def watchdog(self) -> None:
        """Cancel the sender of every client that has not taken a message for send_timeout."""
        limit = self.limits.send_timeout_s
        now = time.monotonic()
        for sub, task in list(self._senders.items()):
            since = sub.sending_since
            if since and now - since > limit and sub not in self._timed_out:
                self._timed_out.add(sub)
                metrics.WS_CLOSED.labels(reason="send_timeout").inc()
                log.info("websocket client not reading, closing", extra={"client": sub.address,
                                                                         "seconds": round(now - since, 1)})
                task.cancel()

    # --- connections -------------------------------------------------------------------------
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.cache_control = ["no-store"]
        raise falcon.HTTPBadRequest(title="websocket_required", description="connect with a WebSocket client")

    async def on_websocket(self, req: falcon.Request, ws: falcon.asgi.WebSocket) -> None:
        addr = req.remote_addr or "-"
        lim = self.limits
        refused = None
        if self.connections >= lim.max_connections:
            refused = ("worker_limit", "too many WebSocket connections; try again later")
        elif lim.max_per_address and self.by_address[addr] >= lim.max_per_address:
            refused = ("address_limit", "too many WebSocket connections from this address")
        await ws.accept()
        if refused is not None:
            metrics.WS_CLOSED.labels(reason=refused[0]).inc()
            await ws.close(CLOSE_TRY_AGAIN, refused[1])
            return
        self.connections += 1
        self.by_address[addr] += 1
        try:
            await self._serve(ws, addr)
        finally:
            self.connections -= 1
            self.by_address[addr] -= 1
            if self.by_address[addr] <= 0:
                del self.by_address[addr]

    async def _serve(self, ws: falcon.asgi.WebSocket, addr: str) -> None:
        bc = self.broadcaster
        # Before subscribing: no event may be queued ahead of `connected`.
        stats = await self.stats.get_soon()
        await self.feed.ensure()
        sub = bc.subscribe()
        sub.address = addr
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []
        close: tuple[int, str] | None = None
        try:
            sub.control(message("connected", {
                "message": CONNECTED_TEXT,
                "recent_events": len(bc.recent),
                "total_nodes": stats.get("total_nodes", 0),
                "broadcaster_stats": bc.stats(),
            }))
            sub.stats_due = True  # the first `stats` right after `connected`, then every tick
            sender = loop.create_task(self._sender(ws, sub))
            self._senders[sub] = sender
            receiver = loop.create_task(self._receiver(ws, sub))
            tasks = [sender, receiver]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if sub in self._timed_out:
                close = (CLOSE_POLICY, "send timeout: client not reading")
            elif receiver.done() and not receiver.cancelled() and receiver.exception() is None:
                close = receiver.result()
        except falcon.WebSocketDisconnected:
            pass
        finally:
            bc.unsubscribe(sub)
            self._senders.pop(sub, None)
            self._timed_out.discard(sub)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if close is not None:
            with contextlib.suppress(Exception):
                await ws.close(*close)

    async def _receiver(self, ws: falcon.asgi.WebSocket, sub: Subscriber) -> tuple[int, str] | None:
        """Reads client messages until the client leaves (None) or must be closed (code, reason)."""
        while True:
            try:
                text = await ws.receive_text()
            except falcon.errors.PayloadTypeError:
                sub.control(error_message("bad_message", "send text frames holding JSON"))
                continue
            except falcon.WebSocketDisconnected:
                return None
            if sub.control_pending >= MAX_PENDING_REPLIES:
                # Replies (each up to recent_max_bytes) asked for faster than they are read.
                metrics.WS_CLOSED.labels(reason="unread_replies").inc()
                return (CLOSE_POLICY, "too many unread replies")
            reply = self.handle(sub, text)
            if reply is not None:
                sub.control(reply)

    def handle(self, sub: Subscriber, text: str) -> str | None:
        try:
            if len(text) > self.limits.max_message:
                raise BadMessage("bad_message", f"message longer than {self.limits.max_message} characters")
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise BadMessage("bad_message", f"not JSON: {e}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise BadMessage("bad_message", 'expected an object with a string "type"')
            kind = msg["type"]
            bc = self.broadcaster
            if kind == "Subscribe":
                flt = parse_filter(msg.get("filter"))
                batch_ms, batch_max = parse_batching(msg, sub.maxsize)
                bc.set_filter(sub, flt)
                sub.batch_ms, sub.batch_max = batch_ms, batch_max
                reply: dict[str, Any] = {"filter": flt.doc, "message": "Subscription updated"}
                if batch_ms:
                    reply["batch_ms"], reply["max_events"] = batch_ms, batch_max
                return message("subscribed", reply)
            if kind == "Unsubscribe":
                bc.set_filter(sub, ALL)
                sub.batch_ms, sub.batch_max = 0, sub.maxsize
                return message("unsubscribed", {"message": "Reset to all events"})
            if kind == "GetRecentEvents":
                return self.recent_events(sub, msg.get("limit"))
            if kind == "Ping":
                return message("pong", {
                    "events_received": sub.events_sent,
                    "uptime_ms": int((time.monotonic() - sub.connected_at) * 1000),
                })
            raise BadMessage("unknown_message", f"unknown message type {kind[:40]!r}")
        except BadMessage as e:
            return error_message(e.error, e.detail)

    def recent_events(self, sub: Subscriber, limit: Any) -> str:
        """The newest `limit` recent events (clamped to recent_max_events and recent_max_bytes),
        oldest first. Answers an error instead while recent_inflight replies are still unread."""
        lim = self.limits
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise BadMessage("bad_message", "limit must be a non-negative integer")
        if sub.recent_inflight >= lim.recent_inflight:
            metrics.WS_REQUESTS_REFUSED.labels(reason="recent_inflight").inc()
            raise BadMessage("too_many_requests",
                             f"{sub.recent_inflight} recent_events replies not read yet; read them first")
        recent = self.broadcaster.recent
        n = len(recent) if limit is None else limit
        n = min(n, lim.recent_max_events)
        picked: list[bytes] = []
        budget = lim.recent_max_bytes
        for rec in itertools.islice(reversed(recent), n):
            budget -= len(rec)
            if budget < 0 and picked:
                break
            picked.append(rec)
        events = [recent_entry(r) for r in reversed(picked)]
        sub.recent_inflight += 1
        return RecentReply(message("recent_events", {"count": len(events), "events": events}))

    async def _sender(self, ws: falcon.asgi.WebSocket, sub: Subscriber) -> None:
        """The only task that writes to this socket; a stalled client blocks nothing but this task."""
        ws_send = ws.send_text

        async def send(text: str) -> None:
            # Seen by the watchdog: how long this send has waited for the client to read.
            sub.sending_since = time.monotonic()
            await ws_send(text)
            sub.sending_since = 0.0

        feed = self.feed
        try:
            while True:
                if sub.going_away:
                    await ws.close(1001, "server restarting")
                    return
                due_in = sub.batch_due_in()
                if due_in > 0 and not sub.stats_due:
                    # Batching: let events gather until the batch is due (or full, or a reply waits).
                    sub.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sub.wake.wait(), due_in)
                    continue
                items = sub.take()
                if items:
                    now_us = time.time_ns() // 1000
                    ts = fmt_unix_us(now_us)
                    if sub.batch_ms:
                        sent = await self._send_batched(send, items, sub, now_us, ts)
                    else:
                        sent = 0
                        for it in items:
                            if type(it) is EventItem:
                                await send(it.render(time.time_ns() // 1000, ts))
                                sent += 1
                            else:
                                await self._send_control(send, sub, it)
                    if sent:
                        sub.events_sent += sent
                        metrics.BROADCAST_TOTAL.inc(sent)
                    if sub.skipped:
                        skipped, sub.skipped = sub.skipped, 0
                        await send(message("lagged", {"skipped": skipped}))
                if sub.stats_due:
                    sub.stats_due = False
                    await send(feed.text_for(sub))
                    continue
                if not sub.items and not sub.stats_due and not sub.going_away:
                    await sub.wake.wait()
        except falcon.WebSocketDisconnected:
            return

    @staticmethod
    async def _send_control(send: Any, sub: Subscriber, text: str) -> None:
        sub.control_pending -= 1
        try:
            await send(text)
        finally:
            if type(text) is RecentReply:
                sub.recent_inflight -= 1

    @classmethod
    async def _send_batched(cls, send: Any, items: list[Any], sub: Subscriber, now_us: int, ts: str) -> int:
        """Runs of events as `events` messages of at most batch_max events; replies in between
        keep their place in the stream."""
        sent = 0
        run: list[EventItem] = []
        limit = sub.batch_max
        for it in items:
            if type(it) is EventItem:
                run.append(it)
                if len(run) >= limit:
                    await send(events_message(run, now_us, ts))
                    sent += len(run)
                    run = []
            else:
                if run:
                    await send(events_message(run, now_us, ts))
                    sent += len(run)
                    run = []
                await cls._send_control(send, sub, it)
        if run:
            await send(events_message(run, now_us, ts))
            sent += len(run)
        return sent


def events_message(run: list[EventItem], now_us: int, ts: str) -> str:
    """The batched-delivery message: `data.events` holds `event` messages' data objects, oldest first.

    Subscribers of one filter fall due together and so mostly send the same run of events: the
    text is kept on the run's first event and reused when the same run comes again.
    """
    first, last, n = run[0], run[-1], len(run)
    cached = first.batch_text
    if cached is not None and cached[0] is last and cached[1] == n:
        return cached[2]
    data = ",".join([it.data_json(now_us) for it in run])
    text = f'{{"type":"events","data":{{"count":{n},"events":[{data}]}},"timestamp":"{ts}"}}'
    first.batch_text = (last, n, text)
    return text
