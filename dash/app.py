"""`tart-dash`: the operator console.

    tart-dash [--url https://tart.example.org/] [--refresh-ms 1000]
    tart-dash [--host localhost] [--port 8080]

``--url`` (or ``TART_URL``) reaches tart behind a TLS reverse proxy, also under a path prefix:
REST goes to ``<url>/api/...`` and the WebSocket to the same place with ``ws``/``wss``.

REST snapshots and the /api/ws stream are read by two background threads (feed.py); the urwid
loop (AsyncioEventLoop) only draws and handles keys, woken through a pipe when data arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

import urwid

from tart import add_version_flag

from .detail import NodeDetail
from .events import Events
from .feed import Inbox, RestPoller, WsReader
from .model import Model
from .nodes import Nodes
from .overview import Overview
from .screen import Screen
from .theme import PALETTE, no_color

TICK_S = 1.0


class PromptEdit(urwid.Edit):
    """Footer line editor: Enter accepts, Esc cancels; every change is reported live."""

    def __init__(self, label: str, text: str, on_change: Callable[[str], None],
                 on_done: Callable[[str | None], None]) -> None:
        super().__init__(("prompt", label), text)
        self.on_done = on_done
        urwid.connect_signal(self, "postchange", lambda _w, _old: on_change(self.edit_text))

    def keypress(self, size: tuple[int], key: str) -> str | None:
        if key == "enter":
            self.on_done(self.edit_text)
            return None
        if key == "esc":
            self.on_done(None)
            return None
        return super().keypress(size, key)


DEFAULT_URL = "http://localhost:8080"


def api_urls(url: str) -> tuple[str, str, str]:
    """``(REST base, WebSocket URL, label)`` for a tart URL: ``https://h/p/`` gives
    ``https://h/p``, ``wss://h/p/api/ws``. A bare ``host:port`` means http; ``ws(s)://`` is taken
    as the matching ``http(s)://``."""
    from urllib.parse import urlsplit

    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the URL must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    path = parts.path.rstrip("/")
    base = f"{scheme}://{parts.netloc}{path}"
    ws = f"{'wss' if scheme == 'https' else 'ws'}://{parts.netloc}{path}/api/ws"
    label = parts.netloc + path if scheme == "http" else f"https://{parts.netloc}{path}"
    return base, ws, label


class App:
    def __init__(self, host: str, port: int, refresh_ms: int, url: str | None = None) -> None:
        self.host, self.port = host, port
        if url is None:
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.base, self.ws_url, hostport = api_urls(url)
        self.refresh_s = max(0.1, refresh_ms / 1000)
        self.model = Model()
        self.screens: list[Screen] = [Overview(self, hostport), Nodes(self), NodeDetail(self), Events(self)]
        self.current = 0
        self.tabs = urwid.Text("", wrap="clip")
        self.status = urwid.Text("", align="right", wrap="clip")
        header = urwid.AttrMap(urwid.Columns([("pack", self.tabs), self.status], dividechars=1), "header")
        self.help = urwid.Text("", wrap="clip")
        self.footer = urwid.WidgetPlaceholder(urwid.AttrMap(self.help, "footer"))
        self.frame = urwid.Frame(self.screens[0], header=header, footer=self.footer)
        self.loop: urwid.MainLoop | None = None
        self._wake_fd: int | None = None
        self.inbox = Inbox(self._wake)
        self.poller = RestPoller(self.base, self.inbox, self.refresh_s)
        self.ws = WsReader(self.ws_url, self.inbox)
        self._draw_chrome()

    # --- thread hand-off ------------------------------------------------------------------
    def _wake(self) -> None:
        # Called from the network threads: one byte into a non-blocking pipe; if the pipe is
        # full the UI is already due to wake, so dropping the byte loses nothing.
        fd = self._wake_fd
        if fd is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(fd, b"!")

    def _on_wake(self, _data: bytes) -> bool:
        self._pull(tick=False)
        return True

    def _pull(self, tick: bool) -> None:
        snap, live = self.inbox.take()
        self.model.apply(snap, live)
        # Screens fed only by REST polls skip the many wake-ups caused by live events.
        screen = self.screens[self.current]
        if tick or snap is not None or screen.live:
            self._refresh()

    def _tick(self, loop: urwid.MainLoop, _data: object = None) -> None:
        self._pull(tick=True)
        loop.set_alarm_in(TICK_S, self._tick)

    # --- drawing --------------------------------------------------------------------------
    def _refresh(self) -> None:
        self.screens[self.current].refresh(self.model)
        self._draw_chrome()

    def _draw_chrome(self) -> None:
        tabs: list = [("header", " tart-dash ")]
        for i, s in enumerate(self.screens):
            tabs.append(("tab_active" if i == self.current else "tab", f" {i + 1} {s.title} "))
        self.tabs.set_text(tabs)
        m = self.model
        if m.reachable is False:
            down = time.monotonic() - m.down_since if m.down_since else 0.0
            self.status.set_text(("bad", f" backend unreachable ({down:.0f}s) "))
        elif m.reachable:
            ws = "live" if m.ws_state == "live" else "ws " + m.ws_state.split(" ")[0]
            self.status.set_text([("ok", " ● " if urwid.util.get_encoding_mode() == "utf8" else " * "),
                                  ("header", f"{ws} {time.strftime('%H:%M:%S')} ")])
        else:
            self.status.set_text(("header", "connecting "))
        if self.frame.focus_part != "footer":
            keys = self.screens[self.current].keys
            markup: list = []
            for k, what in [("Tab/1-4", "screens")] + keys:
                markup += [("key", f" {k}"), ("footer", f" {what} ")]
            self.help.set_text(markup)

    # --- Controller (used by screens) -----------------------------------------------------
    def show_screen(self, index: int) -> None:
        self._end_prompt()
        self.current = index % len(self.screens)
        screen = self.screens[self.current]
        # The node's REST record and history are polled only while its screen is visible.
        self.poller.want_detail(self.model.detail_id if isinstance(screen, NodeDetail) else None)
        self.frame.body = screen
        self._refresh()

    def open_node(self, node_id: str) -> None:
        self.model.select_node(node_id)
        self.show_screen(2)

    def prompt(self, label: str, text: str, on_change: Callable[[str], None],
               on_done: Callable[[str | None], None]) -> None:
        def done(result: str | None) -> None:
            self._end_prompt()
            on_done(result)
            self._draw_chrome()

        edit = PromptEdit(label, text, on_change, done)
        self.footer.original_widget = urwid.AttrMap(edit, "prompt")
        self.frame.focus_part = "footer"

    def _end_prompt(self) -> None:
        if self.frame.focus_part == "footer":
            self.footer.original_widget = urwid.AttrMap(self.help, "footer")
            self.frame.focus_part = "body"

    # --- keys -----------------------------------------------------------------------------
    def unhandled(self, key: str | tuple) -> bool | None:
        if not isinstance(key, str):
            return None
        if key in ("q", "Q"):
            raise urwid.ExitMainLoop()
        if key == "tab":
            self.show_screen(self.current + 1)
        elif key == "shift tab":
            self.show_screen(self.current - 1)
        elif key in ("1", "2", "3", "4"):
            self.show_screen(int(key) - 1)
        elif key == "esc" and self.current == 2:
            self.show_screen(1)
        else:
            return None
        return True

    # --- lifecycle ------------------------------------------------------------------------
    @staticmethod
    def _quit() -> None:
        raise urwid.ExitMainLoop()

    def run(self) -> None:
        screen = urwid.display.raw.Screen()
        if no_color():
            screen.set_terminal_properties(colors=1)
        aloop = asyncio.new_event_loop()
        asyncio.set_event_loop(aloop)
        self.loop = urwid.MainLoop(
            self.frame, PALETTE, screen=screen, unhandled_input=self.unhandled,
            event_loop=urwid.AsyncioEventLoop(loop=aloop), handle_mouse=False,
        )
        fd = self.loop.watch_pipe(self._on_wake)
        os.set_blocking(fd, False)
        self._wake_fd = fd
        self.poller.start()
        self.ws.start()
        self.loop.set_alarm_in(TICK_S, self._tick)
        # SIGTERM/SIGHUP leave like q does, so the terminal is restored and threads stop.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            aloop.add_signal_handler(sig, self._quit)
        try:
            self.loop.run()
        finally:
            self._wake_fd = None
            self.poller.stop()
            self.ws.stop()
            self.poller.join(1.0)
            self.ws.join(1.0)
            with contextlib.suppress(OSError):
                self.loop.remove_watch_pipe(fd)
            aloop.close()


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="tart-dash", description="Operator console for a tart backend.",
        epilog="Where tart is: --url, else --host/--port, else $TART_URL, else http://localhost:8080.")
    add_version_flag(p)
    p.add_argument("--url", help="tart's base URL, e.g. https://tart.example.org/ behind a TLS reverse proxy "
                                 "(WebSocket: wss://.../api/ws); default: $TART_URL or http://localhost:8080")
    p.add_argument("--host", default=None, help="API host, plain HTTP (default: localhost)")
    p.add_argument("--port", type=int, default=None, help="API port, plain HTTP (default: 8080)")
    p.add_argument("--refresh-ms", type=int, default=1000, help="REST poll interval in ms (default: 1000)")
    args = p.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        p.error("--port must be 1..65535")
    if args.refresh_ms < 100:
        p.error("--refresh-ms must be >= 100")
    if args.url is not None and (args.host is not None or args.port is not None):
        p.error("--url and --host/--port are alternatives")
    if args.url is None:
        if args.host is None and args.port is None and env.get("TART_URL"):
            args.url = env["TART_URL"]
        else:
            host, port = args.host or "localhost", args.port or 8080
            args.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        api_urls(args.url)
    except ValueError as e:
        p.error(f"--url/TART_URL: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        App(args.host or "localhost", args.port or 8080, args.refresh_ms, url=args.url).run()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
