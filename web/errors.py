"""Every 4xx/5xx as {"error": ..., "detail": ...} JSON.

A 5xx body says what kind of failure happened and nothing about the inside: psycopg messages
name hosts, socket paths, roles and SQL. The full text goes to the log instead.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from tart.engine import metrics
from tart.web.media import dumps

log = logging.getLogger("tart.web")

DB_UNAVAILABLE_DETAIL = "the database is unavailable; try again shortly"
QUERY_TIMEOUT_DETAIL = "the query took too long and was cancelled; narrow it (limit, event_type, since/until)"
INTERNAL_DETAIL = "internal error; the server log has the details"


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
    raise falcon.HTTPInternalServerError(title="internal_error", description=INTERNAL_DETAIL)


async def handle_db_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    import psycopg

    if isinstance(ex, psycopg.errors.QueryCanceled):
        # statement_timeout (TART_DB_STATEMENT_TIMEOUT_MS): the database is fine, this query is not.
        metrics.HTTP_DB_TIMEOUTS.inc()
        log.warning("query cancelled by statement_timeout", extra={"path": req.path, "error": str(ex)[:300]})
        raise falcon.HTTPServiceUnavailable(title="query_timeout", description=QUERY_TIMEOUT_DETAIL)
    log.warning("database unavailable", extra={"path": req.path, "error": f"{type(ex).__name__}: {ex}"[:500]})
    raise falcon.HTTPServiceUnavailable(title="database_unavailable", description=DB_UNAVAILABLE_DETAIL)


def install(app: falcon.asgi.App) -> None:
    import psycopg
    import psycopg_pool

    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    # QueryCanceled is an OperationalError. Other psycopg errors are bugs: 500 via handle_unexpected.
    app.add_error_handler(psycopg.OperationalError, handle_db_error)
    app.add_error_handler(psycopg_pool.PoolTimeout, handle_db_error)
