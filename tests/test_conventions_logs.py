"""Logs: logfmt that parsers read (or JSON), one line per message whatever a node sends."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tartproc import TartProcess

from tart.engine import logs
from tart.engine.codec import encode_node_info
from tart.engine.loadgen import make_node_info

# implementation_name is at most 32 bytes on the wire.
FORGED = 'E\nlevel=error msg="forged"\r\x1b\u2028'



def _record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


@given(st.text())
def test_any_value_stays_on_one_line_and_parses_back(value: str) -> None:
    line = logs.KeyValueFormatter("acceptor-0", "logfmt").format(_record("node connected", impl=value))
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) == 1
    fields = logs.parse_logfmt(line)
    assert fields["impl"] == value and fields["msg"] == "node connected" and fields["level"] == "info"


def test_logfmt_keys_and_quoting() -> None:
    line = logs.KeyValueFormatter("supervisor", "logfmt").format(
        _record("started", child="acceptor-0", pid=42, empty="", path='a "b"'))
    assert " level=info proc=supervisor[" in line
    assert ' msg=started child=acceptor-0 pid=42 empty="" path="a \\"b\\""' in line
    assert line.startswith("ts=") and line.split()[0].endswith("Z")


def test_traceback_is_one_escaped_field() -> None:
    try:
        raise RuntimeError("x")
    except RuntimeError:
        import sys

        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "crashed", (), sys.exc_info())
    line = logs.KeyValueFormatter("writer", "logfmt").format(rec)
    assert len(line.splitlines()) == 1
    assert "RuntimeError: x" in logs.parse_logfmt(line)["exc"]


def test_log_format_comes_from_environment_or_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "tart.env"
    conf.write_text("TART_LOG_FORMAT=json\n")
    assert logs.resolve_format({}) == "logfmt"
    assert logs.resolve_format({"TART_CONFIG": str(conf)}) == "json"
    assert logs.resolve_format({"TART_CONFIG": str(conf), "TART_LOG_FORMAT": "logfmt"}) == "logfmt"


def _connect_forged_node(addr: tuple[str, int]) -> socket.socket:
    info = dataclasses.replace(make_node_info(random.Random(7), 2, 0), implementation_name=FORGED)
    body = encode_node_info(info)
    sock = socket.create_connection(addr)
    sock.sendall(struct.pack("<I", len(body)) + body)
    return sock


def _wait_for(tart: TartProcess, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in tart.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, tart.log_tail()
        time.sleep(0.1)


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_real_tart_logs_parse_and_a_node_cannot_forge_lines(tmp_path: Path, fresh_db: str, fmt: str) -> None:
    with TartProcess(tmp_path, database_url=fresh_db, env={"TART_LOG_FORMAT": fmt}) as tart:
        sock = _connect_forged_node(tart.telemetry)
        try:
            _wait_for(tart, "node connected")
        finally:
            sock.close()
    lines = tart.log_path.read_text(errors="strict").splitlines()
    parsed = [json.loads(ln) if fmt == "json" else logs.parse_logfmt(ln) for ln in lines]
    # Every line, gunicorn's included, is one record with the common keys.
    for ln, fields in zip(lines, parsed, strict=True):
        assert {"ts", "level", "proc", "msg"} <= set(fields), ln
    assert not [f for f in parsed if f["msg"] == "forged"]
    connected = [f for f in parsed if f["msg"] == "node connected"]
    assert len(connected) == 1 and connected[0]["impl"] == FORGED
    roles = {f["proc"].partition("[")[0] for f in parsed}
    assert {"supervisor", "acceptor-0", "writer-0", "web"} <= roles, roles


@given(st.text())
def test_json_lines_stay_one_line_and_decode_back(value: str) -> None:
    line = logs.KeyValueFormatter("web", "json").format(_record("x", node_name=value))
    assert len(line.splitlines()) == 1 and line.isprintable()
    assert json.loads(line)["node_name"] == value


# Files still in %-style, if any (issue 14 "one logging style": none left); remove an entry
# when its file is converted. Anything else new in %-style fails here.
PERCENT_STYLE_PENDING: set[str] = set()


def test_one_logging_style_constant_message_and_extra_fields() -> None:
    import ast

    repo = Path(__file__).resolve().parent.parent
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    offenders = []
    for path in sorted([*repo.glob("engine/**/*.py"), *repo.glob("web/*.py"), *repo.glob("dash/*.py")]):
        rel = str(path.relative_to(repo))
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in levels
                    and isinstance(node.func.value, ast.Name | ast.Attribute)
                    and (getattr(node.func.value, "id", None) or getattr(node.func.value, "attr", "")) in ("log", "logger")
                    and (len(node.args) > 1 or (node.args and isinstance(node.args[0], ast.JoinedStr)))):
                offenders.append(f"{rel}:{node.lineno}")
    unexpected = [o for o in offenders if o.partition(":")[0] not in PERCENT_STYLE_PENDING]
    assert not unexpected, f"log with a constant message and extra={{...}}, not %-args or f-strings: {unexpected}"
