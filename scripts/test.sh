#!/usr/bin/env bash
# Set up (first time) and run the whole test suite against a real, embedded PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
TART_TEST_TOOLS=1 bash scripts/bootstrap.sh
.venv/bin/ruff check .
# Tools installed into the venv (hadolint, shellcheck, the tart commands) are found by name.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
