"""Small reusable widgets: a lazy list walker, selectable table rows, a width-aware sparkline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import urwid

_BLOCKS = " ▁▂▃▄▅▆▇█"
_ASCII = " .:-=+*#@"


class LazyWalker(urwid.ListWalker):
    """Walks a plain Python list, building widgets only for the rows a ListBox shows, so a
    list of thousands of nodes or events costs a screenful of widgets per redraw."""

    def __init__(self, make: Callable[[Any], urwid.Widget]) -> None:
        self.items: list[Any] = []
        self.focus = 0
        self._make = make
        self._cache: dict[int, urwid.Widget] = {}

    def replace(self, items: list[Any], focus: int | None = None) -> None:
        self.items = items
        self._cache.clear()
        if focus is not None:
            self.focus = focus
        self.focus = max(0, min(self.focus, len(items) - 1))
        self._modified()

    def __getitem__(self, position: int) -> urwid.Widget:
        if not isinstance(position, int) or position < 0 or position >= len(self.items):
            raise IndexError(position)
        w = self._cache.get(position)
        if w is None:
            if len(self._cache) > 400:
                self._cache.clear()
            w = self._cache[position] = self._make(self.items[position])
        return w

    def __len__(self) -> int:
        return len(self.items)

    def next_position(self, position: int) -> int:
        if position + 1 >= len(self.items):
            raise IndexError(position)
        return position + 1

    def prev_position(self, position: int) -> int:
        if position <= 0:
            raise IndexError(position)
        return position - 1

    def set_focus(self, position: int) -> None:
        self.focus = position
        self._modified()

    def positions(self, reverse: bool = False):
        return range(len(self.items) - 1, -1, -1) if reverse else range(len(self.items))


class Row(urwid.WidgetWrap):
    """One selectable table row of fixed-width cells; the focused row is highlighted."""

    def __init__(self, cells: Sequence[str], widths: Sequence[int], attr: str = "row",
                 aligns: Sequence[str] | None = None) -> None:
        cols = []
        for i, (text, width) in enumerate(zip(cells, widths, strict=True)):
            align = aligns[i] if aligns else "left"
            t = urwid.Text(text, align=align, wrap="ellipsis")
            cols.append((width, t) if width > 0 else t)
        super().__init__(urwid.AttrMap(urwid.Columns(cols, dividechars=1), attr, "row_focus"))

    def selectable(self) -> bool:
        return True

    def keypress(self, size: tuple[int], key: str) -> str | None:
        return key


class LineRow(urwid.WidgetWrap):
    """A selectable one-line text (log lines): clipped, never wrapped, so scrolling stays exact."""

    def __init__(self, markup: Any) -> None:
        super().__init__(urwid.AttrMap(urwid.Text(markup, wrap="ellipsis"), "row", "row_focus"))

    def selectable(self) -> bool:
        return True

    def keypress(self, size: tuple[int], key: str) -> str | None:
        return key


def header_row(names: Sequence[str], widths: Sequence[int], sorted_col: int | None = None,
               descending: bool = False, aligns: Sequence[str] | None = None) -> urwid.Widget:
    utf8 = urwid.util.get_encoding_mode() == "utf8"
    mark = ("▼" if utf8 else "v") if descending else ("▲" if utf8 else "^")
    cols = []
    for i, (name, width) in enumerate(zip(names, widths, strict=True)):
        label = name
        if i == sorted_col:
            # The marker sits on the side that survives clipping of a narrow column.
            right = bool(aligns) and aligns[i] == "right"
            label = f"{mark}{name}" if right else f"{name}{mark}"
        attr = "colhead_sorted" if i == sorted_col else "colhead"
        t = urwid.AttrMap(urwid.Text(label, align=aligns[i] if aligns else "left", wrap="clip"), attr)
        cols.append((width, t) if width > 0 else t)
    return urwid.AttrMap(urwid.Columns(cols, dividechars=1), "colhead")


def spark_chars() -> str:
    return _BLOCKS if urwid.util.get_encoding_mode() == "utf8" else _ASCII


class Sparkline(urwid.Widget):
    """A multi-row sparkline of the latest values, one column per value, scaled to its own max.
    Values are fetched at render time for the actual width (`source(width) -> values`)."""

    _sizing = frozenset([urwid.Sizing.FLOW])

    def __init__(self, source: Callable[[int], list[float | None]], height: int = 3) -> None:
        super().__init__()
        self.source = source
        self.height = height

    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return self.height

    def render(self, size: tuple[int], focus: bool = False) -> urwid.Canvas:
        (maxcol,) = size
        values = self.source(maxcol)[-maxcol:]
        lines = spark_lines(values, self.height, spark_chars())
        lines = [ln.ljust(maxcol)[:maxcol] for ln in lines]
        enc = [ln.encode("utf-8") for ln in lines]
        attrs = [[("spark", len(e))] for e in enc]
        return urwid.TextCanvas(enc, attr=attrs, maxcol=maxcol)

    def update(self) -> None:
        self._invalidate()


def spark_lines(values: Sequence[float | None], height: int, chars: str) -> list[str]:
    """Rows of block characters, top row first; missing values are blank."""
    steps = len(chars) - 1
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    rows = [[" "] * len(values) for _ in range(height)]
    for x, v in enumerate(values):
        if v is None:
            continue
        level = round(max(0.0, v) / top * height * steps)
        if v > 0 and level == 0:
            level = 1  # any activity at all stays visible
        for r in range(height):
            fill = min(steps, max(0, level - r * steps))
            rows[height - 1 - r][x] = chars[fill]
    return ["".join(r) for r in rows]
