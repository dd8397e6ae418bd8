//! Scale: a real coordinator process and 2,000 simulated agents in this process, each enrolled
//! with its own key and certificate over real mTLS on loopback and running the agent's own
//! session code. One campaign over all of them must complete with every host done, and no
//! session may be lost on the way.

use std::time::{Duration, Instant};

use pitcrew_tests::Coordinator;
use pitcrew_tests::fleet::{self, FleetOptions, SimFleet};

const HOSTS: usize = 2_000;

#[test]
fn a_campaign_over_two_thousand_simulated_agents_completes_with_no_session_lost() {
    pitcrew_proto::tls::install_crypto_provider();
    // Two thousand sessions need two thousand sockets here and in the coordinator (a child
    // started afterwards inherits the limit).
    let limit = fleet::raise_open_files_limit().expect("raising the open files limit");
    assert!(
        limit > 2 * HOSTS as u64 + 256,
        "the open files limit ({limit}) is too low for {HOSTS} sessions"
    );
    let mut coordinator = Coordinator::init().expect("coordinator init");
    // The product's heartbeat (5 s, 15 s of silence), not the harness's quick 1 s / 3 s.
    coordinator.set_heartbeat(5, 15);
    coordinator.start().expect("coordinator start");
    let token = coordinator.token("worker", &[("fleet", "sim")], HOSTS as u32);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let (enrolled, outcome, counters) = runtime.block_on(async {
        let mut sims = SimFleet::new(FleetOptions::for_coordinator(&coordinator));
        let enrolled = sims.enroll(HOSTS, &token, Duration::from_secs(120)).await;
        assert_eq!(
            enrolled.enrolled, HOSTS,
            "not every host enrolled: {enrolled:?}"
        );
        sims.start();
        let connected = sims.wait_connected(HOSTS, Duration::from_secs(90)).await;
        assert_eq!(
            connected.connected_now, HOSTS as u64,
            "not every host connected: {connected:?}"
        );
        let mut admin = fleet::admin(&coordinator).await.expect("an Admin client");
        let spec = fleet::noop_campaign("fleet-scale", &[("fleet", "sim")], 200);
        let outcome = fleet::run_campaign(&mut admin, &spec, HOSTS, Duration::from_secs(120))
            .await
            .expect("the campaign is created");
        let counters = sims.shutdown(Duration::from_secs(30)).await;
        (enrolled, outcome, counters)
    });
    eprintln!(
        "{HOSTS} hosts: enrolled in {:.1?}, campaign {:.1?}, whole test {:.1?}; {counters:?}",
        enrolled.elapsed,
        outcome.elapsed,
        started.elapsed()
    );
    assert!(
        outcome.completed(),
        "the campaign did not complete: {outcome:?}"
    );
    assert_eq!(outcome.hosts, HOSTS, "{outcome:?}");
    assert_eq!(outcome.done, HOSTS, "not every host is done: {outcome:?}");
    assert!(
        counters.actions_answered >= HOSTS as u64,
        "fewer actions answered than hosts: {counters:?}"
    );
    assert_eq!(
        counters.sessions_lost, 0,
        "sessions were lost: {counters:?}"
    );
    assert!(
        coordinator
            .proc
            .as_mut()
            .is_some_and(|p| p.exited().is_none()),
        "the coordinator died:\n{}",
        coordinator.log()
    );
    coordinator.stop();
}
