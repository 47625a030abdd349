"""Query-string validation shared by the event endpoints; every failure is a 400 with a JSON body."""

from __future__ import annotations

import re
from dataclasses import dataclass

import falcon

from tart.engine.timefmt import parse_time
from tart.web.errors import bad_request

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# The one node-id rule of REST paths and WebSocket filters: 64 hexadecimal characters, either case,
# normalised to lowercase (the form tart stores and returns). Nothing else is stripped or accepted
# (no 0x prefix, no whitespace), so that one id has one spelling in URLs and logs.
NODE_ID_PATTERN = "[0-9a-fA-F]{64}"
_NODE_ID = re.compile(NODE_ID_PATTERN)
NODE_ID_RULE = "64 hexadecimal characters"
_INT = re.compile(r"[+]?[0-9]{1,19}")
MAX_ID = (1 << 63) - 1


@dataclass(frozen=True)
class EventQuery:
    limit: int = DEFAULT_LIMIT
    event_types: tuple[int, ...] | None = None
    since_us: int | None = None   # inclusive, unix µs of the event timestamp
    until_us: int | None = None   # exclusive
    before_id: int | None = None
    after_id: int | None = None  # forward paging: events after this id, oldest first
    node_id: str | None = None


def parse_node_id(raw: object) -> str | None:
    """The lowercase node id, or None when `raw` breaks the rule."""
    if not isinstance(raw, str) or not _NODE_ID.fullmatch(raw):
        return None
    return raw.lower()


def node_id(raw: str) -> str:
    nid = parse_node_id(raw)
    if nid is None:
        raise bad_request(f"node_id must be {NODE_ID_RULE}, got {raw[:80]!r}")
    return nid


def _single(req: falcon.Request, name: str) -> str | None:
    values = req.get_param_as_list(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"{name} given more than once")
    return values[0]


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    if not _INT.fullmatch(raw.strip()):
        raise bad_request(f"{name} must be an integer between {lo} and {hi}, got {raw[:40]!r}")
    v = int(raw)
    if not lo <= v <= hi:
        raise bad_request(f"{name} must be an integer between {lo} and {hi}, got {v}")
    return v


def _time(name: str, raw: str) -> int:
    try:
        return parse_time(raw)
    except (ValueError, OverflowError):
        raise bad_request(f"{name} must be RFC 3339 or unix seconds, got {raw[:60]!r}") from None


def event_query(req: falcon.Request, node: str | None = None) -> EventQuery:
    raw = _single(req, "limit")
    limit = DEFAULT_LIMIT if raw is None else _int("limit", raw, 1, MAX_LIMIT)
    types: tuple[int, ...] | None = None
    values = req.get_param_as_list("event_type")
    if values:
        parts = [p for v in values for p in v.split(",") if p.strip()]
        if not parts or len(parts) > 256:
            raise bad_request("event_type must list 1 to 256 integers 0..255")
        types = tuple(sorted({_int("event_type", p, 0, 255) for p in parts}))
    since = _single(req, "since")
    until = _single(req, "until")
    before = _single(req, "before_id")
    after = _single(req, "after_id")
    if before is not None and after is not None:
        raise bad_request("before_id and after_id cannot be combined: page back or forward")
    q = EventQuery(
        limit=limit,
        event_types=types,
        since_us=_time("since", since) if since is not None else None,
        until_us=_time("until", until) if until is not None else None,
        before_id=_int("before_id", before, 1, MAX_ID) if before is not None else None,
        after_id=_int("after_id", after, 0, MAX_ID) if after is not None else None,
        node_id=node,
    )
    return q
