#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust: installs what
# the tests need (Chromium, ChromeDriver and Firefox ESR for the browser
# tests, iproute2 and util-linux for their private network namespaces,
# python3-venv for the Python virtualenvs, promtool from Debian's
# prometheus package and systemd-analyze for the ops/ checks), makes the
# aiortc virtualenv and the Helm renderer's (helm-python-sdk, for the chart's
# render checks in tests/ops.rs; both pinned, from PyPI), then runs every
# test and builds the benchmarks. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v firefox-esr >/dev/null || missing+=(firefox-esr)
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if ((${#missing[@]})); then
    echo "tests/run.sh: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

tests/aiortc/setup-venv.sh target/aiortc-venv
tests/aiortc/setup-venv.sh target/helm-venv tests/helm/requirements.txt

cargo test --locked "$@"
# The media paths again with one media worker (the default is one per core;
# tests/workers.rs covers two explicitly).
SFT_MEDIA__WORKERS=1 cargo test --locked --test conference --test federation --test federation_restart \
    --test signalling_limits "$@"
cargo bench --locked --no-run
