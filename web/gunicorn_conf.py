"""gunicorn settings for the web tier (`--config python:tart.web.gunicorn_conf`).

The command line (bind, workers, worker class, loop) comes from the supervisor; this file sets what
does not change between deployments.
"""

from __future__ import annotations

import os as _os

from tart.engine.config import load as _load_settings

# Module-level names are read as gunicorn settings: keep helpers underscored.
_settings = _load_settings()

loglevel = _settings.log_level
# gunicorn's own lines in tart's one-line key=value format, like every other tart process.
_level = _settings.log_level.upper()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": _level, "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": _level, "handlers": [], "propagate": True},
        # One line per request is noise at any level; request counts and latency are in /metrics.
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "kv", "stream": "ext://sys.stderr"}},
    "formatters": {"kv": {"()": "tart.engine.logs.KeyValueFormatter", "role": "web"}},
}
accesslog = None  # request counts and latency are in /metrics; an access line per request is noise
errorlog = "-"
graceful_timeout = 10
timeout = 30
# Idle keep-alive connections hold a graceful stop until they time out: keep them short.
keepalive = 5
worker_connections = 10_000
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
proc_name = "tart-web"
asgi_lifespan = "on"
# gunicorn's ASGI worker holds a whole WebSocket message before the app sees it (default 16 MiB);
# refuse anything larger than tart accepts (1009) before buffering it.
websocket_max_message_size = _settings.ws_max_message
# The control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl); several tart
# instances (tests, benchmarks) on one machine would fight over it, and tart does not use it.
control_socket_disable = True


def post_worker_init(worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    import gc

    from tart.web import lifecycle

    lifecycle.worker = worker
    # What the worker imported and built at start lives as long as it does: moved out of the
    # collector's view, it is not traversed again by every full collection (a page of 1000
    # events allocates ~10^5 objects and triggers them; bench/rest_at_rest.py: p99 43 -> 21 ms).
    gc.freeze()


def child_exit(server, worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    # Drop the dead worker's livesum gauges (subscribers, pool in use) from /metrics.
    if _os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
