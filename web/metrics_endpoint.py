"""GET /metrics: every process's metrics (multiprocess mode) plus the reference's bare counter names."""

from __future__ import annotations

import os

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tart.engine import metrics
from tart.web.state import AppState


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    return repr(float(v)) if v != int(v) else f"{int(v)}.0"


def reference_aliases(registry: CollectorRegistry) -> str:
    """`telemetry_events_received 12.0` next to `telemetry_events_received_total 12.0`, as untyped
    families, so PromQL written for the reference backend keeps working."""
    wanted = set(metrics.REFERENCE_COUNTER_ALIASES)
    found: dict[str, list[str]] = {}
    for fam in registry.collect():
        if fam.name not in wanted:
            continue
        lines = found.setdefault(fam.name, [])
        for s in fam.samples:
            if not s.name.endswith("_total"):
                continue
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{fam.name}{{{labels}}} {_fmt_value(s.value)}" if labels else f"{fam.name} {_fmt_value(s.value)}")
    out = []
    for name in metrics.REFERENCE_COUNTER_ALIASES:
        lines = found.get(name)
        if lines is None:
            continue
        out.append(f"# HELP {name} Alias of {name}_total (reference backend name)")
        out.append(f"# TYPE {name} untyped")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


class MetricsResource:
    def __init__(self, state: AppState | None) -> None:
        self.state = state

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.state is not None:
            update_pool_gauge(self.state)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        body = generate_latest(registry) + reference_aliases(registry).encode()
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = body


def update_pool_gauge(state: AppState) -> None:
    try:
        s = state.pool.get_stats()
    except Exception:  # noqa: BLE001 - a pool that is not open has nothing in use
        return
    metrics.DB_POOL_CONNECTIONS.set(s.get("pool_size", 0) - s.get("pool_available", 0))
