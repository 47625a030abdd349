"""Structured, quiet logging: one line per message, in logfmt or JSON.

logfmt (the default, ``TART_LOG_FORMAT=logfmt``) is what Loki's ``| logfmt``, ``hl`` and ``lnav``
read::

    ts=2025-01-02T03:04:05.678Z level=info proc=acceptor-0[812] msg="node connected" addr=1.2.3.4:5678

``proc`` is the process role with its pid (so that an ``extra`` field called ``pid``, such as the
supervisor's child pid, never collides with it). Values are double-quoted when they hold a space,
``=``, ``"``, a backslash or nothing, and every control or non-printing character is escaped, so
a string sent by a node (its name, a decode error) can never end the line or forge another one.
A traceback goes into ``exc="..."`` on the same line. ``TART_LOG_FORMAT=json`` writes one JSON
object per line with the same keys, for log shippers.

Style: a constant message and the variable parts as ``extra={...}`` fields (not %-formatting),
so that every variable is a key that log queries can filter on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
FORMATS = ("logfmt", "json")

# Characters that force quoting of a logfmt value.
_QUOTE_TRIGGERS = frozenset(' ="\\')


def _escape_char(ch: str) -> str:
    if ch == '"':
        return '\\"'
    if ch == "\\":
        return "\\\\"
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if ch.isprintable():
        return ch
    # Control characters, U+2028/2029, bidi overrides, unassigned code points: never raw.
    cp = ord(ch)
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def logfmt_value(value: Any) -> str:
    """One value as logfmt writes it: bare when safe, else double-quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not (_QUOTE_TRIGGERS & set(text)):
        return text
    return '"' + "".join(_escape_char(c) for c in text) + '"'


def _safe_key(key: str) -> str:
    # Keys come from code, but keep the line parseable whatever a caller passes.
    return "".join(c if (c.isalnum() or c in "_.-") else "_" for c in key) or "_"


def parse_logfmt(line: str) -> dict[str, str]:
    """The key/value pairs of one logfmt line (the inverse of the formatter, for tests and tools)."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        start = i
        while i < n and line[i] not in " =":
            i += 1
        key = line[start:i]
        if i >= n or line[i] != "=":
            if key:
                out[key] = ""
            continue
        i += 1
        if i < n and line[i] == '"':
            i += 1
            buf = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    if nxt in "uU":
                        width = 4 if nxt == "u" else 8
                        buf.append(chr(int(line[i + 2:i + 2 + width], 16)))
                        i += 2 + width
                        continue
                    buf.append({"n": "\n", "r": "\r", "t": "\t"}.get(nxt, nxt))
                    i += 2
                    continue
                buf.append(line[i])
                i += 1
            i += 1
            out[key] = "".join(buf)
        else:
            start = i
            while i < n and line[i] != " ":
                i += 1
            out[key] = line[start:i]
    return out


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _json_escape(ch: str) -> str:
    raw = ch.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(raw[i:i + 2], 'big'):04x}" for i in range(0, len(raw), 2))


def _json_default(value: Any) -> str:
    return str(value)


class KeyValueFormatter(logging.Formatter):
    """tart's formatter for every process (gunicorn's too, through its logconfig_dict).
    ``fmt`` None: ``TART_LOG_FORMAT`` from the environment or the TART_CONFIG file."""

    def __init__(self, role: str, fmt: str | None = None) -> None:
        super().__init__()
        self.role = role
        self.fmt = fmt or resolve_format()

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "proc": f"{self.role}[{os.getpid()}]",
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[_safe_key(key) if key not in out else f"extra_{key}"] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return out

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.fmt == "json":
            # The stdlib encoder, not orjson: it accepts any str (lone surrogates too). It leaves
            # U+0085, U+2028, U+2029 and other non-printing characters raw, and some line readers
            # split on them, so escape them (outside strings the JSON text is plain ASCII).
            text = json.dumps(fields, ensure_ascii=False, default=_json_default, separators=(",", ":"))
            if not text.isprintable():
                text = "".join(c if c.isprintable() else _json_escape(c) for c in text)
            return text
        return " ".join(f"{k}={logfmt_value(v)}" for k, v in fields.items())


def resolve_format(environ: dict[str, str] | None = None) -> str:
    """The log format named by ``TART_LOG_FORMAT`` (environment, then the TART_CONFIG file)."""
    from tart.engine import config

    env = os.environ if environ is None else environ
    raw = env.get("TART_LOG_FORMAT")
    if raw is None and env.get("TART_CONFIG"):
        try:
            raw = config.read_env_file(env["TART_CONFIG"]).get("TART_LOG_FORMAT")
        except (OSError, config.ConfigError):
            raw = None  # config.load() reports a bad file; logging must still work to say so
    try:
        return config.option("log_format").parse(raw if raw is not None else config.option("log_format").default)
    except ValueError:
        return "logfmt"


def setup(role: str, level: str = "info", fmt: str | None = None) -> None:
    """Configure the root logger for this process; call again in a child to rename its role."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(role, fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Every tart process calls this with its role once it knows it: the moment to record the role
    # for the per-process process_* metrics (only where metrics are shared, i.e. under the supervisor).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from tart.engine import metrics

        metrics.register_process(role)
