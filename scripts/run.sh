#!/usr/bin/env bash
# Set up (first time) and start tart: telemetry on TCP 9000, API on HTTP 8080.
# With no DATABASE_URL, tart runs its own PostgreSQL under ./var (TART_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

# As root, the embedded PostgreSQL runs as an unprivileged user, which must be able to enter the
# data dir. A clone under a private home (e.g. /root, mode 700) cannot host it: use /var/lib/tart.
if [ -z "${TART_DATA_DIR:-}" ] && [ -z "${DATABASE_URL:-}" ] && [ "$(id -u)" = 0 ]; then
    dir=$PWD
    while [ "$dir" != / ]; do
        if [ "$(( 0$(stat -c %a "$dir") & 1 ))" = 0 ]; then
            export TART_DATA_DIR=/var/lib/tart
            echo "run.sh: $dir is not enterable by other users; data dir is $TART_DATA_DIR" >&2
            break
        fi
        dir=$(dirname "$dir")
    done
fi
exec .venv/bin/tart-backend "$@"
