#!/bin/bash
# Lint the packages build-packages.sh made: lintian on every .deb and rpmlint on every .rpm.
# Fails on any error or warning. The only accepted findings are the overrides shipped in the
# packages themselves (packaging/deb/lintian/<package>, each with the reason above it) and
# packaging/rpm/rpmlint.toml (the same, for rpmlint).
#   lint-packages.sh [DIR]   default: $CARGO_TARGET_DIR/packages (or target/packages)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${CARGO_TARGET_DIR:-$REPO/target}/packages}

log() { printf '[lint] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v lintian >/dev/null || die "lintian is not installed (apt-get install lintian)"
command -v rpmlint >/dev/null || die "rpmlint is not installed (apt-get install rpmlint)"

shopt -s nullglob
debs=("$DIR"/*.deb)
rpms=("$DIR"/*.rpm)
[ ${#debs[@]} -gt 0 ] || die "no .deb in $DIR (run packaging/build-packages.sh)"
[ ${#rpms[@]} -gt 0 ] || die "no .rpm in $DIR (run packaging/build-packages.sh)"

failed=0
for deb in "${debs[@]}"; do
    log "lintian $(basename "$deb")"
    # --fail-on: errors and warnings fail; info and pedantic tags are shown with -I only.
    lintian --fail-on error,warning --tag-display-limit 0 "$deb" || failed=1
done
for rpm in "${rpms[@]}"; do
    log "rpmlint $(basename "$rpm")"
    # rpmlint exits non-zero on errors only: warnings are read from its report.
    report=$(rpmlint --config "$REPO/packaging/rpm/rpmlint.toml" "$rpm") || failed=1
    printf '%s\n' "$report"
    if grep -Eq ': [EW]: ' <<<"$report"; then failed=1; fi
done
[ "$failed" = 0 ] || die "the packages above have lint findings"
log "clean: ${#debs[@]} .deb, ${#rpms[@]} .rpm"
