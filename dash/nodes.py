"""Nodes: a sortable, filterable table of every node the backend knows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import urwid

from . import fmt
from .model import Model, NodeRow
from .screen import Controller, Screen, title_line
from .widgets import LazyWalker, Row, header_row

COLUMNS = ["Name", "Version", "Peer ID", "Conn", "Events", "Ev/s", "Last seen", "Best"]
WIDTHS = [14, 9, 10, 4, 10, 7, 10, 0]
ALIGNS = ["left", "left", "left", "left", "right", "right", "right", "right"]
DEFAULT_SORT = 4  # events, busiest first


def _last_seen_ts(row: NodeRow) -> float | None:
    ts = fmt.parse_time(row.get("last_seen_at"))
    return ts.timestamp() if ts else None


# Sort keys per column; rows whose key is None always go last.
SORT_KEYS: list[Callable[[NodeRow], Any]] = [
    lambda r: (r.get("implementation_name") or "").lower() or None,
    lambda r: r.get("implementation_version") or None,
    lambda r: r.node_id,
    lambda r: bool(r.get("is_connected")),
    lambda r: r.get("event_count") if isinstance(r.get("event_count"), int) else None,
    lambda r: r.rate,
    _last_seen_ts,
    lambda r: r.best,
]
# Columns where the natural first look is "largest first".
DESCENDING_FIRST = {3, 4, 5, 6, 7}


def is_descending(col: int, reverse: bool) -> bool:
    return (col in DESCENDING_FIRST) != reverse


def sort_rows(rows: list[NodeRow], col: int, reverse: bool) -> list[NodeRow]:
    key = SORT_KEYS[col]
    have = [r for r in rows if key(r) is not None]
    missing = [r for r in rows if key(r) is None]
    descending = is_descending(col, reverse)
    have.sort(key=lambda r: (key(r), r.node_id), reverse=descending)
    missing.sort(key=lambda r: r.node_id)
    return have + missing


def matches(row: NodeRow, text: str) -> bool:
    if not text:
        return True
    low = text.lower()
    fields = (row.get("implementation_name"), row.get("implementation_version"), row.node_id,
              row.get("address"), row.get("peer_id"))
    return any(isinstance(f, str) and low in f.lower() for f in fields)


def row_cells(row: NodeRow, now: datetime) -> list[str]:
    return [
        row.get("implementation_name") or fmt.DASH,
        row.get("implementation_version") or fmt.DASH,
        fmt.short_hex(row.get("peer_id") or row.node_id, 8),
        "yes" if row.get("is_connected") else "no",
        fmt.num(row.get("event_count")),
        fmt.rate(row.rate),
        fmt.since(row.get("last_seen_at"), now),
        fmt.num(row.best),
    ]


class Nodes(Screen):
    title = "Nodes"
    keys = [("Enter", "detail"), ("s", "sort"), ("r", "reverse"), ("/", "filter"), ("q", "quit")]

    def __init__(self, app: Controller) -> None:
        self.sort_col = DEFAULT_SORT
        self.reverse = False
        self.filter = ""
        self._now = datetime.now(UTC)
        self._model: Model | None = None
        self.info = title_line("")
        self.head = urwid.WidgetPlaceholder(header_row(COLUMNS, WIDTHS, self.sort_col, is_descending(self.sort_col, self.reverse), ALIGNS))
        self.walker = LazyWalker(self._make_row)
        self.listbox = urwid.ListBox(self.walker)
        self.empty = urwid.Filler(urwid.Text(("dim", "no nodes yet"), align="center"), valign="top")
        self.body = urwid.WidgetPlaceholder(self.listbox)
        frame = urwid.Frame(self.body, header=urwid.Pile([self.info, self.head]))
        super().__init__(frame, app)

    def _make_row(self, row: NodeRow) -> urwid.Widget:
        attr = "row" if row.get("is_connected") else "row_down"
        return Row(row_cells(row, self._now), WIDTHS, attr, ALIGNS)

    def focused_node(self) -> str | None:
        items = self.walker.items
        if not items:
            return None
        return items[min(self.walker.focus, len(items) - 1)].node_id

    def refresh(self, model: Model) -> None:
        self._model = model
        self._now = datetime.now(UTC)
        keep = self.focused_node()
        rows = [r for r in model.nodes.values() if matches(r, self.filter)]
        rows = sort_rows(rows, self.sort_col, self.reverse)
        focus = next((i for i, r in enumerate(rows) if r.node_id == keep), None)
        self.walker.replace(rows, focus)
        self.body.original_widget = self.listbox if rows else self.empty
        self.head.original_widget = header_row(COLUMNS, WIDTHS, self.sort_col, is_descending(self.sort_col, self.reverse), ALIGNS)
        conn, total = model.connected_total()
        info: list = [("title", "Nodes "), f"{fmt.num(conn)} connected / {fmt.num(total)} total"]
        if self.filter:
            info += ["  filter ", ("warn", f"/{self.filter}"), f" ({len(rows)} shown)"]
        order = "desc" if is_descending(self.sort_col, self.reverse) else "asc"
        info += ["  sort ", ("value", f"{COLUMNS[self.sort_col]} {order}")]
        self.info.set_text(info)

    def _redo(self) -> None:
        if self._model is not None:
            self.refresh(self._model)

    def on_key(self, key: str) -> bool:
        if key == "enter":
            node = self.focused_node()
            if node:
                self.app.open_node(node)
            return True
        if key == "s":
            self.sort_col = (self.sort_col + 1) % len(COLUMNS)
            self._redo()
            return True
        if key == "r":
            self.reverse = not self.reverse
            self._redo()
            return True
        if key == "/":
            self.app.prompt("filter nodes: /", self.filter, self._set_filter, self._filter_done)
            return True
        if key == "esc" and self.filter:
            self._set_filter("")
            return True
        return False

    def _set_filter(self, text: str) -> None:
        self.filter = text
        self._redo()

    def _filter_done(self, text: str | None) -> None:
        self._set_filter(text or "")
