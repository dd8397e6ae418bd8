//! The systemd D-Bus client (being written).
