"""GET /metrics: every process's metrics (multiprocess mode), the reference's bare counter names,
``tart_build_info`` and the standard ``process_*`` metrics of every tart process.

prometheus-client's multiprocess mode has no process collector: each process writes mmap files
that this endpoint sums, and resident memory or CPU time cannot be summed meaningfully. Rather
than having every process rewrite gauges on a timer (stale between writes, and nothing at all
from a hung process), the endpoint reads ``/proc`` of each live tart process at scrape time:
always current, no work between scrapes. Which pid plays which role comes from the
``tart_process_role`` gauges that processes write when they set up logging, plus the gunicorn
master and the supervisor, found as this worker's parent and grandparent.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Iterator
from pathlib import Path

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from psycopg_pool import AsyncConnectionPool

import tart
from tart.engine import metrics


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    return repr(float(v)) if v != int(v) else f"{int(v)}.0"


def reference_aliases(registry: CollectorRegistry) -> str:
    """`telemetry_events_received 12.0` next to `telemetry_events_received_total 12.0`, as untyped
    families, so PromQL written for the reference backend keeps working."""
    wanted = metrics.REFERENCE_COUNTER_ALIASES
    found: dict[str, list[str]] = {}
    for fam in registry.collect():
        alias = wanted.get(fam.name)
        if alias is None:
            continue
        lines = found.setdefault(alias, [])
        for s in fam.samples:
            if not s.name.endswith("_total"):
                continue
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{alias}{{{labels}}} {_fmt_value(s.value)}" if labels else f"{alias} {_fmt_value(s.value)}")
    out = []
    for family, alias in wanted.items():
        lines = found.get(alias)
        if lines is None:
            continue
        out.append(f"# HELP {alias} Alias of {family}_total (reference backend name)")
        out.append(f"# TYPE {alias} untyped")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # comm (field 2) may hold spaces and parentheses: the fields after its last ')' are fixed.
    return int(stat[stat.rindex(")") + 2:].split()[1])


def tart_processes(registry: CollectorRegistry | None) -> dict[int, str]:
    """``{pid: role}`` of the live tart processes this web worker can see."""
    found: dict[int, str] = {}
    if registry is not None:
        for fam in registry.collect():
            if fam.name != "tart_process_role":
                continue
            for s in fam.samples:
                if s.value and s.labels.get("pid", "").isdigit():
                    found[int(s.labels["pid"])] = s.labels.get("role", "unknown")
    found.setdefault(os.getpid(), "web")
    master = os.getppid()
    if "gunicorn" in _cmdline(master):
        found.setdefault(master, "web")
        sup = _ppid(master)
        cmd = _cmdline(sup)
        if sup > 1 and ("tart-backend" in cmd or "tart.engine.supervisor" in cmd or cmd.startswith("tart:")):
            found.setdefault(sup, "supervisor")
    return {pid: role for pid, role in found.items() if Path(f"/proc/{pid}").exists()}


class TartProcessCollector:
    """process_* for each pid of ``processes()``, labelled ``role`` and ``pid``."""

    def __init__(self, processes: dict[int, str]) -> None:
        self.processes = processes

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid, role in sorted(self.processes.items()):
            for fam in ProcessCollector(pid=lambda p=pid: p, registry=None).collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation + " (per tart process)", fam.type)
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "role": role, "pid": str(pid)}, s.value)
        yield from merged.values()


class BuildInfoCollector:
    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("tart_build_info", "tart's version and Python (always 1)",
                              labels=["version", "python", "implementation"])
        g.add_metric([tart.__version__, platform.python_version(), platform.python_implementation().lower()], 1)
        return [g]


def exposition() -> bytes:
    """The /metrics body."""
    extra = CollectorRegistry()
    extra.register(BuildInfoCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        extra.register(TartProcessCollector(tart_processes(registry)))
    else:
        registry = REGISTRY  # its default ProcessCollector already covers this one process
    return generate_latest(registry) + reference_aliases(registry).encode() + generate_latest(extra)


class MetricsResource:
    """``pool``: the web tier's read pool, whose connections in use are set as a gauge at each
    scrape (None: no pool gauge, as in a process without a database)."""

    def __init__(self, pool: AsyncConnectionPool | None) -> None:
        self.pool = pool

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.pool is not None:
            update_pool_gauge(self.pool)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = exposition()


def update_pool_gauge(pool: AsyncConnectionPool) -> None:
    try:
        s = pool.get_stats()
    except Exception:  # noqa: BLE001 - a pool that is not open has nothing in use
        return
    metrics.DB_POOL_CONNECTIONS.set(s.get("pool_size", 0) - s.get("pool_available", 0))
