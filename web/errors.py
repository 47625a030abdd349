"""Every 4xx/5xx as {"error": ..., "detail": ...} JSON."""

from __future__ import annotations

import logging
from typing import Any

import falcon

from tart.web.media import dumps

log = logging.getLogger("tart.web")


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    title = exc.title or "error"
    if title[:3].isdigit():
        # falcon's own errors ("404 Not Found", "405 Method Not Allowed"): snake_case like ours.
        title = title[4:].strip().lower().replace(" ", "_") or "error"
    detail = exc.description
    if detail is None:
        detail = f"{req.method} {req.path}"
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps({"error": title, "detail": detail})


def bad_request(detail: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="bad_request", description=detail)


def not_found(detail: str) -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="not_found", description=detail)


async def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    # Keep HTTPError subclasses (including falcon's own 404/405) on their normal path.
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unhandled error", extra={"path": req.path})
    raise falcon.HTTPInternalServerError(title="internal_error", description=type(ex).__name__)


async def handle_db_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    log.warning("database unavailable: %s", ex, extra={"path": req.path})
    raise falcon.HTTPServiceUnavailable(title="database_unavailable", description=str(ex)[:300])


def install(app: falcon.asgi.App) -> None:
    import psycopg
    import psycopg_pool

    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(psycopg.OperationalError, handle_db_error)
    app.add_error_handler(psycopg_pool.PoolTimeout, handle_db_error)
