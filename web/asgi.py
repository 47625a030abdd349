"""`tart.web.asgi:app` for gunicorn; the supervisor passes TART_DSN, TART_RINGS and the TART_* settings."""

from __future__ import annotations

import os

from tart.engine import config, logs
from tart.web import dbrole
from tart.web.app import create_app

settings = config.load()
logs.setup("web", settings.log_level)

app = create_app(
    settings,
    # The embedded cluster's tart_web role: its password is in the file the supervisor names.
    dbrole.with_password_file(os.environ.get("TART_DSN") or settings.web_database_url or settings.database_url,
                              os.environ.get("TART_DB_PASSWORD_FILE")),
    [n.strip() for n in os.environ.get("TART_RINGS", "").split(",") if n.strip()],
    started_at=float(os.environ.get("TART_STARTED_AT") or 0) or None,
)
