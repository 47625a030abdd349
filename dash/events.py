"""Events: the live WebSocket stream, filterable by type and node, with pause and scroll-back."""

from __future__ import annotations

from itertools import islice

import urwid

from . import fmt
from .detail import event_line
from .model import Model
from .screen import Controller, Screen, title_line
from .widgets import LazyWalker, LineRow

VIEW_MAX = 5000


class Events(Screen):
    title = "Events"
    live = True
    keys = [("space", "pause"), ("t", "type"), ("n", "node"), ("c", "clear"),
            ("End", "follow"), ("q", "quit")]

    def __init__(self, app: Controller) -> None:
        self.type_text = ""
        self.node_text = ""
        self._types: set[int] | None = None
        self.paused = False
        self.follow = True
        self._model: Model | None = None
        self._seen_seq = 0  # model.events sequence number up to which the view has looked
        self._held = 0  # matching events that arrived while paused
        self.info = title_line("")
        self.walker = LazyWalker(self._make_line)
        self.listbox = urwid.ListBox(self.walker)
        columns = urwid.AttrMap(urwid.Text(
            f"{'Time (UTC)':<13}{'Node':<8}{'Name':<11}{'Type':<25}Details", wrap="clip"), "colhead")
        super().__init__(urwid.Frame(self.listbox, header=urwid.Pile([self.info, columns])), app)

    def _label(self, ev: dict) -> str:
        nid = ev.get("node_id")
        row = self._model.nodes.get(nid) if self._model and isinstance(nid, str) else None
        name = (row.get("implementation_name") if row else None) or ""
        return f"{fmt.short_hex(nid, 6):<7.7} {name:<10.10}"

    def _make_line(self, ev: dict) -> urwid.Widget:
        return LineRow(event_line(ev, self._label(ev)))

    def _match(self, ev: dict) -> bool:
        if self._types is not None and ev.get("event_type") not in self._types:
            return False
        if self.node_text:
            nid = ev.get("node_id") or ""
            low = self.node_text.lower()
            if low in nid:
                return True
            row = self._model.nodes.get(nid) if self._model else None
            name = (row.get("implementation_name") or "") if row else ""
            return low in name.lower()
        return True

    def refresh(self, model: Model) -> None:
        self._model = model
        log = model.events
        start = max(self._seen_seq, log.first_seq)
        # islice walks the deque once; indexing a deque in the middle is O(n) per item.
        fresh = list(islice(log.items, start - log.first_seq, None))
        self._seen_seq = log.end_seq
        new = [ev for ev in fresh if self._match(ev)]
        if self.paused:
            self._held += len(new)
        elif new:
            self._append(new)
        self._update_info()

    def _append(self, new: list[dict]) -> None:
        items = self.walker.items + new
        cut = max(0, len(items) - VIEW_MAX)
        items = items[cut:]
        # Keep the row the operator scrolled to; when following, stick to the newest.
        focus = len(items) - 1 if self.follow else max(0, self.walker.focus - cut)
        self.walker.replace(items, focus)
        if self.follow:
            self.listbox.set_focus_valign("bottom")

    def _rebuild(self) -> None:
        """Re-apply the filters to everything still in the buffer."""
        if self._model is None:
            return
        log = self._model.events
        items = [ev for ev in log.items if self._match(ev)][-VIEW_MAX:]
        self._seen_seq = log.end_seq
        self._held = 0
        self.follow = True
        self.walker.replace(items, len(items) - 1)
        self.listbox.set_focus_valign("bottom")
        self._update_info()

    def _update_info(self) -> None:
        info: list = [("title", "Live events "), f"{len(self.walker.items):,} shown"]
        if self.type_text:
            info += ["  type ", ("warn", self.type_text)]
        if self.node_text:
            info += ["  node ", ("warn", self.node_text)]
        if self.paused:
            info += ["  ", ("bad", " PAUSED "), f" {self._held:,} new"]
        elif not self.follow:
            info += ["  ", ("warn", "scrolled back (End: follow)")]
        self.info.set_text(info)

    def keypress(self, size: tuple[int, int], key: str) -> str | None:
        # Any scrolling of the list decides follow mode: on the newest row means follow.
        result = super().keypress(size, key)
        if key in ("up", "down", "page up", "page down", "home", "end") and self.walker.items:
            self.follow = self.walker.focus >= len(self.walker.items) - 1
            self._update_info()
        return result

    def on_key(self, key: str) -> bool:
        if key == " ":
            self.paused = not self.paused
            if not self.paused:
                self._rebuild()
            self._update_info()
            return True
        if key == "t":
            self.app.prompt("event type (name or number): ", self.type_text, self._set_type, self._type_done)
            return True
        if key == "n":
            self.app.prompt("node (id prefix or name): ", self.node_text, self._set_node, self._node_done)
            return True
        if key == "c":
            self.type_text = self.node_text = ""
            self._types = None
            self._rebuild()
            return True
        if key in ("end", "G"):
            self.follow = True
            if self.walker.items:
                self.walker.set_focus(len(self.walker.items) - 1)
                self.listbox.set_focus_valign("bottom")
            self._update_info()
            return True
        return False

    def _set_type(self, text: str) -> None:
        self.type_text = text.strip()
        self._types = fmt.event_type_from_name(self.type_text)
        self._rebuild()

    def _type_done(self, text: str | None) -> None:
        self._set_type(text or "")

    def _set_node(self, text: str) -> None:
        self.node_text = text.strip()
        self._rebuild()

    def _node_done(self, text: str | None) -> None:
        self._set_node(text or "")
