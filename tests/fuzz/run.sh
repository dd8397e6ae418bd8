#!/usr/bin/env bash
# Fuzzes everything pitcrew parses from untrusted input, for a bounded time:
#
#   tests/fuzz/run.sh [SECONDS]     (default 30 s per target)
#
# Installs cargo-fuzz when it is missing, builds every target once (stable Rust: libFuzzer with
# --sanitizer none), replays every saved crasher in regressions/<target>/ through its target,
# then fuzzes each target for SECONDS from its seeds (corpus/<target>/seed-*). Fails when any
# replay or target crashes, naming the input that did. What a run adds to a corpus is kept in
# target/corpus/<target>/ (ignored by git), crashers in artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir=$PWD
seconds=${1:-30}
started=$SECONDS
case $seconds in
    '' | *[!0-9]*)
        echo "usage: $0 [SECONDS]" >&2
        exit 2
        ;;
esac
targets=(campaign_spec agent_config policy session_messages mountinfo)

log() { printf '\n==> %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The targets write files (drop-ins, the action journal) under TMPDIR: in memory when the
# machine has /dev/shm, so the journal's fsyncs cost nothing; removed afterwards.
scratch=$(mktemp -d /dev/shm/pitcrew-fuzz.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

# The same options for the build and every run, so that no run builds again.
fuzz=(--fuzz-dir "$fuzz_dir" --sanitizer none)
# An input that takes this long is a hang, reported like a crash.
limits=(-timeout=20 -rss_limit_mb=2048)

# This crate's Cargo.lock must be current (cargo fuzz has no --locked) and hold the versions
# of the main Cargo.lock for every package both have, so the build uses what the workspace's
# own tests use. The package names in both whose versions differ:
lock_drift() {
    awk -F'"' 'FNR == 1 { file++; name = "" }
        /^name = / { name = $2 }
        /^version = / && name != "" {
            if (file == 1) main[name] = main[name] " " $2 " "
            else if (name in main && index(main[name], " " $2 " ") == 0) print "  " name " " $2
        }' ../../Cargo.lock Cargo.lock
}
log "checking the fuzz crate's Cargo.lock against the main one"
drift=$(lock_drift)
if [ -n "$drift" ] || ! cargo fetch --locked --manifest-path Cargo.toml; then
    [ -z "$drift" ] || printf 'versions the main Cargo.lock does not hold:\n%s\n' "$drift" >&2
    echo "tests/fuzz/Cargo.lock does not follow the main one; from the repository root, renew it:" >&2
    echo "  cp Cargo.lock tests/fuzz/Cargo.lock && cargo metadata --manifest-path tests/fuzz/Cargo.toml --format-version 1 >/dev/null" >&2
    exit 1
fi

log "building the fuzz targets"
build_started=$SECONDS
cargo fuzz build "${fuzz[@]}"
echo "built in $((SECONDS - build_started)) s"

failures=()

# crash_report LOG: what a failed run printed that says why, and where its input is.
crash_report() {
    grep -E "panicked at|^thread '|Test unit written to|SUMMARY|ERROR:|deadly signal|timeout|out-of-memory" "$1" |
        head -n 20 | sed 's/^/    /' || true
}

# summary TARGET LOG: how many inputs a run tried, and the coverage it reached.
summary() {
    local runs stats
    runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$2" | tail -n 1 | awk '{ print $2 " runs in " $5 " s" }')
    stats=$(grep -E '^#[0-9]+' "$2" | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' | tail -n 1)
    echo "$1: ${runs:-? runs}; ${stats:-no coverage line}"
}

shopt -s nullglob
for target in "${targets[@]}"; do
    inputs=("regressions/$target"/*)
    [ ${#inputs[@]} -gt 0 ] || continue
    log "replaying ${#inputs[@]} saved crasher(s) of $target"
    for input in "${inputs[@]}"; do
        if cargo fuzz run "${fuzz[@]}" "$target" "$input" -- "${limits[@]}" \
            >"$scratch/replay.log" 2>&1; then
            echo "ok: $input"
        else
            echo "CRASH: $target still crashes on $fuzz_dir/$input" >&2
            crash_report "$scratch/replay.log" >&2
            failures+=("$target: $fuzz_dir/$input (a saved crasher)")
        fi
    done
done

for target in "${targets[@]}"; do
    log "fuzzing $target for $seconds s"
    grown=target/corpus/$target
    mkdir -p "$grown" "artifacts/$target"
    # New inputs go to the first directory; the seeds and the crashers are read only.
    corpora=("$grown" "corpus/$target")
    [ -d "regressions/$target" ] && corpora+=("regressions/$target")
    if cargo fuzz run "${fuzz[@]}" "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" "${limits[@]}" \
        >"$scratch/$target.log" 2>&1; then
        summary "$target" "$scratch/$target.log"
    else
        crasher=$(grep -oE 'Test unit written to [^ ]+' "$scratch/$target.log" | tail -n 1 |
            sed 's/^Test unit written to //')
        case $crasher in
            '' | /*) ;;
            *) crasher=$fuzz_dir/${crasher#./} ;;
        esac
        echo "CRASH: $target crashed${crasher:+ on $crasher}" >&2
        crash_report "$scratch/$target.log" >&2
        echo "    replay it: cargo fuzz run ${fuzz[*]} $target ${crasher:-ARTIFACT}" >&2
        echo "    keep it covered: copy it to $fuzz_dir/regressions/$target/" >&2
        failures+=("$target: ${crasher:-(no input saved; see the log above)}")
    fi
done

if [ ${#failures[@]} -gt 0 ]; then
    printf '\nfuzzing found %d crash(es):\n' "${#failures[@]}" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "no target crashed ($seconds s each; $((SECONDS - started)) s in all, with the build)"
