# shellcheck shell=bash
# Lab networking (LAB.md trap 3): a bridge pcbr0 holding 10.231.0.1/24 on the machine side, and per
# host a network namespace with a veth whose peer sits in the bridge. Nothing is routed or NATed:
# traffic stays on the bridge.

net_bridge_up() {
    if ! ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
        log "net: bridge $LAB_BRIDGE $LAB_MACHINE_IP/24"
        ip link add "$LAB_BRIDGE" type bridge
        ip addr add "$LAB_MACHINE_IP/24" dev "$LAB_BRIDGE"
    fi
    ip link set "$LAB_BRIDGE" up
}

net_bridge_down() {
    if ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
        log "net: deleting bridge $LAB_BRIDGE"
        ip link del "$LAB_BRIDGE"
    fi
}

# net_host_up NAME INDEX: netns pclab-NAME with eth0 = 10.231.0.(INDEX), default route via .1.
net_host_up() {
    local name=$1 octet=$2 ns veth
    ns=$(host_netns "$name")
    veth="pcv$octet"
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$veth" 2>/dev/null || true
    ip netns add "$ns"
    ip link add "$veth" type veth peer name "pcp$octet"
    ip link set "pcp$octet" netns "$ns"
    ip link set "$veth" master "$LAB_BRIDGE" up
    ip -n "$ns" link set "pcp$octet" name eth0
    ip -n "$ns" addr add "$LAB_NET_PREFIX.$octet/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$LAB_MACHINE_IP"
}

net_host_down() {
    local name=$1 ns octet
    ns=$(host_netns "$name")
    octet=$(cat "$(host_dir "$name")/octet" 2>/dev/null || true)
    if [ -n "$octet" ]; then
        ip link del "pcv$octet" 2>/dev/null || true
    fi
    if ip netns list | grep -qw "^$ns"; then
        ip netns del "$ns"
    fi
}

# Delete every lab netns and veth, even ones whose host directory is gone.
net_sweep() {
    local ns link
    for ns in $(ip netns list | awk '{print $1}' | grep '^pclab-' || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^pcv[0-9]' || true); do
        ip link del "$link" 2>/dev/null || true
    done
    net_bridge_down
}
