//! The engine without processes or network: a real store in a temp dir, and an [`Outbox`] that
//! checks, at the moment of every send, that what is sent is already durable (the write-ahead
//! invariant), including across a crash between a commit and its sends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pitcrew_proto::v1;
use pitcrew_scheduler::{CampaignRun, CampaignSpec, CampaignState, HostState};
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::*;
use crate::store::sqlite::run_now;
use crate::store::{HostRecord, Store, campaigns};

mod dashboard;
mod gauges;
mod grace;
mod lifecycle;
mod notify;
mod schedules;
mod unit_holds;

const SPEC: &str = r#"
name = "patch"
[concurrency]
worker = 2
[[steps]]
name = "noop"
action = "exec"
argv = ["/bin/true"]
[[steps]]
name = "again"
action = "exec"
argv = ["/bin/true"]
"#;

/// A message the engine handed to the outbox, and what the store held at that instant.
#[derive(Debug)]
struct Sent {
    host: String,
    action_id: String,
    /// The action record existed in the store when it was sent.
    recorded: bool,
    /// The host's stored progress had this action in flight when it was sent.
    in_flight_stored: bool,
    request: v1::ActionRequest,
}

/// Reads the store file directly (its own connection) whenever the engine sends.
struct CheckingOutbox {
    db: Mutex<Connection>,
    sent: mpsc::UnboundedSender<Sent>,
    /// When false, nothing reaches any agent (the coordinator "dies" right after commits).
    deliver: bool,
}

impl CheckingOutbox {
    fn new(path: &Path, deliver: bool) -> (Arc<CheckingOutbox>, mpsc::UnboundedReceiver<Sent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = CheckingOutbox {
            db: Mutex::new(Connection::open(path).unwrap()),
            sent: tx,
            deliver,
        };
        (Arc::new(outbox), rx)
    }
}

impl Outbox for CheckingOutbox {
    fn send(&self, host_id: &str, message: v1::CoordinatorMessage) -> bool {
        let Some(v1::coordinator_message::Msg::Action(request)) = message.msg else {
            return self.deliver;
        };
        let mut db = self.db.lock();
        let id = request.action_id.clone();
        let recorded = run_now(&mut db, |tx| Box::pin(async move { tx.action(&id).await }))
            .unwrap()
            .is_some();
        let stored = run_now(&mut db, |tx| Box::pin(campaigns::load_all(tx))).unwrap();
        let in_flight_stored = stored.iter().any(|c| {
            c.run.hosts.iter().any(|h| {
                h.in_flight
                    .as_ref()
                    .is_some_and(|f| f.action_id == request.action_id)
            })
        });
        let _ = self.sent.send(Sent {
            host: host_id.to_owned(),
            action_id: request.action_id.clone(),
            recorded,
            in_flight_stored,
            request,
        });
        self.deliver
    }
}

/// Enrolls `n` hosts of `role` named `<prefix>0..`, with ids counted from `first_id`, in the
/// store (before the engine starts, it reads hosts then; after, tell it with [`announce`]).
fn enroll(
    store: &Store,
    role: &str,
    prefix: &str,
    first_id: usize,
    labels: &[(&str, &str)],
    n: usize,
) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{:032x}", first_id + i)).collect();
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let records: Vec<HostRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| HostRecord {
            host_id: id.clone(),
            hostname: format!("{prefix}{i}"),
            role: role.into(),
            labels: labels.clone(),
            cert_serial: "01".into(),
            pending_serial: String::new(),
            enrolled_at_ms: 1,
            last_seen_ms: 0,
            facts: Vec::new(),
            removed_at_ms: 0,
        })
        .collect();
    futures::executor::block_on(store.write(move |tx| {
        Box::pin(async move {
            for r in &records {
                tx.upsert_host(r).await?;
            }
            Ok(())
        })
    }))
    .unwrap();
    ids
}

/// Workers w0.. without labels.
fn workers(store: &Store, n: usize) -> Vec<String> {
    enroll(store, "worker", "w", 0, &[], n)
}

/// Tells a running engine of hosts enrolled in its store, as enrollment does.
async fn announce(rig: &Rig, ids: &[String]) {
    for id in ids {
        let record = rig.store.host(id.clone()).await.unwrap().unwrap();
        rig.engine.host_enrolled(record);
    }
}

struct Rig {
    path: PathBuf,
    store: Arc<Store>,
    engine: Engine,
    task: EngineTask,
    sent: mpsc::UnboundedReceiver<Sent>,
}

async fn start(path: &Path, deliver: bool) -> Rig {
    start_with(path, deliver, test_settings()).await
}

/// A test engine's settings: no reconnect grace, the wall clock, the sole coordinator, no
/// webhooks.
fn test_settings() -> EngineSettings {
    EngineSettings {
        reconnect_grace: Duration::ZERO,
        archive_after: Duration::from_secs(7 * 24 * 3600),
        clock: Clock::System,
        leadership: crate::leader::Leadership::sole(),
        webhooks: Vec::new(),
        notify: None,
    }
}

/// [`start`] with webhooks and the notifier's inbox.
async fn start_notifying(
    path: &Path,
    deliver: bool,
    webhooks: Vec<crate::notify::Webhook>,
    notify: Option<crate::notify::NotifySink>,
) -> Rig {
    start_with(
        path,
        deliver,
        EngineSettings {
            webhooks,
            notify,
            ..test_settings()
        },
    )
    .await
}

async fn start_leading(path: &Path, deliver: bool, leadership: crate::leader::Leadership) -> Rig {
    start_with(
        path,
        deliver,
        EngineSettings {
            leadership,
            ..test_settings()
        },
    )
    .await
}

async fn start_with(path: &Path, deliver: bool, settings: EngineSettings) -> Rig {
    let store = Arc::new(Store::open(path).unwrap());
    let events = Arc::new(EventLog::new(store.clone()));
    let (outbox, sent) = CheckingOutbox::new(path, deliver);
    let (engine, task) = Engine::start(store.clone(), events, outbox, settings)
        .await
        .unwrap();
    Rig {
        path: path.to_owned(),
        store,
        engine,
        task,
        sent,
    }
}

fn connect_all(engine: &Engine, ids: &[String]) {
    for id in ids {
        engine.session_changed(
            id,
            1,
            Some(v1::Facts {
                host_id: id.clone(),
                boot_id: "boot-1".into(),
                ..Default::default()
            }),
        );
    }
}

async fn create(engine: &Engine) -> String {
    let spec = CampaignSpec::parse(SPEC, "patch.toml").unwrap();
    let hosts = engine.hosts().await.unwrap();
    let run = CampaignRun::new("c-test", &spec, &hosts, pitcrew_proto::now_ms()).unwrap();
    engine
        .insert_run(run, SPEC.into(), "tester".into())
        .await
        .unwrap()
        .id
}

async fn next_sent(rx: &mut mpsc::UnboundedReceiver<Sent>) -> Sent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the engine sent nothing within 30 s")
        .expect("the outbox is gone")
}

/// Answers an action as its agent would, and waits until the answer is durable.
async fn answer(rig: &Rig, sent: &Sent) {
    let record = rig
        .store
        .action(sent.action_id.clone())
        .await
        .unwrap()
        .unwrap();
    rig.engine
        .result(
            sent.host.clone(),
            record,
            v1::ActionResult {
                action_id: sent.action_id.clone(),
                outcome: v1::Outcome::Succeeded as i32,
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap();
}

/// Waits until the campaign's view satisfies `done`.
async fn wait_view(engine: &Engine, done: impl Fn(&CampaignView) -> bool) -> CampaignView {
    let mut changes = engine.subscribe();
    loop {
        let view = engine
            .view("c-test".into(), HostPage::Active { limit: 100 })
            .await
            .unwrap();
        if done(&view) {
            return view;
        }
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("the campaign did not get there within 30 s")
            .unwrap();
    }
}

fn stored_run(path: &Path) -> CampaignRun {
    let mut db = Connection::open(path).unwrap();
    run_now(&mut db, |tx| Box::pin(campaigns::load_all(tx)))
        .unwrap()
        .remove(0)
        .run
}

#[tokio::test]
async fn every_dispatch_is_durable_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = start(&dir.path().join("s.db"), true).await;
    let ids = workers(&rig.store, 5);
    // The engine read no hosts at start; it learns of them as they enroll.
    announce(&rig, &ids).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    let mut seen = BTreeSet::new();
    // 5 hosts × 2 steps, two hosts at a time.
    for _ in 0..10 {
        let sent = next_sent(&mut rig.sent).await;
        assert!(
            sent.recorded,
            "{} was sent before it was recorded",
            sent.action_id
        );
        assert!(
            sent.in_flight_stored,
            "{} was sent before its host's progress was durable",
            sent.action_id
        );
        assert!(
            seen.insert(sent.action_id.clone()),
            "{} sent twice",
            sent.action_id
        );
        answer(&rig, &sent).await;
    }
    wait_view(&rig.engine, |v| v.state == CampaignState::Completed).await;
    let run = stored_run(&rig.path);
    assert_eq!(run.state, CampaignState::Completed);
    assert!(run.hosts.iter().all(|h| h.state == HostState::Done));
    assert!(!rig.task.is_finished());
}

#[tokio::test]
async fn a_leader_whose_lease_may_have_lapsed_neither_commits_nor_sends() {
    let dir = tempfile::tempdir().unwrap();
    let leadership = crate::leader::Leadership::held_for_test(3);
    let mut rig = start_leading(&dir.path().join("s.db"), true, leadership.clone()).await;
    let ids = workers(&rig.store, 5);
    announce(&rig, &ids).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    // Two hosts at a time: both first steps are out.
    let first = next_sent(&mut rig.sent).await;
    next_sent(&mut rig.sent).await;
    // Paused past its lease: the agent's answer arrives after it may have lapsed.
    leadership.lapse();
    let record = rig
        .store
        .action(first.action_id.clone())
        .await
        .unwrap()
        .unwrap();
    let answered = rig
        .engine
        .result(
            first.host.clone(),
            record,
            v1::ActionResult {
                action_id: first.action_id.clone(),
                outcome: v1::Outcome::Succeeded as i32,
                ..Default::default()
            },
            true,
        )
        .await;
    assert!(
        matches!(answered, Err(EngineError::NotLeading(3))),
        "{answered:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), &mut rig.task)
        .await
        .expect("the engine went on after its lease lapsed")
        .unwrap();
    assert!(
        matches!(ended, Err(EngineError::NotLeading(3))),
        "{ended:?}"
    );
    // Nothing more was sent, and the answer was not recorded: the next leader finds the step
    // in flight and asks the agent again (which answers from its journal).
    assert!(rig.sent.try_recv().is_err(), "sent after the lease lapsed");
    let run = stored_run(&rig.path);
    let host = run.hosts.iter().find(|h| h.host_id == first.host).unwrap();
    assert_eq!(host.step, 0, "{host:?}");
    assert!(host.in_flight.is_some(), "{host:?}");
}

#[tokio::test]
async fn a_crash_between_commit_and_send_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    // The fleet is enrolled before the coordinator starts (it reads hosts at start).
    let ids = workers(&Store::open(&path).unwrap(), 3);
    // First life: every decision is committed, but the coordinator dies before any send
    // leaves it (the outbox delivers nothing).
    let mut first = start(&path, false).await;
    connect_all(&first.engine, &ids);
    create(&first.engine).await;
    let a = next_sent(&mut first.sent).await;
    let b = next_sent(&mut first.sent).await;
    let committed: BTreeSet<String> = [a.action_id.clone(), b.action_id.clone()].into();
    assert!(a.recorded && a.in_flight_stored && b.recorded && b.in_flight_stored);
    first.task.abort();
    let _ = (&mut first.task).await;
    drop(first);

    // Second life: the same two actions are still in flight under the same ids (an agent
    // that ran one answers from its journal); nothing new is decided for those hosts.
    let mut second = start(&path, true).await;
    let run = stored_run(&path);
    let in_flight: BTreeSet<String> = run
        .hosts
        .iter()
        .filter_map(|h| h.in_flight.as_ref().map(|f| f.action_id.clone()))
        .collect();
    assert_eq!(in_flight, committed);
    connect_all(&second.engine, &ids);
    // The agents report the actions sent before the crash: the campaign moves on.
    for sent in [&a, &b] {
        answer(&second, sent).await;
    }
    let mut all: BTreeSet<String> = committed.clone();
    for _ in 0..4 {
        let sent = next_sent(&mut second.sent).await;
        assert!(sent.recorded && sent.in_flight_stored);
        assert!(
            all.insert(sent.action_id.clone()),
            "{} was dispatched again after the restart",
            sent.action_id
        );
        answer(&second, &sent).await;
    }
    assert_eq!(all.len(), 6);
    let mut changes = second.engine.subscribe();
    while second
        .engine
        .view("c-test".into(), HostPage::None)
        .await
        .unwrap()
        .state
        != CampaignState::Completed
    {
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("the campaign did not complete after the restart")
            .unwrap();
    }
    second.task.abort();
}

#[tokio::test]
async fn a_host_step_rewrites_one_host_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let ids = workers(&Store::open(&path).unwrap(), 40);
    let mut rig = start(&path, true).await;
    connect_all(&rig.engine, &ids);
    create(&rig.engine).await;
    let sent = next_sent(&mut rig.sent).await;
    // Count the rows whose progress changes when one result is applied.
    let before: Vec<String> = {
        let db = Connection::open(&path).unwrap();
        let mut stmt = db
            .prepare("SELECT progress_json FROM campaign_hosts ORDER BY position")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    answer(&rig, &sent).await;
    let after: Vec<String> = {
        let db = Connection::open(&path).unwrap();
        let mut stmt = db
            .prepare("SELECT progress_json FROM campaign_hosts ORDER BY position")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    // The result moved its host to the next step (and the turn may have dispatched it):
    // one row of 40 was rewritten.
    assert_eq!(changed, 1, "{changed} host rows changed for one result");
    rig.task.abort();
}
