# shellcheck shell=bash
# The lab's base tree: a debootstrap'ed Debian (minbase + LAB_INCLUDE), cached as a tar.zst keyed
# by a hash of what went into it, and extracted once per run into $LAB_RUN/base.

base_key() {
    printf '%s|%s|%s|minbase' "$LAB_SUITE" "$LAB_MIRROR" "$LAB_INCLUDE" | sha256sum | cut -c1-12
}
base_archive() { printf '%s/base-%s.tar.zst' "$LAB_CACHE" "$(base_key)"; }

# Build the cached base archive unless it exists.
base_build() {
    local archive tree start
    archive=$(base_archive)
    if [ -s "$archive" ]; then
        log "base: cached $archive"
        return 0
    fi
    mkdir -p "$LAB_CACHE"
    tree=$(mktemp -d "$LAB_CACHE/build.XXXXXX")
    start=$SECONDS
    log "base: debootstrap $LAB_SUITE (minbase + $LAB_INCLUDE) into $tree"
    if ! debootstrap --variant=minbase --include="$LAB_INCLUDE" "$LAB_SUITE" "$tree" "$LAB_MIRROR" \
        >"$tree.log" 2>&1; then
        tail -n 30 "$tree.log" >&2
        rm -rf "$tree" "$tree.log"
        die "debootstrap failed"
    fi
    base_generic_tweaks "$tree"
    log "base: packing $(du -sh "$tree" | cut -f1) into $archive"
    tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' --acls -cf - . \
        | zstd -q -T0 -3 -o "$archive.tmp"
    mv "$archive.tmp" "$archive"
    rm -rf "$tree" "$tree.log"
    log "base: built in $((SECONDS - start)) s ($(du -h "$archive" | cut -f1))"
}

# Host-independent tweaks baked into the cache: each host gets its own machine-id later,
# there is no internet inside the lab, and package caches are not needed.
base_generic_tweaks() {
    local tree=$1
    : >"$tree/etc/machine-id"
    rm -f "$tree/var/lib/dbus/machine-id"
    : >"$tree/etc/apt/sources.list"
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    # No getty on a read-only console.
    rm -f "$tree/etc/systemd/system/getty.target.wants/getty@tty1.service"
}

# Extract the cached base into $LAB_RUN/base (once per run) and provision the workloads.
base_extract() {
    local archive dest="$LAB_RUN/base" start=$SECONDS
    archive=$(base_archive)
    if [ -f "$LAB_RUN/base.ready" ]; then
        return 0
    fi
    [ -s "$archive" ] || base_build
    rm -rf "$dest"
    mkdir -p "$dest"
    log "base: extracting $(basename "$archive")"
    zstd -q -dc "$archive" | tar -C "$dest" --numeric-owner --xattrs --xattrs-include='*' --acls -xf -
    provision_base "$dest"
    touch "$LAB_RUN/base.ready"
    log "base: ready in $((SECONDS - start)) s"
}
