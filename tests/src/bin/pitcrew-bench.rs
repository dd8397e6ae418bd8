//! `pitcrew-bench`: prints figures for what matters to an operator — how long the scheduler
//! takes to decide over a large fleet, how long a write-ahead commit takes, how much memory an
//! agent and a coordinator use, and how long one action takes end to end over real mTLS.
//! Figures only: nothing here passes or fails. Run it with `tests/bench.sh`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pitcrew_coordinator::store::{CampaignHostRow, Store, campaigns};
use pitcrew_scheduler::{CampaignRun, CampaignSpec, Fleet, HostView, Role, decide};
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
        let inserted = run.clone();
        store
            .write_blocking(move |c| campaigns::insert_run(c, &inserted, CAMPAIGN, "bench"))
            .expect("the run is stored");
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
                store
                    .write_blocking(move |c| campaigns::put_host(c, &row))
                    .expect("a commit");
                start.elapsed()
            })
            .collect();
        println!(
            "  {size:>5}-host campaign ({bytes} bytes written): {:>10.3?}",
            median(samples)
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
        rss_kib(agent_pid)
    );
    println!(
        "  coordinator resident memory, one agent:    {} KiB",
        rss_kib(coordinator_pid)
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

fn main() -> anyhow::Result<()> {
    pitcrew_proto::tls::install_crypto_provider();
    bench_decide();
    bench_store();
    bench_processes()
}
