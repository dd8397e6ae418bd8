#!/usr/bin/env bash
# Prints pitcrew's performance figures (scheduler, store, memory, action latency) from an
# optimised build. Figures only: nothing passes or fails here; tests stay deterministic.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
exec target/release/pitcrew-bench
