#!/usr/bin/env bash
# Install tart as a systemd service (Debian/Ubuntu; run as root from a checkout). Safe to run
# again: that is also how tart is upgraded (then `systemctl restart tart-backend`).
#
#   scripts/install-systemd.sh [--prefix /opt/tart] [--dedicated-postgresql] [--now] [--root DIR]
#
# What it does:
#   - system user and group `tart` (home /var/lib/tart, no login shell)
#   - PostgreSQL server binaries if missing (scripts/ensure-postgres.sh)
#   - a virtualenv in PREFIX/venv with tart installed from this checkout (not editable), the docs
#     in PREFIX/docs, the tart-postgresql-setup helper in PREFIX/libexec
#   - /etc/tart/tart.env (from conf/tart.env) and /etc/tart/postgresql-tart.conf, root:tart 0640;
#     existing files are never overwritten: the new defaults land beside them as *.dist
#   - tart-backend.service and tart-postgresql.service in /etc/systemd/system, then daemon-reload
#   - --dedicated-postgresql: also the drop-in that points tart-backend at tart-postgresql
#   - --now: enable and start the service(s)
#   - --root DIR: stage everything under DIR instead of / (no user, no chown, no systemctl);
#     for inspection and tests
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/tart
ROOT=
DEDICATED=0
NOW=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --root) ROOT=$(realpath -m "$2"); shift 2 ;;
        --dedicated-postgresql) DEDICATED=1; shift ;;
        --now) NOW=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install-systemd: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$PREFIX" in /*) ;; *) echo "install-systemd: --prefix must be absolute" >&2; exit 2 ;; esac

say() { echo "install-systemd: $*" >&2; }
staged() { [ -n "$ROOT" ]; }

if ! staged && [ "$(id -u)" != 0 ]; then
    echo "install-systemd: run as root (or use --root DIR to stage)" >&2
    exit 1
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "install-systemd: need Python >= 3.11 as \$PYTHON or python3" >&2
    exit 1
fi

# --- PostgreSQL binaries (embedded cluster, or tart-postgresql.service) ---------------------------
if staged; then
    # Staging installs nothing on this machine: use what is there, else keep the unit's default.
    initdb=$(command -v initdb || printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    [ -x "$initdb" ] || initdb=
    [ -n "$initdb" ] || initdb=/usr/lib/postgresql/16/bin/initdb
else
    initdb=$(bash "$REPO/scripts/ensure-postgres.sh" | sed -n 's/^initdb: //p')
fi
PG_BIN=$(dirname "$(realpath -m "$initdb")")

# --- user ---------------------------------------------------------------------------------------
if ! staged && ! getent passwd tart >/dev/null; then
    shell=/usr/sbin/nologin; [ -x "$shell" ] || shell=/bin/false
    useradd --system --user-group --home-dir /var/lib/tart --no-create-home --shell "$shell" tart
    say "created system user tart"
fi

# --- software -----------------------------------------------------------------------------------
dest="$ROOT$PREFIX"
mkdir -p "$dest"
if [ ! -x "$dest/venv/bin/python" ]; then
    "$PY" -m venv "$dest/venv"
fi
"$dest/venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# --upgrade --force-reinstall of tart only: an upgrade from the same version number still takes
# the checkout's current code; dependencies are upgraded only as pyproject.toml requires.
# Build from a copy: setuptools leaves build/ and *.egg-info in whatever tree it builds in.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
(cd "$REPO" && tar --exclude=__pycache__ -cf - pyproject.toml README.md constraints.txt tart engine web dash sql) | tar -xf - -C "$src"
# The server and the console (an operator on the host runs tart-dash), at the tested versions.
"$dest/venv/bin/python" -m pip install -q --upgrade -c "$src/constraints.txt" "${src}[server,console]"
"$dest/venv/bin/python" -m pip install -q --force-reinstall --no-deps "$src"
"$dest/venv/bin/tart-backend" --help >/dev/null
mkdir -p "$dest/docs" "$dest/libexec"
cp "$REPO"/docs/*.md "$dest/docs/"
[ -f "$REPO/README.md" ] && cp "$REPO/README.md" "$dest/docs/"
install -m 0755 "$REPO/systemd/tart-postgresql-setup" "$dest/libexec/tart-postgresql-setup"
say "tart $("$dest/venv/bin/python" -c 'from importlib.metadata import version; print(version("tart-backend"))') in $dest/venv"

# --- configuration ------------------------------------------------------------------------------
etc="$ROOT/etc/tart"
mkdir -p "$etc"
install_conf() {  # src name
    local target="$etc/$2" f
    if [ ! -e "$target" ]; then
        cp "$1" "$target"
        say "installed $target"
    elif ! cmp -s "$1" "$target"; then
        cp "$1" "$target.dist"
        say "kept your $target; the new defaults are in $target.dist"
    fi
    for f in "$target" "$target.dist"; do
        [ -e "$f" ] || continue
        chmod 0640 "$f"
        staged || chown root:tart "$f"
    done
}
install_conf "$REPO/conf/tart.env" tart.env
install_conf "$REPO/conf/postgresql-tart.conf" postgresql-tart.conf
chmod 0750 "$etc"
staged || chown root:tart "$etc"

# --- units --------------------------------------------------------------------------------------
units="$ROOT/etc/systemd/system"
mkdir -p "$units"
sed "s#/opt/tart#$PREFIX#g" "$REPO/systemd/tart-backend.service" > "$units/tart-backend.service"
sed -e "s#/opt/tart#$PREFIX#g" -e "s#/usr/lib/postgresql/16/bin#$PG_BIN#g" \
    "$REPO/systemd/tart-postgresql.service" > "$units/tart-postgresql.service"
chmod 0644 "$units/tart-backend.service" "$units/tart-postgresql.service"
dropin="$units/tart-backend.service.d/dedicated-postgresql.conf"
if [ $DEDICATED = 1 ]; then
    mkdir -p "$(dirname "$dropin")"
    install -m 0644 "$REPO/systemd/tart-backend.service.d/dedicated-postgresql.conf" "$dropin"
    say "tart-backend will use tart-postgresql.service ($dropin)"
elif [ -e "$dropin" ]; then
    # Never switch databases behind the operator's back: a re-run without the flag keeps it.
    say "keeping $dropin (remove it to go back to the embedded cluster)"
fi

if staged; then
    say "staged under $ROOT"
    exit 0
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ $NOW = 1 ]; then
        [ -e "$dropin" ] && systemctl enable --now tart-postgresql.service
        systemctl enable --now tart-backend.service
        systemctl --no-pager --lines=5 status tart-backend.service || true
    else
        say "next: edit /etc/tart/tart.env, then: systemctl enable --now tart-backend"
    fi
else
    say "systemd is not running here: units installed, not loaded"
fi
