"""SIGHUP in a worker process: re-read the configuration and keep what may change live.

The supervisor re-reads the configuration itself and then signals every child; each child reads
it again (environment + TART_CONFIG file: it inherited the supervisor's environment) rather than
receiving it over a pipe, so a child is never left with a half-applied message. Options that
need a restart (database, binds, ring size, ...) are never taken from the new reading: a worker
cannot rebind its socket or resize its ring, and the supervisor has already warned about them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tart.engine import config as config_mod
from tart.engine import logs

Changes = dict[str, tuple[Any, Any]]


def reread(current: config_mod.Settings, live: tuple[str, ...], role: str,
           log: logging.Logger) -> tuple[config_mod.Settings, Changes] | None:
    """``(settings, changes)``: ``current`` with the ``live`` options of a fresh ``config.load()``
    and what differs as ``{option: (old, new)}``. Invalid configuration: log an error and return
    None (the caller keeps ``current``). A changed log level is applied here."""
    try:
        new = config_mod.load()
    except config_mod.ConfigError as e:
        log.error("reload rejected: invalid configuration, keeping the current settings", extra={"error": str(e)})
        return None
    changes = {f: (getattr(current, f), getattr(new, f)) for f in live if getattr(new, f) != getattr(current, f)}
    settings = dataclasses.replace(current, **{f: getattr(new, f) for f in live})
    if "log_level" in changes:
        logs.setup(role, settings.log_level)
    return settings, changes


def describe(changes: Changes) -> str:
    """``rate_limit=50->0,idle_timeout=120->60`` (``none`` when nothing changed), for the log line."""
    return ",".join(f"{k}={old}->{new}" for k, (old, new) in changes.items()) or "none"
