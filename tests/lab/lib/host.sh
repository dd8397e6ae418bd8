# shellcheck shell=bash
# Lab hosts: overlay root, start/stop through the supervisor, finding the host's PID 1,
# running commands inside it, waiting for boot, and teardown of one host.

# Next free last octet (.11, .12, ...) for a new host.
next_octet() {
    local octet=$LAB_FIRST_HOST_OCTET
    while grep -qx "$octet" "$LAB_RUN"/hosts/*/octet 2>/dev/null; do
        octet=$((octet + 1))
    done
    [ "$octet" -le 250 ] || die "no free lab address left"
    echo "$octet"
}

# host_create NAME SHM_EXTRA: directory, overlay, network and identity (not booted yet).
host_create() {
    local name=$1 shm=$2 dir octet
    dir=$(host_dir "$name")
    octet=$(next_octet)
    mkdir -p "$dir/upper" "$dir/work" "$dir/root"
    echo "$octet" >"$dir/octet"
    echo "$LAB_NET_PREFIX.$octet" >"$dir/ip"
    mount -t overlay "overlay-pclab-$name" \
        -o "lowerdir=$LAB_RUN/base,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
    net_host_up "$name" "$octet"
    provision_host "$name" "$octet" "$shm"
    log "host $name: $LAB_NET_PREFIX.$octet, overlay ready$([ "$shm" -gt 0 ] && echo ", shm-extra=$shm")"
}

# host_start NAME: launch the supervisor detached, in its own session.
host_start() {
    local name=$1 dir
    dir=$(host_dir "$name")
    rm -f "$dir/stop"
    setsid "$LAB_DIR/lib/supervise.sh" "$name" >>"$dir/supervisor.log" 2>&1 </dev/null 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$dir/nspawn.pid" ] && return 0
        sleep 0.1
    done
    die "host $name: supervisor did not start nspawn (see $dir/supervisor.log)"
}

# host_pid1 NAME: print the machine-side pid of the host's systemd (PID 1 inside), or fail.
# It is the process in the host's netns whose comm is `systemd` and whose NSpid ends in 1.
host_pid1() {
    local name=$1 ns_inode pid
    ns_inode=$(stat -L -c %i "/run/netns/$(host_netns "$name")" 2>/dev/null) || return 1
    for pid in $(pgrep -x systemd); do
        [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$ns_inode" ] || continue
        if awk '/^NSpid:/ { exit ($NF == 1 ? 0 : 1) }' "/proc/$pid/status" 2>/dev/null; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# host_exec NAME CMD...: run CMD inside the host (all its namespaces, clean environment).
# Note (LAB.md trap 4): the command keeps the machine's full capabilities.
host_exec() {
    local name=$1 pid
    shift
    pid=$(host_pid1 "$name") || { echo "lab: host $name is not running" >&2; return 125; }
    nsenter -t "$pid" -m -u -i -n -p -C -r -w -- \
        /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
}

# host_wait NAME [NOT_BOOT_ID]: wait until systemd inside says running (or degraded: then list the
# failed units). With NOT_BOOT_ID, first wait for a boot id different from it (after a reboot).
host_wait() {
    local name=$1 old=${2:-} deadline state boot
    deadline=$((SECONDS + LAB_BOOT_TIMEOUT))
    while :; do
        boot=$(host_exec "$name" cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
        if [ -n "$boot" ] && [ "$boot" != "$old" ]; then
            state=$(host_exec "$name" systemctl is-system-running 2>/dev/null || true)
            case $state in
                running) return 0 ;;
                degraded)
                    log "host $name: degraded; failed units:"
                    host_exec "$name" systemctl --failed --no-legend --plain >&2 || true
                    return 0 ;;
            esac
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "host $name: not running after ${LAB_BOOT_TIMEOUT}s (state '${state:-none}'); console:"
            tail -n 20 "$(host_dir "$name")/console.log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# Exit statuses of nspawn runs that were reboots (133).
host_reboot_count() {
    local f
    f="$(host_dir "$1")/exits"
    [ -f "$f" ] || { echo 0; return 0; }
    awk '$3 == 133 { n++ } END { print n + 0 }' "$f"
}

# host_stop_begin NAME: stop request + SIGTERM to nspawn, which halts the host cleanly.
host_stop_begin() {
    local dir pid
    dir=$(host_dir "$1")
    [ -d "$dir" ] || return 0
    touch "$dir/stop"
    pid=$(read_pid "$dir/nspawn.pid")
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
}

# host_stop_wait NAME: wait up to 10 s for the supervisor to end (SIGTERM again if a reboot
# raced with the stop request), then SIGKILL whatever is left in the host's cgroups.
host_stop_wait() {
    local name=$1 dir sup pid i
    dir=$(host_dir "$name")
    [ -d "$dir" ] || return 0
    sup=$(read_pid "$dir/supervisor.pid")
    for ((i = 0; i < 100; i++)); do
        pid_alive "$sup" || break
        if ((i % 10 == 9)); then
            pid=$(read_pid "$dir/nspawn.pid")
            pid_alive "$pid" && kill -TERM "$pid" 2>/dev/null
        fi
        sleep 0.1
    done
    if pid_alive "$sup"; then
        log "host $name: did not halt in 10 s; killing. Console:"
        tail -n 10 "$dir/console.log" >&2 || true
        kill -KILL "$sup" 2>/dev/null || true
    elif ((i >= 50)); then
        log "host $name: halting took $((i / 10)) s"
    fi
    cgroup_kill "$name"
}

host_stop() {
    host_stop_begin "$1"
    host_stop_wait "$1"
}

# Kill whatever is left in the host's cgroups (normally nothing).
cgroup_kill() {
    local name=$1 root procs pid
    for root in "${LAB_CGROUP_ROOTS[@]}"; do
        [ -d "$root/$LAB_CGROUP_NAME/$name" ] || continue
        procs=$(find "$root/$LAB_CGROUP_NAME/$name" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
        for pid in $procs; do
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
}

# Remove the lab's cgroup directories, deepest first (only empty ones can be removed).
cgroup_sweep() {
    local root i
    for ((i = 0; i < 20; i++)); do
        for root in "${LAB_CGROUP_ROOTS[@]}"; do
            [ -d "$root/$LAB_CGROUP_NAME" ] || continue
            find "$root/$LAB_CGROUP_NAME" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        done
        cgroups_left || return 0
        sleep 0.1
    done
    log "warning: cgroups left: $(cgroups_left_list)"
}
cgroups_left() { [ -n "$(cgroups_left_list)" ]; }
cgroups_left_list() {
    local root
    for root in "${LAB_CGROUP_ROOTS[@]}"; do
        [ -d "$root/$LAB_CGROUP_NAME" ] && echo "$root/$LAB_CGROUP_NAME"
    done
    return 0
}

# Unmount every mount under $LAB_RUN (overlay roots), deepest first.
mounts_sweep() {
    local m
    [ -d "$LAB_RUN" ] || return 0
    for m in $(findmnt -rn -o TARGET | grep "^$LAB_RUN/" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}
