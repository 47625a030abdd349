"""WebSocket /api/ws: the reference protocol plus EventTypes filters, `error` and `lagged` messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import falcon
import falcon.asgi
import orjson

from tart.engine import metrics
from tart.engine.record import EVENT_HEADER, FLAG_MALFORMED
from tart.engine.timefmt import fmt_unix_us, now_str
from tart.web.broadcaster import ALL, EventItem, Filter, Subscriber
from tart.web.media import dumps
from tart.web.state import AppState

log = logging.getLogger("tart.web.ws")

STATS_INTERVAL_S = 5.0
MAX_CLIENT_MESSAGE = 64 * 1024
MAX_PENDING_REPLIES = 64
BATCH_MS_MAX = 10_000
CONNECTED_TEXT = "Connected to TART telemetry (1024-node scale)"
_NODE_ID = re.compile(r"[0-9a-fA-F]{64}")
_hdr = EVENT_HEADER.unpack_from
_HDR = EVENT_HEADER.size


def message(kind: str, data: Any) -> str:
    """Server message: keys in the reference's struct order (type, data, timestamp); `data` sorted."""
    return f'{{"type":"{kind}","data":{dumps(data).decode()},"timestamp":"{now_str()}"}}'


def error_message(error: str, detail: str) -> str:
    return message("error", {"error": error, "detail": detail})


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
        nid = f.get("node_id")
        if not isinstance(nid, str) or not _NODE_ID.fullmatch(nid):
            raise BadMessage("bad_filter", "Node filter needs node_id: 64 hexadecimal characters")
        nid = nid.lower()
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


class WebSocketResource:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPBadRequest(title="websocket_required", description="connect with a WebSocket client")

    async def on_websocket(self, req: falcon.Request, ws: falcon.asgi.WebSocket) -> None:
        await ws.accept()
        bc = self.state.broadcaster
        # Before subscribing: no event may be queued ahead of `connected`.
        stats = await self.state.stats.get_soon()
        sub = bc.subscribe()
        sender: asyncio.Task | None = None
        try:
            sub.control(message("connected", {
                "message": CONNECTED_TEXT,
                "recent_events": len(bc.recent),
                "total_nodes": stats.get("total_nodes", 0),
                "broadcaster_stats": bc.stats(),
            }))
            sender = asyncio.get_running_loop().create_task(self._sender(ws, sub))
            while True:
                try:
                    text = await ws.receive_text()
                except falcon.errors.PayloadTypeError:
                    sub.control(error_message("bad_message", "send text frames holding JSON"))
                    continue
                if sub.control_pending >= MAX_PENDING_REPLIES:
                    # Requests faster than it reads the replies (each may be megabytes): a client
                    # that does this is broken or hostile; it must not grow our memory.
                    await ws.close(1008, "too many unread replies")
                    break
                reply = self.handle(sub, text)
                if reply is not None:
                    sub.control(reply)
                if sender.done():
                    break
        except falcon.WebSocketDisconnected:
            pass
        finally:
            bc.unsubscribe(sub)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    def handle(self, sub: Subscriber, text: str) -> str | None:
        try:
            if len(text) > MAX_CLIENT_MESSAGE:
                raise BadMessage("bad_message", f"message longer than {MAX_CLIENT_MESSAGE} characters")
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise BadMessage("bad_message", f"not JSON: {e}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise BadMessage("bad_message", 'expected an object with a string "type"')
            kind = msg["type"]
            bc = self.state.broadcaster
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
                limit = msg.get("limit")
                if limit is None:
                    limit = len(bc.recent)
                elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                    raise BadMessage("bad_message", "limit must be a non-negative integer")
                recs = list(bc.recent)[-limit:] if limit else []
                events = [recent_entry(r) for r in recs]
                return message("recent_events", {"count": len(events), "events": events})
            if kind == "Ping":
                return message("pong", {
                    "events_received": sub.events_sent,
                    "uptime_ms": int((time.monotonic() - sub.connected_at) * 1000),
                })
            raise BadMessage("unknown_message", f"unknown message type {kind[:40]!r}")
        except BadMessage as e:
            return error_message(e.error, e.detail)

    async def _stats_message(self, sub: Subscriber) -> str:
        st = await self.state.stats.get_soon()
        return message("stats", {
            "broadcaster": self.state.broadcaster.stats(),
            "connections": {"total": st.get("connected_nodes", 0), "nodes": st.get("connected_node_ids", [])},
            "database": {k: st.get(k, 0) for k in ("best_block", "finalized_block", "total_blocks_authored")},
            "websocket": {"current_filter": sub.filter.doc, "events_received": sub.events_sent},
        })

    async def _sender(self, ws: falcon.asgi.WebSocket, sub: Subscriber) -> None:
        """The only task that writes to this socket; a stalled client blocks nothing but this task."""
        next_stats = time.monotonic()
        send = ws.send_text
        try:
            while True:
                if sub.going_away:
                    await ws.close(1001, "server restarting")
                    return
                due_in = sub.batch_due_in()
                if due_in > 0:
                    # Batching: let events gather until the batch is due (or full, or a reply waits).
                    sub.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sub.wake.wait(), min(due_in, max(0.0, next_stats - time.monotonic())))
                    if time.monotonic() < next_stats:
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
                                sub.control_pending -= 1
                                await send(it)
                    if sent:
                        sub.events_sent += sent
                        metrics.BROADCAST_TOTAL.inc(sent)
                    if sub.skipped:
                        skipped, sub.skipped = sub.skipped, 0
                        await send(message("lagged", {"skipped": skipped}))
                now = time.monotonic()
                if now >= next_stats:
                    await send(await self._stats_message(sub))
                    next_stats = max(next_stats + STATS_INTERVAL_S, now + 0.5)
                    continue
                if not sub.items:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sub.wake.wait(), next_stats - time.monotonic())
        except falcon.WebSocketDisconnected:
            return

    @staticmethod
    async def _send_batched(send: Any, items: list[Any], sub: Subscriber, now_us: int, ts: str) -> int:
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
                sub.control_pending -= 1
                await send(it)
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
