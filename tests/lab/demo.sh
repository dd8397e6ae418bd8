#!/bin/bash
# pitcrew's main job, on a lab fleet: build the packages, boot six real Debian hosts with systemd
# (three swarm workers, three managers), install the agent on each from the .deb or .rpm, enroll
# them with a coordinator on this machine, and run the Swarm/UCP patching campaign of
# examples/swarm-patch.toml live: workers first, then managers one at a time, each backed up,
# drained, patched, rebooted for real, undrained and health-checked before the next.
#
#   tests/lab/demo.sh            run it, then tear the fleet down
#   PITCREW_LAB_KEEP=1 tests/lab/demo.sh    keep the fleet and coordinator up to explore
#
# Needs root (it boots containers and creates network namespaces).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB="$ROOT/tests/lab/lab.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PACKAGES="$TARGET/packages"
DEMO=/var/tmp/pitcrew-demo
PORT=7443
WORKERS=(w1 w2 w3)
MANAGERS=(m1 m2 m3)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (the lab boots systemd-nspawn containers)"

cleanup() {
    local rc=$?
    if [ "${PITCREW_LAB_KEEP:-0}" = 1 ] && [ "$rc" = 0 ]; then
        say "the fleet stays up (PITCREW_LAB_KEEP=1)"
        echo "  export PITCREW_COORDINATOR=https://10.231.0.1:$PORT PITCREW_CA=$DEMO/ca.crt \\"
        echo "         PITCREW_CERT=$DEMO/operator/admin.crt PITCREW_KEY=$DEMO/operator/admin.key"
        echo "  $TARGET/release/pitcrew hosts"
        echo "  $TARGET/release/pitcrew dashboard   # a one-time link to the web dashboard on https://127.0.0.1:7444"
        echo "  when done: kill \$(cat $DEMO/serve.pid); $LAB down"
        return
    fi
    say "tearing the lab fleet down"
    [ -f "$DEMO/serve.pid" ] && kill "$(cat "$DEMO/serve.pid")" 2>/dev/null || true
    "$LAB" down >/dev/null 2>&1 || true
    exit "$rc"
}

say "installing what the lab needs (only what is missing)"
"$LAB" deps

say "building pitcrew and its .deb and .rpm packages"
"$ROOT/packaging/build-packages.sh"
DEB=$(ls -t "$PACKAGES"/pitcrew-agent_*.deb | head -1)
RPM=$(ls -t "$PACKAGES"/pitcrew-agent-*.rpm | head -1)
PITCREW="$TARGET/release/pitcrew"
COORDINATOR="$TARGET/release/pitcrew-coordinator"

"$LAB" down >/dev/null 2>&1 || true
trap cleanup EXIT

say "booting six lab hosts with systemd as PID 1"
"$LAB" up "${WORKERS[@]}" "${MANAGERS[@]}"

say "starting the coordinator on 10.231.0.1:$PORT (embedded SQLite store in $DEMO)"
rm -rf "$DEMO"
"$COORDINATOR" init --data-dir "$DEMO" --san 10.231.0.1 --san 127.0.0.1 --listen "10.231.0.1:$PORT" | tee "$DEMO.init"
FINGERPRINT=$(grep '^ca_fingerprint' "$DEMO.init")
"$COORDINATOR" serve --data-dir "$DEMO" >"$DEMO/serve.log" 2>&1 &
echo $! >"$DEMO/serve.pid"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/10.231.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
export PITCREW_COORDINATOR="https://10.231.0.1:$PORT" PITCREW_CA="$DEMO/ca.crt" \
    PITCREW_CERT="$DEMO/operator/admin.crt" PITCREW_KEY="$DEMO/operator/admin.key"

say "installing the agent on every host (.deb on some, .rpm on others) and enrolling it"
i=0
for host in "${WORKERS[@]}" "${MANAGERS[@]}"; do
    role=worker
    labels=(--label cluster=swarm-a)
    case $host in m*) role=manager ;; esac
    [ "$host" = m3 ] && labels+=(--label leader=true)
    token=$("$PITCREW" token create --role "$role" "${labels[@]}" --uses 1 --ttl 1h 2>/dev/null)
    dropin=$(mktemp)
    cat >"$dropin" <<EOF
# Written by the pitcrew demo: where to enroll, and what this host allows.
coordinators = ["https://10.231.0.1:$PORT"]
$FINGERPRINT
join_token = "$token"
heartbeat_seconds = 2
[policy]
units = ["dcos-mesos-slave.service", "docker.service", "lab-app.service"]
allow_patch = true
allow_reboot = true
allow_dedupe_shm = true
exec = [["/usr/local/bin/ucp-backup"], ["/usr/local/bin/swarm-node", "update"], ["/usr/local/bin/lab-health"]]
EOF
    "$LAB" copy "$host" "$dropin" /etc/pitcrew/agent.d/50-lab.toml
    rm -f "$dropin"
    "$LAB" exec "$host" -- chmod 0600 /etc/pitcrew/agent.d/50-lab.toml
    if [ $((i % 2)) = 0 ]; then pkg=$DEB; else pkg=$RPM; fi
    echo "  $host ($role): installing $(basename "$pkg")"
    "$LAB" install "$host" "$pkg" >/dev/null
    i=$((i + 1))
done

for _ in $(seq 300); do
    connected=$("$PITCREW" hosts -o json | grep -c '"connected": true' || true)
    [ "$connected" = 6 ] && break
    sleep 0.2
done
[ "$connected" = 6 ] || die "only $connected of 6 agents connected; see $DEMO/serve.log"
"$PITCREW" hosts

say "the campaign: examples/swarm-patch.toml (lab timing: no 2-minute dwell, short gate retries)"
CAMPAIGN="$DEMO/swarm-patch.toml"
sed -e 's/^dwell = "2m"/dwell = "2s"/' -e 's/retry_delay = "30s"/retry_delay = "2s"/' \
    "$ROOT/examples/swarm-patch.toml" >"$CAMPAIGN"
"$PITCREW" campaign plan "$CAMPAIGN"

say "running it live"
"$PITCREW" campaign run "$CAMPAIGN" --watch

say "what happened on m2, from its event log"
"$PITCREW" events --host m2 --limit 30

say "done: every host patched to lab-kernel 1.1 and rebooted once, managers one at a time"
for host in "${WORKERS[@]}" "${MANAGERS[@]}"; do
    printf '  %-3s lab-kernel %s, reboots %s\n' "$host" \
        "$("$LAB" exec "$host" -- cat /usr/share/lab-kernel/VERSION)" "$("$LAB" reboot-count "$host")"
done
cat <<EOF

Where to look next:
  pitcrew campaign ls / show ID      every host's state and what it waited for
  pitcrew events --campaign ID       each step's result and the audit trail
  examples/README.md                 every key of a campaign file; one example per runbook
  ARCHITECTURE.md                    how the coordinator, scheduler and agents fit together
EOF
