//! `pitcrew-bench failover`: the figures of a fleet on PostgreSQL. Campaign throughput on the
//! embedded SQLite store and on PostgreSQL, side by side (one coordinator each, the same
//! simulated fleet size and campaign), then three coordinators on one PostgreSQL database with
//! the leader SIGKILLed in the middle of a campaign: how long until a standby leads, and until
//! the fleet runs the new leader's first actions.

use std::time::{Duration, Instant};

use crate::fleet::{self, FleetOptions, SimFleet};
use crate::{Coordinator, share_leadership};

/// What `pitcrew-bench failover` was asked for.
#[derive(Debug, Clone)]
pub struct FailoverBench {
    /// Simulated agents in each fleet.
    pub agents: usize,
    /// Workers out of service at once.
    pub concurrency: usize,
    /// How long each simulated action takes in the failover campaign (so it is still running
    /// when the leader is killed).
    pub action_delay: Duration,
}

/// Prints every figure; errors end the run early with what was measured so far.
pub fn run(bench: &FailoverBench) -> anyhow::Result<()> {
    fleet::raise_open_files_limit()?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "campaign throughput, {} simulated workers, {} at once, exec /bin/true:",
        bench.agents, bench.concurrency
    );
    let mut sqlite = Coordinator::init()?;
    sqlite.set_heartbeat(5, 15);
    sqlite.start()?;
    runtime.block_on(throughput("SQLite (embedded)", bench, &sqlite))?;
    sqlite.kill();
    let Some(mut postgres) = Coordinator::init_postgres()? else {
        anyhow::bail!("PostgreSQL is not installed (apt-get install postgresql)");
    };
    postgres.set_heartbeat(5, 15);
    postgres.start()?;
    runtime.block_on(throughput("PostgreSQL", bench, &postgres))?;
    postgres.kill();
    runtime.block_on(failover(bench))
}

/// Enrolls and connects `agents` simulated workers to `coordinators` (the first leads).
async fn fleet_of(
    bench: &FailoverBench,
    coordinators: &[&Coordinator],
    action_delay: Duration,
) -> anyhow::Result<SimFleet> {
    let mut options = FleetOptions::for_coordinator(coordinators[0]);
    options.coordinators = coordinators.iter().map(|c| c.address()).collect();
    options.action_delay = action_delay;
    let mut sims = SimFleet::new(options);
    let mut admin = fleet::admin(coordinators[0]).await?;
    let token = fleet::create_token(
        &mut admin,
        "worker",
        &[("fleet", "sim")],
        bench.agents as u32,
    )
    .await?;
    let round = sims
        .enroll(bench.agents, &token, Duration::from_secs(600))
        .await;
    if let Some(error) = round.first_error {
        anyhow::bail!("{} hosts not enrolled: {error}", round.failed);
    }
    sims.start();
    let connected = sims
        .wait_connected(bench.agents, Duration::from_secs(120))
        .await;
    if connected.connected_now < bench.agents as u64 {
        anyhow::bail!(
            "only {} of {} connected",
            connected.connected_now,
            bench.agents
        );
    }
    Ok(sims)
}

async fn throughput(
    store: &str,
    bench: &FailoverBench,
    coordinator: &Coordinator,
) -> anyhow::Result<()> {
    let sims = fleet_of(bench, &[coordinator], Duration::ZERO).await?;
    let mut admin = fleet::admin(coordinator).await?;
    let spec = fleet::noop_campaign("throughput", &[("fleet", "sim")], bench.concurrency);
    let outcome =
        fleet::run_campaign(&mut admin, &spec, bench.agents, Duration::from_secs(600)).await?;
    let seconds = outcome.elapsed.as_secs_f64();
    println!(
        "  {store:<18} {:>7.2} s, {:>7.0} hosts/s ({})",
        seconds,
        outcome.done as f64 / seconds.max(f64::EPSILON),
        outcome.state
    );
    sims.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

async fn failover(bench: &FailoverBench) -> anyhow::Result<()> {
    let Some(first) = Coordinator::init_postgres()? else {
        anyhow::bail!("PostgreSQL is not installed");
    };
    let mut coordinators = vec![first];
    for _ in 0..2 {
        let replica = coordinators[0].replica()?;
        coordinators.push(replica);
    }
    share_leadership(&mut coordinators);
    for c in &mut coordinators {
        c.set_heartbeat(5, 15);
    }
    coordinators[0].start()?;
    wait(Duration::from_secs(30), || coordinators[0].leads()).await;
    for c in &mut coordinators[1..] {
        c.start()?;
    }
    let refs: Vec<&Coordinator> = coordinators.iter().collect();
    let sims = fleet_of(bench, &refs, bench.action_delay).await?;
    let mut admin = fleet::admin(&coordinators[0]).await?;
    let spec = fleet::noop_campaign("failover", &[("fleet", "sim")], bench.concurrency);
    let created = admin
        .create_campaign(pitcrew_proto::v1::CreateCampaignRequest {
            spec_toml: spec,
            source_name: "failover.toml".into(),
        })
        .await?
        .into_inner();
    // A third of the way through, the leader is killed.
    let third = (bench.agents / 3) as u64;
    wait(Duration::from_secs(300), || {
        sims.counters().actions_answered >= third
    })
    .await;
    let killed_at = Instant::now();
    coordinators[0].kill();
    // Every action started from now on was sent by the new leader; those already out finish
    // on their own, so an answer past them is to the new leader's.
    let before = sims.counters();
    let in_flight = bench.concurrency as u64;
    let mut leader_after = None;
    let mut sending_after = None;
    let mut acting_after = None;
    while killed_at.elapsed() < Duration::from_secs(120)
        && (leader_after.is_none() || sending_after.is_none() || acting_after.is_none())
    {
        if leader_after.is_none() && coordinators[1..].iter().any(Coordinator::leads) {
            leader_after = Some(killed_at.elapsed());
        }
        let now = sims.counters();
        if sending_after.is_none() && now.actions_started > before.actions_started {
            sending_after = Some(killed_at.elapsed());
        }
        let done_then = before.actions_answered + before.actions_repeated + in_flight;
        if acting_after.is_none() && now.actions_answered + now.actions_repeated > done_then {
            acting_after = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = coordinators
        .iter()
        .position(Coordinator::leads)
        .unwrap_or(1);
    let mut admin = fleet::admin(&coordinators[next]).await?;
    let done = wait_completed(&mut admin, &created.id, Duration::from_secs(600)).await;
    let counters = sims.shutdown(Duration::from_secs(30)).await;
    // Where the time went is in the coordinators' logs, kept on request.
    if let Some(keep) = std::env::var_os("PITCREW_BENCH_LOGS") {
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep)?;
        for (i, c) in coordinators.iter().enumerate() {
            std::fs::write(keep.join(format!("coordinator-{i}.log")), c.log())?;
        }
    }
    let shown = |d: Option<Duration>| match d {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "not within 120 s".into(),
    };
    println!(
        "failover, 3 coordinators on PostgreSQL (lease 3 s, renewed every 0.5 s), {} simulated agents, leader SIGKILLed mid-campaign:",
        bench.agents
    );
    println!(
        "  a standby leads after:            {}",
        shown(leader_after)
    );
    println!(
        "  its next decision reaches a host: {} (failover: leader gone → new leader sending)",
        shown(sending_after)
    );
    println!(
        "  and is answered after:            {} (each simulated action takes {} ms)",
        shown(acting_after),
        bench.action_delay.as_millis()
    );
    println!(
        "  campaign {}; actions run {} (of {} hosts), asked again and answered from memory {}",
        if done { "completed" } else { "NOT completed" },
        counters.actions_answered,
        bench.agents,
        counters.actions_repeated
    );
    Ok(())
}

async fn wait(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn wait_completed(
    admin: &mut pitcrew_proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
    id: &str,
    within: Duration,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        let info = admin
            .get_campaign(pitcrew_proto::v1::GetCampaignRequest {
                id: id.to_owned(),
                page_size: 1,
                ..Default::default()
            })
            .await;
        if info.is_ok_and(|i| i.into_inner().state == "completed") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
