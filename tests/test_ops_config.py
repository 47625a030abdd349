"""Configuration as an operator meets it: the shipped env file and `tart-backend --check-config`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tart.engine import config

REPO = Path(__file__).resolve().parent.parent
BACKEND = str(Path(sys.executable).parent / "tart-backend")


def check_config(env_extra: dict[str, str], tmp_path: Path, flag: str = "--check-config"
                 ) -> subprocess.CompletedProcess:
    # Only what the test sets: no TART_*/DATABASE_URL leaking in from the developer's shell.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TART_", "TELEMETRY_", "API_")) and k not in ("DATABASE_URL", "LOG_LEVEL", "RUST_LOG")}
    env["TART_DATA_DIR"] = str(tmp_path / "data")
    env.update(env_extra)
    return subprocess.run([BACKEND, flag], capture_output=True, text=True, env=env, timeout=60)


def test_shipped_env_file_is_generated_from_the_option_table() -> None:
    assert (REPO / "conf" / "tart.env").read_text() == config.render_env_file(), (
        "conf/tart.env is stale: regenerate it with `python -m tart.engine.config --env-file > conf/tart.env`")


def test_shipped_env_file_passes_check_config(tmp_path: Path) -> None:
    r = check_config({"TART_CONFIG": str(REPO / "conf" / "tart.env")}, tmp_path)
    assert r.returncode == 0, r.stderr


def test_every_option_appears_in_the_env_file() -> None:
    text = (REPO / "conf" / "tart.env").read_text()
    for opt in config.OPTIONS:
        assert f"#{opt.env}={opt.default}\n" in text


def test_bad_value_in_environment_exits_2_naming_the_option(tmp_path: Path) -> None:
    r = check_config({"TART_RATE_LIMIT": "-5"}, tmp_path)
    assert r.returncode == 2
    assert "TART_RATE_LIMIT" in r.stderr and "-5" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_value_in_config_file_exits_2_naming_the_option(tmp_path: Path) -> None:
    conf = tmp_path / "tart.env"
    conf.write_text("# ok so far\nTART_RATE_LIMIT=100\nAPI_BIND=localhost:eighty\n")
    r = check_config({"TART_CONFIG": str(conf)}, tmp_path)
    assert r.returncode == 2
    assert "API_BIND" in r.stderr and "eighty" in r.stderr


def test_unknown_option_in_config_file_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "tart.env"
    conf.write_text("TART_RATE_LIMIT=100\nTART_RATELIMIT=50\n")
    r = check_config({"TART_CONFIG": str(conf)}, tmp_path)
    assert r.returncode == 2
    assert "TART_RATELIMIT" in r.stderr and str(conf) in r.stderr


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    r = check_config({"TART_CONFIG": str(missing)}, tmp_path)
    assert r.returncode == 2
    assert "TART_CONFIG" in r.stderr and str(missing) in r.stderr


def test_valid_settings_pass_and_environment_wins_over_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "tart.env"
    conf.write_text("TART_RATE_LIMIT=100\nTART_LOG=debug\n")
    r = check_config({"TART_CONFIG": str(conf), "TART_RATE_LIMIT": "7"}, tmp_path)
    assert r.returncode == 0, r.stderr
    out = check_config({"TART_CONFIG": str(conf), "TART_RATE_LIMIT": "7"}, tmp_path, "--print-config").stdout
    assert "rate_limit = 7  (env:TART_RATE_LIMIT)" in out
    assert "log_level = 'debug'  (file:TART_LOG)" in out
