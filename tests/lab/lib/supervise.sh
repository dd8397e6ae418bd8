#!/bin/bash
# Supervisor of one lab host: runs in its own cgroup (LAB.md trap 2) and keeps systemd-nspawn
# booting the host's overlay root. Exit 133 (the host ran `systemctl reboot`) boots it again;
# any other exit, or the stop file, ends the loop. Started detached by `lab.sh up`.
#   supervise.sh NAME
# Files in the host directory: supervisor.pid, nspawn.pid, boots (number of boots so far),
# exits ("<unix time> <boot number> <exit status>" per nspawn run), console.log, stop (request).
set -uo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/lab/lib/common.sh
source "$LAB_DIR/lib/common.sh"

name=$1
dir=$(host_dir "$name")

# Move this process into the host's own cgroup in both hierarchies before nspawn runs.
join_cgroups() {
    local root cg
    for root in "${LAB_CGROUP_ROOTS[@]}"; do
        [ -d "$root" ] || continue
        cg="$root/$LAB_CGROUP_NAME/$name"
        mkdir -p "$cg"
        echo $$ >"$cg/cgroup.procs"
    done
}

run_nspawn() {
    systemd-nspawn --quiet --boot \
        --directory="$dir/root" \
        --machine="$name" \
        --register=no --keep-unit \
        --console=read-only \
        --network-namespace-path="/run/netns/$(host_netns "$name")" \
        --link-journal=no --resolv-conf=off --timezone=off \
        >>"$dir/console.log" 2>&1 </dev/null &
    local child=$!
    echo "$child" >"$dir/nspawn.pid"
    wait "$child"
    local rc=$?
    # `wait` returns early when this shell gets a signal: wait again until nspawn is gone.
    while pid_alive "$child"; do
        wait "$child"
        rc=$?
    done
    return "$rc"
}

main() {
    join_cgroups
    echo $$ >"$dir/supervisor.pid"
    trap '' HUP
    local boots=0 rc
    while [ ! -e "$dir/stop" ]; do
        boots=$((boots + 1))
        echo "$boots" >"$dir/boots"
        run_nspawn
        rc=$?
        echo "$(date +%s) $boots $rc" >>"$dir/exits"
        [ "$rc" -eq 133 ] || break
    done
    rm -f "$dir/nspawn.pid" "$dir/supervisor.pid"
}

main
