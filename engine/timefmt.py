"""Time in tart: RFC 3339 strings as tart emits them (UTC, `Z`, six fractional digits), and parsing of
the times users give (REST `since`/`until`, `tart-export --since/--until`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from tart.engine.codec.jce import JCE_EPOCH_UNIX_US

_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


def fmt_dt(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.utcoffset():
        dt = dt.astimezone(UTC)
    # isoformat is several times faster than strftime; [:26] drops the "+00:00" (or nothing, if naive).
    return dt.isoformat(timespec="microseconds")[:26] + "Z"


def fmt_unix_us(us: int) -> str:
    return (_UNIX + timedelta(microseconds=us)).isoformat(timespec="microseconds")[:26] + "Z"


def jce_to_unix_us(ts: int) -> int:
    return JCE_EPOCH_UNIX_US + ts


def unix_us_to_dt(us: int) -> datetime:
    return _UNIX + timedelta(microseconds=us)


def now_str() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")[:26] + "Z"


def parse_time(value: str) -> int:
    """RFC 3339 (any offset; `Z` accepted) or unix seconds (int or float) -> unix microseconds."""
    v = value.strip()
    if not v:
        raise ValueError("empty time")
    try:
        secs = float(v)
    except ValueError:
        secs = None
    if secs is not None:
        if not math.isfinite(secs) or abs(secs) > 253_402_300_799:
            raise ValueError(f"time out of range: {value!r}")
        return round(secs * 1_000_000)
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _UNIX
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
