"""orjson for every JSON body through Falcon's own JSONHandler; keys sorted like PostgreSQL JSONB readers expect."""

from __future__ import annotations

from functools import partial
from typing import Any

import falcon
import falcon.asgi
import falcon.media
import orjson

# Sorted keys make REST output byte-stable whether an event came from PostgreSQL (JSONB) or from
# a ring (declaration order); the reference serves REST `data` alphabetically for the same reason.
DUMPS_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS

_dumps = partial(orjson.dumps, option=DUMPS_OPTS)


def dumps(obj: Any) -> bytes:
    return _dumps(obj)


def install(app: falcon.asgi.App) -> None:
    # JSONHandler sees that dumps returns bytes and skips its str->bytes step; orjson's
    # JSONDecodeError subclasses ValueError, which JSONHandler already maps to a 400.
    handler = falcon.media.JSONHandler(dumps=_dumps, loads=orjson.loads)
    handlers = {falcon.MEDIA_JSON: handler}
    app.req_options.media_handlers.update(handlers)
    app.resp_options.media_handlers.update(handlers)
    app.resp_options.default_media_type = falcon.MEDIA_JSON
