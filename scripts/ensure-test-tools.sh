#!/usr/bin/env bash
# Install the Debian packages the test suite drives, each only when its command is missing:
#   tmux            -> tmux            (tart-dash tests run the dashboard in a tmux pane)
#   systemd-analyze -> systemd         (`systemd-analyze verify` of the units in systemd/)
#   promtool        -> prometheus      (`promtool check rules` of deploy/prometheus/alerts.yml)
# Idempotent and quiet when everything is present. A package the archive does not offer is
# reported and skipped (the tests that need its command skip and say why); any other failure
# is an error.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "ensure-test-tools: need root (or sudo) to install: $*" >&2; return 1; fi; }

# command:package pairs
wanted=("tmux:tmux" "systemd-analyze:systemd" "promtool:prometheus")

missing=()
for pair in "${wanted[@]}"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-test-tools: no apt-get; install by hand: ${missing[*]}" >&2
    exit 0
fi

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

# Look before updating: a fresh machine's package lists may be empty or stale.
need_update=0
for pkg in "${missing[@]}"; do
    c=$(candidate "$pkg")
    if [ -z "$c" ] || [ "$c" = "(none)" ]; then need_update=1; fi
done
if [ $need_update -eq 1 ]; then
    as_root apt-get update -qq >&2
fi

installable=()
for pkg in "${missing[@]}"; do
    c=$(candidate "$pkg")
    if [ -z "$c" ] || [ "$c" = "(none)" ]; then
        echo "ensure-test-tools: package '$pkg' is not available from apt here; tests needing it will skip" >&2
    else
        installable+=("$pkg")
    fi
done
[ ${#installable[@]} -eq 0 ] && exit 0

echo "ensure-test-tools: installing ${installable[*]}" >&2
# policy-rc.d exit 101: the prometheus package must not start a Prometheus server (or anything
# else) as a side effect of being installed for its promtool.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ $made_policy -eq 1 ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${installable[@]}" >&2
