"""`tart.web.asgi:app` for gunicorn; the supervisor passes TART_DSN, TART_RINGS and the TART_* settings."""

from __future__ import annotations

import os

from tart.engine import config, logs
from tart.web.app import create_app

settings = config.load()
logs.setup("web", settings.log_level)

app = create_app(
    settings,
    os.environ.get("TART_DSN") or settings.database_url,
    [n.strip() for n in os.environ.get("TART_RINGS", "").split(",") if n.strip()],
    started_at=float(os.environ.get("TART_STARTED_AT") or 0) or None,
)
