#!/usr/bin/env bash
# Set up everything tart needs on a fresh Debian/Ubuntu machine; safe to run again.
#   - PostgreSQL server binaries (for the embedded cluster) via scripts/ensure-postgres.sh
#   - a Python >= 3.11 virtualenv in .venv with tart and its test tools installed
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bash scripts/ensure-postgres.sh >/dev/null
[ -f scripts/ensure-test-tools.sh ] && [ "${TART_TEST_TOOLS:-0}" = 1 ] && bash scripts/ensure-test-tools.sh

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "bootstrap: need Python >= 3.11 (found: $("$PY" --version 2>&1 || echo none))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian's python3 ships venv separately.
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
        rm -rf .venv
        "$PY" -m venv .venv
    fi
fi
# Installing is a no-op when nothing changed; pyproject.toml is the single source of dependencies,
# constraints.txt pins the versions known to work (scripts/refresh-constraints.sh updates it).
stamp=.venv/.tart-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "bootstrap: installing tart and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]' > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        echo "bootstrap: pip install failed (log above, also in .venv/pip-install.log)" >&2
        exit 1
    fi
    .venv/bin/python -c 'import tart.engine, tart.web, tart.dash' && touch "$stamp"
fi
