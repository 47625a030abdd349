#!/usr/bin/env bash
# Regenerate constraints.txt: install tart with every extra into a throw-away venv, without the
# current constraints (so the newest versions that pyproject.toml allows are taken), and freeze.
# Then run `bash scripts/test.sh` and commit constraints.txt if it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$tmp/venv/bin/python" -m pip install -q '.[all,test]'
{
    sed -n '/^#/p' constraints.txt
    "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -vi '^tart-backend[= @]'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt refreshed; now run: bash scripts/test.sh" >&2
