#!/bin/bash
# pitcrew lab fleet: real Debian hosts with systemd as PID 1, each in systemd-nspawn over its own
# overlayfs, network namespace (10.231.0.0/24 on bridge pcbr0, machine side 10.231.0.1) and cgroup.
# See /work/shared/LAB.md-style notes in tests/lab/README.md. Needs root.
#
#   lab.sh deps                         install what the lab needs (only what is missing)
#   lab.sh base                         build the cached base tree (debootstrap, once per include list)
#   lab.sh up [--shm-extra NAME=N]... NAME...
#                                       create, boot and wait for hosts (.11, .12, ... in order)
#   lab.sh exec NAME -- CMD...          run CMD inside a host (exit status is CMD's)
#   lab.sh copy NAME SRC DST            copy a machine file into the host's root (not /tmp, /run)
#   lab.sh install NAME PKG.deb|PKG.rpm copy a package in and install it (dpkg -i / rpm -U --nodeps)
#   lab.sh reboot NAME                  `systemctl reboot` inside, wait for a new boot id and running
#   lab.sh wait NAME [OLD_BOOT_ID]      wait until running (with a boot id other than OLD_BOOT_ID)
#   lab.sh boot-id NAME | reboot-count NAME | ip NAME | pid1 NAME | root NAME
#   lab.sh status                       one line per host
#   lab.sh down                         tear everything down (safe to run twice)
#   lab.sh check-clean                  fail if anything of the lab is left on the machine
#
# Environment: PITCREW_LAB_KEEP=1 keeps a half-built lab when `up` fails (default: tear down).
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for lib in common base net repo provision host; do
    # shellcheck source=/dev/null
    source "$LAB_DIR/lib/$lib.sh"
done

LAB_LOCK=/run/pitcrew-lab.lock

# Serialise commands that change the lab (two `up`s at once would race for addresses).
take_lock() {
    exec 9>"$LAB_LOCK"
    flock -w 300 9 || die "another lab command holds $LAB_LOCK"
}

cmd_deps() {
    local need=() tool pkg
    for pair in systemd-nspawn:systemd-container debootstrap:debootstrap zstd:zstd ip:iproute2 \
        rpm:rpm rpmbuild:rpm dpkg-scanpackages:dpkg-dev nsenter:util-linux flock:util-linux; do
        tool=${pair%%:*} pkg=${pair#*:}
        command -v "$tool" >/dev/null || need+=("$pkg")
    done
    [ -x "$LAB_PYTHON" ] || need+=(python3)
    if [ ${#need[@]} -eq 0 ]; then
        log "deps: all present"
        return 0
    fi
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    log "deps: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

cmd_base() {
    need_root
    take_lock
    base_build
}

# Tear down everything if `up` fails half-way (unless PITCREW_LAB_KEEP=1).
up_failed() {
    local rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ] && [ "${PITCREW_LAB_KEEP:-0}" != 1 ]; then
        log "up failed (status $rc): tearing the lab down"
        lab_down || true
    fi
    exit "$rc"
}

cmd_up() {
    need_root
    local -A shm=()
    local names=() name start=$SECONDS
    while [ $# -gt 0 ]; do
        case $1 in
            --shm-extra) [[ ${2:-} =~ ^[a-z][a-z0-9-]*=[0-9]+$ ]] || die "--shm-extra NAME=N"
                         shm[${2%%=*}]=${2#*=}; shift 2 ;;
            -*) die "unknown option $1" ;;
            *) check_name "$1"; names+=("$1"); shift ;;
        esac
    done
    [ ${#names[@]} -gt 0 ] || die "up: no host names given"
    take_lock
    for name in "${names[@]}"; do
        if host_exists "$name"; then
            die "host $name already exists (run 'lab.sh down' first)"
        fi
    done
    trap up_failed EXIT
    mkdir -p "$LAB_RUN/hosts"
    base_extract
    net_bridge_up
    repo_serve
    for name in "${names[@]}"; do
        host_create "$name" "${shm[$name]:-0}"
        host_start "$name"
    done
    for name in "${names[@]}"; do
        host_wait "$name"
        log "host $name: running (boot $(host_exec "$name" cat /proc/sys/kernel/random/boot_id))"
    done
    trap - EXIT
    log "up: ${names[*]} in $((SECONDS - start)) s"
}

cmd_exec() {
    local name=${1:-}
    require_host "$name"
    shift
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || die "exec: no command"
    host_exec "$name" "$@"
}

# Copy SRC from the machine to DST inside the host, through the host's overlay root.
cmd_copy() {
    [ $# -eq 3 ] || die "copy NAME SRC DST"
    local name=$1 src=$2 dst=$3 root
    require_host "$name"
    case $dst in
        /*) ;;
        *) die "copy: DST must be absolute" ;;
    esac
    case $dst in
        /tmp|/tmp/*|/run|/run/*|/dev|/dev/*|/proc/*|/sys/*)
            die "copy: $dst is a mount inside the host, invisible from the overlay; use e.g. /var/tmp" ;;
    esac
    root=$(host_root "$name")
    mkdir -p "$root$(dirname "$dst")"
    cp -a "$src" "$root$dst"
}

cmd_install() {
    [ $# -eq 2 ] || die "install NAME PKG"
    local name=$1 pkg=$2 base
    require_host "$name"
    [ -f "$pkg" ] || die "install: no file $pkg"
    base=$(basename "$pkg")
    cmd_copy "$name" "$pkg" "/var/tmp/pitcrew-lab/$base"
    case $base in
        *.deb) host_exec "$name" dpkg -i "/var/tmp/pitcrew-lab/$base" ;;
        *.rpm) host_exec "$name" rpm -U --nodeps --replacepkgs "/var/tmp/pitcrew-lab/$base" ;;
        *) die "install: $base is neither .deb nor .rpm" ;;
    esac
    log "host $name: installed $base"
}

cmd_reboot() {
    local name=${1:-} old
    require_host "$name"
    old=$(host_exec "$name" cat /proc/sys/kernel/random/boot_id)
    # LAB.md trap 7: this may report a reset connection although the reboot happens.
    host_exec "$name" systemctl reboot || true
    host_wait "$name" "$old"
    log "host $name: rebooted ($old -> $(host_exec "$name" cat /proc/sys/kernel/random/boot_id))"
}

cmd_status() {
    local name pid state
    for name in $(list_hosts); do
        if pid=$(host_pid1 "$name"); then
            state=$(host_exec "$name" systemctl is-system-running 2>/dev/null || true)
        else
            pid=- state=stopped
        fi
        printf '%-12s %-12s pid1=%-8s boots=%-3s reboots=%-3s %s\n' "$name" "$(host_ip "$name")" \
            "$pid" "$(cat "$(host_dir "$name")/boots" 2>/dev/null || echo 0)" \
            "$(host_reboot_count "$name")" "$state"
    done
}

# Stop every host, then remove mounts, network, the repo server, cgroups and the run directory.
lab_down() {
    local name start=$SECONDS
    for name in $(list_hosts); do
        host_stop_begin "$name"
    done
    for name in $(list_hosts); do
        host_stop_wait "$name"
    done
    mounts_sweep
    net_sweep
    repo_stop
    cgroup_sweep
    if [ -d "$LAB_RUN" ]; then
        if findmnt -rn -o TARGET | grep -q "^$LAB_RUN/"; then
            die "down: mounts still under $LAB_RUN; not deleting it"
        fi
        rm -rf --one-file-system "$LAB_RUN"
    fi
    log "down: done in $((SECONDS - start)) s"
}

cmd_down() {
    need_root
    take_lock
    lab_down
}

# Fail (listing them) if any lab mount, netns, link, cgroup, process or directory is left.
cmd_check_clean() {
    local left=()
    findmnt -rn -o TARGET | grep -q "^$LAB_RUN/" && left+=("mounts under $LAB_RUN")
    ip netns list | grep -q '^pclab-' && left+=("netns: $(ip netns list | grep '^pclab-' | tr '\n' ' ')")
    ip link show "$LAB_BRIDGE" >/dev/null 2>&1 && left+=("bridge $LAB_BRIDGE")
    ip -o link show | grep -q ': pcv[0-9]' && left+=("veth pcv*")
    cgroups_left && left+=("cgroups: $(cgroups_left_list | tr '\n' ' ')")
    pgrep -x systemd-nspawn >/dev/null && left+=("systemd-nspawn processes: $(pgrep -x systemd-nspawn | tr '\n' ' ')")
    [ -e "$LAB_RUN" ] && left+=("$LAB_RUN")
    if [ ${#left[@]} -gt 0 ]; then
        printf 'lab left behind: %s\n' "${left[@]}" >&2
        return 1
    fi
    log "check-clean: nothing of the lab is left"
}

main() {
    local cmd=${1:-help}
    shift || true
    case $cmd in
        deps) need_root; cmd_deps ;;
        base) cmd_base ;;
        up) cmd_up "$@" ;;
        exec) cmd_exec "$@" ;;
        copy) cmd_copy "$@" ;;
        install) cmd_install "$@" ;;
        reboot) cmd_reboot "$@" ;;
        wait) require_host "${1:-}"; host_wait "$@" ;;
        boot-id) require_host "${1:-}"; host_exec "$1" cat /proc/sys/kernel/random/boot_id ;;
        reboot-count) require_host "${1:-}"; host_reboot_count "$1" ;;
        ip) require_host "${1:-}"; host_ip "$1" ;;
        pid1) require_host "${1:-}"; host_pid1 "$1" ;;
        root) require_host "${1:-}"; host_root "$1"; echo ;;
        status) cmd_status ;;
        down) cmd_down ;;
        check-clean) cmd_check_clean ;;
        help|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (try: lab.sh help)" ;;
    esac
}

main "$@"
