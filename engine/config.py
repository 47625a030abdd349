"""Settings: one table of options, read from the environment and an optional env file.

Every option has an environment name, a default, a meaning and what a SIGHUP does with it (applied
live by the named processes, needs a restart, or read only by the web workers, which gunicorn
replaces on SIGHUP). `OPTIONS` is the one place each of these is written: `Settings`' defaults,
`live_options(role)` and `restart_options()` derive from it. `conf/tart.env` is generated
from the same table (``python -m tart.engine.config --env-file``), so the documentation and the
code cannot drift apart. Environment variables win over the file, which wins over defaults.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""


def _parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _nonneg_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"must be >= 0, got {n}")
    return n


def _pos_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"must be > 0, got {n}")
    return n


def _ring_bytes(value: str) -> int:
    n = int(value)
    if n < 1 << 20 or n % 4096:
        raise ValueError(f"must be a multiple of 4096 and at least 1 MiB, got {n}")
    return n


def _writers(value: str) -> int:
    if value.strip().lower() == "auto":
        return 0
    return _pos_int(value)


def _log_format(value: str) -> str:
    v = value.strip().lower()
    if v not in ("logfmt", "json"):
        raise ValueError(f"expected logfmt or json, got {value!r}")
    return v


def _log_level(value: str) -> str:
    # Accept RUST_LOG-style directives ("tart_backend=debug,sqlx=warn"): take the most verbose level.
    order = ["trace", "debug", "info", "warn", "warning", "error"]
    found = []
    for part in value.split(","):
        lvl = part.rpartition("=")[2].strip().lower()
        if lvl:
            if lvl not in order:
                raise ValueError(f"unknown log level {lvl!r}")
            found.append(lvl)
    if not found:
        return "info"
    lvl = min(found, key=order.index)
    return {"trace": "debug", "warn": "warning"}.get(lvl, lvl)


# What a SIGHUP does with a changed option (Option.reload):
LIVE = "live"        # the processes named in Option.roles adopt the new value in place
RESTART = "restart"  # kept at its old value until tart-backend restarts; the reload warns
WEB = "web"          # read only by the web workers, which gunicorn replaces on SIGHUP: applied

ROLES = ("supervisor", "acceptor", "writer", "web")


@dataclass(frozen=True)
class Option:
    """One option. ``default`` is the only place its default is written (``Settings`` derives
    its field defaults from it); ``reload`` says what a SIGHUP does with a changed value and
    ``roles`` which processes apply it live (only for ``reload=LIVE``)."""

    attr: str
    env: str
    default: str
    parse: Any
    doc: str
    aliases: tuple[str, ...] = ()
    reload: str = RESTART
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.reload not in (LIVE, RESTART, WEB):
            raise ValueError(f"{self.attr}: reload must be live, restart or web")
        if (self.reload == LIVE) != bool(self.roles) or not set(self.roles) <= set(ROLES):
            raise ValueError(f"{self.attr}: a live option names the roles that apply it, others none")


OPTIONS: list[Option] = [
    Option("database_url", "DATABASE_URL", "", str,
           "PostgreSQL connection string. Empty: tart runs its own private PostgreSQL cluster under TART_DATA_DIR."),
    Option("web_database_url", "TART_WEB_DATABASE_URL", "", str,
           "With DATABASE_URL: the web tier's connection string, e.g. a read-only role of your own (SELECT, and "
           "INSERT/UPDATE on stats_cache); empty = DATABASE_URL in read-only sessions. The embedded cluster's web tier "
           "always connects as tart_web."),
    Option("data_dir", "TART_DATA_DIR", "./var", str,
           "Directory for tart's own state: the embedded PostgreSQL cluster, archives, metrics files."),
    Option("telemetry_bind", "TELEMETRY_BIND", "0.0.0.0:9000", _parse_bind, "Where nodes connect (JIP-3 over TCP)."),
    Option("api_bind", "API_BIND", "0.0.0.0:8080", _parse_bind, "Where the REST/WebSocket API and /metrics listen."),
    Option("log_level", "TART_LOG", "info", _log_level,
           "Log level (error, warning, info, debug); RUST_LOG-style directives are accepted.",
           aliases=("LOG_LEVEL", "RUST_LOG"),
           reload=LIVE, roles=("supervisor", "acceptor", "writer")),
    Option("log_format", "TART_LOG_FORMAT", "logfmt", _log_format,
           "Log line format: logfmt (key=value, read by Loki's | logfmt, hl, lnav) or json (one object per line)."),
    Option("acceptors", "TART_ACCEPTORS", "0", _nonneg_int, "Acceptor worker processes; 0 = number of CPUs."),
    Option("web_workers", "TART_WEB_WORKERS", "2", _pos_int, "gunicorn ASGI worker processes for the API."),
    Option("max_connections", "TART_MAX_CONNECTIONS", "1024", _pos_int,
           "Maximum concurrent node connections (all acceptors together); beyond it new ones are refused and counted.",
           reload=LIVE, roles=("acceptor",)),
    Option("rate_limit", "TART_RATE_LIMIT", "1000", _nonneg_int,
           "Per-node events/s (token bucket, burst = 2 s worth); 0 = off. Excess is counted in telemetry_events_rate_limited.",
           reload=LIVE, roles=("acceptor",)),
    Option("max_frame", "TART_MAX_FRAME", "131072", _pos_int,
           "Largest accepted event frame in bytes (the largest real event, a work package outline with 3072 imports, is "
           "~105 KiB); a larger length prefix closes that connection, counted in telemetry_frame_errors{kind=oversize}.",
           reload=LIVE, roles=("acceptor",)),
    Option("idle_timeout", "TART_IDLE_TIMEOUT", "120", _pos_int,
           "Seconds a node may send nothing before its connection is closed.",
           reload=LIVE, roles=("acceptor",)),
    # --- ingest hardening (issue 10): what one hostile node or host can take ---
    Option("max_node_info", "TART_MAX_NODE_INFO", "1196", _pos_int,
           "Largest node-information message (the first frame) in bytes; the default is the largest the layout allows "
           "(4 strings at their bounds, parameters up to 512 bytes). Larger: connection closed, counted in "
           "telemetry_frame_errors{kind=node_info_oversize}.",
           reload=LIVE, roles=("acceptor",)),
    Option("handshake_timeout", "TART_HANDSHAKE_TIMEOUT", "5", _pos_int,
           "Seconds a connection may take to send its node information; then it is closed, counted in "
           "telemetry_connections_closed{reason=handshake_timeout}, and the address gets a strike.",
           reload=LIVE, roles=("acceptor",)),
    Option("max_connections_per_address", "TART_MAX_CONNECTIONS_PER_ADDRESS", "0", _nonneg_int,
           "Concurrent node connections from one source address (all acceptors); 0 = max(8, TART_MAX_CONNECTIONS / 8). "
           "Beyond it: refused, counted in tart_connections_refused{reason=per_address}, a strike.",
           reload=LIVE, roles=("acceptor",)),
    Option("conn_byte_rate", "TART_CONN_BYTE_RATE", "1048576", _nonneg_int,
           "Bytes/s one connection may send (token bucket, burst 2 s worth); 0 = off. Over it tart stops reading that "
           "socket until the debt is paid (TCP backpressure, nothing dropped); counted in tart_connection_throttles.",
           reload=LIVE, roles=("acceptor",)),
    Option("addr_byte_rate", "TART_ADDR_BYTE_RATE", "4194304", _nonneg_int,
           "Bytes/s one source address may send over all its connections and acceptors (leaky bucket, burst 2 s, "
           "measured each second); 0 = off. Over it the address is banned; counted in tart_address_bans{reason=byte_rate}.",
           reload=LIVE, roles=("acceptor",)),
    Option("ban_strikes", "TART_BAN_STRIKES", "10", _nonneg_int,
           "Abuses within 60 s (bad or oversize node information, oversize frame, handshake timeout, over the per-address "
           "cap) that ban an address; 0 = never. Counted in tart_address_bans{reason=abuse}.",
           reload=LIVE, roles=("acceptor",)),
    Option("ban_seconds", "TART_BAN_SECONDS", "600", _pos_int,
           "How long a banned address is refused (its open connections are closed); counted in "
           "tart_connections_refused{reason=banned}.",
           reload=LIVE, roles=("acceptor",)),
    Option("acceptor_pending_bytes", "TART_ACCEPTOR_PENDING_BYTES", "16777216", _pos_int,
           "Decoded records an acceptor may hold while its ring is full, in bytes; beyond it every socket of that "
           "acceptor stops reading (TCP backpressure).",
           reload=LIVE, roles=("acceptor",)),
    Option("heartbeat_timeout", "TART_HEARTBEAT_TIMEOUT", "30", _pos_int,
           "Seconds without a heartbeat (acceptor ring, writer.health) after which the supervisor kills the hung child "
           "and restarts it; counted in tart_process_hung{role}.",
           reload=LIVE, roles=("supervisor",)),
    Option("ring_bytes", "TART_RING_BYTES", "67108864", _ring_bytes,
           "Shared-memory ring size per acceptor, in bytes."),
    Option("batch_max", "TART_BATCH_MAX", "10000", _pos_int, "Most events per COPY batch.",
           reload=LIVE, roles=("writer",)),
    Option("batch_interval_ms", "TART_BATCH_INTERVAL_MS", "20", _pos_int,
           "Longest time an event waits in the writer before its batch is written.",
           reload=LIVE, roles=("writer",)),
    Option("retention_days", "TART_RETENTION_DAYS", "30", _nonneg_int,
           "Daily event partitions older than this are dropped; 0 = keep forever.",
           reload=LIVE, roles=("writer",)),
    Option("rollup_retention_days", "TART_ROLLUP_RETENTION_DAYS", "14", _nonneg_int,
           "Days of 30-second event counts (event_counts_30s) to keep; 0 = forever.",
           reload=LIVE, roles=("writer",)),
    Option("hourly_retention_days", "TART_HOURLY_RETENTION_DAYS", "0", _nonneg_int,
           "Days of hourly event counts (event_counts_hourly, the event_stats_hourly view) to keep; 0 = forever.",
           reload=LIVE, roles=("writer",)),
    Option("writers", "TART_WRITERS", "auto", _writers,
           "Writer processes, each with its own rings and PostgreSQL connection; auto = one per 4 CPUs "
           "(measured: on 2 cores one writer is best), never more than the acceptors."),
    Option("archive_dir", "TART_ARCHIVE_DIR", "", str,
           "If set, a partition is archived here before it is dropped: gzip JSON lines in the tart-export --raw envelope; under systemd it must be writable, e.g. /var/lib/tart/archive.",
           reload=LIVE, roles=("writer",)),
    Option("cors_origins", "TART_CORS_ORIGINS", "", str,
           "Comma-separated allowed CORS origins; '*' for any; empty = CORS off.",
           reload=WEB),
    Option("pg_bin_dir", "TART_PG_BIN_DIR", "", str,
           "Where initdb/pg_ctl live for the embedded cluster; empty = PATH, then /usr/lib/postgresql/*/bin."),
    # --- web tier limits (issue 10) and HTTP conventions (issue 14); every one is per web worker.
    Option("ws_recent_buffer_bytes", "TART_WS_RECENT_BUFFER_BYTES", "16777216", _pos_int,
           "Bytes of recent events each web worker keeps for GetRecentEvents (also at most 10000 events); gauge tart_ws_recent_buffer_bytes.",
           reload=WEB),
    Option("ws_queue_bytes", "TART_WS_QUEUE_BYTES", "4194304", _pos_int,
           "Bytes of events queued for one WebSocket subscriber (also at most 1000); beyond it events are skipped and reported as lagged (telemetry_broadcaster_lagged_total); gauge tart_ws_queued_bytes.",
           reload=WEB),
    Option("ws_recent_max_events", "TART_WS_RECENT_MAX_EVENTS", "1000", _pos_int,
           "Most events one GetRecentEvents reply carries (a larger limit is clamped).",
           reload=WEB),
    Option("ws_recent_max_bytes", "TART_WS_RECENT_MAX_BYTES", "2097152", _pos_int,
           "Most bytes of events one GetRecentEvents reply carries (the newest that fit).",
           reload=WEB),
    Option("ws_recent_inflight", "TART_WS_RECENT_INFLIGHT", "2", _pos_int,
           "GetRecentEvents replies a client may have unread; more are answered with an error (tart_ws_requests_refused_total{reason=recent_inflight}).",
           reload=WEB),
    Option("ws_send_timeout", "TART_WS_SEND_TIMEOUT", "10", _pos_int,
           "Seconds one WebSocket message may wait for a client that does not read before tart closes it (tart_ws_closed_total{reason=send_timeout}).",
           reload=WEB),
    Option("ws_max_connections", "TART_WS_MAX_CONNECTIONS", "1000", _pos_int,
           "WebSocket connections per web worker; beyond it new ones are closed with 1013 (tart_ws_closed_total{reason=worker_limit}).",
           reload=WEB),
    Option("ws_max_per_address", "TART_WS_MAX_PER_ADDRESS", "16", _nonneg_int,
           "WebSocket connections per client address per web worker (the proxy's address behind a reverse proxy); 0 = no cap (tart_ws_closed_total{reason=address_limit}).",
           reload=WEB),
    Option("ws_max_message", "TART_WS_MAX_MESSAGE", "65536", _pos_int,
           "Largest WebSocket message a client may send, in bytes; gunicorn closes a larger one with 1009 before buffering it.",
           reload=WEB),
    Option("db_statement_timeout_ms", "TART_DB_STATEMENT_TIMEOUT_MS", "5000", _nonneg_int,
           "statement_timeout of the web tier's database sessions; a slower query is answered 503 query_timeout (tart_http_database_timeouts_total); 0 = none.",
           reload=WEB),
    Option("rest_max_body_bytes", "TART_REST_MAX_BODY_BYTES", "8388608", _pos_int,
           "Event pages are cut short (has_more stays true) so that a body stays near this size (tart_http_pages_truncated_total).",
           reload=WEB),
    Option("gzip_min_bytes", "TART_GZIP_MIN_BYTES", "1024", _nonneg_int,
           "JSON and /metrics bodies at least this large are gzip-compressed for clients sending Accept-Encoding: gzip.",
           reload=WEB),
    Option("access_log", "TART_ACCESS_LOG", "0", _parse_bool,
           "Log one key=value line per API request (method, path, status, duration_ms, bytes, client).",
           reload=WEB),
]


_BY_ATTR: dict[str, Option] = {o.attr: o for o in OPTIONS}


def option(attr: str) -> Option:
    """The table row of ``attr`` (KeyError for an unknown option)."""
    return _BY_ATTR[attr]


def _default(attr: str) -> Any:
    # Settings' field defaults are parsed from the table, so a default is written once.
    opt = _BY_ATTR[attr]
    return opt.parse(opt.default)


def live_options(role: str) -> tuple[str, ...]:
    """Options that the ``role`` process (``acceptor``, ``writer``, ``supervisor``) adopts on SIGHUP."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return tuple(o.attr for o in OPTIONS if o.reload == LIVE and role in o.roles)


def restart_options() -> tuple[str, ...]:
    """Options that a SIGHUP leaves at their old value: they need a restart of tart-backend."""
    return tuple(o.attr for o in OPTIONS if o.reload == RESTART)


def web_options() -> tuple[str, ...]:
    """Options only the web workers read; a SIGHUP applies them as gunicorn replaces its workers."""
    return tuple(o.attr for o in OPTIONS if o.reload == WEB)


@dataclass(frozen=True)
class Settings:
    database_url: str = _default("database_url")
    web_database_url: str = _default("web_database_url")
    data_dir: str = _default("data_dir")
    telemetry_bind: tuple[str, int] = _default("telemetry_bind")
    api_bind: tuple[str, int] = _default("api_bind")
    log_level: str = _default("log_level")
    log_format: str = _default("log_format")
    acceptors: int = _default("acceptors")
    web_workers: int = _default("web_workers")
    max_connections: int = _default("max_connections")
    rate_limit: int = _default("rate_limit")
    max_frame: int = _default("max_frame")
    idle_timeout: int = _default("idle_timeout")
    max_node_info: int = _default("max_node_info")
    handshake_timeout: int = _default("handshake_timeout")
    max_connections_per_address: int = _default("max_connections_per_address")
    conn_byte_rate: int = _default("conn_byte_rate")
    addr_byte_rate: int = _default("addr_byte_rate")
    ban_strikes: int = _default("ban_strikes")
    ban_seconds: int = _default("ban_seconds")
    acceptor_pending_bytes: int = _default("acceptor_pending_bytes")
    heartbeat_timeout: int = _default("heartbeat_timeout")
    ring_bytes: int = _default("ring_bytes")
    batch_max: int = _default("batch_max")
    batch_interval_ms: int = _default("batch_interval_ms")
    retention_days: int = _default("retention_days")
    rollup_retention_days: int = _default("rollup_retention_days")
    hourly_retention_days: int = _default("hourly_retention_days")
    writers: int = _default("writers")
    archive_dir: str = _default("archive_dir")
    cors_origins: str = _default("cors_origins")
    pg_bin_dir: str = _default("pg_bin_dir")
    ws_recent_buffer_bytes: int = _default("ws_recent_buffer_bytes")
    ws_queue_bytes: int = _default("ws_queue_bytes")
    ws_recent_max_events: int = _default("ws_recent_max_events")
    ws_recent_max_bytes: int = _default("ws_recent_max_bytes")
    ws_recent_inflight: int = _default("ws_recent_inflight")
    ws_send_timeout: int = _default("ws_send_timeout")
    ws_max_connections: int = _default("ws_max_connections")
    ws_max_per_address: int = _default("ws_max_per_address")
    ws_max_message: int = _default("ws_max_message")
    db_statement_timeout_ms: int = _default("db_statement_timeout_ms")
    rest_max_body_bytes: int = _default("rest_max_body_bytes")
    gzip_min_bytes: int = _default("gzip_min_bytes")
    access_log: bool = _default("access_log")
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def acceptor_count(self) -> int:
        return self.acceptors or (os.cpu_count() or 1)

    @property
    def writer_count(self) -> int:
        n = self.writers or max(1, (os.cpu_count() or 1) // 4)
        return max(1, min(n, self.acceptor_count))

    @property
    def per_address_limit(self) -> int:
        """TART_MAX_CONNECTIONS_PER_ADDRESS resolved: one host gets at most an eighth of all slots."""
        return self.max_connections_per_address or max(8, self.max_connections // 8)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """KEY=VALUE lines, '#' comments, optional quotes: the systemd EnvironmentFile subset."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load(environ: dict[str, str] | None = None) -> Settings:
    """Build Settings; raise ConfigError naming the first bad option."""
    env = dict(os.environ if environ is None else environ)
    file_values: dict[str, str] = {}
    conf_path = env.get("TART_CONFIG")
    if conf_path:
        try:
            file_values = read_env_file(conf_path)
        except OSError as e:
            raise ConfigError(f"TART_CONFIG: cannot read {conf_path}: {e}") from e
    known = {o.env for o in OPTIONS} | {a for o in OPTIONS for a in o.aliases}
    for key in file_values:
        if key.startswith("TART_") and key not in known and key != "TART_CONFIG":
            raise ConfigError(f"{conf_path}: unknown option {key}")
    kwargs: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        raw, src = opt.default, "default"
        for name in (opt.env, *opt.aliases):
            if name in file_values:
                raw, src = file_values[name], f"file:{name}"
                break
        for name in (opt.env, *opt.aliases):
            if name in env:
                raw, src = env[name], f"env:{name}"
                break
        try:
            kwargs[opt.attr] = opt.parse(raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{opt.env}={raw!r}: {e}") from None
        sources[opt.attr] = src
    return Settings(**kwargs, sources=sources)


_RELOAD_DOC = {
    LIVE: "applied live.",
    RESTART: "needs a restart of tart-backend.",
    WEB: "applied (web workers are replaced).",
}


def render_env_file() -> str:
    lines = [
        "# tart configuration (systemd EnvironmentFile syntax; also read when TART_CONFIG points here).",
        "# Generated from tart/engine/config.py: every option, its default and its meaning.",
        "# Environment variables override this file.",
        "",
    ]
    for opt in OPTIONS:
        names = " / ".join((opt.env, *opt.aliases))
        lines.append(f"# {names}: {opt.doc}")
        lines.append(f"# On SIGHUP: {_RELOAD_DOC[opt.reload]}")
        lines.append(f"#{opt.env}={opt.default}")
        lines.append("")
    return "\n".join(lines)


def _names() -> list[str]:
    return [f.name for f in fields(Settings) if f.name != "sources"]


if __name__ == "__main__":
    if "--env-file" in sys.argv:
        sys.stdout.write(render_env_file())
    else:
        s = load()
        for name in _names():
            print(f"{name} = {getattr(s, name)!r}  ({s.sources[name]})")
