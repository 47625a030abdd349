"""orjson for every JSON body: one falcon media handler, keys sorted like PostgreSQL JSONB readers expect."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.media
import orjson

# Sorted keys make REST output byte-stable whether an event came from PostgreSQL (JSONB) or from
# a ring (declaration order); the reference serves REST `data` alphabetically for the same reason.
DUMPS_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=DUMPS_OPTS)


class OrjsonHandler(falcon.media.BaseHandler):
    def serialize(self, media: Any, content_type: str | None = None) -> bytes:
        return orjson.dumps(media, option=DUMPS_OPTS)

    async def serialize_async(self, media: Any, content_type: str | None = None) -> bytes:
        return orjson.dumps(media, option=DUMPS_OPTS)

    def deserialize(self, stream: Any, content_type: str | None, content_length: int | None) -> Any:
        data = stream.read()
        return self._loads(data)

    async def deserialize_async(self, stream: Any, content_type: str | None, content_length: int | None) -> Any:
        data = await stream.read()
        return self._loads(data)

    @staticmethod
    def _loads(data: bytes) -> Any:
        if not data:
            raise falcon.MediaNotFoundError("JSON")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise falcon.MediaMalformedError("JSON") from e


def install(app: falcon.asgi.App) -> None:
    handler = OrjsonHandler()
    handlers = {falcon.MEDIA_JSON: handler}
    app.req_options.media_handlers.update(handlers)
    app.resp_options.media_handlers.update(handlers)
    app.resp_options.default_media_type = falcon.MEDIA_JSON
