"""What every screen offers the app: a title, footer key help, a refresh from the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import urwid

if TYPE_CHECKING:
    from .model import Model


class Controller(Protocol):
    """The parts of the app a screen may drive."""

    def open_node(self, node_id: str) -> None: ...

    def show_screen(self, index: int) -> None: ...

    def prompt(self, label: str, text: str, on_change: Callable[[str], None],
               on_done: Callable[[str | None], None]) -> None: ...


class Screen(urwid.WidgetWrap):
    title = ""
    keys: list[tuple[str, str]] = []
    # True when the screen shows live WebSocket data and must redraw on every hand-off.
    live = False

    def __init__(self, widget: urwid.Widget, app: Controller) -> None:
        super().__init__(widget)
        self.app = app

    def refresh(self, model: Model) -> None:
        raise NotImplementedError

    def on_key(self, key: str) -> bool:
        """Screen-specific keys the widgets left unused; True if handled."""
        return False

    def keypress(self, size: Any, key: str) -> str | None:
        key = super().keypress(size, key)
        if key is not None and self.on_key(key):
            return None
        return key

    def shown(self) -> None:
        """Called when the screen becomes visible."""


def kv(label: str, value: Any, width: int = 16) -> urwid.Widget:
    """A label/value line; `value` is a widget or urwid text markup."""
    cell = value if isinstance(value, urwid.Widget) else urwid.Text(value, wrap="ellipsis")
    return urwid.Columns([(width, urwid.Text(("label", label), wrap="clip")), cell])


def title_line(markup: Any) -> urwid.Text:
    return urwid.Text(markup, wrap="ellipsis")
