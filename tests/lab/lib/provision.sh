# shellcheck shell=bash
# Workloads baked into the run's base tree (shared by every host through its overlay) and the
# per-host files written before a host first boots.

# provision_base TREE: tools, stand-in services, the lab apt source and lab-kernel 1.0.
provision_base() {
    local tree=$1 w="$LAB_DIR/workloads" unit
    repo_build
    install -d "$tree/usr/local/lib/pitcrew-lab" "$tree/etc/pitcrew-lab"
    install -m 0755 "$w"/bin/* "$tree/usr/local/bin/"
    install -m 0755 "$w"/libexec/* "$tree/usr/local/lib/pitcrew-lab/"
    for unit in "$w"/systemd/*.service; do
        install -m 0644 "$unit" "$tree/etc/systemd/system/"
        provision_enable "$tree" "$(basename "$unit")"
    done
    # Only pitcrew's patch action runs apt in the lab: no background apt runs holding its lock.
    # The console is read-only: no getty on it.
    for unit in apt-daily.timer apt-daily-upgrade.timer console-getty.service; do
        ln -sfn /dev/null "$tree/etc/systemd/system/$unit"
    done
    echo "deb [trusted=yes] http://$LAB_MACHINE_IP:$LAB_REPO_PORT/ ./" \
        >"$tree/etc/apt/sources.list.d/pitcrew-lab.list"
    # lab-kernel 1.0 preinstalled; the repository offers 1.1.
    cp "$(repo_dir)/lab-kernel_1.0_all.deb" "$tree/var/tmp/"
    chroot "$tree" dpkg -i /var/tmp/lab-kernel_1.0_all.deb >/dev/null
    rm -f "$tree/var/tmp/lab-kernel_1.0_all.deb" "$tree"/run/reboot-required*
    log "provision: workloads installed into the base ($(ls "$w"/systemd | tr '\n' ' '))"
}

# provision_enable TREE UNIT: what `systemctl enable` does, from the unit's [Install] WantedBy=.
provision_enable() {
    local tree=$1 unit=$2 target
    for target in $(sed -n 's/^WantedBy=//p' "$tree/etc/systemd/system/$unit"); do
        mkdir -p "$tree/etc/systemd/system/$target.wants"
        ln -sfn "/etc/systemd/system/$unit" "$tree/etc/systemd/system/$target.wants/$unit"
    done
}

# provision_host NAME OCTET SHM_EXTRA: identity and knobs of one host, written into its overlay.
provision_host() {
    local name=$1 octet=$2 shm=$3 root
    root=$(host_root "$name")
    new_machine_id >"$root/etc/machine-id"
    echo "$name" >"$root/etc/hostname"
    cat >"$root/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$name
$LAB_NET_PREFIX.$octet	$name.lab
$LAB_MACHINE_IP	lab-machine
HOSTS
    if [ "$shm" -gt 0 ]; then
        echo "$shm" >"$root/etc/pitcrew-lab/shm-extra"
    fi
}

new_machine_id() {
    if command -v systemd-id128 >/dev/null; then
        systemd-id128 new
    else
        tr -d '-' </proc/sys/kernel/random/uuid
    fi
}
