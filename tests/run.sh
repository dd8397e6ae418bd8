#!/usr/bin/env bash
# Runs every pitcrew test on a Debian machine: unit, model and property tests, integration
# tests over real processes, root-only namespace tests, and the lab fleet (real systemd hosts in
# systemd-nspawn with agents installed from the built .deb and .rpm). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
    export PITCREW_ROOT_TESTS=1
    if [ -x tests/lab/lab.sh ]; then
        log "installing the lab's packages (only those missing)"
        tests/lab/lab.sh deps
        export PITCREW_LAB=1
    fi
else
    echo "not root: root-only and lab tests will be skipped (they say so when they run)" >&2
fi

if [ "${PITCREW_LAB:-}" = 1 ] && [ -x packaging/build-packages.sh ]; then
    log "building the .deb and .rpm packages the lab installs"
    packaging/build-packages.sh
fi

log "building the workspace"
cargo build --workspace --all-targets --locked

log "running the tests"
cargo test --workspace --locked -- --test-threads="${PITCREW_TEST_THREADS:-2}"
