#!/usr/bin/env bash
# Runs every pitcrew test on a Debian machine: unit, model and property tests, integration
# tests over real processes, root-only namespace tests, the lab fleet (real systemd hosts in
# systemd-nspawn with agents installed from the built .deb and .rpm) and, as root, bounded
# fuzzing (tests/fuzz/run.sh). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
    export PITCREW_ROOT_TESTS=1
    # The store's tests also run every operation on a real PostgreSQL (a private cluster they
    # start as nobody and stop); as root we can install it, so its absence is a failure.
    if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        log "installing PostgreSQL for the store's tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    export PITCREW_POSTGRES_TESTS=1
    if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
        log "installing headless Chromium for the dashboard's browser test"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null
    fi
    if [ -x tests/lab/lab.sh ]; then
        log "installing the lab's packages (only those missing)"
        tests/lab/lab.sh deps
        export PITCREW_LAB=1
    fi
else
    echo "not root: root-only and lab tests will be skipped (they say so when they run), and so" >&2
    echo "  will fuzzing (run tests/fuzz/run.sh [SECONDS] for it)" >&2
fi

if [ "${PITCREW_LAB:-}" = 1 ] && [ -x packaging/build-packages.sh ]; then
    log "building the .deb and .rpm packages the lab installs"
    packaging/build-packages.sh
    # tests/tests/packages.rs lints them (packaging/lint-packages.sh).
    if ! command -v lintian >/dev/null || ! command -v rpmlint >/dev/null; then
        log "installing lintian and rpmlint"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            lintian rpmlint >/dev/null
    fi
fi

log "building the workspace"
cargo build --workspace --all-targets --locked

log "running the tests"
cargo test --workspace --locked -- --test-threads="${PITCREW_TEST_THREADS:-2}"

# Bounded fuzzing of everything parsed from untrusted input (tests/fuzz/README.md): on a fresh
# 2-core machine about 10 min to install cargo-fuzz and build the targets, then
# PITCREW_FUZZ_SECONDS per target (5 targets).
if [ "$(id -u)" = 0 ]; then
    log "fuzzing (${PITCREW_FUZZ_SECONDS:-30} s per target)"
    tests/fuzz/run.sh "${PITCREW_FUZZ_SECONDS:-30}"
fi
