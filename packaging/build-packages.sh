#!/bin/bash
# Build pitcrew's packages into $CARGO_TARGET_DIR/packages (default target/packages):
#   pitcrew-{agent,coordinator,cli}_<v>-1_<arch>.deb (cargo-deb) and
#   pitcrew-{agent,coordinator,cli}-<v>-1.<arch>.rpm (rpmbuild, from packaging/rpm/*.spec).
# pitcrew-cli holds the operator's `pitcrew` command alone, for workstations; the coordinator's
# packages recommend it.
# Release binaries are built first, then the manual pages and shell completions each binary writes
# from its own command-line definition. cargo-deb and rpm are installed only when missing.
# packaging/lint-packages.sh checks the result (lintian, rpmlint).
# Idempotent: running it again rebuilds the packages in place.
#   --no-build   package the binaries already in the target dir
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
OUT="$TARGET_DIR/packages"
BUILD=1

log() { printf '[packages] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --no-build) BUILD=0 ;;
            *) die "unknown argument $1 (see the header of $0)" ;;
        esac
        shift
    done
}

ensure_tools() {
    if ! cargo deb --version >/dev/null 2>&1; then
        log "installing cargo-deb (about a minute)"
        cargo install cargo-deb --locked
    fi
    if ! command -v rpmbuild >/dev/null || ! command -v dpkg-shlibdeps >/dev/null; then
        log "installing rpm and dpkg-dev"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm dpkg-dev >/dev/null
    fi
}

build_binaries() {
    if [ "$BUILD" = 1 ]; then
        log "cargo build --release (target dir $TARGET_DIR)"
        (cd "$REPO" && cargo build --release -p pitcrew-agent -p pitcrew-coordinator -p pitcrew-cli)
    fi
    local bin
    for bin in pitcrew-agent pitcrew-coordinator pitcrew; do
        [ -x "$TARGET_DIR/release/$bin" ] || die "missing $TARGET_DIR/release/$bin"
    done
}

# Manual pages (`BIN man --dir`, gzipped as Debian wants them) into release/man/BIN/, and the
# CLI's shell completions into release/completions/: what the packages' assets name.
build_docs() {
    local bin dir
    rm -rf "$TARGET_DIR/release/man" "$TARGET_DIR/release/completions"
    for bin in pitcrew pitcrew-agent pitcrew-coordinator; do
        dir="$TARGET_DIR/release/man/$bin"
        "$TARGET_DIR/release/$bin" man --dir "$dir"
        gzip -9n "$dir"/*.1
    done
    dir="$TARGET_DIR/release/completions"
    mkdir -p "$dir"
    "$TARGET_DIR/release/pitcrew" completions bash >"$dir/pitcrew.bash"
    "$TARGET_DIR/release/pitcrew" completions zsh >"$dir/_pitcrew"
    "$TARGET_DIR/release/pitcrew" completions fish >"$dir/pitcrew.fish"
}

# The changelog shipped in every .deb must describe the version being packaged.
check_changelog() {
    local version top
    version=$(workspace_version)
    top=$(head -n 1 "$REPO/packaging/deb/changelog")
    case $top in
        "pitcrew ($version-1) "*) ;;
        *) die "packaging/deb/changelog starts with '$top': add an entry for $version-1 first" ;;
    esac
}

workspace_version() {
    /usr/bin/python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["version"])' \
        "$REPO/Cargo.toml"
}

build_debs() {
    local pkg
    for pkg in pitcrew-agent pitcrew-coordinator pitcrew-cli; do
        log "cargo deb -p $pkg"
        (cd "$REPO" && cargo deb --no-build --quiet -p "$pkg" --output "$OUT/")
    done
}

build_rpm() {
    local version top arch pkg
    version=$(workspace_version)
    arch=$(rpm --eval '%{_arch}')
    for pkg in pitcrew-agent pitcrew-coordinator pitcrew-cli; do
        top=$(mktemp -d)
        log "rpmbuild $pkg $version"
        rpmbuild -bb --quiet \
            --define "_topdir $top" \
            --define "pitcrew_version $version" \
            --define "pitcrew_bin $TARGET_DIR/release/pitcrew-agent" \
            --define "pitcrew_bin_dir $TARGET_DIR/release" \
            --define "pitcrew_packaging $REPO/packaging" \
            "$REPO/packaging/rpm/$pkg.spec" >/dev/null
        cp "$top/RPMS/$arch/$pkg-$version-1.$arch.rpm" "$OUT/"
        rm -rf "$top"
    done
}

main() {
    parse_args "$@"
    ensure_tools
    check_changelog
    build_binaries
    build_docs
    mkdir -p "$OUT"
    build_debs
    build_rpm
    log "done:"
    ls -l "$OUT" >&2
}

main "$@"
