//! `pitcrew-coordinator` refuses bad set-ups with a message naming the file and field.

use std::process::Command;

#[test]
fn serve_with_a_corrupt_config_names_the_file_and_field_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    let init = Command::new(env!("CARGO_BIN_EXE_pitcrew-coordinator"))
        .args(["init", "--data-dir"])
        .arg(&data)
        .args(["--san", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stdout).contains("ca_fingerprint = \"sha256:"));

    std::fs::write(
        data.join("coordinator.toml"),
        "listen = \"0.0.0.0:7443\"\nheartbeat_secnds = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pitcrew-coordinator"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("coordinator.toml")
            && stderr.contains("heartbeat_secnds")
            && stderr.contains("line 2"),
        "{stderr}"
    );

    std::fs::remove_file(data.join("coordinator.toml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pitcrew-coordinator"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("coordinator.toml"));
}

#[test]
fn init_refuses_to_overwrite_an_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_pitcrew-coordinator"))
            .args(["init", "--data-dir"])
            .arg(dir.path())
            .args(["--san", "localhost"])
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let key_before = std::fs::read(dir.path().join("ca.key")).unwrap();
    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(dir.path().join("ca.key")).unwrap(),
        key_before
    );
}
