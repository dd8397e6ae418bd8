//! `pitcrew-hostile`: a bounded load run of a real coordinator under hostile peers, printing
//! what an operator would feel. Figures only: nothing here passes or fails.
//!
//! A coordinator (product heartbeat and limits) and real agent processes; first a quiet
//! baseline, then, all at once: one client flooding enrollments with unknown tokens, one
//! holding idle TLS connections without a certificate up to (and past) its cap, and one host
//! whose session stops reading while it is sent actions (reconnecting each time it is cut off).
//! Throughout, an operator's ListHosts round trips (p50/p99) and a `pitcrew do` round trip on a
//! healthy agent are timed, and the coordinator's resident memory is sampled.
//!
//! Build optimised and run: `cargo build --release --locked --workspace --bins &&
//! target/release/pitcrew-hostile [--agents 20] [--seconds 20]`. It exits within about a minute.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use pitcrew_proto::{tls, v1};
use pitcrew_tests::hostile::{self, Held, StuckSession};
use pitcrew_tests::{Agent, Coordinator, new_machine_id, wait_connected};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Each hostile client comes from its own loopback address, as separate attackers would (the
/// coordinator counts connections without a certificate per source address).
const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const IDLE_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[derive(Parser)]
#[command(about = "A coordinator under hostile peers: operator latency and memory")]
struct Args {
    /// Real agent processes in the fleet.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// How long the hostile peers run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Idle connections without a certificate the holder tries to keep open (the per-source
    /// cap is 64 by default).
    #[arg(long, default_value_t = 200)]
    idle: usize,
}

/// Latencies, summarised.
#[derive(Default)]
struct Samples {
    values: Vec<Duration>,
    errors: u64,
}

impl Samples {
    fn line(&mut self) -> String {
        if self.values.is_empty() {
            return format!("no answers ({} errors)", self.errors);
        }
        self.values.sort();
        let at = |q: f64| {
            let i = ((self.values.len() - 1) as f64 * q).round() as usize;
            self.values[i]
        };
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} calls ({} errors)",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(at(1.0)),
            self.values.len(),
            self.errors
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// ListHosts round trips every 20 ms and a `do` round trip every 500 ms, until `stop`.
async fn measure(
    mut admin: v1::admin_client::AdminClient<Channel>,
    healthy: String,
    stop: Arc<AtomicBool>,
) -> (Samples, Samples) {
    let mut list = Samples::default();
    let mut act = Samples::default();
    let mut last_do = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match tokio::time::timeout(
            Duration::from_secs(10),
            admin.list_hosts(v1::ListHostsRequest::default()),
        )
        .await
        {
            Ok(Ok(_)) => list.values.push(start.elapsed()),
            _ => list.errors += 1,
        }
        if last_do.elapsed() >= Duration::from_millis(500) {
            last_do = Instant::now();
            match tokio::time::timeout(Duration::from_secs(10), do_round_trip(&mut admin, &healthy))
                .await
            {
                Ok(Ok(())) => act.values.push(last_do.elapsed()),
                _ => act.errors += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (list, act)
}

/// `pitcrew do HOST exec -- /bin/true`, from the call to its result.
async fn do_round_trip(
    admin: &mut v1::admin_client::AdminClient<Channel>,
    host: &str,
) -> anyhow::Result<()> {
    let mut stream = admin
        .run_action(hostile::run_true(host))
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(v1::action_event::Event::Result(result)) = event.event {
            anyhow::ensure!(
                result.outcome == v1::Outcome::Succeeded as i32,
                "{}",
                result.message
            );
            return Ok(());
        }
    }
    anyhow::bail!("no result")
}

/// Enrollments with unknown tokens, eight in flight, on one connection (reopened if cut).
async fn flood_enrollments(c: Arc<Coordinator>, stop: Arc<AtomicBool>) -> (u64, u64, u64) {
    let (denied, exhausted, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (request, _) = hostile::enroll_request("pcj_0000_flood", &new_machine_id(), "flood");
    while !stop.load(Ordering::Relaxed) {
        let Ok(h2) = hostile::h2_connect(&c, None, Some(FLOOD_SOURCE), None).await else {
            other.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let h2 = Arc::new(tokio::sync::Mutex::new(h2));
        let mut workers = JoinSet::new();
        for _ in 0..8 {
            let (h2, stop, request) = (h2.clone(), stop.clone(), request.clone());
            let (denied, exhausted, other) = (denied.clone(), exhausted.clone(), other.clone());
            workers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Each call takes its own stream; the lock only hands out the sender.
                    let call = {
                        let mut h2 = h2.lock().await;
                        h2.start("/pitcrew.v1.Enrollment/Enroll").await
                    };
                    let Ok((response, mut body)) = call else {
                        return;
                    };
                    if body.send_data(hostile::grpc_frame(&request), true).is_err() {
                        return;
                    }
                    let outcome = match response.await {
                        Ok(r) => hostile::answer::<v1::EnrollResponse>(r).await.err(),
                        Err(_) => return,
                    };
                    match outcome.map(|s| s.code()) {
                        Some(tonic::Code::PermissionDenied) => &denied,
                        Some(tonic::Code::ResourceExhausted) => &exhausted,
                        _ => &other,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }
    (
        denied.load(Ordering::Relaxed),
        exhausted.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

/// Keeps trying to hold `target` idle connections without a certificate; returns the most
/// served at once and how many were refused over the run.
async fn hold_idle(c: Arc<Coordinator>, target: usize, stop: Arc<AtomicBool>) -> (usize, usize) {
    let mut held: Vec<Held> = Vec::new();
    let (mut most, mut refused) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        // Count and forget what the coordinator has closed (refused, or at its lifetime).
        held.retain(|h| {
            if h.refused() {
                refused += 1;
            }
            !h.closed()
        });
        most = most.max(held.iter().filter(|h| h.served()).count());
        let missing = target.saturating_sub(held.len());
        for h in hostile::hold_connections(&c, None, Some(IDLE_SOURCE), missing.min(50)).await {
            match h {
                Some(h) => held.push(h),
                None => refused += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (most, refused)
}

/// A host whose session stops reading, sent actions until the coordinator cuts it off, then
/// back after a pause, as an agent's backoff would. Returns how many times it was cut off and
/// how many RunAction calls for it were answered (each dropped at once, as an operator's
/// Ctrl-C: the coordinator then queues a cancel too).
async fn stuck_agent(
    c: Arc<Coordinator>,
    creds: hostile::HostCreds,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let Ok(mut admin) = tokio::time::timeout(Duration::from_secs(10), hostile::admin(&c)).await
    else {
        return (0, 0);
    };
    let (mut cycles, mut answered) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(session) = StuckSession::open(&c, &creds).await {
            while !stop.load(Ordering::Relaxed) {
                if admin
                    .run_action(hostile::run_true(&creds.hostname))
                    .await
                    .is_err()
                {
                    cycles += 1;
                    break;
                }
                answered += 1;
            }
            drop(session);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (cycles, answered)
}

fn rss_mib(c: &Coordinator) -> f64 {
    let pid = c.proc.as_ref().and_then(|p| p.pid()).unwrap_or(0);
    hostile::rss_kib(pid) as f64 / 1024.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tls::install_crypto_provider();
    let mut c = Coordinator::init().context("coordinator init")?;
    // The product's heartbeat and limits (the harness's 1 s / 3 s are for quick tests).
    std::fs::write(
        c.dir.join("coordinator.toml"),
        format!(
            "listen = \"{}:{}\"\nheartbeat_seconds = 5\nheartbeat_timeout_seconds = 15\nmetrics_listen = \"127.0.0.1:{}\"\ndashboard_listen = \"\"\n",
            c.ip, c.port, c.metrics_port
        ),
    )?;
    c.start()?;
    let token = c.token("worker", &[("cluster", "c1")], u32::try_from(args.agents)?);
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let mut agent = Agent::new(
            &c,
            &format!("agent-{i:02}"),
            &token,
            "[policy]\nexec = [[\"/bin/true\"]]\n",
        )?;
        agent.start()?;
        agents.push(agent);
    }
    for agent in &agents {
        wait_connected(&c, &agent.machine_id);
    }
    let healthy = agents[0].name.clone();
    let stuck_token = c.token("worker", &[("name", "stuck")], 1);
    let c = Arc::new(c);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let creds = rt
        .block_on(hostile::enroll(
            &c,
            &stuck_token,
            &new_machine_id(),
            "stuck",
        ))
        .context("enrolling the stuck host")?;
    println!(
        "pitcrew-hostile: {} agents connected; coordinator RSS {:.1} MiB",
        agents.len(),
        rss_mib(&c)
    );

    // Baseline: the operator alone.
    let stop = Arc::new(AtomicBool::new(false));
    let admin = rt.block_on(hostile::admin(&c));
    let baseline = rt.spawn(measure(admin.clone(), healthy.clone(), stop.clone()));
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let (mut list0, mut do0) = rt.block_on(baseline)?;
    let rss_before = rss_mib(&c);

    // Under attack.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flood = rt.spawn(flood_enrollments(c.clone(), stop.clone()));
    let idle = rt.spawn(hold_idle(c.clone(), args.idle, stop.clone()));
    let stuck = rt.spawn(stuck_agent(c.clone(), creds, stop.clone()));
    let operator = rt.spawn(measure(admin, healthy, stop.clone()));
    let mut rss_peak = rss_before;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        std::thread::sleep(Duration::from_millis(250));
        rss_peak = rss_peak.max(rss_mib(&c));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut list1, mut do1) = rt.block_on(operator)?;
    let (denied, exhausted, other) = rt.block_on(flood)?;
    let (most_idle, refused_idle) = rt.block_on(idle)?;
    let (cycles, answered) = rt.block_on(stuck)?;
    let rss_after = rss_mib(&c);

    println!("operator ListHosts, quiet:        {}", list0.line());
    println!("operator ListHosts, under attack: {}", list1.line());
    println!("pitcrew do round trip, quiet:        {}", do0.line());
    println!("pitcrew do round trip, under attack: {}", do1.line());
    println!(
        "enrollment flood over {} s: {denied} refused for the token, {exhausted} turned away (rate limit), {other} other",
        args.seconds
    );
    println!(
        "idle connections without a certificate: at most {most_idle} served at once, {refused_idle} refused"
    );
    println!(
        "stuck agent: cut off {cycles} times for not reading; {answered} RunAction calls for it answered"
    );
    println!(
        "coordinator RSS: {rss_before:.1} MiB before, {rss_peak:.1} MiB peak during, {rss_after:.1} MiB after"
    );
    let connected = rt.block_on(async {
        let mut admin = hostile::admin(&c).await;
        admin
            .list_hosts(v1::ListHostsRequest::default())
            .await
            .map(|r| r.into_inner().hosts.iter().filter(|h| h.connected).count())
    });
    println!(
        "agents still connected after the run: {} of {}",
        connected
            .map(|n| n.to_string())
            .unwrap_or_else(|s| s.message().to_owned()),
        agents.len()
    );
    drop(agents);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
