"""tart-dash never lets node-supplied text act on the operator's terminal.

A real tart is fed by a node whose implementation name, version and additional information and a
Disconnected event's reason carry terminal escapes (clear screen, set the title by OSC 0/2, set
tmux's window name, colours), CR, BEL, backspace, DEL, a C1 CSI and bidi overrides. tart-dash runs
in tmux (tests/test_dash_tui.py's Term); the screen must show the sanitized text (control pictures
for C0/DEL, U+FFFD for C1 and bidi controls: dash/fmt.py) and nothing may have taken effect: the
pane title and window name are unchanged, the screen was not cleared, nothing is coloured red.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tartproc import TartProcess
from test_dash_tui import Term, dash_argv, term_factory  # noqa: F401  (fixture)

from tart.dash.fmt import clean, clean_tree, might_be_unsafe
from tart.engine.codec import encode_event, encode_node_info
from tart.engine.loadgen import make_node_info

ESC, BEL = "\x1b", "\x07"
EVIL_NAME = f"Ev{ESC}[2J{ESC}]0;pwn{BEL}{ESC}kwp{ESC}\\\rN\u202eLT"
EVIL_VERSION = f"1.{ESC}[31m2\x08\x7f\u2066x\u2069"
EVIL_INFO = f"info{ESC}]2;pwn2{ESC}\\\x9b2J\u200fend"
EVIL_REASON = f"bye{ESC}[2J{ESC}]0;title{BEL}\r\u202dgone"
# What the console shows instead (fmt.clean): C0 and DEL as control pictures, the rest as U+FFFD.
SHOWN_NAME = "Ev␛[2J␛]0;pwn␇␛kwp␛\\␍N\ufffdLT"
SHOWN_VERSION = "1.␛[31m2␈␡\ufffdx\ufffd"
SHOWN_INFO = "info␛]2;pwn2␛\\\ufffd2J\ufffdend"
SHOWN_REASON = "bye␛[2J␛]0;title␇␍\ufffdgone"


def test_clean_replaces_every_control_and_bidi_character() -> None:
    assert clean(EVIL_NAME) == SHOWN_NAME
    assert clean(EVIL_VERSION) == SHOWN_VERSION
    assert clean(EVIL_INFO) == SHOWN_INFO
    assert clean(EVIL_REASON) == SHOWN_REASON
    unsafe = [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
              *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    for c in unsafe:
        out = clean(f"a{chr(c)}b")
        assert len(out) == 3 and out[1] in (chr(0x2400 + c) if c < 0x20 else "", "\u2421", "\ufffd"), hex(c)
    for text in ("plain", "日本語 ok", "emoji 🙂", "0x" + "ab" * 32, "a\u00a0b", "é"):
        assert clean(text) == text
    doc = {"k\x1b": ["x\r", {"y": "\u202e"}], "n": 5, "b": True, "none": None}
    assert clean_tree(doc) == {"k␛": ["x␍", {"y": "\ufffd"}], "n": 5, "b": True, "none": None}
    # The fast path (no walk) is only taken when the JSON text cannot hold such a character.
    import json

    for text in (EVIL_NAME, EVIL_VERSION, EVIL_INFO, EVIL_REASON, "\u0085", "\u061c", "\u2028"):
        assert might_be_unsafe(json.dumps({"s": text}))
        assert might_be_unsafe(json.dumps({"s": text}, ensure_ascii=False).encode())
    assert not might_be_unsafe(b'{"implementation_name":"PolkaJam","n":1,"s":"\xc3\xa9"}')


def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


@pytest.fixture
def tart(tmp_path: Path, fresh_db: str) -> Iterator[TartProcess]:
    with TartProcess(tmp_path, database_url=fresh_db) as proc:
        yield proc


@pytest.fixture
def evil_node(tart: TartProcess) -> Iterator[str]:
    info = replace(make_node_info(random.Random(66), 2, 66), implementation_name=EVIL_NAME,
                   implementation_version=EVIL_VERSION, additional_info=EVIL_INFO)
    s = socket.create_connection(tart.telemetry, timeout=5)
    bye = encode_event(27, {"timestamp": 7, "peer": "0x" + "11" * 32, "terminator": None, "reason": EVIL_REASON}, 2)
    s.sendall(_frame(encode_node_info(info)) + _frame(bye))
    yield info.peer_id.hex()
    s.close()


def _name_of(node: dict) -> str | None:
    return node.get("implementation_name") or (node.get("node_info") or {}).get("implementation_name")


def _wait_stored(tart: TartProcess, node_id: str) -> None:
    """Until the Disconnected event and the node's row are both in tart (REST, unchanged)."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = tart.get(f"/api/nodes/{node_id}/events?limit=5")
        _, node = tart.get(f"/api/nodes/{node_id}")
        stored = status == 200 and any("Disconnected" in (e.get("data") or {}) for e in body.get("events", []))
        if stored and isinstance(node, dict) and _name_of(node) == EVIL_NAME:
            return
        time.sleep(0.2)
    raise AssertionError(f"the node and its Disconnected event were never stored: {body} {node}")


def test_dash_shows_node_strings_sanitized_and_no_escape_takes_effect(tart: TartProcess, evil_node: str,
                                                                      term_factory) -> None:  # noqa: F811
    # tart itself passes the strings through unchanged (JSON-escaped): the console must clean them.
    _wait_stored(tart, evil_node)

    term: Term = term_factory(dash_argv(tart.api_port), 200, 40)
    term.tmux("select-pane", "-t", term.session, "-T", "operator-title")
    term.tmux("rename-window", "-t", term.session, "dashwin")
    term.tmux("set-option", "-w", "-t", term.session, "allow-rename", "on")  # let a stray ESC k rename it

    def untouched() -> None:
        assert term.tmux("display-message", "-p", "-t", term.session, "#{pane_title}").strip() == "operator-title"
        assert term.tmux("display-message", "-p", "-t", term.session, "#{window_name}").strip() == "dashwin"

    term.wait_for("1 connected / 1 total", timeout=30)
    term.keys("Tab")  # Nodes: name and version columns
    screen = term.wait_for("sort Events desc")
    screen = term.wait_for(lambda s: "Ev␛[2J" in s)
    row = next(ln for ln in screen.split("\n") if evil_node[:8] in ln)
    assert "Ev␛[2J␛]0;pwn" in row and "1.␛[31m2" in row, row
    assert "Tab/1-4 screens" in screen, "the help line is still there: the screen was not cleared"
    untouched()

    term.keys("Enter")  # Node detail: the full name, version, additional info and the recent events
    screen = term.wait_for(lambda s: "reason=" in s)
    assert SHOWN_NAME in screen, screen
    assert SHOWN_VERSION in screen, screen
    assert SHOWN_INFO in screen, screen
    assert f"reason={SHOWN_REASON}" in screen, screen
    assert "Tab/1-4 screens" in screen and "Latest Status" in screen, "the screen was not cleared"
    untouched()

    # Nothing reached the terminal as a control: no title or window name change on the way, and
    # the strings are still on screen exactly as sanitized.
    assert "pwn" not in term.tmux("display-message", "-p", "-t", term.session, "#{pane_title} #{window_name}")
    assert "\x1b" not in term.screen()
    untouched()
    term.keys("q")
    assert term.exit_code() == 0
