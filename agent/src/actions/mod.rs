//! The action executor: runs typed actions at most once each, as far as the local policy allows.
//!
//! Every request goes through the same gate, in this order: a safe action id, a repeated id
//! answered from the journal (or, while it still runs, from that run), the local policy, then
//! a durable journal record *before* any work. Each action runs in its own task so that a lost
//! session does not abort it half way: its result lands in the journal and is reported as
//! unacknowledged on the next hello. Timeouts and cancels stop the work, not just the wait.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitcrew_proto::policy::{LocalPolicy, Refusal};
use pitcrew_proto::{now_ms, v1};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::AgentConfig;
use crate::facts;
use crate::holds::Holds;
use crate::journal::{self, Journal};

pub mod command;
pub mod dedupe_shm;
pub mod exec;
pub mod health;
pub mod leftovers;
pub mod patch;
pub mod reboot;
pub mod remove_path;
pub mod unit;

use v1::action::Kind;

/// Why an action stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    TimedOut,
    Cancelled,
}

/// What an action reports; the executor adds the id and the times.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub outcome: i32,
    pub message: String,
    pub output: String,
    pub refused_by: String,
    pub details: HashMap<String, String>,
}

impl Report {
    pub fn succeeded(message: impl Into<String>) -> Report {
        Report {
            outcome: v1::Outcome::Succeeded as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    pub fn failed(message: impl Into<String>) -> Report {
        Report {
            outcome: v1::Outcome::Failed as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    pub fn refused(refusal: Refusal) -> Report {
        Report {
            outcome: v1::Outcome::Refused as i32,
            message: refusal.message,
            refused_by: refusal.rule,
            ..Default::default()
        }
    }

    /// The report of an action stopped by its timeout or a cancel, `what` saying what was
    /// stopped ("its process group was killed").
    pub fn stopped(stop: Stop, timeout: Duration, what: &str) -> Report {
        let (outcome, mut message) = match stop {
            Stop::TimedOut => (
                v1::Outcome::TimedOut,
                format!("timed out after {}", humantime::format_duration(timeout)),
            ),
            Stop::Cancelled => (v1::Outcome::Cancelled, "cancelled".to_owned()),
        };
        if !what.is_empty() {
            message.push_str("; ");
            message.push_str(what);
        }
        Report {
            outcome: outcome as i32,
            message,
            ..Default::default()
        }
    }

    pub fn with_output(mut self, output: String) -> Report {
        self.output = output;
        self
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<String>) -> Report {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// What a running action can see: where to send progress, its deadline and its cancel flag.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub action_id: String,
    /// Where programs started by this action are recorded while they run (see
    /// [`leftovers`]); `None` for actions run outside an executor.
    pub groups_dir: Option<PathBuf>,
    events: mpsc::Sender<v1::ActionEvent>,
    deadline: Instant,
    pub timeout: Duration,
    cancel: watch::Receiver<bool>,
}

impl Ctx {
    /// A context with its own cancel switch, for running one action's code directly (tests,
    /// tools). Returns the switch: send `true` to cancel.
    pub fn new(
        action_id: &str,
        timeout: Duration,
        events: mpsc::Sender<v1::ActionEvent>,
    ) -> (Ctx, watch::Sender<bool>) {
        let (cancel_tx, cancel) = watch::channel(false);
        (
            Ctx {
                action_id: action_id.to_owned(),
                groups_dir: None,
                events,
                deadline: Instant::now() + timeout,
                timeout,
                cancel,
            },
            cancel_tx,
        )
    }

    /// Resolves when the action must stop: its deadline passed or it was cancelled.
    pub async fn stopped(&self) -> Stop {
        let mut cancel = self.cancel.clone();
        let cancelled = async move {
            if cancel.wait_for(|c| *c).await.is_err() {
                // The switch is gone (the executor dropped it): no cancel can come any more.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline) => Stop::TimedOut,
            _ = cancelled => Stop::Cancelled,
        }
    }

    /// Resolves at the deadline, whatever cancels come (for work that cannot be undone).
    pub async fn until_deadline(&self) {
        tokio::time::sleep_until(self.deadline).await;
    }

    /// The synchronous form of the stop flag, for work on a blocking thread.
    pub fn stop_flag(&self) -> StopFlag {
        StopFlag {
            cancel: self.cancel.clone(),
            deadline: self.deadline.into_std(),
        }
    }

    /// Sends one log line. Never waits: when the receiver is gone or full, the line is dropped
    /// (it is also in the captured output where there is one).
    pub fn log(&self, line: impl Into<String>) {
        let _ = self.events.try_send(v1::ActionEvent {
            action_id: self.action_id.clone(),
            event: Some(v1::action_event::Event::Log(line.into())),
        });
    }

    /// Sends a progress stage (percent -1 when unknown). Never waits.
    pub fn progress(&self, percent: i32, stage: &str) {
        let _ = self.events.try_send(v1::ActionEvent {
            action_id: self.action_id.clone(),
            event: Some(v1::action_event::Event::Progress(v1::ActionProgress {
                percent,
                stage: stage.to_owned(),
            })),
        });
    }
}

/// A stop flag that blocking code can poll.
#[derive(Debug, Clone)]
pub struct StopFlag {
    cancel: watch::Receiver<bool>,
    deadline: std::time::Instant,
}

impl StopFlag {
    /// Why to stop now, if so.
    pub fn check(&self) -> Option<Stop> {
        if *self.cancel.borrow() {
            Some(Stop::Cancelled)
        } else if std::time::Instant::now() >= self.deadline {
            Some(Stop::TimedOut)
        } else {
            None
        }
    }
}

/// Knobs that are not part of the agent configuration file: where the system bus is and which
/// package tools to run. The defaults are the real host's; tests point them at stand-ins.
#[derive(Debug, Clone, Default)]
pub struct ExecutorOptions {
    /// D-Bus address of the system bus. `None`: `DBUS_SYSTEM_BUS_ADDRESS`, else the default.
    pub system_bus_address: Option<String>,
    /// Package-manager programs; `None`: the host's own, found by `facts::package_manager()`.
    pub patch_tools: Option<patch::PatchTools>,
}

/// A running action, as duplicates and cancels find it.
struct Running {
    cancel: watch::Sender<bool>,
    result: watch::Receiver<Option<v1::ActionResult>>,
}

/// Runs actions at most once each, journaling them on disk.
pub struct Executor {
    policy: LocalPolicy,
    /// Units held down during maintenance (see `holds.rs`).
    holds: Holds,
    /// Process groups of running programs, for clean-up after a crash.
    groups_dir: PathBuf,
    boot_id_file: PathBuf,
    options: ExecutorOptions,
    /// Lock order: `running` before `journal` wherever both are held.
    journal: Mutex<Journal>,
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

/// Interrupted-action messages, as the coordinator and operator read them.
pub const INTERRUPTED_MESSAGE: &str = "the agent stopped while it ran (crash, kill or reboot)";
pub const REBOOT_NOT_DONE_MESSAGE: &str = "the agent stopped before the host rebooted";

impl Executor {
    /// Opens the journal under `config.state_dir/journal`, resolves entries left in flight by a
    /// crash or reboot, keeps the policy and host paths.
    pub fn open(config: &AgentConfig) -> Result<Arc<Executor>, String> {
        Executor::open_with(config, ExecutorOptions::default())
    }

    /// [`Executor::open`] with explicit options (bus address, package tools).
    pub fn open_with(
        config: &AgentConfig,
        options: ExecutorOptions,
    ) -> Result<Arc<Executor>, String> {
        let now = now_ms();
        let mut journal =
            Journal::open(&config.state_dir.join("journal"), now).map_err(|e| e.to_string())?;
        let boot_id = facts::read_boot_id(&config.host.boot_id_file);
        let groups_dir = config.state_dir.join("groups");
        for record in journal.in_flight() {
            let Some(request) = record.request.clone() else {
                continue;
            };
            let mut result = v1::ActionResult {
                action_id: record.id.clone(),
                started_at_ms: record.started_at_ms,
                finished_at_ms: now,
                ..Default::default()
            };
            if record.kind == "reboot" {
                result
                    .details
                    .insert("boot_id_before".into(), record.boot_id.clone());
                result
                    .details
                    .insert("boot_id_after".into(), boot_id.clone());
                if !boot_id.is_empty() && boot_id != record.boot_id {
                    result.outcome = v1::Outcome::Succeeded as i32;
                    result.message = "the host rebooted (new boot id)".into();
                } else {
                    result.outcome = v1::Outcome::Interrupted as i32;
                    result.message = REBOOT_NOT_DONE_MESSAGE.into();
                }
            } else {
                result.outcome = v1::Outcome::Interrupted as i32;
                result.message = INTERRUPTED_MESSAGE.into();
                if leftovers::stop(&groups_dir, &record.id) {
                    result
                        .message
                        .push_str("; the processes it left running were stopped");
                }
            }
            tracing::info!(message = "resolved an action left in flight", id = %record.id, kind = %record.kind, outcome = result.outcome);
            journal
                .finish(&request, &record.boot_id, &result)
                .map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(Executor {
            policy: config.policy.clone(),
            holds: Holds::of(config),
            groups_dir,
            boot_id_file: config.host.boot_id_file.clone(),
            options,
            journal: Mutex::new(journal),
            running: Mutex::new(HashMap::new()),
        }))
    }

    fn lock_journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic while holding the lock cannot leave a half-written record (writes are
        // atomic renames), so a poisoned lock is still safe to use.
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one request, or answers a repeated id from the journal (no second run). While the
    /// same id is still running, a repeat waits for and returns that run's result.
    pub async fn execute(
        self: Arc<Self>,
        request: v1::ActionRequest,
        events: mpsc::Sender<v1::ActionEvent>,
    ) -> v1::ActionResult {
        let started = now_ms();
        let id = request.action_id.clone();
        if let Err(refusal) = journal::validate_id(&id) {
            // Not journaled: an unsafe id cannot name a file, and nothing ran.
            return finish_report(&id, started, Report::refused(refusal));
        }
        let mut result_rx = {
            let mut running = self.lock_running();
            if let Some(entry) = running.get(&id) {
                entry.result.clone()
            } else {
                let mut journal = self.lock_journal();
                if let Some(result) = journal.result(&id) {
                    return result;
                }
                let boot_id = facts::read_boot_id(&self.boot_id_file);
                let action = request.action.clone().unwrap_or_default();
                if let Err(refusal) = self.policy.check(&action) {
                    let result = finish_report(&id, started, Report::refused(refusal));
                    if let Err(error) = journal.finish(&request, &boot_id, &result) {
                        tracing::warn!(message = "cannot journal a refusal", %error);
                    }
                    return result;
                }
                if let Err(error) = journal.begin(&request, &boot_id, started) {
                    // At most once needs the record first: without it, do nothing.
                    return finish_report(
                        &id,
                        started,
                        Report::failed(format!("not run: {error}")),
                    );
                }
                drop(journal);
                let (cancel_tx, cancel_rx) = watch::channel(false);
                let (result_tx, result_rx) = watch::channel(None);
                running.insert(
                    id.clone(),
                    Running {
                        cancel: cancel_tx,
                        result: result_rx.clone(),
                    },
                );
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    let result = this
                        .clone()
                        .run(request.clone(), events, cancel_rx, started, boot_id.clone())
                        .await;
                    let mut result = result;
                    if let Err(error) = this.lock_journal().finish(&request, &boot_id, &result) {
                        tracing::error!(message = "cannot journal a result", %error);
                        result.message.push_str(&format!(
                            " (warning: the result could not be journaled: {error})"
                        ));
                    }
                    this.lock_running().remove(&request.action_id);
                    let _ = result_tx.send(Some(result));
                });
                result_rx
            }
        };
        match result_rx.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or_default(),
            // The task ended without a result: only a panic in an action can do that.
            Err(_) => finish_report(
                &id,
                started,
                Report::failed("the action ended without a result (agent bug)"),
            ),
        }
    }

    /// The body of one action's task: dispatch, bounded by the timeout and the cancel switch.
    async fn run(
        self: Arc<Self>,
        request: v1::ActionRequest,
        events: mpsc::Sender<v1::ActionEvent>,
        cancel: watch::Receiver<bool>,
        started: i64,
        boot_id: String,
    ) -> v1::ActionResult {
        let id = request.action_id.clone();
        let Some(kind) = request.action.and_then(|a| a.kind) else {
            // The policy check refuses an empty action; kept for completeness.
            return finish_report(
                &id,
                started,
                Report::failed("the request carries no action"),
            );
        };
        let timeout = match request.timeout_seconds {
            0 => pitcrew_proto::actions::default_timeout(&kind),
            s => Duration::from_secs(u64::from(s)),
        };
        let ctx = Ctx {
            action_id: id.clone(),
            groups_dir: Some(self.groups_dir.clone()),
            events,
            deadline: Instant::now() + timeout,
            timeout,
            cancel,
        };
        ctx.progress(0, "started");
        // Actions that stop their own work (kill a process group, stop a walk) get a grace
        // period to do so and report; the rest are simply dropped when the time is up.
        let self_stopping = matches!(
            kind,
            Kind::Exec(_)
                | Kind::Patch(_)
                | Kind::Health(_)
                | Kind::RemovePath(_)
                | Kind::Reboot(_)
        );
        let left_behind = match kind {
            Kind::DedupeShm(_) => "",
            _ => "a systemd job already queued is left to systemd",
        };
        let work = async {
            // A unit held down that runs anyway means the maintenance did not happen as
            // planned: every action that changes the host is refused, naming it. Checks and
            // the release of holds only look or give back, so they still run.
            if !pitcrew_proto::actions::is_read_only(&kind) {
                let bus = self.options.system_bus_address.as_deref();
                if let Some(report) = unit::held_unit_running(&self.holds, bus).await {
                    return report;
                }
            }
            self.dispatch(&ctx, kind, &boot_id).await
        };
        let report = if self_stopping {
            work.await
        } else {
            tokio::select! {
                report = work => report,
                stop = ctx.stopped() => Report::stopped(stop, timeout, left_behind),
            }
        };
        ctx.progress(100, "finished");
        finish_report(&id, started, report)
    }

    async fn dispatch(&self, ctx: &Ctx, kind: Kind, boot_id: &str) -> Report {
        let bus = self.options.system_bus_address.as_deref();
        match kind {
            Kind::Exec(e) => exec::run(ctx, &self.policy, &e).await,
            Kind::RemovePath(r) => remove_path::run(ctx, &self.policy, &r).await,
            Kind::DedupeShm(_) => dedupe_shm::run(ctx).await,
            Kind::Unit(u) => unit::unit(ctx, bus, &self.holds, &u).await,
            Kind::ReleaseHolds(r) => unit::release_holds(ctx, bus, &self.holds, &r).await,
            Kind::SignalUnit(s) => unit::signal(ctx, bus, &self.policy, &s).await,
            Kind::WaitUnit(w) => unit::wait(ctx, bus, &w).await,
            Kind::DaemonReload(_) => unit::daemon_reload(ctx, bus).await,
            Kind::Health(h) => health::run(ctx, bus, &self.policy, &h).await,
            Kind::Patch(p) => {
                let tools = self
                    .options
                    .patch_tools
                    .clone()
                    .unwrap_or_else(patch::PatchTools::host);
                patch::run(ctx, &tools, &p).await
            }
            Kind::Reboot(r) => reboot::run(ctx, bus, &r, boot_id).await,
        }
    }

    /// Cancels a running action (its outcome becomes CANCELLED); false when no such action runs.
    pub fn cancel(&self, action_id: &str) -> bool {
        match self.lock_running().get(action_id) {
            Some(entry) => {
                let _ = entry.cancel.send(true);
                true
            }
            None => false,
        }
    }

    /// Ids of the actions running now.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock_running().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Final results the coordinator has not acknowledged yet (including recovered ones).
    pub fn unacknowledged(&self) -> Vec<v1::ActionResult> {
        self.lock_journal().unacknowledged()
    }

    /// Forgets results the coordinator has stored; a repeated id still gets its result.
    pub fn acknowledge(&self, ids: &[String]) {
        self.lock_journal().acknowledge(ids, now_ms());
    }
}

fn finish_report(id: &str, started: i64, report: Report) -> v1::ActionResult {
    v1::ActionResult {
        action_id: id.to_owned(),
        outcome: report.outcome,
        message: report.message,
        output: report.output,
        refused_by: report.refused_by,
        details: report.details,
        started_at_ms: started,
        finished_at_ms: now_ms(),
    }
}
