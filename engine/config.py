"""Settings: one table of options, read from the environment and an optional env file.

Every option has an environment name, a default and a meaning; `conf/tart.env` is generated
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


@dataclass(frozen=True)
class Option:
    attr: str
    env: str
    default: str
    parse: Any
    doc: str
    aliases: tuple[str, ...] = ()


OPTIONS: list[Option] = [
    Option("database_url", "DATABASE_URL", "", str,
           "PostgreSQL connection string. Empty: tart runs its own private PostgreSQL cluster under TART_DATA_DIR."),
    Option("data_dir", "TART_DATA_DIR", "./var", str,
           "Directory for tart's own state: the embedded PostgreSQL cluster, archives, metrics files."),
    Option("telemetry_bind", "TELEMETRY_BIND", "0.0.0.0:9000", _parse_bind, "Where nodes connect (JIP-3 over TCP)."),
    Option("api_bind", "API_BIND", "0.0.0.0:8080", _parse_bind, "Where the REST/WebSocket API and /metrics listen."),
    Option("log_level", "TART_LOG", "info", _log_level,
           "Log level (error, warning, info, debug); RUST_LOG-style directives are accepted.",
           aliases=("LOG_LEVEL", "RUST_LOG")),
    Option("acceptors", "TART_ACCEPTORS", "0", _nonneg_int, "Acceptor worker processes; 0 = number of CPUs."),
    Option("web_workers", "TART_WEB_WORKERS", "2", _pos_int, "gunicorn ASGI worker processes for the API."),
    Option("max_connections", "TART_MAX_CONNECTIONS", "1024", _pos_int,
           "Maximum concurrent node connections (all acceptors together); beyond it new ones are refused and counted."),
    Option("rate_limit", "TART_RATE_LIMIT", "1000", _nonneg_int,
           "Per-node events/s (token bucket, burst = 2 s worth); 0 = off. Excess is counted in telemetry_events_rate_limited."),
    Option("max_frame", "TART_MAX_FRAME", "262144", _pos_int,
           "Largest accepted frame in bytes; a larger length prefix closes that connection."),
    Option("idle_timeout", "TART_IDLE_TIMEOUT", "120", _pos_int,
           "Seconds a node may send nothing before its connection is closed."),
    Option("ring_bytes", "TART_RING_BYTES", "67108864", _ring_bytes,
           "Shared-memory ring size per acceptor, in bytes."),
    Option("batch_max", "TART_BATCH_MAX", "10000", _pos_int, "Most events per COPY batch."),
    Option("batch_interval_ms", "TART_BATCH_INTERVAL_MS", "20", _pos_int,
           "Longest time an event waits in the writer before its batch is written."),
    Option("retention_days", "TART_RETENTION_DAYS", "30", _nonneg_int,
           "Daily event partitions older than this are dropped; 0 = keep forever."),
    Option("rollup_retention_days", "TART_ROLLUP_RETENTION_DAYS", "14", _nonneg_int,
           "Days of 30-second event counts (event_counts_30s) to keep; 0 = forever."),
    Option("hourly_retention_days", "TART_HOURLY_RETENTION_DAYS", "0", _nonneg_int,
           "Days of hourly event counts (event_counts_hourly, the event_stats_hourly view) to keep; 0 = forever."),
    Option("writers", "TART_WRITERS", "auto", _writers,
           "Writer processes, each with its own rings and PostgreSQL connection; auto = one per 4 CPUs "
           "(measured: on 2 cores one writer is best), never more than the acceptors."),
    Option("archive_dir", "TART_ARCHIVE_DIR", "", str,
           "If set, a partition is archived here before it is dropped: gzip JSON lines in the tart-export --raw envelope; under systemd it must be writable, e.g. /var/lib/tart/archive."),
    Option("cors_origins", "TART_CORS_ORIGINS", "", str,
           "Comma-separated allowed CORS origins; '*' for any; empty = CORS off."),
    Option("pg_bin_dir", "TART_PG_BIN_DIR", "", str,
           "Where initdb/pg_ctl live for the embedded cluster; empty = PATH, then /usr/lib/postgresql/*/bin."),
]


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    data_dir: str = "./var"
    telemetry_bind: tuple[str, int] = ("0.0.0.0", 9000)
    api_bind: tuple[str, int] = ("0.0.0.0", 8080)
    log_level: str = "info"
    acceptors: int = 0
    web_workers: int = 2
    max_connections: int = 1024
    rate_limit: int = 1000
    max_frame: int = 262144
    idle_timeout: int = 120
    ring_bytes: int = 64 * 1024 * 1024
    batch_max: int = 10000
    batch_interval_ms: int = 20
    retention_days: int = 30
    rollup_retention_days: int = 14
    hourly_retention_days: int = 0
    writers: int = 0
    archive_dir: str = ""
    cors_origins: str = ""
    pg_bin_dir: str = ""
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def acceptor_count(self) -> int:
        return self.acceptors or (os.cpu_count() or 1)

    @property
    def writer_count(self) -> int:
        n = self.writers or max(1, (os.cpu_count() or 1) // 4)
        return max(1, min(n, self.acceptor_count))

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
