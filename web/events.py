"""GET /api/events and GET /api/nodes/{node_id}/events: PostgreSQL history merged with the rings'
not-yet-committed tail, newest id first, cursor-paged by `before_id`."""

from __future__ import annotations

import time
from typing import Any

import falcon

from tart.web import params, store
from tart.web.params import EventQuery
from tart.web.ringsource import rest_envelope
from tart.web.state import EventReads

NAME_CACHE_S = 30.0
NAME_CACHE_MAX = 10_000


async def query_events_after(state: EventReads, q: EventQuery) -> dict[str, Any]:
    """Forward paging (``after_id``): the events after the cursor, oldest first, up to the
    rings' visible horizon; ``next_after_id`` continues from the last one (or stays put)."""
    horizon = state.rings.visible_horizon()
    ring_hits, ring_names = state.rings.select_uncommitted_after(q, horizon)
    rows = await store.list_events_after(state.pool, q, horizon)
    merged: list[Any] = list(rows)
    if ring_hits:
        seen = {r[0] for r in rows}
        merged += [ev for ev in ring_hits if ev.id not in seen]
        merged.sort(key=_id_of)
    del merged[q.limit + 1 :]
    ring_page = [x for x in merged if type(x) is not tuple]
    names = await _names(state, {ev.peer_id.hex() for ev in ring_page}, ring_names) if ring_page else {}
    out = [store.event_row(x) if type(x) is tuple else rest_envelope(x, names.get(x.peer_id.hex(), ("", "")))
           for x in merged]
    has_more = len(out) > q.limit
    events = out[: q.limit]
    return {
        "events": events,
        "has_more": has_more,
        "next_before_id": None,
        "next_after_id": events[-1]["id"] if events else q.after_id,
    }


async def query_events(state: EventReads, q: EventQuery) -> dict[str, Any]:
    if q.after_id is not None:
        return await query_events_after(state, q)
    # Ring first, then PostgreSQL: an event committed between the two reads is then in the PG
    # result (de-duplicated by id below) instead of in neither.
    ring_hits, ring_names = state.rings.select_uncommitted(q)
    rows = await store.list_events(state.pool, q)
    if ring_hits:
        seen = {r[0] for r in rows}
        extra = [ev for ev in ring_hits if ev.id not in seen]
        if extra:
            # Merge first, then build envelopes only for what the page returns: under load the
            # ring holds the whole first page and the PostgreSQL rows are mostly cut off.
            merged: list[Any] = rows + extra
            merged.sort(key=_id_of, reverse=True)
            del merged[q.limit + 1 :]
            ring_page = [x for x in merged if type(x) is not tuple]
            names = await _names(state, {ev.peer_id.hex() for ev in ring_page}, ring_names) if ring_page else {}
            rows = [store.event_row(x) if type(x) is tuple
                    else rest_envelope(x, names.get(x.peer_id.hex(), ("", ""))) for x in merged]
        else:
            rows = [store.event_row(r) for r in rows]
    else:
        rows = [store.event_row(r) for r in rows]
    has_more = len(rows) > q.limit
    events = rows[: q.limit]
    return {
        "events": events,
        "has_more": has_more,
        "next_before_id": events[-1]["id"] if has_more else None,
    }


def _id_of(x: Any) -> int:
    return x[0] if type(x) is tuple else x.id


async def _names(state: EventReads, ids: set[str], ring_names: dict[str, tuple[str, str]]
                 ) -> dict[str, tuple[str, str]]:
    """Implementation name/version for ring-only events: PostgreSQL's, else the ring's NODE_UP.

    Under load nearly every request has ring-only events; a per-worker cache saves a query each.
    """
    now = time.monotonic()
    cache = state.node_names
    out: dict[str, tuple[str, str]] = {}
    missing = []
    for nid in ids:
        hit = cache.get(nid)
        if hit is not None and now - hit[1] < NAME_CACHE_S:
            out[nid] = hit[0]
        else:
            missing.append(nid)
    if missing:
        found = await store.node_names(state.pool, sorted(missing))
        if len(cache) > NAME_CACHE_MAX:
            cache.clear()
        for nid, name in found.items():
            cache[nid] = (name, now)
            out[nid] = name
    for nid in ids:
        if nid in ring_names and not out.get(nid, ("",))[0]:  # no row, or a row without NODE_UP yet
            out[nid] = ring_names[nid]
    return out


class EventsResource:
    def __init__(self, state: EventReads) -> None:
        self.state = state

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = await query_events(self.state, params.event_query(req))


class NodeEventsResource:
    def __init__(self, state: EventReads) -> None:
        self.state = state

    async def on_get(self, req: falcon.Request, resp: falcon.Response, node_id: str) -> None:
        nid = params.node_id(node_id)
        resp.media = await query_events(self.state, params.event_query(req, node=nid))
