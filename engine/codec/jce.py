"""JIP-3 timestamps: microseconds since the JAM Common Era, 2025-01-01T12:00:00Z."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

JCE_EPOCH_UNIX_US = 1_735_732_800_000_000
_EPOCH = datetime(2025, 1, 1, 12, tzinfo=UTC)


def jce_to_datetime(ts_us: int) -> datetime:
    """Aware UTC datetime; ValueError when the u64 lies beyond what datetime can hold (year 9999)."""
    try:
        return _EPOCH + timedelta(microseconds=ts_us)
    except OverflowError as exc:
        raise ValueError(f"JIP-3 timestamp {ts_us} out of datetime range") from exc
