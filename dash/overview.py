"""Overview: the health of the whole backend on one screen."""

from __future__ import annotations

import urwid

from . import fmt
from .fmt import DASH, get
from .model import Model
from .screen import Controller, Screen, kv
from .widgets import Sparkline

SPARK_SPAN = 300.0


def _health_attr(status: object) -> str:
    if status in ("healthy", "ok"):
        return "good"
    if status in ("degraded", "warning"):
        return "warn"
    return "error" if status else "dim"


def _count_attr(value: float | None) -> str:
    return "value" if not value else "warn"


class Overview(Screen):
    title = "Overview"
    keys = [("q", "quit")]

    def __init__(self, app: Controller, endpoint: str = "") -> None:
        self.endpoint = endpoint
        self._model: Model | None = None
        self.banner = urwid.Text("")
        names = ["nodes", "rate", "total", "drops", "limited", "decode",
                 "best", "final", "authored", "lag", "pending", "db", "ws", "backend"]
        self.v = {n: urwid.Text(DASH, wrap="ellipsis") for n in names}
        v = self.v
        left = urwid.Pile([
            kv("Nodes", v["nodes"]), kv("Events/s", v["rate"]), kv("Events total", v["total"]),
            kv("Drops", v["drops"]), kv("Rate-limited", v["limited"]), kv("Decode errors", v["decode"]),
        ])
        right = urwid.Pile([
            kv("Best block", v["best"]), kv("Finalized block", v["final"]),
            kv("Blocks authored", v["authored"]), kv("Writer lag", v["lag"]),
            kv("Writer pending", v["pending"]), kv("Database", v["db"]),
        ])
        self.spark_title = urwid.Text(("title", "Events/s, last 5 min"), wrap="ellipsis")
        self.spark = Sparkline(self._spark_values, height=4)
        body = urwid.Pile([
            self.banner,
            urwid.Divider(),
            urwid.Columns([left, right], dividechars=3),
            urwid.Divider(),
            self.spark_title,
            self.spark,
            urwid.Divider(),
            kv("WebSocket", v["ws"]),
            kv("Backend", v["backend"]),
        ])
        super().__init__(urwid.Padding(urwid.Filler(body, valign="top"), left=1, right=1), app)

    def _spark_values(self, width: int) -> list[float | None]:
        if self._model is None:
            return []
        return self._model.sparkline(max(1, width), SPARK_SPAN)

    def refresh(self, model: Model) -> None:
        self._model = model
        v = self.v
        if model.reachable is False:
            self.banner.set_text(("banner", f" backend unreachable at {self.endpoint}, retrying: "
                                            f"{model.error or 'no answer'} "))
        elif model.reachable is None:
            self.banner.set_text(("dim", "connecting..."))
        else:
            self.banner.set_text([("good", "backend reachable"), f" at {self.endpoint}"])
        conn, total = model.connected_total()
        v["nodes"].set_text([("value", fmt.num(conn)), " connected / ", ("value", fmt.num(total)), " total"])
        v["rate"].set_text(("value", fmt.rate(model.rate)))
        t = model.totals
        # Stored events (survives restarts); the received counter restarts with the backend.
        stored = get(model.stats, "total_events")
        v["total"].set_text(("value", fmt.num(stored) if isinstance(stored, int)
                             else fmt.num(int(t.received)) if t.received is not None else DASH))
        for key, value in (("drops", t.dropped), ("limited", t.rate_limited), ("decode", t.decode_errors)):
            v[key].set_text((_count_attr(value), fmt.num(int(value)) if value is not None else DASH))
        st = model.stats
        v["best"].set_text(("value", fmt.num(get(st, "best_block"))))
        v["final"].set_text(("value", fmt.num(get(st, "finalized_block"))))
        v["authored"].set_text(("value", fmt.num(get(st, "total_blocks_authored"))))
        lag_attr = "warn" if (t.writer_lag or 0) > 5 else "value"
        v["lag"].set_text((lag_attr, fmt.seconds(t.writer_lag)))
        v["pending"].set_text(("value", fmt.num(int(t.pending)) if t.pending is not None else DASH))
        db = get(model.detailed, "components", "database")
        status = get(db, "status")
        latency = get(db, "latency_ms")
        db_text: list = [(_health_attr(status), str(status) if status else DASH)]
        if isinstance(latency, (int, float)):
            db_text.append(f" ({latency:.1f} ms)")
        v["db"].set_text(db_text)
        subs = get(model.detailed, "components", "broadcaster", "subscribers")
        ws_attr = "good" if model.ws_state == "live" else "warn"
        ws: list = [(ws_attr, model.ws_state)]
        if isinstance(subs, int):
            ws.append(f", {subs} subscribers")
        if model.lagged or model.overflow:
            ws.append(("warn", f", skipped {model.lagged + model.overflow:,}"))
        v["ws"].set_text(ws)
        h = model.health or {}
        overall = get(model.detailed, "status") or h.get("status")
        uptime = get(model.detailed, "uptime_seconds")
        parts: list = [(_health_attr(overall), str(overall or DASH)), f"  {self.endpoint}"]
        if h.get("service") or h.get("version"):
            parts.append(f"  {h.get('service', '')} {h.get('version', '')}".rstrip())
        if isinstance(uptime, (int, float)):
            parts.append(f"  up {fmt.age(uptime)}")
        v["backend"].set_text(parts)
        peak = max((r for _, r in model.history), default=None)
        self.spark_title.set_text([("title", "Events/s, last 5 min"),
                                   ("dim", f"  (peak {fmt.rate(peak)}/s)" if peak is not None else "")])
        self.spark.update()
