//! The `pitcrew` CLI says what is wrong with its connection set-up before it reaches anything.

use std::process::Command;

#[test]
fn the_cli_without_a_certificate_says_which_file_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args([
            "hosts",
            "--cert",
            "/nonexistent/admin.crt",
            "--ca",
            "/nonexistent/ca.crt",
            "--key",
            "/nonexistent/k",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
