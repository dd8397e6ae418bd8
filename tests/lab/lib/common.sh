# shellcheck shell=bash disable=SC2034  # settings used by the other lab scripts
# Common settings and helpers for the pitcrew lab fleet (sourced by lab.sh).
#
# Layout on the machine side:
#   $LAB_CACHE/base-<hash>.tar.zst   debootstrap'ed Debian tree, reused across runs
#   $LAB_RUN/base/                   that tree extracted (once per run) and provisioned with workloads
#   $LAB_RUN/repo/                   the local apt repository served on 10.231.0.1:$LAB_REPO_PORT
#   $LAB_RUN/hosts/<name>/           per host: upper/ work/ root/ (overlay), ip, index, logs, pids
#   /run/netns/pclab-<name>          the host's network namespace
#   /sys/fs/cgroup/{systemd,unified}/pitcrew-lab/<name>   the host's cgroup (LAB.md trap 2)

LAB_CACHE=${PITCREW_LAB_CACHE:-/var/cache/pitcrew-lab}
LAB_RUN=${PITCREW_LAB_RUN:-/var/lib/pitcrew-lab}
LAB_SUITE=${PITCREW_LAB_SUITE:-bookworm}
LAB_MIRROR=${PITCREW_LAB_MIRROR:-http://deb.debian.org/debian}
# Packages on top of minbase. Changing this list changes the cache key.
LAB_INCLUDE=${PITCREW_LAB_INCLUDE:-systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates,rpm,iputils-ping,netbase}
LAB_BRIDGE=pcbr0
LAB_NET_PREFIX=10.231.0
LAB_MACHINE_IP=${LAB_NET_PREFIX}.1
LAB_FIRST_HOST_OCTET=11
LAB_REPO_PORT=${PITCREW_LAB_REPO_PORT:-8080}
LAB_CGROUP_NAME=pitcrew-lab
LAB_CGROUP_ROOTS=(/sys/fs/cgroup/systemd /sys/fs/cgroup/unified)
LAB_BOOT_TIMEOUT=${PITCREW_LAB_BOOT_TIMEOUT:-60}
LAB_PYTHON=${PITCREW_LAB_PYTHON:-/usr/bin/python3}

log()  { printf '[lab %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die()  { log "error: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "the lab needs root"; }

host_dir()   { printf '%s/hosts/%s' "$LAB_RUN" "$1"; }
host_root()  { printf '%s/root' "$(host_dir "$1")"; }
host_netns() { printf 'pclab-%s' "$1"; }
host_ip()    { cat "$(host_dir "$1")/ip"; }

# Host names become hostnames, netns and cgroup names: keep them simple.
check_name() {
    [[ $1 =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad host name '$1' (use [a-z][a-z0-9-]*, at most 31 chars)"
}

host_exists() { [ -d "$(host_dir "$1")" ]; }
require_host() { host_exists "$1" || die "no lab host '$1' (known: $(list_hosts | tr '\n' ' '))"; }
list_hosts() {
    local d
    [ -d "$LAB_RUN/hosts" ] || return 0
    for d in "$LAB_RUN"/hosts/*/; do
        [ -d "$d" ] && basename "$d"
    done
    return 0
}

# True when pid $1 is alive.
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
read_pid() { if [ -f "$1" ]; then cat "$1"; fi; }
