//! `pitcrew campaign watch` as an operator uses it, over a real coordinator and agent: it goes
//! on across a coordinator restart and ends with the campaign, and Ctrl-C ends only the watch,
//! saying the campaign goes on and how to come back to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pitcrew_tests::{Coordinator, bin, start_fleet, wait_for};

/// A one-host campaign whose step waits until `gate` exists (the test opens it).
fn gated_campaign(dir: &Path, gate: &Path) -> PathBuf {
    let file = dir.join("gated.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"gated\"\n[[steps]]\nname = \"wait for the gate\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"while [ ! -e {} ]; do sleep 0.2; done\"]\ntimeout = \"5m\"\n",
            gate.display()
        ),
    )
    .unwrap();
    file
}

fn run(c: &Coordinator, file: &Path) -> String {
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `pitcrew campaign watch ID`, its output in files (not a terminal: one line per change).
fn spawn_watch(c: &Coordinator, id: &str, dir: &Path) -> (Child, PathBuf, PathBuf) {
    let out = dir.join("watch.out");
    let err = dir.join("watch.err");
    let child = Command::new(bin("pitcrew"))
        .args(["campaign", "watch", id])
        .envs(c.operator_env())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .unwrap();
    (child, out, err)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    wait_for("the watch to end", || child.try_wait().unwrap())
}

#[test]
fn a_watch_goes_on_across_a_coordinator_restart_and_ends_with_the_campaign() {
    let (mut c, _agents) = start_fleet(
        &[("w1", "worker")],
        "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let id = run(&c, &gated_campaign(dir.path(), &gate));
    let (mut watch, out, err) = spawn_watch(&c, &id, dir.path());
    wait_for("the watch to show the step running", || {
        read(&out).contains("wait for the gate").then_some(())
    });

    c.kill();
    c.start().unwrap();
    wait_for("the watch to say it watches again", || {
        read(&out).contains("watching again").then_some(())
    });
    assert!(
        watch.try_wait().unwrap().is_none(),
        "the watch ended with the coordinator: {}",
        read(&err)
    );

    std::fs::write(&gate, "").unwrap();
    let status = wait_exit(&mut watch);
    assert!(status.success(), "{}\n{}", read(&out), read(&err));
    assert!(read(&out).contains("gated: completed"), "{}", read(&out));
}

#[test]
fn ctrl_c_ends_only_the_watch_and_says_the_campaign_goes_on() {
    let (c, _agents) = start_fleet(
        &[("w1", "worker")],
        "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let id = run(&c, &gated_campaign(dir.path(), &gate));
    let (mut watch, out, err) = spawn_watch(&c, &id, dir.path());
    wait_for("the watch to show the campaign", || {
        read(&out).contains("gated: running").then_some(())
    });

    kill(Pid::from_raw(watch.id() as i32), Signal::SIGINT).unwrap();
    let status = wait_exit(&mut watch);
    assert_eq!(status.code(), Some(130), "{}", read(&err));
    let said = read(&err);
    assert!(said.contains(&format!("campaign {id} goes on")), "{said}");
    assert!(
        said.contains(&format!("pitcrew campaign watch {id}")),
        "{said}"
    );
    assert_eq!(c.cli_json(&["campaign", "show", &id])["state"], "running");
    std::fs::write(&gate, "").unwrap();
}
