"""`tart-dash` in a real terminal (tmux) against a real `tart-backend` fed by `tart-loadgen`.

Every assertion reads the screen text (capture-pane), as an operator would. Each test runs its
own tmux server (-L socket), so sessions never collide with other tests or users, and kills it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tartproc import TartProcess, free_port

BIN = Path(sys.executable).parent
TMUX = shutil.which("tmux") or "/usr/bin/tmux"

pytestmark = pytest.mark.skipif(not Path(TMUX).exists(), reason="tmux is not installed")


class Term:
    """One tmux server + session running one command at a fixed size."""

    def __init__(self, tmp_path: Path, argv: list[str], width: int, height: int,
                 env: dict[str, str] | None = None) -> None:
        tag = uuid.uuid4().hex[:10]
        self.socket = f"tart-dash-test-{os.getpid()}-{tag}"
        self.session = f"dash-{tag}"
        self.rc_path = tmp_path / f"rc-{tag}"
        envs = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "xterm-256color", **(env or {})}
        unset = "" if "NO_COLOR" in envs else "-u NO_COLOR "
        cmd = " ".join(["env", unset + " ".join(f"{k}={v}" for k, v in envs.items()), *argv])
        # The shell records the exit code after the program ends, so a test can check a clean quit.
        shell = f"{cmd} 2>{tmp_path}/dash-stderr-{tag}; echo $? > {self.rc_path}"
        self.tmux("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height), shell)
        self.tmux("set-option", "-t", self.session, "remain-on-exit", "off")
        self.stderr_path = tmp_path / f"dash-stderr-{tag}"

    def tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=10).stdout

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", self.session)

    def lines(self) -> list[str]:
        return self.screen().split("\n")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))

    def wait_for(self, check: str | Callable[[str], bool], timeout: float = 20.0) -> str:
        """Poll the screen until `check` (a substring or a predicate) holds; return that screen."""
        pred = (lambda s: check in s) if isinstance(check, str) else check
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if pred(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"screen never showed {check!r}; last screen:\n{screen}\n"
                             f"stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def exit_code(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc_path.exists() and self.rc_path.read_text().strip():
                return int(self.rc_path.read_text())
            time.sleep(0.1)
        raise AssertionError(f"tart-dash did not exit; screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def dash_argv(api_port: int, refresh_ms: int = 500) -> list[str]:
    return [str(BIN / "tart-dash"), "--host", "127.0.0.1", "--port", str(api_port),
            "--refresh-ms", str(refresh_ms)]


@pytest.fixture
def term_factory(tmp_path: Path) -> Iterator[Callable[..., Term]]:
    terms: list[Term] = []

    def make(argv: list[str], width: int = 100, height: int = 30, env: dict | None = None) -> Term:
        t = Term(tmp_path, argv, width, height, env)
        terms.append(t)
        return t

    yield make
    for t in terms:
        t.close()


@pytest.fixture
def tart(tmp_path: Path, fresh_db: str) -> Iterator[TartProcess]:
    with TartProcess(tmp_path, database_url=fresh_db) as proc:
        yield proc


def start_loadgen(tart: TartProcess, nodes: int, rate: int, duration: int = 120) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "tart-loadgen"), "--target", f"127.0.0.1:{tart.telemetry[1]}", "--nodes", str(nodes),
         "--rate", str(rate), "--duration", str(duration)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def loadgen(tart: TartProcess) -> Iterator[subprocess.Popen]:
    proc = start_loadgen(tart, nodes=4, rate=20)
    yield proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def field(screen: str, label: str) -> str:
    """The value after `label` on the Overview (e.g. 'Events total    1,234')."""
    m = re.search(re.escape(label) + r"\s+(\S+)", screen)
    assert m, f"{label!r} not on screen:\n{screen}"
    return m.group(1)


def as_int(text: str) -> int:
    return int(text.replace(",", ""))


def event_rows(screen: str) -> list[str]:
    return [ln.strip() for ln in screen.split("\n") if re.match(r"^\s?\d\d:\d\d:\d\d\.\d{3} ", ln)]


def test_dash_screens_live_data_filters_and_quit(tart: TartProcess, loadgen, term_factory) -> None:
    status, body = tart.get("/api/nodes")
    term = term_factory(dash_argv(tart.api_port), 100, 30)

    # Overview: nodes connect, counters move, the rate is a number.
    screen = term.wait_for("4 connected / 4 total", timeout=30)
    assert "backend reachable" in screen
    first = as_int(term.wait_for(lambda s: field(s, "Events total") != "-").split("Events total")[1].split()[0])
    screen = term.wait_for(lambda s: field(s, "Events total") not in ("-", f"{first:,}"))
    assert as_int(field(screen, "Events total")) > first
    screen = term.wait_for(lambda s: re.match(r"[\d.,]+k?$", field(s, "Events/s")) is not None)
    assert field(screen, "Database") == "healthy"
    assert "▇" in screen or "█" in screen, "the events/s sparkline shows activity"
    assert "Tab/1-4 screens" in screen.split("\n")[-2] or "Tab/1-4 screens" in screen

    # Tab: Nodes table with every node, sorted by events, busiest first.
    term.keys("Tab")
    screen = term.wait_for("sort Events desc")
    status, body = tart.get("/api/nodes")
    assert status == 200
    node_ids = [n["node_id"] for n in body["nodes"]]
    assert len(node_ids) == 4
    for nid in node_ids:
        assert nid[:8] in screen
    assert "▼Events" in screen
    row = next(ln for ln in screen.split("\n") if node_ids[0][:8] in ln)
    assert " yes " in row

    # s cycles the sort column, r reverses it.
    term.keys("s")
    term.wait_for("sort Ev/s desc")
    term.keys("r")
    term.wait_for("sort Ev/s asc")
    term.keys("s", "s", "s", "s", "s", "s", "s")  # back round to Events (8 columns)
    term.wait_for("sort Events asc")

    # / filters by typed text (a node id prefix matches exactly one node).
    target = node_ids[2]
    term.keys("/")
    term.wait_for("filter nodes: /")
    term.type(target[:10])
    screen = term.wait_for("(1 shown)")
    assert target[:8] in screen
    assert all(nid[:8] not in screen for nid in node_ids if nid != target)
    term.keys("Enter")
    screen = term.wait_for(lambda s: "filter nodes" not in s and "(1 shown)" in s)

    # Enter on the node: its detail, with info, the latest Status and the type breakdown.
    term.keys("Enter")
    screen = term.wait_for(lambda s: target[:16] in s and "Latest Status" in s)
    # Status may already be known from the live stream; the node's history arrives by REST.
    screen = term.wait_for(lambda s: re.search(r"Peers\s+[\d,]+", s) is not None and len(event_rows(s)) >= 3,
                           timeout=30)
    assert re.search(r"Event types\s+\(last [1-9][\d,]* events\)", screen)
    assert "Recent events" in screen
    assert screen.split("\n")[1].rstrip().endswith(" connected")

    # Tab: Events, the live stream; it grows.
    term.keys("Tab")
    screen = term.wait_for(lambda s: "Live events" in s and len(event_rows(s)) >= 10)
    shown = as_int(re.search(r"Live events ([\d,]+) shown", screen).group(1))
    screen = term.wait_for(lambda s: as_int(re.search(r"Live events ([\d,]+) shown", s).group(1)) > shown)

    # Filter by type: only that type is listed.
    term.keys("t")
    term.wait_for("event type")
    term.type("BestBlockChanged")
    term.keys("Enter")
    screen = term.wait_for(lambda s: "type BestBlockChanged" in s and len(event_rows(s)) >= 2)
    assert all("BestBlockChanged" in r for r in event_rows(screen)), screen

    # Filter by node too (id prefix): every row is that node's.
    term.keys("n")
    term.type(target[:6])
    term.keys("Enter")
    screen = term.wait_for(lambda s: f"node {target[:6]}" in s and len(event_rows(s)) >= 1, timeout=30)
    assert all(r.split()[1].startswith(target[:6]) for r in event_rows(screen)), screen

    # Pause freezes the list while events keep arriving; resume shows them.
    term.keys("c")
    term.wait_for(lambda s: "type " not in s.split("\n")[1] and len(event_rows(s)) >= 10)
    term.keys("Space")
    screen = term.wait_for("PAUSED")
    frozen = event_rows(screen)
    screen = term.wait_for(lambda s: re.search(r"PAUSED\s+[1-9][\d,]* new", s) is not None)
    assert event_rows(screen) == frozen
    term.keys("Space")
    screen = term.wait_for(lambda s: "PAUSED" not in s)
    term.wait_for(lambda s: event_rows(s) != frozen)

    # Scroll back: the view leaves follow mode and stays put; End follows again.
    term.keys("Up", "Up", "Up", "Up", "Up")
    term.wait_for("scrolled back")
    term.keys("End")
    term.wait_for(lambda s: "scrolled back" not in s)

    # 1-4 jump straight to a screen; the terminal can shrink to 80x24 and everything redraws.
    term.keys("1")
    term.wait_for("Events total")
    term.resize(80, 24)
    screen = term.wait_for(lambda s: len(s.rstrip("\n").split("\n")) == 24 and "q quit" in s.split("\n")[23])
    assert max(len(ln) for ln in screen.split("\n")) <= 80
    assert "Writer lag" in screen and "Database" in screen

    # q quits cleanly.
    term.keys("q")
    assert term.exit_code() == 0
    assert "Traceback" not in term.stderr()


def test_dash_80x24_every_screen_and_no_color(tart: TartProcess, loadgen, term_factory) -> None:
    term = term_factory(dash_argv(tart.api_port), 80, 24, env={"NO_COLOR": "1"})
    term.wait_for("4 connected / 4 total", timeout=30)
    expected = {"1": "Events total", "2": "sort Events desc", "3": "No node selected", "4": "Live events"}
    for key, text in expected.items():
        term.keys(key)
        screen = term.wait_for(text)
        lines = screen.rstrip("\n").split("\n")
        assert len(lines) == 24
        assert "tart-dash" in lines[0] and "Tab/1-4 screens" in lines[23] and "q quit" in lines[23]
        # NO_COLOR: attributes only (bold/reverse), never a colour SGR code.
        colours = re.findall(r"\x1b\[([0-9;]*)m", term.screen(escapes=True))
        for seq in colours:
            for code in filter(None, seq.split(";")):
                assert not (30 <= int(code) <= 49 or 90 <= int(code) <= 107) or int(code) in (39, 49), seq
    term.keys("2", "Enter")
    screen = term.wait_for(lambda s: "Latest Status" in s and "Recent events" in s)
    assert "q quit" in screen.rstrip("\n").split("\n")[23]
    term.keys("Tab")
    term.wait_for("Live events")
    term.keys("q")
    assert term.exit_code() == 0

    # Without NO_COLOR the same console does use colour: the fallback really changes something.
    coloured = term_factory(dash_argv(tart.api_port), 80, 24)
    coloured.wait_for("backend reachable", timeout=30)
    codes = {c for seq in re.findall(r"\x1b\[([0-9;]*)m", coloured.screen(escapes=True)) for c in seq.split(";")}
    assert any(c.isdigit() and (30 <= int(c) <= 47 or 90 <= int(c) <= 107) for c in codes), codes
    coloured.keys("q")
    assert coloured.exit_code() == 0


def test_dash_shows_backend_going_away_and_coming_back(tart: TartProcess, loadgen, term_factory) -> None:
    term = term_factory(dash_argv(tart.api_port), 100, 30)
    term.wait_for("4 connected / 4 total", timeout=30)
    term.wait_for(lambda s: "live" in s.split("\n")[0])

    tart.stop()
    screen = term.wait_for("backend unreachable", timeout=30)
    assert "backend unreachable" in screen.split("\n")[0]
    assert "retrying" in screen

    # The same ports again (TartProcess keeps them): the console reconnects by itself.
    tart.start()
    screen = term.wait_for(lambda s: "backend reachable" in s and "unreachable" not in s, timeout=60)
    assert re.search(r"/ 4 total", screen)
    term.wait_for(lambda s: "live" in s.split("\n")[0], timeout=30)
    # New nodes after the restart are seen, and their live events stream again.
    feeder = start_loadgen(tart, nodes=2, rate=20, duration=60)
    try:
        term.keys("4")
        term.wait_for(lambda s: len(event_rows(s)) >= 5, timeout=30)
    finally:
        feeder.terminate()
        feeder.wait(10)
    term.keys("q")
    assert term.exit_code() == 0


def test_dash_without_backend_says_unreachable_and_quits(tmp_path: Path, term_factory) -> None:
    term = term_factory(dash_argv(free_port()), 80, 24)
    screen = term.wait_for("backend unreachable")
    assert "retrying" in screen
    for key in ("Tab", "Tab", "Tab"):
        term.keys(key)
    screen = term.wait_for("Live events 0 shown")
    assert "backend unreachable" in screen.split("\n")[0]
    term.keys("q")
    assert term.exit_code() == 0


def test_dash_leaves_cleanly_on_sigterm(tmp_path: Path, term_factory) -> None:
    term = term_factory(dash_argv(free_port()), 80, 24)
    term.wait_for("backend unreachable")
    pane_pid = term.tmux("list-panes", "-t", term.session, "-F", "#{pane_pid}").strip()
    children = subprocess.run(["pgrep", "-P", pane_pid], capture_output=True, text=True).stdout.split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGTERM)
    assert term.exit_code() == 0
    assert "Traceback" not in term.stderr()
