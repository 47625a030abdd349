"""Whether this gunicorn worker is shutting down (set by gunicorn_conf.post_worker_init).

gunicorn's ASGI worker waits up to graceful_timeout for open connections before the lifespan
shutdown runs, and WebSocket subscribers never end on their own: the broadcaster watches this flag
and closes them ("going away") so that a restart is quick.
"""

from __future__ import annotations

from typing import Any

worker: Any = None


def shutting_down() -> bool:
    return worker is not None and not worker.alive
