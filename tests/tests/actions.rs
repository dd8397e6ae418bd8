//! `pitcrew do` over real mTLS with real agent processes: typed actions run as the host's
//! policy allows, refusals name their rule, and an action interrupted by an agent crash is
//! reported as such and never runs twice.

use std::path::Path;
use std::process::{Command, Stdio};

use pitcrew_tests::{Agent, Coordinator, bin, wait_connected, wait_for};

fn policy(work: &Path) -> String {
    format!(
        "[policy]\nremove_paths = [\"{}\"]\nexec = [[\"/bin/echo\"], [\"/bin/sh\", \"-c\"]]\n",
        work.display()
    )
}

fn start(policy_toml: impl FnOnce(&Path) -> String) -> (Coordinator, Agent, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::init().unwrap();
    coordinator.start().unwrap();
    let token = coordinator.token("worker", &[], 1);
    let mut agent = Agent::new(&coordinator, "w1", &token, &policy_toml(work.path())).unwrap();
    agent.start().unwrap();
    wait_connected(&coordinator, &agent.machine_id);
    (coordinator, agent, work)
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_do(c: &Coordinator, host: &str, args: &[&str]) -> Ran {
    let mut all = vec!["do", host];
    all.extend(args);
    let out = c.cli(&all);
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn exec_remove_path_and_health_run_and_a_refused_action_names_its_rule() {
    let (c, agent, work) = start(policy);
    let host = agent.machine_id.clone();

    let ran = run_do(&c, &host, &["exec", "--", "/bin/echo", "drained", "node-1"]);
    assert!(ran.ok, "{} {}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("drained node-1") && ran.stdout.contains("succeeded"),
        "{}",
        ran.stdout
    );

    // The DC/OS runbook's metadata pointer, under an allowed root.
    let latest = work.path().join("meta/slaves/latest");
    std::fs::create_dir_all(latest.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/etc", &latest).unwrap();
    let ran = run_do(&c, &host, &["remove-path", latest.to_str().unwrap()]);
    assert!(ran.ok, "{} {}", ran.stdout, ran.stderr);
    assert!(
        std::fs::symlink_metadata(&latest).is_err(),
        "the pointer is gone"
    );
    assert!(
        Path::new("/etc/hostname").exists() || Path::new("/etc").is_dir(),
        "its target is untouched"
    );
    let again = run_do(&c, &host, &["remove-path", latest.to_str().unwrap()]);
    assert!(
        again.ok,
        "removing a missing path succeeds: {}",
        again.stdout
    );

    let port = c.port.to_string();
    let ran = run_do(&c, &host, &["health", "tcp", "127.0.0.1", &port]);
    assert!(ran.ok, "{} {}", ran.stdout, ran.stderr);
    let closed = run_do(
        &c,
        &host,
        &["--timeout", "5s", "health", "tcp", "127.0.0.1", "1"],
    );
    assert!(!closed.ok, "a closed port is unhealthy");

    // Outside the policy: refused, naming the rule, and nothing happens.
    let ran = run_do(
        &c,
        &host,
        &[
            "exec",
            "--",
            "/usr/bin/touch",
            "/tmp/pitcrew-should-not-exist",
        ],
    );
    assert!(!ran.ok);
    assert!(
        ran.stdout.contains("refused") && ran.stdout.contains("policy.exec"),
        "{}",
        ran.stdout
    );
    assert!(!Path::new("/tmp/pitcrew-should-not-exist").exists());
    let ran = run_do(&c, &host, &["remove-path", "/etc/passwd"]);
    assert!(!ran.ok);
    assert!(ran.stdout.contains("policy.remove_paths"), "{}", ran.stdout);
    // For scripts: the outcome in words, with the rule.
    let ran = run_do(&c, &host, &["-o", "json", "remove-path", "/etc/passwd"]);
    let result: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(result["outcome"], "refused", "{}", ran.stdout);
    assert_eq!(result["refused_by"], "policy.remove_paths");
    assert!(Path::new("/etc/passwd").exists());
    let ran = run_do(&c, &host, &["unit", "stop", "ssh.service"]);
    assert!(!ran.ok);
    assert!(ran.stdout.contains("policy.units"), "{}", ran.stdout);

    // Every run is in the host's event log and the audit trail.
    let events = c.cli_json(&["events", "--host", &host]);
    let events = events.as_array().unwrap();
    assert!(events.iter().any(|e| e["result"] == "refused"));
    assert!(events.iter().any(|e| {
        e["kind"] == "audit"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("exec /bin/echo drained")
    }));
}

#[test]
fn an_exec_interrupted_by_an_agent_crash_is_reported_and_never_runs_twice() {
    let (c, mut agent, work) = start(policy);
    let host = agent.machine_id.clone();
    let marker = work.path().join("runs");
    let pidfile = work.path().join("pid");
    let script = format!(
        "echo $$ > {}; echo run >> {}; exec sleep 600",
        pidfile.display(),
        marker.display()
    );

    // Start a long action and wait until it has really started.
    let running = Command::new(bin("pitcrew"))
        .args([
            "do", &host, "--id", "long-1", "exec", "--", "/bin/sh", "-c", &script,
        ])
        .envs(c.operator_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the action to start", || {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|t| t.contains("run"))
    });

    // The agent dies mid-action; the operator's `do` ends saying the host went away.
    agent.kill();
    let out = running.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("disconnected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent died, its program did not: agents run with KillMode=process so that a
    // self-upgrade survives its own restart.
    let running_script = || {
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim()))
            .is_ok_and(|cmdline| cmdline.contains("sleep"))
    };
    assert!(
        running_script(),
        "the program should have outlived the killed agent"
    );

    // Restarted, the agent reports the action as interrupted by itself.
    agent.start().unwrap();
    let event = wait_for("the interrupted result", || {
        c.cli_json(&["events", "--host", &host])
            .as_array()
            .and_then(|events| {
                events
                    .iter()
                    .find(|e| e["step"] == "long-1" && e["result"] == "interrupted")
                    .cloned()
            })
    });
    assert!(
        event["message"].as_str().unwrap().contains("agent"),
        "{event}"
    );
    // ...and the restarted agent stopped what its predecessor left running.
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("left running were stopped"),
        "{event}"
    );
    wait_for("the leftover program to be gone", || {
        (!running_script()).then_some(())
    });

    // Sending the same id again returns the recorded result; the program does not run again.
    let again = run_do(
        &c,
        &host,
        &["--id", "long-1", "exec", "--", "/bin/sh", "-c", &script],
    );
    assert!(!again.ok);
    assert!(again.stdout.contains("interrupted"), "{}", again.stdout);
    let runs = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(runs.lines().count(), 1, "the action ran again: {runs:?}");
}

#[test]
fn a_duplicate_action_id_returns_the_first_result_without_running_again() {
    let (c, agent, work) = start(policy);
    let host = agent.machine_id.clone();
    let marker = work.path().join("count");
    let script = format!("echo once >> {}; echo done", marker.display());
    let first = run_do(
        &c,
        &host,
        &["--id", "dup-1", "exec", "--", "/bin/sh", "-c", &script],
    );
    assert!(first.ok, "{}", first.stderr);
    let second = run_do(
        &c,
        &host,
        &["--id", "dup-1", "exec", "--", "/bin/sh", "-c", &script],
    );
    assert!(second.ok, "{}", second.stderr);
    assert!(second.stdout.contains("done"), "{}", second.stdout);
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
}

#[test]
fn systemd_actions_say_clearly_when_no_systemd_runs_here() {
    let (c, agent, _work) = start(|_| "[policy]\nunits = [\"demo*.service\"]\n".to_owned());
    let ran = run_do(&c, &agent.machine_id, &["unit", "stop", "demo.service"]);
    if Path::new("/run/systemd/system").is_dir() {
        return; // A machine with systemd runs the real thing; the lab tests cover it.
    }
    assert!(!ran.ok);
    assert!(
        ran.stdout.contains("systemd is not reachable"),
        "{}",
        ran.stdout
    );
}

#[test]
fn interrupting_do_cancels_the_action_on_the_host() {
    let (c, agent, work) = start(policy);
    let host = agent.machine_id.clone();
    let marker = work.path().join("started");
    let pidfile = work.path().join("pid");
    let script = format!(
        "echo $$ > {}; touch {}; exec sleep 300",
        pidfile.display(),
        marker.display()
    );
    let program_alive = || {
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim()))
            .is_ok_and(|cmdline| cmdline.contains("sleep"))
    };
    let mut following = Command::new(bin("pitcrew"))
        .args([
            "do",
            &host,
            "--id",
            "interrupt-1",
            "exec",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .envs(c.operator_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the action to start", || marker.exists().then_some(()));
    // The shell touches the marker just before it execs `sleep`; while it execs, its command
    // line can read empty for a moment.
    wait_for("the program to run", || program_alive().then_some(()));
    // Ctrl-C on the operator's terminal.
    let _ = Command::new("kill")
        .args(["-INT", &following.id().to_string()])
        .status();
    let _ = following.wait();
    let event = wait_for("the cancelled result", || {
        c.cli_json(&["events", "--host", &host])
            .as_array()
            .and_then(|events| {
                events
                    .iter()
                    .find(|e| e["step"] == "interrupt-1" && e["result"] == "cancelled")
                    .cloned()
            })
    });
    assert!(event["message"].as_str().is_some());
    // The program is gone with its process group.
    wait_for("the program to be stopped", || {
        (!program_alive()).then_some(())
    });
}

#[test]
fn events_follow_streams_new_host_events_as_they_happen() {
    let (c, agent, _work) = start(policy);
    let host = agent.machine_id.clone();
    let mut follower = Command::new(bin("pitcrew"))
        .args([
            "events", "--follow", "--limit", "1", "--host", &host, "-o", "json",
        ])
        .envs(c.operator_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The backlog (the newest event) arrives first; then run an action and see it live.
    let first = lines_rx
        .recv_timeout(pitcrew_tests::DEADLINE)
        .expect("the backlog");
    assert!(first.contains(&host), "{first}");
    let ran = run_do(
        &c,
        &host,
        &["--id", "followed-1", "exec", "--", "/bin/echo", "live"],
    );
    assert!(ran.ok, "{}", ran.stderr);
    let deadline = std::time::Instant::now() + pitcrew_tests::DEADLINE;
    loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the live event");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["step"] == "followed-1" && event["result"] == "succeeded" {
            assert!(event["message"].as_str().unwrap().contains("live"));
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn escape_sequences_an_agent_sends_never_reach_the_operators_terminal() {
    let (c, agent, _work) = start(policy);
    let host = agent.machine_id.clone();
    // Output that would clear the screen and retitle the terminal if printed raw.
    let ran = run_do(
        &c,
        &host,
        &[
            "exec",
            "--",
            "/bin/sh",
            "-c",
            "printf 'before\\033[2J\\033]0;owned\\007after\\n'",
        ],
    );
    assert!(ran.ok, "{} {}", ran.stdout, ran.stderr);
    assert!(
        !ran.stdout.contains('\u{1b}') && !ran.stdout.contains('\u{7}'),
        "{:?}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("before\\u{1b}[2J\\u{1b}]0;owned\\u{7}after"),
        "the output is shown, escaped: {:?}",
        ran.stdout
    );
    // The event log shows it the same way.
    let out = c.cli(&["events", "--host", &host]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("owned") && !text.contains('\u{1b}'),
        "{text:?}"
    );
    // JSON keeps the exact bytes, escaped the JSON way, for scripts.
    let json = c.cli(&["events", "--host", &host, "-o", "json"]);
    let text = String::from_utf8_lossy(&json.stdout);
    assert!(text.contains("\\u001b[2J"), "{text}");
}
