"""Every Prometheus metric tart exports, defined once.

All processes run prometheus-client in multiprocess mode: PROMETHEUS_MULTIPROC_DIR must be set
(the supervisor sets it to <data_dir>/metrics and wipes it at start) before this module is
imported. Each process writes its own mmap files; the web tier's /metrics aggregates them with
MultiProcessCollector. Hot paths increment in batches (``inc(n)``), never per event.

Names, one prefix story (docs/OPERATIONS.md#metrics):
- ``telemetry_*``: the reference backend's metrics under the reference's names, which its
  dashboards and PromQL use, plus their conventional spellings where the reference's lack a
  unit or ``_total``: ``telemetry_batch_write_duration_seconds`` beside the reference's unitless
  ``telemetry_batch_write_duration`` (same observations), ``_total`` counters beside the bare
  reference names (REFERENCE_COUNTER_ALIASES, repeated by /metrics), ``_bytes`` for bytes.
- ``tart_*``: what tart adds (HTTP, restarts, limits, build info, ...).
- ``process_*``: the standard process metrics, one series per tart process, labelled by
  ``role`` and ``pid`` (multiprocess mode cannot collect them: web/metrics_endpoint.py reads
  /proc of the processes registered in PROCESS_ROLE).
Labelled counters are created at zero for every label value tart uses, so that a series exists
before its first increment (alerts on ``increase()`` need one).
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram

# --- acceptors -----------------------------------------------------------------------------
ACTIVE_CONNECTIONS = Gauge(
    "telemetry_active_connections", "Node connections open now", multiprocess_mode="livesum"
)
CONNECTIONS_TOTAL = Counter("telemetry_connections", "Node connections accepted (lifetime)")
CONNECTIONS_REJECTED = Counter(
    "telemetry_connections_rejected", "Node connections refused because the connection limit was reached"
)
CONNECTIONS_CLOSED = Counter(
    "telemetry_connections_closed", "Node connections closed, by reason", ["reason"]
)
EVENTS_RECEIVED = Counter("telemetry_events_received", "Events received and accepted into a ring")
EVENTS_DROPPED = Counter(
    "telemetry_events_dropped", "Events tart had to drop (it counts every one it drops)", ["reason"]
)
EVENTS_RATE_LIMITED = Counter(
    "telemetry_events_rate_limited", "Events over a node's rate limit (TART_RATE_LIMIT), not stored"
)
DECODE_ERRORS = Counter(
    "telemetry_decode_errors", "Events that failed to decode (stored raw), by kind", ["kind"]
)
FRAME_ERRORS = Counter(
    "telemetry_frame_errors", "Connection-level protocol errors that closed a connection", ["kind"]
)
BYTES_RECEIVED = Counter("telemetry_received_bytes", "Bytes read from node connections")
BACKPRESSURE_PAUSES = Counter(
    "telemetry_backpressure_pauses", "Times an acceptor paused reading because its ring was full"
)

# --- writer --------------------------------------------------------------------------------
BUFFER_PENDING = Gauge(
    "telemetry_buffer_pending", "Events in the rings not yet committed to PostgreSQL", multiprocess_mode="livesum"
)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_WRITE_DURATION_SECONDS = Histogram(
    "telemetry_batch_write_duration_seconds", "Seconds to COPY and commit one batch into PostgreSQL",
    buckets=_BATCH_BUCKETS,
)
# The reference's name, without a unit: the same observations, for its dashboards and alerts.
BATCH_WRITE_DURATION_REFERENCE = Histogram(
    "telemetry_batch_write_duration",
    "Seconds to COPY and commit one batch (reference name of telemetry_batch_write_duration_seconds)",
    buckets=_BATCH_BUCKETS,
)


class _Twins:
    """Observes into both spellings of one histogram."""

    def __init__(self, *hists: Histogram) -> None:
        self.hists = hists

    def observe(self, amount: float) -> None:
        for h in self.hists:
            h.observe(amount)


BATCH_WRITE_DURATION = _Twins(BATCH_WRITE_DURATION_SECONDS, BATCH_WRITE_DURATION_REFERENCE)
INGEST_LATENCY = Histogram(
    "telemetry_ingest_latency_seconds",
    "Receipt by an acceptor to commit in PostgreSQL, per event (sampled)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
EVENTS_WRITTEN = Counter("telemetry_events_written", "Events committed to PostgreSQL")
WRITER_LAG = Gauge(
    "telemetry_writer_lag_seconds",
    "Age of the oldest event not yet committed to PostgreSQL",
    multiprocess_mode="max",
)
DB_WRITE_ERRORS = Counter("telemetry_database_write_errors", "Failed batch writes (retried)", ["kind"])

# A labelled series exists only once its label value is first used. Create the known ones at zero,
# so that dashboards show 0 rather than "No data" and the alert rules (deploy/prometheus) see a
# series from the start (tests/test_ops_monitoring.py checks that every metric they use is exported).
for _reason in ("too_large", "shutdown"):
    EVENTS_DROPPED.labels(reason=_reason)
for _kind in ("rejected_row", "bad_record"):
    DB_WRITE_ERRORS.labels(kind=_kind)
for _kind in ("unknown_type", "truncated", "trailing", "bad_string", "bad_enum", "bad_bool", "bad_length", "other"):
    DECODE_ERRORS.labels(kind=_kind)
for _kind in ("oversize", "bad_node_info", "internal"):
    FRAME_ERRORS.labels(kind=_kind)
for _reason in ("eof", "reset", "idle", "oversize", "bad node info", "error", "shutdown"):
    CONNECTIONS_CLOSED.labels(reason=_reason)

# --- web -----------------------------------------------------------------------------------
BROADCASTER_SUBSCRIBERS = Gauge(
    "telemetry_broadcaster_subscribers", "WebSocket subscribers connected now", multiprocess_mode="livesum"
)
# The reference calls it telemetry_broadcaster_total_broadcast; as a counter that would be
# ..._total_broadcast_total. The reference name is repeated by /metrics (REFERENCE_COUNTER_ALIASES).
BROADCAST_TOTAL = Counter("telemetry_broadcaster_messages_sent", "Event messages sent to WebSocket subscribers")
BROADCAST_LAGGED = Counter(
    "telemetry_broadcaster_lagged", "Events skipped for slow WebSocket subscribers"
)
DB_POOL_CONNECTIONS = Gauge(
    "telemetry_database_pool_connections", "Database connections in use by the web tier", multiprocess_mode="livesum"
)
HTTP_REQUESTS = Counter("tart_http_requests", "HTTP requests", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "tart_http_request_duration_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# --- supervisor ----------------------------------------------------------------------------
PROCESS_RESTARTS = Counter("tart_process_restarts", "Child processes restarted after dying", ["role"])
# Every process that imports this module creates these at zero, so the alert rules and the dashboard
# see tart_process_restarts_total before the first restart.
for _role in ("acceptor", "writer", "web"):
    PROCESS_RESTARTS.labels(role=_role)

# Which pid plays which role (liveall: a dead process's series goes with mark_process_dead); the
# /metrics endpoint reads /proc of these pids for the process_* metrics.
PROCESS_ROLE = Gauge(
    "tart_process_role", "1 for each live tart process, labelled by role (and pid)", ["role"],
    multiprocess_mode="liveall",
)


def register_process(role: str) -> None:
    """Record this process under ``role`` (``acceptor-1`` counts as ``acceptor``) for process_* metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        PROCESS_ROLE.labels(role=role.partition("-")[0]).set(1)

# The reference backend's PromQL uses these counter names without the `_total` suffix that
# prometheus-client appends; /metrics repeats them under the bare name (as untyped samples) so
# queries written for the reference keep working.
# {counter family: the reference's bare name}
REFERENCE_COUNTER_ALIASES = {
    "telemetry_connections_rejected": "telemetry_connections_rejected",
    "telemetry_events_received": "telemetry_events_received",
    "telemetry_events_dropped": "telemetry_events_dropped",
    "telemetry_events_rate_limited": "telemetry_events_rate_limited",
    "telemetry_broadcaster_messages_sent": "telemetry_broadcaster_total_broadcast",
}

# --- web tier limits (issue 10: hostile clients affect only themselves) ----------------------
WS_RECENT_BUFFER_BYTES = Gauge(
    "tart_ws_recent_buffer_bytes", "Bytes of recent events kept for GetRecentEvents (TART_WS_RECENT_BUFFER_BYTES)",
    multiprocess_mode="livesum",
)
WS_QUEUED_BYTES = Gauge(
    "tart_ws_queued_bytes", "Bytes of events queued for WebSocket subscribers, not yet sent (TART_WS_QUEUE_BYTES each)",
    multiprocess_mode="livesum",
)
WS_CLOSED = Counter(
    "tart_ws_closed", "WebSocket connections tart closed or refused to protect others, by reason", ["reason"]
)
WS_REQUESTS_REFUSED = Counter(
    "tart_ws_requests_refused", "WebSocket client requests answered with an error instead of a reply, by reason",
    ["reason"],
)
HTTP_DB_TIMEOUTS = Counter(
    "tart_http_database_timeouts", "REST requests answered 503 because a query ran past TART_DB_STATEMENT_TIMEOUT_MS"
)
HTTP_PAGES_TRUNCATED = Counter(
    "tart_http_pages_truncated", "Event pages cut short to keep the body under TART_REST_MAX_BODY_BYTES"
)
for _reason in ("send_timeout", "unread_replies", "address_limit", "worker_limit"):
    WS_CLOSED.labels(reason=_reason)
WS_REQUESTS_REFUSED.labels(reason="recent_inflight")

# --- ingest limits (issue 10: hostile nodes affect only themselves) --------------------------
CONNECTIONS_REFUSED = Counter(
    "tart_connections_refused",
    "Node connections refused at connect time, by reason (limit: TART_MAX_CONNECTIONS; per_address: "
    "TART_MAX_CONNECTIONS_PER_ADDRESS; banned: the address is banned)",
    ["reason"],
)
ADDRESS_BANS = Counter(
    "tart_address_bans", "Source addresses banned for TART_BAN_SECONDS, by reason (abuse: TART_BAN_STRIKES; "
    "byte_rate: TART_ADDR_BYTE_RATE)", ["reason"],
)
CONNECTION_THROTTLES = Counter(
    "tart_connection_throttles", "Times a node connection stopped being read because it exceeded TART_CONN_BYTE_RATE"
)
ACCEPTOR_PENDING_BYTES = Gauge(
    "tart_acceptor_pending_bytes", "Bytes of decoded records waiting in acceptors for ring space (TART_ACCEPTOR_PENDING_BYTES each)",
    multiprocess_mode="livesum",
)
EVENT_ID_SATURATED = Counter(
    "tart_event_id_saturated", "Dropped events whose count would overflow event_id (BIGINT): the id stays at its maximum"
)
PROCESS_HUNG = Counter(
    "tart_process_hung", "Children killed by the supervisor because their heartbeat was older than TART_HEARTBEAT_TIMEOUT",
    ["role"],
)
for _reason in ("limit", "per_address", "banned"):
    CONNECTIONS_REFUSED.labels(reason=_reason)
for _reason in ("abuse", "byte_rate"):
    ADDRESS_BANS.labels(reason=_reason)
for _reason in ("handshake_timeout", "banned", "node_info_oversize"):
    CONNECTIONS_CLOSED.labels(reason=_reason)
FRAME_ERRORS.labels(kind="node_info_oversize")
for _role in ("acceptor", "writer"):
    PROCESS_HUNG.labels(role=_role)

# --- writer rollups (storage) ----------------------------------------------------------------
ROLLUP_FLUSH_DURATION = Histogram(
    "tart_rollup_flush_duration_seconds",
    "Seconds to flush one rollup (status: node_status and blocks; counts: 30-second counts; hourly)",
    ["rollup"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
for _rollup in ("status", "counts", "hourly"):
    ROLLUP_FLUSH_DURATION.labels(rollup=_rollup)
RING_CORRUPT_RECORDS = Counter(
    "tart_ring_corrupt_records", "Ring records a writer could not frame and skipped (a bug or a stray write)"
)

# --- embedded PostgreSQL supervision (issue 10, least privilege) ------------------------------
POSTGRES_RESTARTS = Counter(
    "tart_postgres_restarts", "Times the supervisor restarted the embedded PostgreSQL after its postmaster died"
)
