"""Prometheus text from /metrics -> {sample name: value summed over label sets}."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

RECEIVED = "telemetry_events_received_total"
DROPPED = "telemetry_events_dropped_total"
RATE_LIMITED = "telemetry_events_rate_limited_total"
DECODE_ERRORS = "telemetry_decode_errors_total"
WRITER_LAG = "telemetry_writer_lag_seconds"
PENDING = "telemetry_buffer_pending"
SUBSCRIBERS = "telemetry_broadcaster_subscribers"
CONNECTIONS = "telemetry_active_connections"


def parse_metrics(text: str) -> dict[str, float]:
    """Sum every sample by name; bare-name aliases (untyped) stay under their own name, so
    `..._total` lookups never count a counter twice."""
    sums: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    except (ValueError, TypeError, IndexError):
        # A truncated scrape is useless as a whole; the caller shows "-".
        return {}
    return sums
