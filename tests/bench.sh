#!/usr/bin/env bash
# Prints pitcrew's performance figures (scheduler, store, memory, action latency) from an
# optimised build. Figures only: nothing passes or fails here; tests stay deterministic.
#
#   tests/bench.sh                      the figures above
#   tests/bench.sh fleet --agents N     a real coordinator loaded with N simulated agents over
#                                       real mTLS: enroll time, connected, RSS, idle CPU,
#                                       campaign times for 100 / 1,000 / N hosts, sessions lost,
#                                       operator calls (hosts, campaign show, events) during the N
#                                       (`--help` for the knobs; bounded by --deadline-seconds)
#   tests/bench.sh failover [--agents N] campaign throughput on SQLite and on PostgreSQL, and
#                                       three coordinators on PostgreSQL replacing a leader
#                                       SIGKILLed mid-campaign: time to a new leader, to its
#                                       first decision reaching an agent and to its first
#                                       answer (needs PostgreSQL installed)
#   tests/bench.sh hostile [--seconds S] a real coordinator and agents while one client floods
#                                       enrollments, one holds idle connections and one agent
#                                       stops reading: operator and `do` latency, RSS, refusals
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
if [ "${1:-}" = hostile ]; then
    shift
    exec target/release/pitcrew-hostile "$@"
fi
exec target/release/pitcrew-bench "$@"
