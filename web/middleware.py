"""Request metrics by route, and limits on what a request may carry."""

from __future__ import annotations

import time

import falcon

from tart.engine import metrics

MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_CHARS = 4096
MAX_QUERY_PARAMS = 64
# The method label takes only these values: any other token a client sends (HTTP allows any)
# would otherwise create a new series per token.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class MetricsMiddleware:
    """HTTP_REQUESTS / HTTP_LATENCY labelled by the route template, never by the raw path (bounded labels)."""

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.t0 = time.perf_counter()

    async def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                               req_succeeded: bool) -> None:
        t0 = getattr(req.context, "t0", None)
        if t0 is None:
            return
        route = req.uri_template or "unmatched"
        metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - t0)
        metrics.HTTP_REQUESTS.labels(route, method_label(req.method), str(resp.status_code)).inc()


class LimitsMiddleware:
    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if len(req.query_string) > MAX_QUERY_CHARS:
            raise falcon.HTTPUriTooLong(title="uri_too_long",
                                        description=f"query string longer than {MAX_QUERY_CHARS} characters")
        if req.query_string and req.query_string.count("&") >= MAX_QUERY_PARAMS:
            raise falcon.HTTPBadRequest(title="bad_request",
                                        description=f"more than {MAX_QUERY_PARAMS} query parameters")
        length = req.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise falcon.HTTPContentTooLarge(title="body_too_large",
                                             description=f"request body over {MAX_BODY_BYTES} bytes")
