"""HTTP conventions of the API: gzip, Cache-Control, bounded event pages, an opt-in access log.

Falcon has no compression middleware of its own, and the well-kept ASGI ones (Starlette's
GZipMiddleware, asgi-compression) wrap the ASGI app from outside, where the route and the media
are no longer known; a Falcon middleware is a few lines, compresses only what was rendered as
JSON or Prometheus text, and moves large bodies off the event loop (zlib releases the GIL).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from typing import Any

import falcon

from tart.engine import metrics
from tart.web.media import dumps

access_log = logging.getLogger("tart.web.access")

COMPRESSIBLE = ("application/json", "text/plain", "application/openmetrics-text")
GZIP_LEVEL = 5  # level 9 costs about 3x the CPU for a few percent on JSON
GZIP_IN_THREAD_BYTES = 256 * 1024
EVENT_ROUTES = frozenset({"/api/events", "/api/nodes/{node_id}/events"})


def accepts_gzip(header: str | None) -> bool:
    """Accept-Encoding names gzip (or *) without q=0."""
    if not header:
        return False
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class GzipMiddleware:
    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                               req_succeeded: bool) -> None:
        # A resource that sets only `media` gets the default media type (JSON) when it is rendered.
        ctype = resp.content_type or (resp.options.default_media_type if resp.media is not None else "")
        ctype = ctype.split(";")[0].strip().lower()
        if ctype not in COMPRESSIBLE or resp.stream is not None:
            return
        resp.append_header("Vary", "Accept-Encoding")
        if resp.get_header("Content-Encoding") or not accepts_gzip(req.get_header("Accept-Encoding")):
            return
        data = await resp.render_body()
        if data is None or len(data) < self.min_bytes:
            return
        if len(data) >= GZIP_IN_THREAD_BYTES:
            packed = await asyncio.to_thread(gzip.compress, data, GZIP_LEVEL, mtime=0)
        else:
            packed = gzip.compress(data, GZIP_LEVEL, mtime=0)
        resp.data = packed
        resp.set_header("Content-Encoding", "gzip")


class CacheControlMiddleware:
    """`no-store` unless the resource said otherwise: every route but /api/stats (max-age=5) is
    live data, and a proxy or browser cache serving a stale health answer or page misleads."""

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                               req_succeeded: bool) -> None:
        if resp.get_header("Cache-Control") is None:
            resp.cache_control = ["no-store"]


class PageLimitMiddleware:
    """Event pages hold up to 1000 events of up to TART_MAX_FRAME bytes each, which is hundreds of
    megabytes as JSON. A page is cut after the event that crosses `max_bytes` (never below one
    event, so paging always advances), with has_more true and the cursor at the last event kept:
    a client walking the cursor still sees every event exactly once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                               req_succeeded: bool) -> None:
        if req.uri_template not in EVENT_ROUTES or resp.data is not None:
            return
        media = resp.media
        if not isinstance(media, dict) or not isinstance(media.get("events"), list):
            return
        events = media["events"]
        parts: list[bytes] = []
        total = 0
        for ev in events:
            part = dumps(ev)
            parts.append(part)
            total += len(part) + 1
            if total >= self.max_bytes:
                break
        rest = {k: v for k, v in media.items() if k != "events"}
        if len(parts) < len(events):
            metrics.HTTP_PAGES_TRUNCATED.inc()
            rest["has_more"] = True
            cursor = "next_after_id" if "after_id" in req.params else "next_before_id"
            rest[cursor] = events[len(parts) - 1]["id"]
        if rest and min(rest) < "events":
            # Keys sort before "events": let the media handler order them.
            resp.media = {**rest, "events": events[: len(parts)]}
            return
        # Reuse the per-event JSON: sorted keys put "events" first, as the media handler would.
        tail = dumps(rest)
        resp.data = b'{"events":[' + b",".join(parts) + b"]" + (b"," + tail[1:] if rest else b"}")
        resp.content_type = falcon.MEDIA_JSON


class AccessLogMiddleware:
    """One key=value line per request (TART_ACCESS_LOG=1), independent of TART_LOG's level."""

    def __init__(self) -> None:
        access_log.setLevel(logging.INFO)

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.access_t0 = time.perf_counter()

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                               req_succeeded: bool) -> None:
        t0 = getattr(req.context, "access_t0", None)
        # Renders the media now; Falcon reuses the rendered bytes for the response.
        data = await resp.render_body() if resp.stream is None else None
        extra: dict[str, Any] = {
            "method": req.method,
            "path": req.path,
            "status": resp.status_code,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3) if t0 is not None else None,
            "bytes": len(data) if data is not None else None,
            "client": req.remote_addr,
        }
        if req.query_string:
            extra["query"] = req.query_string
        ua = req.user_agent
        if ua:
            extra["user_agent"] = ua[:200]
        access_log.info("request", extra=extra)
