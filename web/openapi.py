"""GET /api/openapi.json: the OpenAPI 3 description of every route, kept true by tests/test_web_openapi.py."""

from __future__ import annotations

from typing import Any

import falcon

from tart.web import params
from tart.web.state import VERSION

EXAMPLE_NODE_ID = "a1" * 32

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": ["string", "null"]}},
}
_TS = {"type": "string", "format": "date-time", "example": "2026-11-26T14:30:00.123456Z"}
_TS_NULL = {"type": ["string", "null"], "format": "date-time"}

_EVENT = {
    "type": "object",
    "required": ["id", "node_id", "event_id", "event_type", "timestamp", "data", "node_name",
                 "node_version", "received_at"],
    "properties": {
        "id": {"type": "integer", "description": "tart's unique event id (also the WebSocket id); paging cursor"},
        "node_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "event_id": {"type": "integer", "description": "JIP-3 event id on its connection"},
        "event_type": {"type": "integer", "minimum": 0, "maximum": 255},
        "timestamp": {**_TS, "description": "the event's own time"},
        "data": {"type": ["object", "null"], "description": "event JSON, keys sorted; null when malformed"},
        "decode_error": {"type": "string", "description": "present only for a malformed event"},
        "node_name": {"type": "string"},
        "node_version": {"type": "string"},
        "received_at": {**_TS, "description": "when tart received the event"},
    },
}
_EVENTS = {
    "type": "object",
    "required": ["events", "has_more", "next_before_id"],
    "properties": {
        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        "has_more": {"type": "boolean"},
        "next_before_id": {"type": ["integer", "null"], "description": "pass as before_id for the next page"},
        "next_after_id": {"type": "integer",
                          "description": "with after_id: pass as after_id for the next page (the cursor itself "
                                         "when nothing was new)"},
    },
}
_NODE = {
    "type": "object",
    "required": ["node_id", "peer_id", "implementation_name", "implementation_version", "node_info",
                 "is_connected", "event_count", "connected_at", "last_seen_at", "disconnected_at", "address"],
    "properties": {
        "node_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "peer_id": {"type": "string"},
        "implementation_name": {"type": "string"},
        "implementation_version": {"type": "string"},
        "gp_version": {"type": "string"},
        "node_info": {"type": "object"},
        "address": {"type": ["string", "null"]},
        "is_connected": {"type": "boolean"},
        "event_count": {"type": "integer"},
        "connection_count": {"type": "integer"},
        "connected_at": _TS,
        "last_seen_at": _TS,
        "disconnected_at": _TS_NULL,
    },
}

_NODE_ID_PARAM = {
    "name": "node_id", "in": "path", "required": True,
    "description": "64 hexadecimal characters, either case (normalised to lowercase); nothing else",
    "schema": {"type": "string", "pattern": f"^{params.NODE_ID_PATTERN}$"}, "example": EXAMPLE_NODE_ID,
}
_EVENT_PARAMS = [
    {"name": "limit", "in": "query", "description": "1..1000, default 50",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "example": 10},
    {"name": "event_type", "in": "query", "description": "one type, a comma list, or the parameter repeated",
     "schema": {"type": "string"}, "example": "10,11"},
    {"name": "since", "in": "query", "description": "event time >= since (RFC 3339 or unix seconds)",
     "schema": {"type": "string"}, "example": "2025-01-01T12:00:00Z"},
    {"name": "until", "in": "query", "description": "event time < until (RFC 3339 or unix seconds)",
     "schema": {"type": "string"}, "example": "2100-01-01T00:00:00Z"},
    {"name": "before_id", "in": "query", "description": "only events with id < before_id (paging cursor)",
     "schema": {"type": "integer", "minimum": 1}, "example": 9223372036854775807},
    {"name": "after_id", "in": "query",
     "description": "forward paging: only events with id > after_id, oldest first, up to what every acceptor has "
                    "made readable (a poller passing next_after_id back never skips an event); not with before_id",
     "schema": {"type": "integer", "minimum": 0}},
]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = {"$ref": "#/components/schemas/Error"}


def _get(summary: str, ok: dict[str, Any], params: list | None = None, **extra: dict[str, Any]) -> dict[str, Any]:
    responses = {"200": _json(ok, "OK"), **extra}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    return {"get": op}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tart-backend", "version": VERSION,
             "description": "JAM telemetry (JIP-3): nodes, events, stats, health. Errors are "
                            '{"error": ..., "detail": ...}.'},
    "paths": {
        "/api/health": _get("Liveness", {
            "type": "object", "required": ["status", "service", "version"],
            "properties": {"status": {"type": "string"}, "service": {"type": "string"},
                           "version": {"type": "string"}}}),
        "/api/health/detailed": _get("Component health; 503 when unhealthy", {
            "type": "object", "required": ["status", "timestamp", "components", "version", "uptime_seconds"],
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
                "timestamp": _TS,
                "components": {"type": "object",
                               "required": ["database", "writer", "acceptors", "broadcaster", "memory"]},
                "version": {"type": "string"},
                "uptime_seconds": {"type": "integer"}}},
            **{"503": _json({"type": "object", "required": ["status", "components"]}, "Unhealthy")}),
        "/api/stats": _get("Network statistics (5 s cache shared by all workers)", {
            "type": "object",
            "required": ["total_blocks_authored", "best_block", "finalized_block", "total_nodes",
                         "connected_nodes", "total_events"],
            "properties": {k: {"type": "integer"} for k in (
                "total_blocks_authored", "best_block", "finalized_block", "total_nodes", "connected_nodes",
                "total_events", "total_slots_seen")}}),
        "/api/nodes": _get("All known nodes, connected first, then by last_seen_at", {
            "type": "object", "required": ["nodes"],
            "properties": {"nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}}),
        "/api/nodes/{node_id}": _get("One node", {"$ref": "#/components/schemas/Node"}, [_NODE_ID_PARAM],
                                     **{"400": _json(_ERR, "Malformed node_id"),
                                        "404": _json(_ERR, "Unknown node")}),
        "/api/nodes/{node_id}/events": _get("A node's events, newest first", {"$ref": "#/components/schemas/Events"},
                                            [_NODE_ID_PARAM, *_EVENT_PARAMS],
                                            **{"400": _json(_ERR, "Malformed node_id or parameter")}),
        "/api/events": _get("Events of all nodes, newest first (PostgreSQL plus not-yet-stored ring tail)",
                            {"$ref": "#/components/schemas/Events"}, _EVENT_PARAMS,
                            **{"400": _json(_ERR, "Bad parameter")}),
        "/api/openapi.json": _get("This document", {"type": "object", "required": ["openapi", "paths"]}),
        "/metrics": {"get": {"summary": "Prometheus text exposition (all processes)",
                             "responses": {"200": {"description": "OK", "content": {"text/plain": {
                                 "schema": {"type": "string"}}}}}}},
        "/api/ws": {"get": {
            "summary": "WebSocket: live events. Client: Subscribe{filter: All | Node{node_id} | "
                       "EventTypes{event_types}}, Unsubscribe, GetRecentEvents{limit}, Ping. Server: connected, "
                       "event, stats (every 5 s), subscribed, unsubscribed, recent_events, pong, lagged, error.",
            "description": "Batched delivery (opt-in, a tart extension): Subscribe may carry batch_ms (1..10000) "
                           "and max_events (1..1000, default 1000); the server then sends, instead of one `event` "
                           "message per event, {\"type\":\"events\",\"data\":{\"count\":n,\"events\":[...]},"
                           "\"timestamp\":...} with the `event` messages' data objects, oldest first, at most "
                           "every batch_ms (sooner once max_events are waiting or a reply is queued behind them). "
                           "In a batch, latency_ms is measured when the worker first batched the event. "
                           "batch_ms absent or 0, or Unsubscribe: one `event` message per event (the default).",
            "responses": {"101": {"description": "Switching protocols"},
                          "400": _json(_ERR, "Not a WebSocket request")}}},
    },
    "components": {"schemas": {"Error": _ERROR, "Event": _EVENT, "Events": _EVENTS, "Node": _NODE}},
}


class OpenApiResource:
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = DOCUMENT
