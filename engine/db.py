"""Where tart's database is, and how every tart process connects to it."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tart.engine.config import Settings
from tart.engine.pgcluster import EmbeddedCluster


def resolve_database(settings: Settings, log: logging.Logger | None = None
                     ) -> tuple[str, EmbeddedCluster | None]:
    """``(dsn, None)`` when DATABASE_URL is set (nothing is started); otherwise start the embedded
    cluster under ``<data_dir>/pg`` and return ``(its dsn, the cluster)``; the caller stops it."""
    if settings.database_url:
        return settings.database_url, None
    cluster = EmbeddedCluster(settings.data_path, bin_dir=settings.pg_bin_dir, log=log)
    return cluster.start(), cluster


def utc_conninfo(dsn: str) -> str:
    """``dsn`` with the session time zone forced to UTC (libpq ``options``), keeping any
    options it already had. Accepts key=value strings and postgresql:// URLs."""
    options = conninfo_to_dict(dsn).get("options") or ""
    if "timezone=UTC" not in options:
        options = f"{options} -c timezone=UTC".strip()
    return make_conninfo(dsn, options=options)


def connect(dsn: str, **kw: Any) -> psycopg.Connection:
    """A psycopg connection whose session TimeZone is UTC; autocommit off unless asked."""
    kw.setdefault("autocommit", False)
    return psycopg.connect(utc_conninfo(dsn), **kw)
