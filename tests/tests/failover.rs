//! Three coordinators on one PostgreSQL database, six real agents that know all three, and a
//! campaign with managers that must survive losing its leader: killed (SIGKILL, at several
//! points), paused past its lease (SIGSTOP, then SIGCONT: it must neither write nor send), and
//! cut off from the database. Each time a standby takes over and completes the campaign; the
//! hosts' own record shows no action ran twice and never two managers out at once, and the
//! event log agrees.
//!
//! The database is the tests' private PostgreSQL cluster; `PITCREW_POSTGRES_TESTS=1` (set by
//! `tests/run.sh`) turns a missing PostgreSQL into a failure instead of a skip.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitcrew_tests::runs::{FLEET, assert_each_host_ran_once, campaign, policy, ran, starts};
use pitcrew_tests::{
    Agent, Coordinator, share_leadership, wait_connected, wait_for, wait_for_within,
};

/// One fleet of three coordinators and six agents at a time: two at once on a 2-core machine
/// would make the measured thing (a leader replaced in seconds) the machine's load instead.
static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A leader gone is replaced within a lease (6 s here) and a renewal; the rest is agents coming back
/// and the work itself. Generous for a loaded CI machine.
const TAKEOVER: Duration = Duration::from_secs(60);

struct Fleet {
    coordinators: Vec<Coordinator>,
    agents: Vec<Agent>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Fleet {
    /// Three coordinators (the first leads), six agents listing all three; `None` when
    /// PostgreSQL tests are skipped. `store_url` may give each coordinator its own way to the
    /// database (a proxy the test can cut).
    fn start(store_url: impl Fn(usize, &str) -> String) -> Option<Fleet> {
        let turn = ONE_FLEET_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = Coordinator::init_postgres().unwrap()?;
        let mut coordinators = vec![first];
        for _ in 0..2 {
            let replica = coordinators[0].replica().unwrap();
            coordinators.push(replica);
        }
        share_leadership(&mut coordinators);
        for (i, c) in coordinators.iter_mut().enumerate() {
            let url = store_url(i, &c.store_url().unwrap());
            c.set_store_url(&url);
            // Twice the default lease: the tests run beside others on two cores, where a
            // renewal can wait on the CPU for seconds; what they prove does not depend on
            // the lease's length (the bench measures failover with the default).
            c.configure("[leader]\nlease = \"6s\"\nrenew_every = \"1s\"");
        }
        let addresses: Vec<String> = coordinators.iter().map(Coordinator::address).collect();
        // Built now, so that a failure from here on shows the coordinators' logs.
        let mut fleet = Fleet {
            coordinators,
            agents: Vec::new(),
            _turn: turn,
        };
        fleet.coordinators[0].start().unwrap();
        wait_for("the first coordinator to lead", || {
            fleet.coordinators[0].leads().then_some(())
        });
        for c in &mut fleet.coordinators[1..] {
            c.start().unwrap();
        }
        for (name, role) in FLEET {
            let mut labels = vec![("name", *name), ("cluster", "c1")];
            if name.ends_with("-leader") {
                labels.push(("leader", "true"));
            }
            let first = &fleet.coordinators[0];
            let token = first.token(role, &labels, 1);
            let mut agent = Agent::new(first, name, &token, &policy()).unwrap();
            // Listed from the last coordinator on, so they meet standbys first and follow.
            let mut listed = addresses.clone();
            listed.reverse();
            agent.set_coordinators(&listed);
            agent.start().unwrap();
            fleet.agents.push(agent);
        }
        for agent in &fleet.agents {
            wait_connected(&fleet.coordinators[0], &agent.machine_id);
        }
        Some(fleet)
    }

    /// The one coordinator that leads now (waits for one to).
    fn leader(&self) -> usize {
        wait_for_within("a coordinator to lead", TAKEOVER, || {
            let leading: Vec<usize> = (0..self.coordinators.len())
                .filter(|&i| self.coordinators[i].leads())
                .collect();
            (leading.len() == 1).then(|| leading[0])
        })
    }

    /// Any running coordinator: the CLI follows standbys to the leader.
    fn cli(&self) -> &Coordinator {
        self.coordinators
            .iter()
            .find(|c| c.proc.is_some())
            .expect("a running coordinator")
    }
}

/// On a failure, what each coordinator said (their data dirs go with the test).
impl Drop for Fleet {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, c) in self.coordinators.iter().enumerate() {
            let log = c.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- coordinator {i} ({}), the end of its log:", c.address());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn run(c: &Coordinator, file: &Path) -> String {
    let out = c.cli(&["campaign", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "campaign run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_started(dir: &Path, n: usize) {
    wait_for_within(&format!("{n} hosts to have started"), TAKEOVER, || {
        (starts(&ran(dir)).len() >= n).then_some(())
    });
}

fn wait_completed(fleet: &Fleet, id: &str) {
    wait_for_within(&format!("campaign {id} to complete"), TAKEOVER * 3, || {
        let info = fleet.cli().cli_json(&["campaign", "show", id]);
        (info["state"] == "completed").then_some(())
    });
}

fn slow_campaign(dir: &Path, name: &str) -> PathBuf {
    campaign(
        dir,
        name,
        "[concurrency]\nworker = 2\nmanager = 1",
        "sleep 0.6",
    )
}

#[test]
fn a_campaign_survives_its_leader_killed_at_several_points() {
    let Some(mut fleet) = Fleet::start(|_, url| url.to_owned()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = run(fleet.cli(), &slow_campaign(dir.path(), "killed-leaders"));
    // Among workers, between workers and managers, and among managers.
    for kill_after in [1, 3, 5] {
        wait_started(dir.path(), kill_after);
        let leader = fleet.leader();
        fleet.coordinators[leader].kill();
        let next = fleet.leader();
        assert_ne!(next, leader);
        // The killed one comes back, as its supervisor would start it: as a standby.
        fleet.coordinators[leader].start().unwrap();
    }
    wait_completed(&fleet, &id);
    assert_each_host_ran_once(fleet.cli(), dir.path(), &id);
}

#[test]
fn a_leader_paused_past_its_lease_neither_writes_nor_sends_when_it_wakes() {
    let Some(mut fleet) = Fleet::start(|_, url| url.to_owned()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = run(fleet.cli(), &slow_campaign(dir.path(), "paused-leader"));
    wait_started(dir.path(), 2);
    let paused = fleet.leader();
    fleet.coordinators[paused].signal("STOP");
    // Another takes over (the paused one cannot answer its metrics, so ask the others only).
    let next = wait_for_within("a standby to take over", TAKEOVER, || {
        (0..3).find(|&i| i != paused && fleet.coordinators[i].leads())
    });
    // The campaign goes on under the new leader.
    let before = ran(dir.path()).len();
    wait_for_within("a host to move under the new leader", TAKEOVER * 2, || {
        (ran(dir.path()).len() > before).then_some(())
    });
    let progressed_to = ran(dir.path());
    fleet.coordinators[paused].signal("CONT");
    // It wakes to a lapsed lease: it steps down (exits) without committing or sending.
    let code = wait_for_within("the woken leader to step down", TAKEOVER, || {
        fleet.coordinators[paused].exited()
    });
    assert_ne!(code, Some(0), "stepping down is not a clean stop");
    let log = fleet.coordinators[paused].log();
    assert!(
        log.contains("no longer leads") || log.contains("stepping down") || log.contains("fenced"),
        "the woken leader's log says nothing of losing the lease:\n{log}"
    );
    assert!(fleet.coordinators[next].leads());
    wait_completed(&fleet, &id);
    // Nothing it held when paused ran again after it woke: every host ran once.
    let all = ran(dir.path());
    assert!(all.len() >= progressed_to.len());
    assert_each_host_ran_once(fleet.cli(), dir.path(), &id);
}

#[test]
fn a_leader_cut_off_from_the_database_is_replaced() {
    let proxies: Arc<Mutex<Vec<Proxy>>> = Arc::new(Mutex::new(Vec::new()));
    let made = proxies.clone();
    let Some(fleet) = Fleet::start(move |_, url| {
        let proxy = Proxy::start(url);
        let via = proxy.url.clone();
        made.lock().unwrap().push(proxy);
        via
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = run(fleet.cli(), &slow_campaign(dir.path(), "cut-off-leader"));
    wait_started(dir.path(), 2);
    let cut = fleet.leader();
    proxies.lock().unwrap()[cut].cut();
    // It cannot renew: it steps down by its own clock, and a standby takes over.
    let next = wait_for_within("a standby to take over", TAKEOVER, || {
        (0..3).find(|&i| i != cut && fleet.coordinators[i].leads())
    });
    assert_ne!(next, cut);
    wait_completed(&fleet, &id);
    assert_each_host_ran_once(fleet.cli(), dir.path(), &id);
}

/// A TCP proxy to the cluster's unix socket that the test can cut: every connection through
/// it is closed and new ones are refused, as a network partition would.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Proxies the tests' cluster for the database `url` names, on a loopback port.
    fn start(url: &str) -> Proxy {
        let database = url.rsplit('/').next().unwrap();
        let socket = pitcrew_coordinator::store::testing::cluster()
            .expect("the PostgreSQL tests' cluster")
            .socket();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (cut_flag, open_list) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut_flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = UnixStream::connect(&socket) else {
                    continue;
                };
                open_list.lock().unwrap().push(client.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe_back(server, client);
            }
        });
        Proxy {
            url: format!(
                "postgres://{}@127.0.0.1:{}/{database}",
                pitcrew_coordinator::store::testing::USER,
                local.port()
            ),
            cut,
            open,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn pipe_back(mut from: UnixStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
