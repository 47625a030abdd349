"""The option table is the one source of each option's default and of what a SIGHUP does with it."""

from __future__ import annotations

import dataclasses
import signal
import time
import urllib.request
from pathlib import Path

from tartproc import TartProcess

from tart.engine import acceptor, config, reload, writer


def test_settings_defaults_are_the_table_defaults() -> None:
    fields = [f.name for f in dataclasses.fields(config.Settings) if f.name != "sources"]
    assert fields == [o.attr for o in config.OPTIONS]
    defaults = config.Settings()
    for opt in config.OPTIONS:
        assert getattr(defaults, opt.attr) == opt.parse(opt.default), opt.attr
    assert config.load({}) == defaults


def test_every_option_is_live_restart_or_web_once() -> None:
    live = {a for role in config.ROLES for a in config.live_options(role)}
    restart, web = set(config.restart_options()), set(config.web_options())
    assert not (live & restart or live & web or restart & web)
    assert live | restart | web == {o.attr for o in config.OPTIONS}
    # A SIGHUP cannot change the number of gunicorn workers: the command line fixes it.
    assert "web_workers" in restart
    assert "cors_origins" in web


def test_process_modules_apply_what_the_table_marks_live() -> None:
    # The writer and acceptor keep a module-level LIVE_OPTIONS; it must say what the table says.
    assert set(writer.LIVE_OPTIONS) == set(config.live_options("writer"))
    assert set(acceptor.LIVE_OPTIONS) == set(config.live_options("acceptor"))


def test_supervisor_reread_keeps_restart_options(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "tart.env"
    conf.write_text("TART_WEB_WORKERS=5\nTART_RATE_LIMIT=7\nTART_CORS_ORIGINS=*\n")
    for opt in config.OPTIONS:
        for name in (opt.env, *opt.aliases):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TART_CONFIG", str(conf))
    got = reload.reread_all(config.Settings())
    assert got.needs_restart == {"web_workers": (2, 5)}
    assert got.applied == {"rate_limit": (1000, 7), "cors_origins": ("", "*")}
    assert got.settings.web_workers == 2 and got.settings.rate_limit == 7


def _cors(api: str, origin: str) -> str | None:
    req = urllib.request.Request(api + "/api/health", headers={"Origin": origin})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.headers.get("Access-Control-Allow-Origin")


def test_sighup_applies_web_options_and_names_restart_ones(tmp_path: Path, fresh_db: str) -> None:
    conf = tmp_path / "tart.env"
    conf.write_text("TART_CORS_ORIGINS=https://a.example\nTART_WEB_WORKERS=1\n")
    tart = TartProcess(tmp_path, database_url=fresh_db, env={"TART_CONFIG": str(conf)})
    tart.env.pop("TART_WEB_WORKERS", None)  # the environment would win over the file
    with tart:
        assert _cors(tart.api, "https://a.example") == "https://a.example"
        conf.write_text("TART_CORS_ORIGINS=https://b.example\nTART_WEB_WORKERS=3\n")
        tart.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _cors(tart.api, "https://b.example") != "https://b.example":
            assert time.monotonic() < deadline, tart.log_tail()
            time.sleep(0.2)
        log = tart.log_path.read_text()
        warn = [ln for ln in log.splitlines() if "need a restart" in ln]
        assert warn and "web_workers" in warn[-1], log
        done = [ln for ln in log.splitlines() if "configuration reloaded" in ln and "supervisor" in ln]
        assert done and "cors_origins" in done[-1] and "web_workers" not in done[-1], log
        assert len(tart.children()["web"]) == 1
