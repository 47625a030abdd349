#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl) are on this machine; print where initdb is.
# Idempotent: does nothing when initdb is already in TART_PG_BIN_DIR, PATH or
# /usr/lib/postgresql/*/bin. Otherwise installs Debian/Ubuntu's `postgresql` package. tart runs
# its own cluster on a private Unix socket, so the distro's cluster is not needed: if the install
# started it, it is stopped and disabled again so it holds no port and uses no memory.
set -euo pipefail

find_initdb() {
    if [[ -n "${TART_PG_BIN_DIR:-}" && -x "${TART_PG_BIN_DIR}/initdb" ]]; then
        echo "${TART_PG_BIN_DIR}/initdb"; return 0
    fi
    if command -v initdb >/dev/null 2>&1; then
        command -v initdb; return 0
    fi
    # Highest major version first.
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -V -r); do
        if [[ -x "$d/initdb" ]]; then echo "$d/initdb"; return 0; fi
    done
    return 1
}

if initdb_path=$(find_initdb); then
    echo "initdb: ${initdb_path}"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "ensure-postgres: PostgreSQL is not installed and this is not root (no sudo either);" >&2
    echo "install the 'postgresql' package, or set TART_PG_BIN_DIR or DATABASE_URL" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: no apt-get here; install PostgreSQL server binaries by hand" >&2
    echo "and set TART_PG_BIN_DIR to the directory holding initdb and pg_ctl" >&2
    exit 1
fi

echo "ensure-postgres: installing the postgresql package" >&2
"${SUDO[@]}" apt-get update -q >&2
# policy-rc.d exit 101 tells invoke-rc.d not to start services during this install (where
# nothing else already provides one); the distro cluster still gets created but not started.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [[ $made_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    postgresql >&2

# If a service manager started the distro cluster anyway, stop it and keep it from coming back.
if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver name _port status _rest; do
        [[ "$status" == online* ]] || continue
        "${SUDO[@]}" pg_ctlcluster "$ver" "$name" stop >&2 || true
        if [[ -f "/etc/postgresql/$ver/$name/start.conf" ]]; then
            echo manual | "${SUDO[@]}" tee "/etc/postgresql/$ver/$name/start.conf" >/dev/null
        fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
fi
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now postgresql >/dev/null 2>&1 || true
fi

if initdb_path=$(find_initdb); then
    echo "initdb: ${initdb_path}"
    exit 0
fi
echo "ensure-postgres: installed postgresql but found no initdb" >&2
exit 1
