#!/usr/bin/env bash
# Set up (first time) and start tart: telemetry on TCP 9000, API on HTTP 8080.
# With no DATABASE_URL, tart runs its own PostgreSQL under ./var (TART_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/tart-backend "$@"
