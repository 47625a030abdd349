"""The Falcon ASGI app of one web worker: `create_app(settings, dsn, ring_names)`.

Like Falcon's asgilook example, create_app builds the shared pieces once and hands each resource
only what it uses; AppState is what the worker itself holds for its lifespan and housekeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import falcon
import falcon.asgi

from tart.engine import metrics
from tart.engine.config import Settings
from tart.web import dbrole, errors, media, store
from tart.web.broadcaster import Broadcaster
from tart.web.events import EventsResource, NodeEventsResource
from tart.web.health import DetailedHealthResource, HealthResource
from tart.web.httpmw import AccessLogMiddleware, CacheControlMiddleware, GzipMiddleware, PageLimitMiddleware
from tart.web.metrics_endpoint import MetricsResource, update_pool_gauge
from tart.web.middleware import LimitsMiddleware, MetricsMiddleware
from tart.web.nodes import NodeResource, NodesResource
from tart.web.openapi import OpenApiResource
from tart.web.ringsource import RingSet
from tart.web.state import AppState, EventReads, StatsProvider
from tart.web.stats import StatsResource
from tart.web.ws import WebSocketResource, WsLimits

log = logging.getLogger("tart.web")

HOUSEKEEPING_S = 1.0


class Lifespan:
    """Opens the pools and starts the broadcaster in each worker (after gunicorn forked it)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        st = self.state
        # wait=False: a worker must come up (and serve health, WebSocket, ring events) while
        # PostgreSQL is still starting or briefly away; queries wait on the pool's timeout.
        await st.pool.open(wait=False)
        if st.stats_pool is not None:
            await st.stats_pool.open(wait=False)
        st.rings.attach_missing()
        st.broadcaster.start()
        if st.ws is not None:
            st.ws.start()
        st.background.append(asyncio.get_running_loop().create_task(_housekeeping(st), name="tart-web-housekeeping"))
        log.info("web worker ready", extra={"rings": ",".join(st.rings.rings) or "-"})

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        st = self.state
        for t in st.background:
            t.cancel()
        for t in st.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        st.background.clear()
        if st.ws is not None:
            await st.ws.stop()
        await st.broadcaster.stop()
        await st.pool.close()
        if st.stats_pool is not None:
            await st.stats_pool.close()
        st.rings.close()


async def _housekeeping(st: AppState) -> None:
    while True:
        update_pool_gauge(st.pool)
        metrics.WS_QUEUED_BYTES.set(st.broadcaster.queued_bytes())
        await asyncio.sleep(HOUSEKEEPING_S)


def _cors_origins(value: str) -> str | list[str] | None:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        return None
    return "*" if "*" in parts else parts


def create_app(settings: Settings, dsn: str, ring_names: Iterable[str],
               started_at: float | None = None) -> falcon.asgi.App:
    """`started_at`: unix time the service started (the supervisor's), for uptime; default now."""
    rings = RingSet(ring_names)
    timeout_ms = settings.db_statement_timeout_ms
    # Reads in read-only sessions; the /api/stats cache row is the one write, on its own pool.
    pool = store.make_pool(dbrole.session_conninfo(dsn, timeout_ms, read_only=True))
    stats_pool = store.make_pool(dbrole.session_conninfo(dsn, timeout_ms, read_only=False), max_size=1)
    broadcaster = Broadcaster(rings, queue_bytes=settings.ws_queue_bytes,
                              recent_bytes=settings.ws_recent_buffer_bytes)
    stats = StatsProvider(stats_pool)
    state = AppState(settings=settings, dsn=dsn, rings=rings, pool=pool, broadcaster=broadcaster,
                     stats=stats, stats_pool=stats_pool)
    if started_at is not None:
        state.started_at = started_at
    ws = state.ws = WebSocketResource(broadcaster, stats, WsLimits.from_settings(settings))
    reads = EventReads(rings=rings, pool=pool)

    middleware: list[Any] = [Lifespan(state)]
    if settings.access_log:
        middleware.append(AccessLogMiddleware())
    middleware += [MetricsMiddleware(), GzipMiddleware(settings.gzip_min_bytes)]
    origins = _cors_origins(settings.cors_origins)
    if origins is not None:
        middleware.append(falcon.CORSMiddleware(allow_origins=origins, expose_headers="*"))
    # process_response runs in reverse order: pages are cut, then Cache-Control set, then gzip.
    middleware += [CacheControlMiddleware(), PageLimitMiddleware(settings.rest_max_body_bytes), LimitsMiddleware()]
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    media.install(app)
    errors.install(app)
    app.add_route("/api/health", HealthResource())
    app.add_route("/api/health/detailed", DetailedHealthResource(pool, rings, broadcaster, settings.data_path,
                                                                 state.started_at))
    app.add_route("/api/stats", StatsResource(stats_pool))
    app.add_route("/api/nodes", NodesResource(pool))
    app.add_route("/api/nodes/{node_id}", NodeResource(pool))
    # web/events.py reads .rings, .pool and .node_names of what it is given: EventReads has
    # exactly those.
    app.add_route("/api/nodes/{node_id}/events", NodeEventsResource(reads))  # type: ignore[arg-type]
    app.add_route("/api/events", EventsResource(reads))  # type: ignore[arg-type]
    app.add_route("/api/openapi.json", OpenApiResource())
    app.add_route("/api/ws", ws)
    app.add_route("/metrics", MetricsResource(pool))
    return app
