//! The reboot action through a stand-in systemd-logind on a private bus: accepted, refused,
//! and the bus dropping mid-call as a real shutdown does (which is not a failure). The real
//! logind is exercised by the lab tests; the PID-namespace path by tests/namespaces.rs.

mod support;

use pitcrew_proto::policy::Policy;
use pitcrew_proto::v1::{self, Outcome, action::Kind};
use support::fake_systemd::{FakeLogind, LogindAnswer};
use support::*;
use tokio::sync::mpsc;

fn agent_on(logind: &FakeLogind) -> Agent {
    let mut agent = Agent::new(Policy {
        allow_reboot: true,
        ..Default::default()
    });
    agent.options.system_bus_address = Some(logind.address.clone());
    agent
}

fn reboot(poweroff: bool) -> Kind {
    Kind::Reboot(v1::Reboot {
        only_if_required: false,
        poweroff,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_reboot_journals_the_boot_id_first_and_then_waits_for_the_end() {
    let mut logind = FakeLogind::start(LogindAnswer::Accept).await;
    let agent = agent_on(&logind);
    let executor = agent.open();
    let (tx, _rx) = mpsc::channel(16);
    let task = tokio::spawn(
        executor
            .clone()
            .execute(request("rb-1", reboot(false), 1), tx),
    );
    assert_eq!(logind.next_call().await, "reboot");
    // By the time logind is asked, the journal holds the intent and the boot id.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.config.state_dir.join("journal/rb-1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["kind"], "reboot");
    assert_eq!(record["boot_id"], "boot-one");
    assert!(record.get("result_hex").is_none(), "no result yet");
    // The host stays up here, so the action ends only at its deadline, saying so.
    let result = task.await.unwrap();
    assert_eq!(outcome(&result), Outcome::TimedOut, "{}", result.message);
    assert!(
        result
            .message
            .contains("accepted the reboot but the host was still up"),
        "{}",
        result.message
    );
    assert_eq!(result.details["boot_id_before"], "boot-one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_asks_logind_for_power_off() {
    let mut logind = FakeLogind::start(LogindAnswer::Accept).await;
    let agent = agent_on(&logind);
    let executor = agent.open();
    let (tx, _rx) = mpsc::channel(16);
    let task = tokio::spawn(
        executor
            .clone()
            .execute(request("po-1", reboot(true), 1), tx),
    );
    assert_eq!(logind.next_call().await, "poweroff");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_logind_is_a_failure_with_its_reason() {
    let logind = FakeLogind::start(LogindAnswer::Deny).await;
    let agent = agent_on(&logind);
    let executor = agent.open();
    let (result, _) = run(&executor, request("rb-2", reboot(false), 0)).await;
    assert_eq!(outcome(&result), Outcome::Failed);
    assert!(
        result
            .message
            .starts_with("systemd-logind refused to reboot"),
        "{}",
        result.message
    );
    assert!(
        result
            .message
            .contains("Interactive authentication required"),
        "{}",
        result.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_dropping_during_the_call_counts_as_accepted() {
    let mut logind = FakeLogind::start(LogindAnswer::Hang).await;
    let agent = agent_on(&logind);
    let executor = agent.open();
    let (tx, _rx) = mpsc::channel(16);
    let task = tokio::spawn(
        executor
            .clone()
            .execute(request("rb-3", reboot(false), 2), tx),
    );
    assert_eq!(logind.next_call().await, "reboot");
    // The shutdown takes the bus away before logind replies ("connection reset by peer").
    drop(logind.bus.take());
    let result = task.await.unwrap();
    assert_eq!(outcome(&result), Outcome::TimedOut, "{}", result.message);
    assert!(
        result.message.contains("accepted the reboot"),
        "{}",
        result.message
    );
    // Had the host gone down, the next start would prove it by the boot id.
    drop(executor);
}

#[tokio::test]
async fn only_if_required_without_a_reboot_required_succeeds_at_once() {
    if std::path::Path::new("/run/reboot-required").exists()
        || std::path::Path::new("/var/run/reboot-required").exists()
    {
        eprintln!("skipping: this machine says it needs a reboot");
        return;
    }
    let mut agent = Agent::new(Policy {
        allow_reboot: true,
        ..Default::default()
    });
    agent.options.system_bus_address = Some("unix:path=/nonexistent/bus".into());
    let executor = agent.open();
    let (result, _) = run(
        &executor,
        request(
            "rb-4",
            Kind::Reboot(v1::Reboot {
                only_if_required: true,
                poweroff: false,
            }),
            0,
        ),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Succeeded, "{}", result.message);
    assert!(
        result.message.contains("no reboot is required"),
        "{}",
        result.message
    );
    assert_eq!(result.details["rebooted"], "false");
}
