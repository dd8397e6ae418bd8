//! `pitcrew-bench`: prints figures for what matters to an operator — how long the scheduler
//! takes to decide over a large fleet, how long a write-ahead commit takes, how much memory an
//! agent and a coordinator use, and how long one action takes end to end over real mTLS.
//! Figures only: nothing here passes or fails. Run it with `tests/bench.sh`.
//!
//! `pitcrew-bench fleet --agents N` (`tests/bench.sh fleet --agents N`) instead loads a real
//! coordinator with N simulated agents over real mTLS (see `pitcrew_tests::fleet`): how long
//! they take to enroll, what the coordinator holds and burns while they idle, how long
//! campaigns over 100, 1,000 and N of them take, and how many sessions were lost.
//!
//! `pitcrew-bench failover` compares campaign throughput on SQLite and PostgreSQL and measures
//! how long three coordinators on PostgreSQL take to replace a leader killed mid-campaign.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use pitcrew_coordinator::store::{CampaignHostRow, Store, TurnWrites, campaigns};
use pitcrew_scheduler::{CampaignRun, CampaignSpec, Fleet, HostView, Role, decide};
use pitcrew_tests::fleet::{self, FleetOptions, SimFleet};
use pitcrew_tests::{Agent, Coordinator, wait_connected};

const CAMPAIGN: &str = r#"
name = "bench"
[concurrency]
worker = "10%"
[[before]]
name = "drain"
action = "exec"
on = "role:manager"
argv = ["/usr/local/bin/swarm-node", "update", "--availability", "drain", "{{host.hostname}}"]
[[steps]]
name = "patch"
action = "patch"
[[steps]]
name = "reboot"
action = "reboot"
only_if_required = true
[[gate.post]]
name = "healthy"
action = "health"
command = ["/usr/local/bin/lab-health"]
"#;

fn fleet(workers: usize, managers: usize, clusters: usize) -> Vec<HostView> {
    let mut hosts = Vec::new();
    for i in 0..workers + managers {
        let role = if i < workers {
            Role::Worker
        } else {
            Role::Manager
        };
        let mut labels = BTreeMap::new();
        labels.insert("cluster".to_owned(), format!("c{}", i % clusters));
        hosts.push(HostView {
            id: format!("{i:032x}"),
            hostname: format!("host-{i}"),
            role,
            labels,
            connected: true,
            healthy: true,
            boot_id: format!("boot-{i}"),
            policy: None,
            facts: None,
        });
    }
    hosts
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn bench_decide() {
    println!("scheduler decide() over a whole fleet (median of 21 runs):");
    let spec = CampaignSpec::parse(CAMPAIGN, "bench.toml").expect("bench campaign parses");
    for (workers, managers, clusters) in [(100, 9, 3), (1000, 30, 10), (5000, 90, 30)] {
        let hosts = fleet(workers, managers, clusters);
        let run = CampaignRun::new("c-bench", &spec, &hosts, 0).expect("a run");
        let fleet = Fleet::from_hosts(hosts);
        let runs = vec![run];
        let samples: Vec<Duration> = (0..21)
            .map(|_| {
                let start = Instant::now();
                let decided = decide(&fleet, &runs, 0);
                std::hint::black_box(decided);
                start.elapsed()
            })
            .collect();
        println!(
            "  {:>5} hosts: {:>10.3?}",
            workers + managers,
            median(samples)
        );
    }
}

fn bench_store() {
    println!(
        "store: the write-ahead commit of one host-step (one host row; SQLite WAL, synchronous=FULL, median of 51):"
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(&dir.path().join("bench.db")).expect("a store");
    let spec = CampaignSpec::parse(CAMPAIGN, "bench.toml").expect("bench campaign parses");
    for size in [100usize, 1000, 10_000] {
        let id = format!("c-bench-{size}");
        let run = CampaignRun::new(&id, &spec, &fleet(size - 9, 9, 3), 0).expect("a run");
        let inserted = TurnWrites {
            new_runs: vec![(run.clone(), CAMPAIGN.to_owned(), "bench".to_owned())],
            ..Default::default()
        };
        futures::executor::block_on(store.commit_turn(inserted)).expect("the run is stored");
        let host = run.hosts[size / 2].clone();
        let progress = campaigns::host_progress_json(&host).expect("serialises");
        let bytes = progress.len();
        let samples: Vec<Duration> = (0..51)
            .map(|_| {
                let row = CampaignHostRow {
                    campaign_id: id.clone(),
                    host_id: host.host_id.clone(),
                    progress_json: progress.clone(),
                };
                let start = Instant::now();
                let writes = TurnWrites {
                    hosts: vec![row],
                    ..Default::default()
                };
                futures::executor::block_on(store.commit_turn(writes)).expect("a commit");
                start.elapsed()
            })
            .collect();
        println!(
            "  {size:>5}-host campaign ({bytes} bytes written): {:>10.3?}",
            median(samples)
        );
    }
}

fn bench_processes() -> anyhow::Result<()> {
    println!("processes over real mTLS on loopback:");
    let mut coordinator = Coordinator::init()?;
    coordinator.start()?;
    let token = coordinator.token("worker", &[], 1);
    let mut agent = Agent::new(
        &coordinator,
        "bench",
        &token,
        "[policy]\nexec = [[\"/bin/true\"]]\n",
    )?;
    agent.start()?;
    wait_connected(&coordinator, &agent.machine_id);
    let agent_pid = agent.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
    let coordinator_pid = coordinator.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
    println!(
        "  agent resident memory, connected and idle: {} KiB",
        fleet::rss_kib(agent_pid)
    );
    println!(
        "  coordinator resident memory, one agent:    {} KiB",
        fleet::rss_kib(coordinator_pid)
    );
    let samples: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            let out = coordinator.cli(&["do", &agent.machine_id, "exec", "--", "/bin/true"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            start.elapsed()
        })
        .collect();
    println!(
        "  `pitcrew do HOST exec -- /bin/true`, CLI start to result (median of 15): {:.1?}",
        median(samples)
    );
    agent.kill();
    coordinator.kill();
    Ok(())
}

#[derive(Parser)]
#[command(name = "pitcrew-bench", about = "pitcrew's performance figures")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load a real coordinator with simulated agents over real mTLS on loopback.
    Fleet {
        /// How many simulated agents.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Workers out of service at once in each campaign.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// How long a simulated action takes before it answers, in milliseconds.
        #[arg(long, default_value_t = 0)]
        action_delay_ms: u64,
        /// The window over which the coordinator's idle CPU is measured, in seconds.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// The whole run stops after this many seconds, whatever it got so far.
        #[arg(long, default_value_t = 1200)]
        deadline_seconds: u64,
    },
    /// Campaign throughput on SQLite and on PostgreSQL, and the time three coordinators on
    /// PostgreSQL take to replace a leader killed mid-campaign.
    Failover {
        /// How many simulated agents.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Workers out of service at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// How long a simulated action takes in the failover campaign, in milliseconds.
        #[arg(long, default_value_t = 100)]
        action_delay_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    pitcrew_proto::tls::install_crypto_provider();
    match Cli::parse().command {
        None => {
            bench_decide();
            bench_store();
            bench_processes()
        }
        Some(Command::Fleet {
            agents,
            concurrency,
            action_delay_ms,
            idle_seconds,
            deadline_seconds,
        }) => bench_fleet(&FleetBench {
            agents: agents.max(1),
            concurrency: concurrency.max(1),
            action_delay: Duration::from_millis(action_delay_ms),
            idle_window: Duration::from_secs(idle_seconds.max(1)),
            deadline: Instant::now() + Duration::from_secs(deadline_seconds),
        }),
        Some(Command::Failover {
            agents,
            concurrency,
            action_delay_ms,
        }) => pitcrew_tests::failover_bench::run(&pitcrew_tests::failover_bench::FailoverBench {
            agents: agents.max(3),
            concurrency: concurrency.max(1),
            action_delay: Duration::from_millis(action_delay_ms),
        }),
    }
}

/// What `pitcrew-bench fleet` was asked for.
struct FleetBench {
    agents: usize,
    concurrency: usize,
    action_delay: Duration,
    idle_window: Duration,
    /// Every wait ends by then.
    deadline: Instant,
}

impl FleetBench {
    /// `wanted`, or less if the overall deadline comes first.
    fn within(&self, wanted: Duration) -> Duration {
        wanted.min(self.deadline.saturating_duration_since(Instant::now()))
    }
}

/// The campaign sizes measured: 100, 1,000 and the whole fleet, those that fit.
fn campaign_sizes(agents: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = [100, 1000].into_iter().filter(|s| *s < agents).collect();
    sizes.push(agents);
    sizes
}

/// Labels of the host at `index`: `fleet=sim` for all, and `in<S>=yes` for every campaign
/// size S it falls under, so that a campaign over the first S hosts selects them by label.
fn tier_labels(index: usize, sizes: &[usize]) -> Vec<(String, String)> {
    let mut labels = vec![("fleet".to_owned(), "sim".to_owned())];
    for size in sizes {
        if index < *size && *size != *sizes.last().unwrap_or(&0) {
            labels.push((format!("in{size}"), "yes".to_owned()));
        }
    }
    labels
}

fn coordinator_gone(coordinator: &mut Coordinator) -> Option<String> {
    match coordinator.proc.as_mut().map(|p| p.exited()) {
        Some(None) => None,
        Some(Some(code)) => Some(format!("the coordinator exited (code {code:?})")),
        None => Some("the coordinator is not running".to_owned()),
    }
}

fn bench_fleet(bench: &FleetBench) -> anyhow::Result<()> {
    let limit = fleet::raise_open_files_limit()?;
    let mut coordinator = Coordinator::init()?;
    // The product's heartbeat (5 s, 15 s of silence), not the test harness's quick one.
    coordinator.set_heartbeat(5, 15);
    coordinator.start()?;
    let pid = coordinator.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
    println!(
        "fleet of {} simulated agents over real mTLS on loopback (coordinator {}, heartbeat 5 s, open files limit {limit}):",
        bench.agents,
        pitcrew_tests::bin_dir().display()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(fleet_run(bench, &mut coordinator, pid));
    if let Err(error) = &result {
        println!("  stopped early: {error:#}");
    }
    if let Some(gone) = coordinator_gone(&mut coordinator) {
        println!("  {gone}; the end of its log:");
        let log = coordinator.log();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(20)..] {
            println!("    {line}");
        }
    }
    coordinator.kill();
    Ok(())
}

async fn fleet_run(
    bench: &FleetBench,
    coordinator: &mut Coordinator,
    pid: u32,
) -> anyhow::Result<()> {
    let mut options = FleetOptions::for_coordinator(coordinator);
    options.action_delay = bench.action_delay;
    let enroll_concurrency = options.concurrency;
    let mut sims = SimFleet::new(options);
    let mut admin = fleet::admin(coordinator).await?;
    let sizes = campaign_sizes(bench.agents);

    // Enroll, one token per label tier.
    let started = Instant::now();
    let mut from = 0;
    for size in &sizes {
        let labels = tier_labels(from, &sizes);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = size - from;
        let token = fleet::create_token(&mut admin, "worker", &labels, count as u32).await?;
        let round = sims
            .enroll(count, &token, bench.within(Duration::from_secs(600)))
            .await;
        if let Some(error) = round.first_error {
            println!("  {} of {count} hosts not enrolled: {error}", round.failed);
        }
        from = *size;
    }
    let counters = sims.counters();
    println!(
        "  enroll {} hosts ({} at a time):{:>12.1} s ({} failed, {} attempts retried)",
        bench.agents,
        enroll_concurrency,
        started.elapsed().as_secs_f64(),
        counters.enroll_failures,
        counters.enroll_retries
    );
    if let Some(gone) = coordinator_gone(coordinator) {
        anyhow::bail!(gone);
    }

    // Connect.
    let started = Instant::now();
    sims.start();
    let wait = Duration::from_secs(60).max(Duration::from_millis(10 * bench.agents as u64));
    let counters = sims.wait_connected(sims.len(), bench.within(wait)).await;
    println!(
        "  connected:{:>33} of {} (in {:.1} s)",
        counters.connected_now,
        sims.len(),
        started.elapsed().as_secs_f64()
    );

    // Idle.
    let before = fleet::cpu_time(pid);
    let window_start = Instant::now();
    tokio::time::sleep(bench.within(bench.idle_window)).await;
    let window = window_start.elapsed();
    let after = fleet::cpu_time(pid);
    println!(
        "  coordinator resident memory:{:>14} KiB",
        fleet::rss_kib(pid)
    );
    match (before, after) {
        (Some(before), Some(after)) => println!(
            "  coordinator idle CPU:{:>19.1} % of one core (over {:.1} s, {} sessions open)",
            (after.saturating_sub(before)).as_secs_f64() / window.as_secs_f64() * 100.0,
            window.as_secs_f64(),
            sims.counters().connected_now
        ),
        _ => println!("  coordinator idle CPU: unreadable (is it still running?)"),
    }
    println!(
        "  load generator resident memory:{:>11} KiB",
        fleet::rss_kib(std::process::id())
    );

    // Campaigns.
    for size in &sizes {
        if let Some(gone) = coordinator_gone(coordinator) {
            anyhow::bail!(gone);
        }
        let labels = if size == &bench.agents {
            vec![("fleet".to_owned(), "sim".to_owned())]
        } else {
            vec![(format!("in{size}"), "yes".to_owned())]
        };
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let spec = fleet::noop_campaign(&format!("fleet-{size}"), &labels, bench.concurrency);
        let within =
            bench.within(Duration::from_secs(60).max(Duration::from_millis(60 * *size as u64)));
        let answered_before = sims.counters().actions_answered;
        let cpu_before = (fleet::cpu_time(pid), fleet::cpu_time(std::process::id()));
        // During the whole-fleet campaign, an operator asks what operators ask.
        let (stop_probe, stopped) = tokio::sync::watch::channel(false);
        let probe = if size == &bench.agents {
            let admin = fleet::admin(coordinator).await?;
            Some(tokio::spawn(fleet::probe_operator_latency(admin, stopped)))
        } else {
            None
        };
        let result = fleet::run_campaign(&mut admin, &spec, *size, within).await;
        let _ = stop_probe.send(true);
        let seen = match probe {
            Some(probe) => Some(probe.await?),
            None => None,
        };
        // Where the time went: the coordinator's CPU, and ours (the simulated agents).
        let cpu = |before: Option<Duration>, pid: u32| match (before, fleet::cpu_time(pid)) {
            (Some(before), Some(after)) => {
                format!("{:.1} s", after.saturating_sub(before).as_secs_f64())
            }
            _ => "unreadable".to_owned(),
        };
        let cpu = format!(
            "CPU: coordinator {}, load generator {}",
            cpu(cpu_before.0, pid),
            cpu(cpu_before.1, std::process::id())
        );
        match result {
            Ok(outcome) if outcome.completed() => println!(
                "  campaign of {size:>5} hosts (exec /bin/true, {} at once):{:>9.2} s ({cpu})",
                bench.concurrency,
                outcome.elapsed.as_secs_f64()
            ),
            Ok(outcome) => {
                println!(
                    "  campaign of {size:>5} hosts: {} after {:.1} s, {} of {} done, {} actions answered ({}; {cpu})",
                    outcome.state,
                    outcome.elapsed.as_secs_f64(),
                    outcome.done,
                    outcome.hosts,
                    sims.counters().actions_answered - answered_before,
                    outcome.note
                );
                fleet::cancel_campaign(&mut admin, &outcome.id).await;
            }
            Err(error) => println!("  campaign of {size:>5} hosts: {error:#}"),
        }
        if let Some(seen) = seen {
            println!(
                "  operator calls while it ran ({} errors):\n    hosts:         {}\n    campaign show: {}\n    events:        {}",
                seen.errors,
                fleet::OperatorLatency::summary(&seen.hosts),
                fleet::OperatorLatency::summary(&seen.campaign_show),
                fleet::OperatorLatency::summary(&seen.events)
            );
        }
    }
    println!(
        "  coordinator resident memory after:{:>8} KiB",
        fleet::rss_kib(pid)
    );

    let counters = sims.shutdown(bench.within(Duration::from_secs(30))).await;
    println!(
        "  sessions lost during the run:{:>13} ({} opened, {} attempts without a session, {} actions answered)",
        counters.sessions_lost,
        counters.sessions_opened,
        counters.connect_failures,
        counters.actions_answered
    );
    if let Some(problem) = counters.last_problem {
        println!("  last problem: {problem}");
    }
    Ok(())
}
