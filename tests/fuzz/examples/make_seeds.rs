//! Writes the seeds of the fuzz corpora (`corpus/<target>/seed-*`) from the repository's real
//! inputs: the example campaigns, the packaged agent configuration, the example policies, and
//! encoded session messages of every kind. The other text seeds (the campaign with every action
//! kind, mount tables) are plain files in the corpus and are not made here.
//!
//! Run from the repository root: `cargo run --manifest-path tests/fuzz/Cargo.toml --example
//! make_seeds`. It overwrites only the files it makes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pitcrew_fuzz::permissive_policy;
use pitcrew_proto::policy::LocalPolicy;
use pitcrew_proto::v1::{
    self, AgentMessage, CoordinatorMessage, action::Kind, action_event, agent_message,
    coordinator_message, health::Check,
};
use prost::Message;

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.join("../..");
    let corpus = fuzz.join("corpus");
    campaigns(&repo, &corpus.join("campaign_spec"));
    agent_config(&repo, &corpus.join("agent_config"));
    policy(&repo, &corpus.join("policy"));
    session_messages(&corpus.join("session_messages"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path: PathBuf = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("{}", path.display());
}

/// The example campaigns, as they are (`seed-<name>.toml`), so the seeds follow the examples.
fn campaigns(repo: &Path, dir: &Path) {
    let examples = repo.join("examples");
    let entries =
        std::fs::read_dir(&examples).unwrap_or_else(|e| panic!("{}: {e}", examples.display()));
    for entry in entries {
        let path = entry.expect("an entry of examples/").path();
        if path.extension().is_some_and(|x| x == "toml") {
            let name = path.file_name().expect("a file name").to_string_lossy();
            let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            write(dir, &name, &text);
        }
    }
}

/// Parts joined with NUL, as the targets split them.
fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&0u8)
}

fn agent_config(repo: &Path, dir: &Path) {
    let packaged = std::fs::read(repo.join("packaging/config/agent.toml"))
        .expect("packaging/config/agent.toml");
    write(dir, "packaged", &packaged);
    let join = b"coordinators = [\"https://coordinator.example:7443\"]\n\
        ca_fingerprint = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n\
        join_token = \"pcj_abc_secret\"\n";
    let lab = b"[host]\nhostname = \"worker-1\"\n\n[policy]\nunits = [\"docker.service\", \"dcos-*.service\"]\n\
        remove_paths = [\"/var/lib/mesos/slave/meta\"]\nallow_patch = true\nallow_reboot = true\n\
        exec = [[\"/usr/local/bin/ucp-backup\"], { argv = [\"/usr/bin/docker\", \"node\"], env = [\"DOCKER_CONFIG\"] }]\n\
        health_targets = [\"127.0.0.1\", \"10.0.0.0/8:8080\", \"[fd00::/8]:9000-9100\"]\n\
        signals = [\"USR1\", \"SIGTERM\"]\n";
    let skipped = b"heartbeat_seconds = 0\n";
    write(
        dir,
        "packaged-with-dropins",
        &joined(&[&packaged, join, lab, b"heartbeat_seconds = 2\n", skipped]),
    );
    write(
        dir,
        "bad-dropin",
        &joined(&[
            &packaged,
            b"[policy]\nexec = [{ argv = [\"/x\"], env = [\"PATH\"] }]\n",
        ]),
    );
}

/// A `[policy]` table's TOML followed by a NUL and an encoded action.
fn policy(repo: &Path, dir: &Path) {
    let packaged = std::fs::read_to_string(repo.join("packaging/config/agent.toml"))
        .expect("packaging/config/agent.toml");
    let table = packaged
        .split_once("[policy]\n")
        .map(|(_, t)| t.to_owned())
        .expect("the packaged file has a [policy] table");
    let lab = toml::to_string(&permissive_policy()).expect("a policy serialises");
    let with_env = toml::to_string(&LocalPolicy {
        exec: vec![pitcrew_proto::policy::ExecRule {
            argv: vec!["/usr/local/bin/ucp-backup".into()],
            env: vec!["BACKUP_DIR".into()],
        }],
        health_targets: vec![
            "127.0.0.1:8080".into(),
            "[::1]:*".into(),
            "10.0.0.0/8".into(),
        ],
        signals: vec!["SIGUSR1".into(), "KILL".into()],
        ..permissive_policy()
    })
    .expect("a policy serialises");
    for (i, action) in actions().iter().enumerate() {
        let encoded = action.encode_to_vec();
        let table = match i % 3 {
            0 => table.as_bytes(),
            1 => lab.as_bytes(),
            _ => with_env.as_bytes(),
        };
        write(dir, &format!("action-{i:02}"), &joined(&[table, &encoded]));
    }
}

/// One action of every kind (and checks of every health kind), as campaigns send them.
fn actions() -> Vec<v1::Action> {
    let action = |kind| v1::Action { kind: Some(kind) };
    let health = |check| action(Kind::Health(v1::Health { check: Some(check) }));
    vec![
        action(Kind::Unit(v1::UnitAction {
            unit: "docker.service".into(),
            operation: v1::UnitOperation::Stop as i32,
            hold: true,
        })),
        action(Kind::SignalUnit(v1::SignalUnit {
            unit: "dcos-mesos-slave.service".into(),
            signal: "SIGUSR1".into(),
            target: v1::SignalTarget::Main as i32,
            wait: v1::SignalWait::Exit as i32,
            wait_seconds: 300,
        })),
        action(Kind::WaitUnit(v1::WaitUnit {
            unit: "docker.service".into(),
            state: v1::UnitState::Active as i32,
        })),
        action(Kind::DaemonReload(v1::DaemonReload {})),
        action(Kind::RemovePath(v1::RemovePath {
            path: "/var/lib/mesos/slave/meta/slaves/latest".into(),
            recursive: true,
        })),
        action(Kind::DedupeShm(v1::DedupeShm {})),
        action(Kind::Patch(v1::Patch {
            packages: vec!["openssl".into(), "g++:amd64".into()],
            lock_timeout_seconds: 300,
        })),
        action(Kind::Reboot(v1::Reboot {
            only_if_required: true,
            poweroff: false,
        })),
        health(Check::UnitActive("docker.service".into())),
        health(Check::Tcp(v1::TcpCheck {
            host: "127.0.0.1".into(),
            port: 2377,
        })),
        health(Check::Http(v1::HttpCheck {
            url: "http://[::1]:8080/health?full=1".into(),
            expect_status: 200,
        })),
        health(Check::Command(v1::CommandCheck {
            argv: vec!["/usr/local/bin/lab-health".into()],
        })),
        action(Kind::Exec(v1::Exec {
            argv: vec!["/usr/local/bin/ucp-backup".into(), "--all".into()],
            env: HashMap::from([("BACKUP_DIR".into(), "/var/backups".into())]),
            workdir: "/var/backups".into(),
        })),
        action(Kind::ReleaseHolds(v1::ReleaseHolds {
            holds: vec![v1::HeldUnit {
                unit: "docker.service".into(),
                hold_id: "c-1:w1:main-0:a1".into(),
            }],
        })),
    ]
}

fn session_messages(dir: &Path) {
    let to_agent = |msg| CoordinatorMessage { msg: Some(msg) }.encode_to_vec();
    let to_coordinator = |msg| AgentMessage { msg: Some(msg) }.encode_to_vec();

    write(
        dir,
        "welcome",
        &to_agent(coordinator_message::Msg::Welcome(v1::Welcome {
            heartbeat_seconds: 5,
        })),
    );
    for (i, action) in actions().into_iter().enumerate() {
        let request = v1::ActionRequest {
            action_id: format!("c-1:w1:main-{i}:a1"),
            action: Some(action),
            timeout_seconds: 60,
        };
        write(
            dir,
            &format!("request-{i:02}"),
            &to_agent(coordinator_message::Msg::Action(request)),
        );
    }
    write(
        dir,
        "request-unsafe-id",
        &to_agent(coordinator_message::Msg::Action(v1::ActionRequest {
            action_id: "../../etc/passwd".into(),
            action: Some(v1::Action {
                kind: Some(Kind::DaemonReload(v1::DaemonReload {})),
            }),
            timeout_seconds: 0,
        })),
    );
    write(
        dir,
        "cancel",
        &to_agent(coordinator_message::Msg::Cancel(v1::CancelAction {
            action_id: "c-1:w1:main-0:a1".into(),
        })),
    );
    write(
        dir,
        "ack",
        &to_agent(coordinator_message::Msg::Ack(v1::AckResults {
            action_ids: vec!["c-1:w1:main-0:a1".into(), "c-1:w1:main-1:a1".into()],
        })),
    );

    let result = |outcome: v1::Outcome, started_at_ms| v1::ActionResult {
        action_id: "c-1:w1:main-0:a1".into(),
        outcome: outcome as i32,
        message: format!("{outcome:?}"),
        output: "line 1\nline 2\n".into(),
        refused_by: if outcome == v1::Outcome::Refused {
            "policy.exec".into()
        } else {
            String::new()
        },
        details: HashMap::from([("boot_id_after".into(), "w1-boot-2".into())]),
        started_at_ms,
        finished_at_ms: started_at_ms + 1_000,
    };
    let facts = v1::Facts {
        host_id: "w1".into(),
        hostname: "worker-1".into(),
        role: "worker".into(),
        labels: HashMap::from([("cluster".into(), "swarm-a".into())]),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12.0".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 4 << 30,
        disks: vec![v1::Disk {
            mount_point: "/".into(),
            filesystem: "ext4".into(),
            total_bytes: 100 << 30,
            available_bytes: 50 << 30,
        }],
        uptime_seconds: 3_600,
        boot_id: "w1-boot-1".into(),
        reboot_required: true,
        shm_tmpfs_mounts: 2,
        agent_version: "0.1.0".into(),
        package_manager: "apt".into(),
        systemd: true,
        policy: Some(permissive_policy().to_proto()),
        held_units: vec![v1::HeldUnit {
            unit: "docker.service".into(),
            hold_id: "c-1:w1:main-0:a1".into(),
        }],
        pending_updates: Some(3),
    };
    write(
        dir,
        "hello",
        &to_coordinator(agent_message::Msg::Hello(v1::Hello {
            facts: Some(facts.clone()),
            agent_version: "0.1.0".into(),
            unacknowledged: vec![
                result(v1::Outcome::Succeeded, 1),
                result(v1::Outcome::Interrupted, 2),
            ],
            running: vec!["c-1:w1:main-1:a1".into()],
        })),
    );
    let strict = v1::Facts {
        policy: Some(LocalPolicy::default().to_proto()),
        ..facts.clone()
    };
    write(
        dir,
        "facts",
        &to_coordinator(agent_message::Msg::Facts(strict)),
    );
    write(
        dir,
        "heartbeat",
        &to_coordinator(agent_message::Msg::Heartbeat(v1::Heartbeat { seq: 7 })),
    );
    for (i, outcome) in [
        v1::Outcome::Succeeded,
        v1::Outcome::Failed,
        v1::Outcome::Refused,
        v1::Outcome::TimedOut,
        v1::Outcome::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let event = v1::ActionEvent {
            action_id: "c-1:w1:main-0:a1".into(),
            event: Some(action_event::Event::Result(result(outcome, i as i64 * 3))),
        };
        write(
            dir,
            &format!("result-{i}"),
            &to_coordinator(agent_message::Msg::Event(event)),
        );
    }
    let progress = v1::ActionEvent {
        action_id: "c-1:w1:main-0:a1".into(),
        event: Some(action_event::Event::Progress(v1::ActionProgress {
            percent: 50,
            stage: "downloading".into(),
        })),
    };
    write(
        dir,
        "progress",
        &to_coordinator(agent_message::Msg::Event(progress)),
    );
}
