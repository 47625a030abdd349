"""Node detail: one node's information, latest Status, event-type breakdown and live events."""

from __future__ import annotations

from datetime import UTC, datetime

import urwid

from . import fmt
from .fmt import DASH, get
from .model import Model
from .screen import Controller, Screen, kv, title_line
from .widgets import LazyWalker, LineRow

STATUS_FIELDS = [
    ("Peers", "num_peers"), ("Validator peers", "num_val_peers"), ("Sync peers", "num_sync_peers"),
    ("Guarantees", "num_guarantees"), ("Shards", "num_shards"), ("Shards size", "shards_size"),
    ("Preimages", "num_preimages"), ("Preimages size", "preimages_size"),
]
INFO_ROWS = 11
BREAKDOWN_ROWS = 8


def event_line(ev: dict, node_label: str | None = None) -> list:
    parts: list = [("dim", fmt.clock(ev.get("time")) + " ")]
    if node_label is not None:
        parts.append(node_label + " ")
    parts.append(("value", f"{fmt.event_name(ev.get('event_type')):<24.24}"))
    parts.append(" " + fmt.event_summary(ev.get("event")))
    return parts


def _guarantees(value: object) -> str:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return f"{sum(value)} over {len(value)} cores"
    return fmt.scalar(value) if value is not None else DASH


def _protocol(ni: dict) -> str:
    parts = []
    if ni.get("gp_version"):
        parts.append(f"GP {ni['gp_version']}")
    cores = get(ni, "params", "core_count")
    if isinstance(cores, int):
        parts.append(f"{cores} cores")
    if isinstance(ni.get("flags"), int):
        parts.append(f"flags {ni['flags']}")
    return ", ".join(parts) or DASH


class NodeDetail(Screen):
    title = "Node"
    live = True
    keys = [("Esc", "back to nodes"), ("up/down", "scroll"), ("q", "quit")]

    def __init__(self, app: Controller) -> None:
        self.head = title_line(("dim", "No node selected: pick one on the Nodes screen (2) with Enter."))
        self.info_vals = [urwid.Text(DASH, wrap="ellipsis") for _ in range(INFO_ROWS)]
        labels = ["Name", "Version", "Protocol", "Node ID", "Address", "Connected",
                  "Last seen", "Events", "Events/s", "Best/final", "Note"]
        info = urwid.Pile([kv(lbl, val, 11) for lbl, val in zip(labels, self.info_vals, strict=True)])
        self.status_vals = [urwid.Text(DASH, wrap="ellipsis") for _ in STATUS_FIELDS]
        self.status_time = urwid.Text(("dim", "no Status yet"), wrap="ellipsis")
        status = urwid.Pile(
            [urwid.Text(("title", "Latest Status"))]
            + [kv(lbl, val, 16) for (lbl, _), val in zip(STATUS_FIELDS, self.status_vals, strict=True)]
            + [self.status_time]
        )
        self.breakdown_title = urwid.Text(("title", "Event types"), wrap="ellipsis")
        self.breakdown = urwid.Text("")
        top = urwid.Columns([("weight", 5, info), ("weight", 4, status)], dividechars=2)
        self.walker = LazyWalker(lambda ev: LineRow(event_line(ev)))
        self.recent_title = urwid.Text(("title", "Recent events"), wrap="ellipsis")
        body = urwid.Pile([
            ("pack", self.head),
            ("pack", top),
            ("pack", urwid.Columns([self.breakdown_title])),
            ("pack", self.breakdown),
            ("pack", self.recent_title),
            urwid.ListBox(self.walker),
        ])
        body.focus_position = 5
        super().__init__(urwid.Padding(body, left=1, right=1), app)

    def refresh(self, model: Model) -> None:
        if model.detail_id is None:
            return
        nid = model.detail_id
        row = model.nodes.get(nid)
        d = model.detail or (row.raw if row else {})
        ni = d.get("node_info") if isinstance(d.get("node_info"), dict) else {}
        connected = d.get("is_connected")
        name = d.get("implementation_name") or ni.get("implementation_name")
        self.head.set_text([
            ("title", "Node "), ("value", f"{name or DASH} "), fmt.short_hex(nid, 16), "  ",
            ("good", "connected") if connected else (("error", "disconnected") if connected is False else DASH),
        ])
        now = datetime.now(UTC)
        best = model.best.get(nid)
        final = model.finalized.get(nid)
        status = model.detail_status()
        vals = [
            name or DASH,
            d.get("implementation_version") or ni.get("implementation_version") or DASH,
            _protocol(ni),
            nid,
            d.get("address") or get(ni, "details", "peer_address", "address") or DASH,
            f"{fmt.since(d.get('connected_at'), now)} ago" if d.get("connected_at") else DASH,
            f"{fmt.since(d.get('last_seen_at'), now)} ago" if d.get("last_seen_at") else DASH,
            fmt.num(d.get("event_count")),
            fmt.rate(row.rate if row else None),
            f"{fmt.num(best)} / {fmt.num(final)}",
            ni.get("additional_info") or DASH,
        ]
        for w, v in zip(self.info_vals, vals, strict=True):
            w.set_text(v)
        for w, (_, key) in zip(self.status_vals, STATUS_FIELDS, strict=True):
            value = status.get(key) if status else None
            w.set_text(_guarantees(value) if key == "num_guarantees" and value is not None
                       else fmt.num(value) if isinstance(value, int) else fmt.scalar(value) if value is not None
                       else DASH)
        self.status_time.set_text(("dim", f"at {fmt.clock(status.get('time'))} UTC") if status
                                  else ("dim", "no Status yet"))
        counts = model.detail_breakdown()
        window = sum(counts.values())
        self.breakdown_title.set_text([("title", "Event types"), ("dim", f"  (last {window:,} events)")])
        top = counts.most_common(BREAKDOWN_ROWS)
        parts: list = []
        for et, n in top:
            # A no-break space keeps each name with its count when the line wraps.
            parts += [("value", fmt.event_name(et)), f"\xa0{n:,}  "]
        self.breakdown.set_text(parts or ("dim", "none yet"))
        recent = model.detail_recent(200)
        # Newest first: on the top row we follow new events, elsewhere we stay on the same event.
        items, focus = self.walker.items, self.walker.focus
        keep = items[focus].get("id") if items and focus > 0 else None
        at = next((i for i, ev in enumerate(recent) if ev.get("id") == keep), 0) if keep is not None else 0
        self.walker.replace(recent, at)
        self.recent_title.set_text([("title", "Recent events"), ("dim", "  (newest first, live)")])
