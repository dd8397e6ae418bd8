#!/bin/bash
# Self-test of the lab fleet: brings up hosts and checks every lab feature the pitcrew lab tests
# rely on, then tears down (also on failure) and checks that nothing is left on the machine.
#   selftest.sh [--hosts N] [--packages DIR]
# With --packages DIR (holding pitcrew-agent_*.deb and pitcrew-agent-*.rpm), the agent .deb is
# installed on the first host and the .rpm on the second, with a drop-in pointing at
# 10.231.0.1:7443 (no coordinator needed: the agent must run and retry).
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB="$LAB_DIR/lab.sh"
HOSTS=3
PACKAGES=""
FAILED=0

say() { printf '\n== %s\n' "$*" >&2; }
ok() { printf '   ok: %s\n' "$*" >&2; }
fail() { printf '   FAIL: %s\n' "$*" >&2; FAILED=1; }
expect_eq() { # expect_eq WHAT GOT WANT
    if [ "$2" = "$3" ]; then ok "$1 = $2"; else fail "$1: got '$2', want '$3'"; fi
}
expect() { # expect WHAT CMD...: ok when CMD succeeds
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
in_host() { "$LAB" exec "$1" -- "${@:2}"; }
quiet() { "$@" >/dev/null; }

teardown() {
    local rc=$?
    trap - EXIT
    say "teardown"
    "$LAB" down || rc=1
    "$LAB" check-clean || rc=1
    expect_eq "machine's own /dev/shm mounts (untouched)" "$(grep -c ' /dev/shm ' /proc/self/mountinfo)" "$MACHINE_SHM"
    [ "$FAILED" = 0 ] || rc=1
    if [ "$rc" = 0 ]; then say "selftest passed"; else say "selftest FAILED"; fi
    exit "$rc"
}

check_boot_and_network() {
    local h
    for h in "$@"; do
        expect_eq "$h state" "$(in_host "$h" systemctl is-system-running)" running
        expect "$h pings 10.231.0.1" quiet in_host "$h" ping -c1 -W2 10.231.0.1
        expect "$h TCP to 10.231.0.1:8080" in_host "$h" bash -c 'exec 3<>/dev/tcp/10.231.0.1/8080'
    done
    expect_eq "distinct machine ids" "$(for h in "$@"; do in_host "$h" cat /etc/machine-id; done | sort -u | wc -l)" "$#"
}

check_reboot() {
    local h=$1 before after
    before=$(in_host "$h" cat /proc/sys/kernel/random/boot_id)
    in_host "$h" systemctl reboot || true
    "$LAB" wait "$h" "$before"
    after=$(in_host "$h" cat /proc/sys/kernel/random/boot_id)
    expect "$h new boot id $before -> $after" [ "$after" != "$before" ]
    expect_eq "$h reboot-count" "$("$LAB" reboot-count "$h")" 1
}

check_mesos_drain() {
    local h=$1 id_before id_after
    id_before=$(in_host "$h" readlink /var/lib/mesos/slave/meta/slaves/latest)
    in_host "$h" systemctl kill -s SIGUSR1 dcos-mesos-slave.service
    sleep 0.5
    expect_eq "$h mesos after SIGUSR1" "$(in_host "$h" systemctl is-active dcos-mesos-slave.service || true)" inactive
    expect "$h drain of $id_before recorded" in_host "$h" grep -q "^[0-9]\+ $id_before\$" /var/lib/mesos/drained
    in_host "$h" systemctl stop dcos-mesos-slave.service
    in_host "$h" systemctl daemon-reload
    in_host "$h" rm /var/lib/mesos/slave/meta/slaves/latest
    in_host "$h" systemctl start dcos-mesos-slave.service
    id_after=$(in_host "$h" readlink /var/lib/mesos/slave/meta/slaves/latest)
    expect "$h new agent id after removing latest" [ "$id_after" != "$id_before" ]
}

check_shm() {
    expect_eq "$1 /dev/shm mounts" "$(in_host "$1" grep -c ' /dev/shm ' /proc/self/mountinfo)" "$2"
}

check_swarm_tools() {
    local h=$1 file
    file=$(in_host "$h" ucp-backup)
    expect "$h ucp-backup wrote $file" in_host "$h" test -s "$file"
    in_host "$h" swarm-node update --availability drain "$h" >/dev/null
    expect_eq "$h swarm availability" "$(in_host "$h" swarm-node inspect "$h")" drain
    expect "$h lab-health" quiet in_host "$h" lab-health
}

check_apt_upgrade() {
    local h=$1
    expect_eq "$h lab-kernel before" "$(in_host "$h" dpkg-query -W -f "\${Version}" lab-kernel)" 1.0
    expect "$h no reboot-required yet" in_host "$h" test ! -e /var/run/reboot-required
    in_host "$h" apt-get update -qq
    in_host "$h" env DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq >/dev/null
    expect_eq "$h lab-kernel after" "$(in_host "$h" dpkg-query -W -f "\${Version}" lab-kernel)" 1.1
    expect_eq "$h version marker" "$(in_host "$h" cat /usr/share/lab-kernel/VERSION)" 1.1
    expect "$h /var/run/reboot-required" in_host "$h" test -e /var/run/reboot-required
}

check_agent_package() {
    local h=$1 pkg=$2 state
    "$LAB" exec "$h" -- mkdir -p /etc/pitcrew/agent.d
    printf 'coordinators = ["https://10.231.0.1:7443"]\nca_fingerprint = "sha256:%064d"\njoin_token = "lab-selftest"\n' 0 \
        >"$LAB_TMP/50-lab.toml"
    "$LAB" copy "$h" "$LAB_TMP/50-lab.toml" /etc/pitcrew/agent.d/50-lab.toml
    "$LAB" install "$h" "$pkg"
    sleep 2
    state=$(in_host "$h" systemctl is-active pitcrew-agent.service || true)
    expect_eq "$h pitcrew-agent ($(basename "$pkg"))" "$state" active
    in_host "$h" systemctl status --no-pager -n 5 pitcrew-agent.service >&2 || true
}

# newest FILE...: the most recently modified of the files.
newest() {
    local f best=""
    for f in "$@"; do
        [ -e "$f" ] || continue
        if [ -z "$best" ] || [ "$f" -nt "$best" ]; then best=$f; fi
    done
    [ -n "$best" ] || { fail "no package among: $*"; return 1; }
    echo "$best"
}

main() {
    while [ $# -gt 0 ]; do
        case $1 in
            --hosts) HOSTS=$2; shift 2 ;;
            --packages) PACKAGES=$2; shift 2 ;;
            *) echo "usage: $0 [--hosts N] [--packages DIR]" >&2; exit 2 ;;
        esac
    done
    [ "$HOSTS" -ge 3 ] || { echo "need at least 3 hosts" >&2; exit 2; }
    local names=() i
    for ((i = 1; i <= HOSTS; i++)); do names+=("h$i"); done
    LAB_TMP=$(mktemp -d)
    MACHINE_SHM=$(grep -c ' /dev/shm ' /proc/self/mountinfo)
    trap teardown EXIT

    say "deps and base"
    "$LAB" deps
    "$LAB" base
    say "up ${names[*]} (h3 with 2 extra /dev/shm mounts)"
    "$LAB" up --shm-extra h3=2 "${names[@]}"
    "$LAB" status
    say "boot, network, identity"
    check_boot_and_network "${names[@]}"
    say "reboot h2 from inside"
    check_reboot h2
    say "DC/OS runbook on the Mesos stand-in (h1)"
    check_mesos_drain h1
    say "/dev/shm stacking"
    check_shm h3 3
    check_shm h1 1
    say "swarm tools and health (h2)"
    check_swarm_tools h2
    say "apt upgrade lab-kernel 1.0 -> 1.1 (h3)"
    check_apt_upgrade h3
    if [ -n "$PACKAGES" ]; then
        say "agent packages"
        check_agent_package h1 "$(newest "$PACKAGES"/pitcrew-agent_*.deb)"
        check_agent_package h2 "$(newest "$PACKAGES"/pitcrew-agent-*.rpm)"
    fi
}

main "$@"
