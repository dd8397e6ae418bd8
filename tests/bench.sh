#!/usr/bin/env bash
# Prints pitcrew's performance figures (scheduler, store, memory, action latency) from an
# optimised build. Figures only: nothing passes or fails here; tests stay deterministic.
#
#   tests/bench.sh                      the figures above
#   tests/bench.sh fleet --agents N     a real coordinator loaded with N simulated agents over
#                                       real mTLS: enroll time, connected, RSS, idle CPU,
#                                       campaign times for 100 / 1,000 / N hosts, sessions lost
#                                       (`--help` for the knobs; bounded by --deadline-seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
exec target/release/pitcrew-bench "$@"
