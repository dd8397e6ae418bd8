//! Helpers shared by the agent's integration tests: an executor in a temp state dir, request
//! builders, and a check that a process is really gone.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pitcrew_agent::actions::{Executor, ExecutorOptions};
use pitcrew_agent::config::AgentConfig;
use pitcrew_proto::policy::{LocalPolicy, Policy};
use pitcrew_proto::v1;
use tokio::sync::mpsc;

pub mod fake_systemd;

/// A temp state dir with its own boot id file, and an executor over it.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: AgentConfig,
    pub options: ExecutorOptions,
}

impl Agent {
    pub fn new(policy: impl Into<LocalPolicy>) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::for_tests(&dir.path().join("state"));
        config.host.boot_id_file = dir.path().join("boot_id");
        std::fs::write(&config.host.boot_id_file, "boot-one\n").unwrap();
        config.policy = policy.into();
        Agent {
            dir,
            config,
            options: ExecutorOptions::default(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn set_boot_id(&self, id: &str) {
        std::fs::write(&self.config.host.boot_id_file, format!("{id}\n")).unwrap();
    }

    pub fn open(&self) -> Arc<Executor> {
        Executor::open_with(&self.config, self.options.clone()).unwrap()
    }
}

pub fn request(id: &str, kind: v1::action::Kind, timeout_seconds: u32) -> v1::ActionRequest {
    v1::ActionRequest {
        action_id: id.into(),
        action: Some(v1::Action { kind: Some(kind) }),
        timeout_seconds,
    }
}

pub fn exec(argv: &[&str]) -> v1::action::Kind {
    v1::action::Kind::Exec(v1::Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

pub fn sh_policy() -> Policy {
    Policy {
        exec: vec![vec!["/bin/sh".into(), "-c".into()]],
        ..Default::default()
    }
}

/// Runs a request to completion, collecting its events.
pub async fn run(
    executor: &Arc<Executor>,
    request: v1::ActionRequest,
) -> (v1::ActionResult, Vec<v1::ActionEvent>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let result = executor.clone().execute(request, tx).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (result, events)
}

pub fn outcome(result: &v1::ActionResult) -> v1::Outcome {
    v1::Outcome::try_from(result.outcome).unwrap()
}

/// Whether a process is alive (a zombie counts as dead: it runs no code any more).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the ")" that closes the command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Waits for a line on an event stream (the action's own output says it is ready).
pub async fn wait_for_log(rx: &mut mpsc::Receiver<v1::ActionEvent>, needle: &str) {
    while let Some(event) = rx.recv().await {
        if let Some(v1::action_event::Event::Log(line)) = event.event
            && line.contains(needle)
        {
            return;
        }
    }
    panic!("the event stream ended before {needle:?} was logged");
}

pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether root-only tests should run; prints why not when they should not.
pub fn root_tests_enabled(test: &str) -> bool {
    if std::env::var("PITCREW_ROOT_TESTS").as_deref() == Ok("1") {
        true
    } else {
        eprintln!("skipping {test}: set PITCREW_ROOT_TESTS=1 (as root) to run it");
        false
    }
}
