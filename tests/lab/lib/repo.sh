# shellcheck shell=bash
# The lab's package repository: lab-kernel 1.0 (preinstalled on every host) and 1.1 (offered), as
# .deb in a flat apt repository and as .rpm files, served over HTTP by python3 on 10.231.0.1.

LAB_PKG_SRC="$LAB_DIR/workloads/packages/lab-kernel"
LAB_KERNEL_VERSIONS=(1.0 1.1)

repo_dir() { printf '%s/repo' "$LAB_RUN"; }

# repo_build_deb VERSION OUTDIR: a small kernel-like .deb built with dpkg-deb.
repo_build_deb() {
    local version=$1 out=$2 tree
    tree=$(mktemp -d)
    mkdir -p "$tree/DEBIAN" "$tree/usr/share/lab-kernel" "$tree/boot"
    sed "s/@VERSION@/$version/" "$LAB_PKG_SRC/control" >"$tree/DEBIAN/control"
    sed "s/@VERSION@/$version/" "$LAB_PKG_SRC/postinst" >"$tree/DEBIAN/postinst"
    chmod 0755 "$tree/DEBIAN/postinst"
    echo "$version" >"$tree/usr/share/lab-kernel/VERSION"
    echo "lab kernel $version" >"$tree/boot/vmlinuz-$version-lab"
    dpkg-deb --root-owner-group -Zxz --build "$tree" "$out/lab-kernel_${version}_all.deb" >/dev/null
    rm -rf "$tree"
}

# repo_build_rpm VERSION OUTDIR: the same as an .rpm (rpmbuild from Debian's rpm package).
repo_build_rpm() {
    local version=$1 out=$2 top
    top=$(mktemp -d)
    rpmbuild --quiet -bb --define "_topdir $top" --define "lab_version $version" \
        --define "_build_id_links none" "$LAB_PKG_SRC/lab-kernel.spec" >/dev/null 2>&1 \
        || { rm -rf "$top"; die "rpmbuild of lab-kernel $version failed"; }
    cp "$top"/RPMS/noarch/*.rpm "$out/"
    rm -rf "$top"
}

# Flat apt repository index: Packages(.gz) and a Release file with checksums.
repo_index() {
    local dir=$1 f
    (
        cd "$dir" || exit 1
        dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages
        gzip -9kf Packages
        {
            echo "Origin: pitcrew-lab"
            echo "Label: pitcrew-lab"
            echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
            echo "SHA256:"
            for f in Packages Packages.gz; do
                printf ' %s %s %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"
            done
        } >Release
    )
}

repo_build() {
    local dir v
    dir=$(repo_dir)
    rm -rf "$dir"
    mkdir -p "$dir/rpm"
    for v in "${LAB_KERNEL_VERSIONS[@]}"; do
        repo_build_deb "$v" "$dir"
        repo_build_rpm "$v" "$dir/rpm"
    done
    repo_index "$dir"
    log "repo: $(cd "$dir" && ls ./*.deb rpm/*.rpm | tr '\n' ' ')"
}

# Serve the repository on 10.231.0.1 (the bridge must exist). Idempotent.
repo_serve() {
    local dir pidfile pid
    dir=$(repo_dir)
    pidfile="$LAB_RUN/repo.pid"
    pid=$(read_pid "$pidfile")
    if pid_alive "$pid"; then
        return 0
    fi
    setsid "$LAB_PYTHON" -m http.server --bind "$LAB_MACHINE_IP" --directory "$dir" "$LAB_REPO_PORT" \
        >"$LAB_RUN/repo.log" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
    local i
    for ((i = 0; i < 50; i++)); do
        if (exec 3<>"/dev/tcp/$LAB_MACHINE_IP/$LAB_REPO_PORT") 2>/dev/null; then
            log "repo: serving $dir on http://$LAB_MACHINE_IP:$LAB_REPO_PORT/"
            return 0
        fi
        sleep 0.1
    done
    cat "$LAB_RUN/repo.log" >&2
    die "repo: http server did not start"
}

repo_stop() {
    local pidfile="$LAB_RUN/repo.pid" pid
    pid=$(read_pid "$pidfile")
    if pid_alive "$pid" && grep -q http.server "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        log "repo: stopped http server (pid $pid)"
    fi
    rm -f "$pidfile"
}
