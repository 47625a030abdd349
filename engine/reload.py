"""SIGHUP: re-read the configuration and keep what may change live.

The supervisor re-reads the configuration itself and then signals every child; each child reads
it again (environment + TART_CONFIG file: it inherited the supervisor's environment) rather than
receiving it over a pipe, so a child is never left with a half-applied message. What a process
adopts comes from the option table (`config.live_options(role)`); options marked restart (database,
binds, ring size, worker counts, ...) are never taken from the new reading: a worker cannot rebind
its socket or resize its ring, and the supervisor has already warned about them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tart.engine import config as config_mod
from tart.engine import logs

Changes = dict[str, tuple[Any, Any]]


def _role_kind(role: str) -> str:
    # Processes log as "acceptor-0", "acceptor-1", ...; the table names the kind.
    return role.partition("-")[0]


def reread(current: config_mod.Settings, live: tuple[str, ...] | None, role: str,
           log: logging.Logger) -> tuple[config_mod.Settings, Changes] | None:
    """``(settings, changes)``: ``current`` with the live options of a fresh ``config.load()``
    and what differs as ``{option: (old, new)}``. ``live=None`` takes the options the table marks
    live for ``role`` (``acceptor-1`` counts as ``acceptor``). Invalid configuration: log an
    error and return None (the caller keeps ``current``). A changed log level is applied here."""
    if live is None:
        live = config_mod.live_options(_role_kind(role))
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


@dataclasses.dataclass(frozen=True)
class SupervisorReload:
    """What the supervisor's SIGHUP found: the settings to keep (restart options at their old
    values), what is applied (live and web options) and what waits for a restart."""

    settings: config_mod.Settings
    applied: Changes
    needs_restart: Changes


def reread_all(current: config_mod.Settings) -> SupervisorReload:
    """The supervisor's reading: every option of a fresh ``config.load()`` except the restart
    ones, which keep their current value. Raises ConfigError (the caller logs and keeps ``current``)."""
    new = config_mod.load()
    restart = set(config_mod.restart_options())
    applied: Changes = {}
    pending: Changes = {}
    for opt in config_mod.OPTIONS:
        old_v, new_v = getattr(current, opt.attr), getattr(new, opt.attr)
        if old_v != new_v:
            (pending if opt.attr in restart else applied)[opt.attr] = (old_v, new_v)
    kept = dataclasses.replace(new, **{f: getattr(current, f) for f in pending})
    return SupervisorReload(kept, applied, pending)


def describe(changes: Changes) -> str:
    """``rate_limit=50->0,idle_timeout=120->60`` (``none`` when nothing changed), for the log line."""
    return ",".join(f"{k}={old}->{new}" for k, (old, new) in changes.items()) or "none"
