//! Campaign schedules in the engine: registering, pausing and removing them, and firing them
//! in the engine's turn — so a fire, the run it starts and the schedule's new "last fired"
//! are written in one transaction (write-ahead), and a restart can neither lose a fire nor
//! fire twice for one time.
//!
//! When to fire is the scheduler's pure `due(schedule, since, now)`: `since` is the last fire,
//! or when the schedule was registered or resumed (fire times before that are not made up).
//! A fire starts a run from the stored file on the fleet as it is (its `[select] when`
//! conditions read then), unless a run of the same campaign name is still active — then the
//! fire is skipped and the event log says why — or no host holds the conditions — then it is
//! recorded as having nothing to do. Either way the fire counts: the next is the first fire
//! time after now.

use std::collections::BTreeMap;

use pitcrew_scheduler::{self as scheduler, CampaignRun, CampaignSpec, Due, PlanError, Schedule};

use super::{EngineState, Turn, audit_event};
use crate::engine::EngineError;
use crate::store::ScheduleRecord;

/// Who the event log and a run's `created_by` name for what a schedule does.
pub(crate) fn schedule_actor(name: &str) -> String {
    format!("schedule {name}")
}

/// One registered schedule: its row, and its file parsed once.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleEntry {
    record: ScheduleRecord,
    /// `Err` with why, for a stored file this build cannot read any more (it never fires).
    spec: Result<(CampaignSpec, Schedule), String>,
}

impl ScheduleEntry {
    fn new(record: ScheduleRecord) -> ScheduleEntry {
        let spec = CampaignSpec::parse(&record.spec_toml, &record.source_name)
            .map_err(|e| e.to_string())
            .and_then(|spec| match spec.schedule.clone() {
                Some(schedule) => Ok((spec, schedule)),
                None => Err("the stored file has no schedule".to_owned()),
            });
        if let Err(error) = &spec {
            tracing::warn!(message = "a stored schedule cannot be read; it will not fire", name = %record.name, %error);
        }
        ScheduleEntry { record, spec }
    }

    /// Fire times before this are not made up: the last fire, or registration or resumption.
    fn since_ms(&self) -> i64 {
        self.record.last_fire_ms.max(self.record.created_at_ms)
    }

    fn next_fire_ms(&self) -> Option<i64> {
        if self.record.paused {
            return None;
        }
        let (_, schedule) = self.spec.as_ref().ok()?;
        schedule.next_after(self.since_ms())
    }
}

/// A schedule as operators read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleView {
    pub record: ScheduleRecord,
    pub cron: String,
    pub timezone: String,
    pub conditions: Vec<String>,
    /// None when paused, unreadable, or the expression has no later time.
    pub next_fire_ms: Option<i64>,
    pub next_fire_local: String,
    /// The state of the last run it started, while the engine holds that run.
    pub last_run_state: Option<String>,
    /// Registering replaced a schedule of the same name.
    pub replaced: bool,
}

/// What an operator asks of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleControl {
    Pause,
    Resume,
    Remove,
}

/// The engine's schedules, by campaign name.
#[derive(Debug, Default)]
pub(crate) struct Schedules {
    by_name: BTreeMap<String, ScheduleEntry>,
}

impl Schedules {
    pub fn load(records: Vec<ScheduleRecord>) -> Schedules {
        Schedules {
            by_name: records
                .into_iter()
                .map(|r| (r.name.clone(), ScheduleEntry::new(r)))
                .collect(),
        }
    }
}

impl EngineState {
    fn schedule_view(&self, entry: &ScheduleEntry, replaced: bool) -> ScheduleView {
        let (cron, timezone, conditions) = match &entry.spec {
            Ok((spec, schedule)) => (
                schedule.cron.clone(),
                schedule.timezone.clone(),
                spec.select.when.iter().map(|c| c.to_string()).collect(),
            ),
            Err(_) => (String::new(), String::new(), Vec::new()),
        };
        let next_fire_ms = entry.next_fire_ms();
        let next_fire_local = match (&entry.spec, next_fire_ms) {
            (Ok((_, schedule)), Some(at)) => schedule.local(at),
            _ => String::new(),
        };
        let last_run_state = self
            .by_id
            .get(&entry.record.last_run_id)
            .map(|&ci| self.runs[ci].state.as_str().to_owned());
        ScheduleView {
            record: entry.record.clone(),
            cron,
            timezone,
            conditions,
            next_fire_ms,
            next_fire_local,
            last_run_state,
            replaced,
        }
    }

    /// Every schedule, by name.
    pub fn list_schedules(&self) -> Vec<ScheduleView> {
        self.schedules
            .by_name
            .values()
            .map(|e| self.schedule_view(e, false))
            .collect()
    }

    /// Registers (or replaces) the schedule of `spec`'s campaign name; audited. A replaced
    /// schedule keeps its last fire and run, so a run it started still keeps the next fire
    /// from starting a second one.
    pub fn register_schedule(
        &mut self,
        operator: &str,
        spec: &CampaignSpec,
        spec_toml: String,
        source_name: String,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<ScheduleView, EngineError> {
        let Some(schedule) = &spec.schedule else {
            return Err(EngineError::Schedule(format!(
                "{source_name} has no schedule; add e.g. schedule = {{ cron = \"0 3 * * *\", timezone = \"UTC\" }}, or run it now with `pitcrew campaign run`"
            )));
        };
        let old = self.schedules.by_name.get(&spec.name);
        let replaced = old.is_some();
        let record = ScheduleRecord {
            name: spec.name.clone(),
            spec_toml,
            source_name,
            created_by: operator.to_owned(),
            created_at_ms: now_ms,
            paused: false,
            last_fire_ms: old.map_or(0, |o| o.record.last_fire_ms),
            last_run_id: old
                .map(|o| o.record.last_run_id.clone())
                .unwrap_or_default(),
            last_note: old.map(|o| o.record.last_note.clone()).unwrap_or_default(),
        };
        let entry = ScheduleEntry::new(record.clone());
        turn.schedules.push((record.name.clone(), Some(record)));
        let view = self.schedule_view(&entry, replaced);
        let next = if view.next_fire_local.is_empty() {
            "no later fire time".to_owned()
        } else {
            format!("next {}", view.next_fire_local)
        };
        turn.event(audit_event(
            operator,
            "",
            "",
            format!(
                "{} schedule {:?}: {schedule}; {next}",
                if replaced { "replaced" } else { "registered" },
                spec.name
            ),
        ));
        self.schedules.by_name.insert(spec.name.clone(), entry);
        turn.campaigns_changed = true;
        Ok(view)
    }

    /// Pauses, resumes or removes a schedule; audited. Resuming does not make up the fire
    /// times that passed while paused.
    pub fn control_schedule(
        &mut self,
        operator: &str,
        name: &str,
        control: ScheduleControl,
        now_ms: i64,
        turn: &mut Turn,
    ) -> Result<ScheduleView, EngineError> {
        let entry = self
            .schedules
            .by_name
            .get_mut(name)
            .ok_or_else(|| EngineError::UnknownSchedule(name.to_owned()))?;
        let what = match control {
            ScheduleControl::Pause => {
                entry.record.paused = true;
                "paused"
            }
            ScheduleControl::Resume => {
                if entry.record.paused {
                    entry.record.paused = false;
                    entry.record.created_at_ms = now_ms;
                }
                "resumed"
            }
            ScheduleControl::Remove => "removed",
        };
        let entry = entry.clone();
        if control == ScheduleControl::Remove {
            self.schedules.by_name.remove(name);
            turn.schedules.push((name.to_owned(), None));
        } else {
            turn.schedules
                .push((name.to_owned(), Some(entry.record.clone())));
        }
        turn.event(audit_event(
            operator,
            "",
            "",
            format!("{what} schedule {name:?}"),
        ));
        turn.campaigns_changed = true;
        Ok(self.schedule_view(&entry, false))
    }

    /// Fires every schedule that is due at `now_ms`; returns the earliest next fire time.
    pub fn fire_schedules(&mut self, now_ms: i64, turn: &mut Turn) -> Option<i64> {
        let mut wake: Option<i64> = None;
        let names: Vec<String> = self.schedules.by_name.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.schedules.by_name.get(&name) else {
                continue;
            };
            if entry.record.paused {
                continue;
            }
            let Ok((spec, schedule)) = &entry.spec else {
                continue;
            };
            let (spec, schedule) = (spec.clone(), schedule.clone());
            let next = match scheduler::schedule::due(&schedule, entry.since_ms(), now_ms) {
                Due::Never => None,
                Due::Wait { at_ms } => Some(at_ms),
                Due::Fire {
                    scheduled_ms,
                    next_ms,
                } => {
                    let spec_toml = entry.record.spec_toml.clone();
                    self.fire(
                        &name,
                        &spec,
                        spec_toml,
                        &schedule,
                        scheduled_ms,
                        now_ms,
                        turn,
                    );
                    next_ms
                }
            };
            if let Some(at) = next {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        wake
    }

    /// One fire of schedule `name`: starts a run, or records why it started none.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        name: &str,
        spec: &CampaignSpec,
        spec_toml: String,
        schedule: &Schedule,
        scheduled_ms: i64,
        now_ms: i64,
        turn: &mut Turn,
    ) {
        let actor = schedule_actor(name);
        let when = schedule.local(scheduled_ms);
        let (run_id, note) = match self.active_run_named(&spec.name) {
            // Never two runs of one campaign at once: the fire is skipped, and says why.
            Some((id, state)) => (
                String::new(),
                format!(
                    "skipped the fire of {when}: run {id} of {:?} is still {state}",
                    spec.name
                ),
            ),
            None => {
                let id = crate::engine::new_campaign_id();
                let hosts = self.hosts();
                // Planned here, in the turn, so the run and the fire are one commit: a fire
                // plans once, as `campaign plan` would, on the fleet as it is.
                let made = scheduler::plan(spec, &id, &hosts, now_ms)
                    .and_then(|plan| plan.refused())
                    .and_then(|()| CampaignRun::new(&id, spec, &hosts, now_ms));
                match made {
                    Ok(run) => {
                        let hosts = run.hosts.len();
                        // The same insertion as `campaign run`, in the schedule's name.
                        match self.insert_run(run, spec_toml, &actor, turn) {
                            Ok(_) => (id, format!("started run over {hosts} host(s)")),
                            Err(e) => (String::new(), format!("started no run: {e}")),
                        }
                    }
                    Err(e @ (PlanError::NoFactsMatch { .. } | PlanError::NothingSelected)) => (
                        String::new(),
                        format!("nothing to do at the fire of {when}: {e}"),
                    ),
                    Err(e) => (
                        String::new(),
                        format!("started no run at the fire of {when}: {e}"),
                    ),
                }
            }
        };
        tracing::info!(message = "schedule fired", schedule = %name, run = %run_id, note = %note);
        turn.event(audit_event(
            &actor,
            "",
            &run_id,
            format!("schedule {name:?} fired ({when}): {note}"),
        ));
        if let Some(entry) = self.schedules.by_name.get_mut(name) {
            entry.record.last_fire_ms = now_ms;
            entry.record.last_run_id = run_id.clone();
            entry.record.last_note = if run_id.is_empty() {
                note
            } else {
                String::new()
            };
            turn.schedules
                .push((name.to_owned(), Some(entry.record.clone())));
        }
        turn.campaigns_changed = true;
    }
}
