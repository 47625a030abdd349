"""GET /api/health and GET /api/health/detailed."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import falcon
import orjson
from psycopg_pool import AsyncConnectionPool

from tart.engine.timefmt import fmt_unix_us, now_str
from tart.web import store
from tart.web.broadcaster import Broadcaster
from tart.web.ringsource import RingSet
from tart.web.state import SERVICE, VERSION

log = logging.getLogger("tart.web")

WRITER_HEALTH_FILE = "writer.health"
# The writer rewrites its health file about once a second.
WRITER_FILE_STALE_S = 10.0
WRITER_LAG_DEGRADED_S = 5.0
MEMORY_DEGRADED_PCT = 90.0


class HealthResource:
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "service": SERVICE, "version": VERSION}
        resp.cache_control = ["no-store"]


def _memory() -> dict[str, Any]:
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("MemTotal", "MemAvailable"):
                info[k] = int(v.split()[0]) * 1024
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return {"status": "unknown"}
    total = info.get("MemTotal", 0)
    pct = round(100.0 * (total - info.get("MemAvailable", 0)) / total, 1) if total else 0.0
    return {
        "status": "degraded" if pct >= MEMORY_DEGRADED_PCT else "healthy",
        "usage_percent": pct,
        "rss_bytes": rss,
        "total_bytes": total,
    }


def _writer(data_dir: Path) -> dict[str, Any]:
    path = data_dir / WRITER_HEALTH_FILE
    try:
        raw = path.read_bytes()
        age = time.time() - path.stat().st_mtime
        h = orjson.loads(raw)
    except FileNotFoundError:
        return {"status": "unhealthy", "message": "writer has not reported (no writer.health)"}
    except (OSError, orjson.JSONDecodeError) as e:
        # The error names paths under the data dir: log it, answer only what kind of failure.
        log.warning("unreadable writer.health", extra={"error": str(e)[:300]})
        return {"status": "unhealthy", "message": f"unreadable writer.health ({type(e).__name__})"}
    lag = h.get("lag_seconds")
    last = h.get("last_commit_unix")
    out: dict[str, Any] = {
        "pid": h.get("pid"),
        "lag_seconds": lag,
        "pending": h.get("pending"),
        "pg_ok": h.get("pg_ok"),
        "last_commit": fmt_unix_us(int(last * 1_000_000)) if isinstance(last, int | float) and last > 0 else None,
        "report_age_seconds": round(age, 3),
    }
    if age > WRITER_FILE_STALE_S:
        out.update(status="unhealthy", message=f"writer silent for {age:.0f} s")
    elif h.get("pg_ok") is False:
        out.update(status="degraded", message="writer cannot reach PostgreSQL; events wait in the rings")
    elif isinstance(lag, int | float) and lag > WRITER_LAG_DEGRADED_S:
        out.update(status="degraded", message=f"writer {lag:.1f} s behind")
    else:
        out.update(status="healthy", message="Writing events")
    return out


class DetailedHealthResource:
    def __init__(self, pool: AsyncConnectionPool, rings: RingSet, broadcaster: Broadcaster, data_path: Path,
                 started_at: float) -> None:
        self.pool = pool
        self.rings = rings
        self.broadcaster = broadcaster
        self.data_path = data_path
        self.started_at = started_at

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.cache_control = ["no-store"]
        try:
            latency = await store.ping(self.pool)
            db = {"status": "healthy", "latency_ms": round(latency, 3), "message": "Connected to PostgreSQL"}
        except Exception as e:  # noqa: BLE001 - health reports every failure as data
            # psycopg's text names the host or socket path and the role: log it, do not serve it.
            log.warning("health: database check failed", extra={"error": f"{type(e).__name__}: {e}"[:500]})
            db = {"status": "unhealthy", "latency_ms": None,
                  "message": f"cannot reach PostgreSQL ({type(e).__name__})"}

        rings = self.rings.health()
        alive = sum(1 for r in rings if r.get("alive"))
        fill = max((r.get("fill", 0.0) for r in rings), default=0.0)
        if not rings:
            acc_status = "unknown"
        elif alive == len(rings):
            acc_status = "healthy"
        else:
            acc_status = "unhealthy" if alive == 0 else "degraded"
        acceptors = {
            "status": acc_status,
            "alive": alive,
            "total": len(rings),
            "max_fill": fill,
            "rings": rings,
        }
        bstats = self.broadcaster.stats()
        broadcaster = {
            "status": "healthy",
            "subscribers": bstats["active_subscribers"],
            "message": "Broadcasting events",
            **bstats,
        }
        comps = {
            "database": db,
            "writer": _writer(self.data_path),
            "acceptors": acceptors,
            "broadcaster": broadcaster,
            "memory": _memory(),
        }
        statuses = {c["status"] for c in comps.values()}
        if db["status"] == "unhealthy" or comps["writer"]["status"] == "unhealthy" or acc_status == "unhealthy":
            overall = "unhealthy"
        elif "degraded" in statuses:
            overall = "degraded"
        else:
            overall = "healthy"
        resp.media = {
            "status": overall,
            "timestamp": now_str(),
            "components": comps,
            "version": VERSION,
            "uptime_seconds": int(time.time() - self.started_at),
        }
        if overall == "unhealthy":
            resp.status = falcon.HTTP_503
