"""Text formatting for the console: every helper accepts None (or junk) and answers "-".

`clean` / `clean_tree` make text from the API safe to put on a terminal; feed.py applies
`clean_tree` to every JSON document it decodes (REST and WebSocket), so no string a node
supplied (names, versions, reasons, event fields) reaches a widget unsanitized.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

DASH = "-"
JCE_EPOCH_US = 1_735_732_800_000_000

try:
    from tart.engine.codec import EVENT_NAMES
except Exception:  # the codec may be mid-rewrite; numbers are still readable
    EVENT_NAMES = {}


# Characters a node could use to act on the operator's terminal or to misreport what it shows:
# C0 controls (ESC starts escape sequences, CR/BS overwrite, BEL), DEL, C1 controls (U+009B is
# CSI on terminals that take 8-bit controls), the bidi embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069) and marks (U+200E/U+200F/U+061C), which reorder what is
# displayed, and the line/paragraph separators U+2028/U+2029.
# C0 and DEL become their visible Unicode "control pictures" (ESC -> U+241B "␛", CR -> "␍",
# DEL -> "␡"), one column each, so the operator sees that and where something was sent; the
# others have no picture and become U+FFFD "�".
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_RAW = re.compile(rb"\\u|[\x00-\x1f\x7f]|\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]"
                         rb"|\xe2\x81[\xa6-\xa9]")
REPLACEMENT = "\ufffd"


def _picture(m: re.Match[str]) -> str:
    c = ord(m.group())
    if c < 0x20:
        return chr(0x2400 + c)
    return "\u2421" if c == 0x7F else REPLACEMENT


def clean(text: str) -> str:
    """`text` with every terminal control and bidi override made harmless (see _UNSAFE)."""
    return _UNSAFE.sub(_picture, text) if _UNSAFE.search(text) else text


def clean_tree(value: Any) -> Any:
    """A decoded JSON document with `clean` applied to every string in it, keys included."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_tree(v) for v in value]
    return value


def might_be_unsafe(raw: bytes | str) -> bool:
    """False when the JSON text `raw` cannot hold an unsafe character (no escape sequence, no such
    character as UTF-8): the common case, where walking the decoded document is skipped."""
    data = raw.encode() if isinstance(raw, str) else raw
    return _UNSAFE_RAW.search(data) is not None


def event_name(event_type: Any) -> str:
    if event_type is None:
        return DASH
    return EVENT_NAMES.get(event_type, str(event_type))


def event_type_from_name(text: str) -> set[int] | None:
    """Event types whose name contains `text` (case-insensitive) or whose number equals it."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return {int(text)}
    low = text.lower()
    return {t for t, name in EVENT_NAMES.items() if low in name.lower()}


def num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return DASH


def rate(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 10_000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return DASH
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s"


def age(secs: float | None) -> str:
    if secs is None:
        return DASH
    secs = max(0.0, secs)
    if secs < 60:
        return f"{secs:.0f}s"
    if secs < 3600:
        return f"{secs // 60:.0f}m{secs % 60:02.0f}s"
    if secs < 86400:
        return f"{secs // 3600:.0f}h{secs % 3600 // 60:02.0f}m"
    return f"{secs // 86400:.0f}d{secs % 86400 // 3600:02.0f}h"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def since(value: Any, now: datetime | None = None) -> str:
    """'12s' for an RFC 3339 time 12 seconds ago."""
    ts = parse_time(value)
    if ts is None:
        return DASH
    return age(((now or datetime.now(UTC)) - ts).total_seconds())


def clock(value: Any) -> str:
    """HH:MM:SS.mmm (UTC) of an RFC 3339 time, or of a JIP-3 timestamp (µs since the JCE)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            ts = datetime.fromtimestamp((JCE_EPOCH_US + value) / 1e6, UTC)
        except (OverflowError, OSError, ValueError):
            return DASH
    else:
        ts = parse_time(value)
        if ts is None:
            return DASH
    return ts.astimezone(UTC).strftime("%H:%M:%S.%f")[:12]


def short_hex(value: Any, n: int = 8) -> str:
    if not isinstance(value, str) or not value:
        return DASH
    h = value[2:] if value.startswith("0x") else value
    return h[:n] + ("…" if len(h) > n else "")


def scalar(value: Any) -> str:
    """Compact rendering of one JSON field value for one-line event summaries."""
    if isinstance(value, str):
        return short_hex(value, 10) if value.startswith("0x") and len(value) > 14 else value
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        if len(value) <= 4 and all(isinstance(v, (int, float)) for v in value):
            return "[" + ",".join(str(v) for v in value) + "]"
        return f"[{len(value)}]"
    if isinstance(value, dict):
        return "{" + " ".join(f"{k}={scalar(v)}" for k, v in list(value.items())[:3]) + "}"
    return str(value)


def event_summary(event: Any) -> str:
    """`{"Tag": {...}}` -> "k=v k=v" without the timestamp (shown in its own column)."""
    if not isinstance(event, dict) or len(event) != 1:
        return "" if event is None else scalar(event)
    (body,) = event.values()
    if not isinstance(body, dict):
        return scalar(body)
    return " ".join(f"{k}={scalar(v)}" for k, v in body.items() if k != "timestamp")


def get(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]... or None when any step is missing."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
