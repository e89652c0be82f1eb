//! Sync runs as persisted state machines.
//!
//! A run plans its stages, then executes one step per entity type and
//! direction, page by page. Each page's mapping transitions, conflict
//! records, counters and cursor are committed in one transaction, so a run
//! resumed after a crash continues from its last checkpoint.

use crate::ids::{EntityType, TenantId};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Which way a step moves records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepDirection {
    /// Source → target.
    Forward,
    /// Target → source (bidirectional integrations only).
    Backward,
    /// Acts on records gone from either side; after every sync step, in
    /// reverse stage order, so children go before their parents.
    Delete,
}

impl StepDirection {
    /// `forward` or `backward`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDirection::Forward => "forward",
            StepDirection::Backward => "backward",
            StepDirection::Delete => "delete",
        }
    }
}

impl FromStr for StepDirection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "forward" => Ok(StepDirection::Forward),
            "backward" => Ok(StepDirection::Backward),
            "delete" => Ok(StepDirection::Delete),
            _ => Err(format!("unknown step direction `{s}`")),
        }
    }
}

/// Where one step is.
///
/// `pending → running → done`, or `failed` when its run fails while the
/// step executes; a failed step runs again (from its checkpoint) when the
/// run is resumed. `done` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

impl StepState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
        }
    }
}

impl FromStr for StepState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown step state `{s}`"))
    }
}

/// What happens to a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepEvent {
    /// A page of the step committed; the step goes on.
    Page,
    /// The step's last page committed.
    Finish,
    /// Its run failed while the step executed.
    Fail,
    /// Its failed run was resumed.
    Reopen,
}

impl StepEvent {
    /// The state the event leads to.
    pub fn target(self) -> StepState {
        match self {
            StepEvent::Page | StepEvent::Reopen => StepState::Running,
            StepEvent::Finish => StepState::Done,
            StepEvent::Fail => StepState::Failed,
        }
    }
}

/// A step event that does not apply in the step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {state} step cannot {event:?}")]
pub struct StepTransitionError {
    pub state: StepState,
    pub event: StepEvent,
}

impl StepState {
    /// Every state.
    pub const ALL: [StepState; 4] = [
        StepState::Pending,
        StepState::Running,
        StepState::Done,
        StepState::Failed,
    ];

    /// Decides the state after `event`.
    pub fn on(self, event: StepEvent) -> Result<StepState, StepTransitionError> {
        use StepEvent::*;
        use StepState::*;
        match (self, event) {
            // A page committed again after a crash, or by a resumed run
            // whose step failed, goes on from the checkpoint.
            (Pending | Running | Failed, Page | Finish) | (Running, Fail) | (Failed, Reopen) => {
                Ok(event.target())
            }
            (state, event) => Err(StepTransitionError { state, event }),
        }
    }

    /// The states from which `event` leads: what the row must still hold
    /// for the store to write the event's result.
    pub fn before(event: StepEvent) -> Vec<StepState> {
        StepState::ALL
            .into_iter()
            .filter(|s| s.on(event).is_ok())
            .collect()
    }
}

/// The passes of a sync step, in order: the retry pass over the mappings a
/// crash or failure left unsettled, the rows whose change time cannot be
/// read (read on every run: no cursor can say whether they changed), the
/// change scan, then (when some records waited for a reference) the patch
/// pass over the scanned window, then the synced records whose last change
/// was refused (by a system, or for a reference not synced), read again
/// until they are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Retry,
    Untimed,
    Scan,
    Patch,
    Refused,
    Done,
}

/// What moves a step from one pass to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseEvent {
    /// The retry pass read a page; `last` when it was not full.
    Retried { last: bool },
    /// The pass over rows without a change time read a page; `last` when
    /// it was the last.
    ReadUntimed { last: bool },
    /// The scan's last page is written; `waiting` when records of the
    /// scan were written with an empty reference or left for the patch
    /// pass.
    Scanned { waiting: bool },
    /// The patch pass read a page; `last` at the end of the window.
    Patched { last: bool },
    /// The pass over refused records read a page; `last` when it was not
    /// full.
    ReadRefused { last: bool },
}

impl Phase {
    /// The pass after `event`; an event of another pass leaves it as it is.
    pub fn on(self, event: PhaseEvent) -> Phase {
        match (self, event) {
            (Phase::Retry, PhaseEvent::Retried { last: true }) => Phase::Untimed,
            (Phase::Untimed, PhaseEvent::ReadUntimed { last: true }) => Phase::Scan,
            (Phase::Scan, PhaseEvent::Scanned { waiting: true }) => Phase::Patch,
            (Phase::Scan, PhaseEvent::Scanned { waiting: false }) => Phase::Refused,
            (Phase::Patch, PhaseEvent::Patched { last: true }) => Phase::Refused,
            (Phase::Refused, PhaseEvent::ReadRefused { last: true }) => Phase::Done,
            (phase, _) => phase,
        }
    }

    /// The step state a checkpoint taken in this pass records, and the
    /// event that leads to it.
    pub fn step_event(self) -> StepEvent {
        match self {
            Phase::Done => StepEvent::Finish,
            _ => StepEvent::Page,
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a step has done so far.
///
/// In a sync step every record read has exactly one outcome, so `read`
/// equals [`outcomes`](Self::outcomes): `created`, `updated`, `unchanged`,
/// `parked`, `failed`, `skipped` and `postponed`. `conflicts` and
/// `deferred` say more about some of those records (a conflict a strategy
/// settled is also updated or unchanged; a record whose self-reference
/// waits for its parent is also created, updated or unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepCounters {
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    /// Compared and found in step: nothing written.
    pub unchanged: u64,
    /// Failed alone: the mapping's `last_error` says why.
    pub failed: u64,
    /// Conflicts a strategy settled (of the updated and unchanged).
    pub conflicts: u64,
    /// Conflicts parked for a reviewer.
    pub parked: u64,
    /// Nothing to do for the record in this step: it waits for a review of
    /// an earlier conflict, its counterpart is gone (the delete step acts
    /// on it), it is marked deleted, its mapping stays stale, or the other
    /// direction's step is creating it.
    pub skipped: u64,
    /// Left for a later pass: it references a record not synced yet (the
    /// step's patch pass takes it again; the backward step, in a
    /// bidirectional integration; or, for one read in the refused pass,
    /// the next run's).
    pub postponed: u64,
    /// Self-references whose parent is not mapped yet, patched by the
    /// step's patch pass: created empty, or an update that keeps the
    /// target's (of the created, updated and unchanged).
    pub deferred: u64,
    /// Records deleted because their counterpart was deleted.
    pub deleted: u64,
    /// Target records archived because their source was deleted.
    pub archived: u64,
    /// Mappings marked stale (a record gone, nothing else done).
    pub stale: u64,
    /// Target records created anew because the old one was gone.
    pub recreated: u64,
}

impl StepCounters {
    /// Each counter by the name the step table and the metrics give it.
    pub fn named(&self) -> [(&'static str, u64); 14] {
        let StepCounters {
            read,
            created,
            updated,
            unchanged,
            failed,
            conflicts,
            parked,
            skipped,
            postponed,
            deferred,
            deleted,
            archived,
            stale,
            recreated,
        } = *self;
        [
            ("read", read),
            ("created", created),
            ("updated", updated),
            ("unchanged", unchanged),
            ("failed", failed),
            ("conflicts", conflicts),
            ("parked", parked),
            ("skipped", skipped),
            ("postponed", postponed),
            ("deferred", deferred),
            ("deleted", deleted),
            ("archived", archived),
            ("stale", stale),
            ("recreated", recreated),
        ]
    }

    /// The sum of the outcomes of a sync step's records; equal to `read`.
    pub fn outcomes(&self) -> u64 {
        self.created
            + self.updated
            + self.unchanged
            + self.parked
            + self.failed
            + self.skipped
            + self.postponed
    }
}

/// Adds the counters of a part of a step (one page) to the step's.
impl std::ops::AddAssign for StepCounters {
    fn add_assign(&mut self, page: StepCounters) {
        let StepCounters {
            read,
            created,
            updated,
            unchanged,
            failed,
            conflicts,
            parked,
            skipped,
            postponed,
            deferred,
            deleted,
            archived,
            stale,
            recreated,
        } = page;
        self.read += read;
        self.created += created;
        self.updated += updated;
        self.unchanged += unchanged;
        self.failed += failed;
        self.conflicts += conflicts;
        self.parked += parked;
        self.skipped += skipped;
        self.postponed += postponed;
        self.deferred += deferred;
        self.deleted += deleted;
        self.archived += archived;
        self.stale += stale;
        self.recreated += recreated;
    }
}

/// The durable progress of one step, written with each page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCheckpoint {
    pub run_id: Uuid,
    pub tenant_id: TenantId,
    pub stage: u32,
    pub entity_type: EntityType,
    pub direction: StepDirection,
    pub state: StepState,
    /// Where the next page starts; connector-specific.
    pub cursor: Option<serde_json::Value>,
    pub counters: StepCounters,
    pub error: Option<String>,
}

/// Where a run is in its lifecycle.
///
/// `planned → running → (suspended ⇄ running) → succeeded | failed |
/// cancelled`. A run that is planned, running or suspended is *active*: at
/// most one per tenant and integration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Planned,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Cancelled,
}

/// What happens to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// A worker claimed it and starts (or continues) executing.
    Start,
    /// Every step is done and manual conflicts are pending.
    Suspend,
    /// Every step is done and nothing is pending.
    Succeed,
    /// A step failed in a way a retry of the page cannot fix.
    Fail,
    /// An operator cancelled it.
    Cancel,
    /// The last pending conflict was resolved (or an operator resumed).
    Resume,
}

/// A run event that does not apply in the run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {state} run cannot {event:?}")]
pub struct RunTransitionError {
    pub state: RunState,
    pub event: RunEvent,
}

impl RunState {
    /// Every state.
    pub const ALL: [RunState; 6] = [
        RunState::Planned,
        RunState::Running,
        RunState::Suspended,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Planned => "planned",
            RunState::Running => "running",
            RunState::Suspended => "suspended",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Planned, running or suspended.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Planned | RunState::Running | RunState::Suspended)
    }

    /// Decides the state after `event`, and what persisting it must also
    /// do to the run's steps.
    pub fn step(self, event: RunEvent) -> Result<(RunState, Option<StepEvent>), RunTransitionError> {
        let to = self.on(event)?;
        let steps = match (self, to) {
            (RunState::Running, RunState::Failed) => Some(StepEvent::Fail),
            // A cancelled run leaves no step `running`: it ends with the
            // run (the operator's reason as its error).
            (RunState::Running | RunState::Suspended, RunState::Cancelled) => Some(StepEvent::Fail),
            (RunState::Failed, RunState::Running) => Some(StepEvent::Reopen),
            _ => None,
        };
        Ok((to, steps))
    }

    /// Decides the state after `event`. `Start` on a running run is allowed:
    /// that is a worker taking over a run whose previous worker died.
    pub fn on(self, event: RunEvent) -> Result<RunState, RunTransitionError> {
        use RunEvent::*;
        use RunState::*;
        match (self, event) {
            (Planned | Running, Start) => Ok(Running),
            // A failed run is continued from its checkpoints once what
            // failed it is fixed.
            (Suspended | Failed, Resume) => Ok(Running),
            (Running, Suspend) => Ok(Suspended),
            (Running, Succeed) => Ok(Succeeded),
            // A planned run fails without starting when it cannot: a
            // table or a login its systems refuse, or an outage that
            // outlasts the retry budget.
            (Planned | Running, Fail) => Ok(Failed),
            (Planned | Running | Suspended, Cancel) => Ok(Cancelled),
            (state, event) => Err(RunTransitionError { state, event }),
        }
    }
}

/// Why an operator cannot resume a run now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    #[error("it is {0}; only a planned, running, suspended or failed run can be resumed")]
    Finished(RunState),
    #[error("run {0} of the same integration started after it: resume that one, or start a new run")]
    Superseded(Uuid),
    #[error("worker `{0}` is executing it")]
    Executing(String),
    #[error("{0} of its conflicts still wait for a reviewer")]
    PendingConflicts(u64),
    #[error("the mass-deletion brake holds it: confirm with `syncd runs confirm-deletes {0}` or cancel it")]
    Held(Uuid),
}

/// Whether a worker may take up a run now: a planned or interrupted
/// (running) run, or a suspended one with no conflict left for a reviewer,
/// that no worker holds a live lease of and no unconfirmed mass-deletion
/// brake holds. The one definition: each store's query for the runs to
/// execute is checked against it, state by state, by the conformance tests.
pub fn ready_to_execute(state: RunState, pending_conflicts: bool, leased: bool, held: bool) -> bool {
    let waiting = match state {
        RunState::Planned | RunState::Running => true,
        RunState::Suspended => !pending_conflicts,
        RunState::Succeeded | RunState::Failed | RunState::Cancelled => false,
    };
    waiting && !leased && !held
}

/// Decides whether an operator may resume run `run` in `state` that has
/// `pending` undecided conflicts, whose live lease, if any, `executing`
/// names the holder of, and which an unconfirmed brake may hold (`held`):
/// a run [ready to execute](ready_to_execute) once nothing but the
/// operator's word was missing, and a failed run that no later run of its
/// integration (`newer`) has followed. The executor makes the state
/// transition itself ([`RunEvent::Resume`] or [`RunEvent::Start`]); a
/// failed run is reopened first.
pub fn may_resume(
    run: Uuid,
    state: RunState,
    pending: u64,
    executing: Option<&str>,
    held: bool,
    newer: Option<Uuid>,
) -> Result<(), ResumeRefused> {
    if state == RunState::Failed {
        return match newer {
            Some(run) => Err(ResumeRefused::Superseded(run)),
            None => Ok(()),
        };
    }
    if !state.is_active() {
        return Err(ResumeRefused::Finished(state));
    }
    if let Some(worker) = executing {
        return Err(ResumeRefused::Executing(worker.to_owned()));
    }
    if state == RunState::Suspended && pending > 0 {
        return Err(ResumeRefused::PendingConflicts(pending));
    }
    if held {
        return Err(ResumeRefused::Held(run));
    }
    debug_assert!(ready_to_execute(state, pending > 0, executing.is_some(), held));
    Ok(())
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown run state `{s}`"))
    }
}

/// One step of a run's plan: an entity type in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub stage: u32,
    pub entity_type: EntityType,
    pub direction: StepDirection,
}

/// The steps of `plan` in execution order: stage by stage, alphabetical
/// inside a stage, forward before backward for each entity type; then one
/// delete step per entity type in exactly the reverse order, so that a
/// child's records are deleted before the parents they reference.
pub fn steps_of(plan: &crate::plan::Plan, bidirectional: bool) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    for stage in &plan.stages {
        for entity in &stage.entity_types {
            let directions: &[StepDirection] = if bidirectional {
                &[StepDirection::Forward, StepDirection::Backward]
            } else {
                &[StepDirection::Forward]
            };
            for &direction in directions {
                steps.push(PlannedStep {
                    stage: stage.number as u32,
                    entity_type: entity.as_str().into(),
                    direction,
                });
            }
        }
    }
    for stage in plan.stages.iter().rev() {
        for entity in stage.entity_types.iter().rev() {
            steps.push(PlannedStep {
                stage: stage.number as u32,
                entity_type: entity.as_str().into(),
                direction: StepDirection::Delete,
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunEvent::*;

    #[test]
    fn every_state_and_event() {
        let events = [Start, Suspend, Succeed, Fail, Cancel, Resume];
        let mut table = String::new();
        for state in RunState::ALL {
            for event in events {
                let to = match state.on(event) {
                    Ok(to) => to.to_string(),
                    Err(e) => {
                        assert_eq!(e, RunTransitionError { state, event });
                        "-".into()
                    }
                };
                table.push_str(&format!("{state} {event:?} {to}\n"));
            }
        }
        assert_eq!(table.lines().count(), 36);
        let allowed: Vec<&str> = table.lines().filter(|l| !l.ends_with(" -")).collect();
        assert_eq!(
            allowed,
            [
                "planned Start running",
                "planned Fail failed",
                "planned Cancel cancelled",
                "running Start running",
                "running Suspend suspended",
                "running Succeed succeeded",
                "running Fail failed",
                "running Cancel cancelled",
                "suspended Cancel cancelled",
                "suspended Resume running",
                "failed Resume running",
            ]
        );
    }

    #[test]
    fn a_done_step_is_final_and_a_failed_one_goes_on_when_resumed() {
        use StepEvent::*;
        assert_eq!(StepState::Pending.on(Page), Ok(StepState::Running));
        assert_eq!(StepState::Running.on(Finish), Ok(StepState::Done));
        assert_eq!(StepState::Running.on(Fail), Ok(StepState::Failed));
        assert_eq!(StepState::Failed.on(Reopen), Ok(StepState::Running));
        assert_eq!(StepState::Failed.on(Page), Ok(StepState::Running));
        for event in [Page, Finish, Fail, Reopen] {
            assert!(StepState::Done.on(event).is_err(), "done is final: {event:?}");
            assert!(!StepState::before(event).contains(&StepState::Done));
            // Every event leads to one state, from the states `before` says.
            for state in StepState::ALL {
                match state.on(event) {
                    Ok(to) => {
                        assert_eq!(to, event.target());
                        assert!(StepState::before(event).contains(&state));
                    }
                    Err(_) => assert!(!StepState::before(event).contains(&state)),
                }
            }
        }
        assert!(
            StepState::Pending.on(Fail).is_err(),
            "a step not started does not fail"
        );
    }

    #[test]
    fn a_failing_run_fails_its_running_step_and_a_resume_reopens_it() {
        assert_eq!(
            RunState::Running.step(RunEvent::Fail),
            Ok((RunState::Failed, Some(StepEvent::Fail)))
        );
        assert_eq!(
            RunState::Failed.step(RunEvent::Resume),
            Ok((RunState::Running, Some(StepEvent::Reopen)))
        );
        // Cancelled, a run leaves no step `running` behind.
        for state in [RunState::Running, RunState::Suspended] {
            assert_eq!(
                state.step(RunEvent::Cancel),
                Ok((RunState::Cancelled, Some(StepEvent::Fail)))
            );
        }
        for (state, event) in [
            (RunState::Planned, RunEvent::Cancel),
            (RunState::Planned, RunEvent::Start),
            (RunState::Planned, RunEvent::Fail),
            (RunState::Running, RunEvent::Succeed),
        ] {
            assert_eq!(state.step(event).unwrap().1, None);
        }
    }

    #[test]
    fn a_step_passes_retry_untimed_scan_patch_refused_in_order() {
        use PhaseEvent::*;
        assert_eq!(Phase::default(), Phase::Retry);
        assert_eq!(Phase::Retry.on(Retried { last: false }), Phase::Retry);
        assert_eq!(Phase::Retry.on(Retried { last: true }), Phase::Untimed);
        assert_eq!(Phase::Untimed.on(ReadUntimed { last: false }), Phase::Untimed);
        assert_eq!(Phase::Untimed.on(ReadUntimed { last: true }), Phase::Scan);
        assert_eq!(Phase::Scan.on(Scanned { waiting: false }), Phase::Refused);
        assert_eq!(Phase::Scan.on(Scanned { waiting: true }), Phase::Patch);
        assert_eq!(Phase::Patch.on(Patched { last: false }), Phase::Patch);
        assert_eq!(Phase::Patch.on(Patched { last: true }), Phase::Refused);
        assert_eq!(Phase::Refused.on(ReadRefused { last: false }), Phase::Refused);
        assert_eq!(Phase::Refused.on(ReadRefused { last: true }), Phase::Done);
        // No pass goes back, and an event of another pass changes nothing.
        for event in [
            Retried { last: true },
            ReadUntimed { last: true },
            Scanned { waiting: true },
            Patched { last: true },
            ReadRefused { last: true },
        ] {
            assert_eq!(Phase::Done.on(event), Phase::Done);
        }
        assert_eq!(Phase::Scan.on(Retried { last: true }), Phase::Scan);
        assert_eq!(Phase::Scan.on(ReadUntimed { last: true }), Phase::Scan);
        assert_eq!(Phase::Done.step_event().target(), StepState::Done);
        assert_eq!(Phase::Patch.step_event().target(), StepState::Running);
        // The checkpoint keeps the pass by name.
        assert_eq!(
            serde_json::to_value(Phase::Patch).unwrap(),
            serde_json::json!("patch")
        );
    }

    #[test]
    fn who_may_resume() {
        use ResumeRefused::*;
        let check = |state, pending, executing, expected: Result<(), ResumeRefused>| {
            assert_eq!(
                may_resume(Uuid::nil(), state, pending, executing, false, None),
                expected,
                "{state} pending {pending} executing {executing:?}"
            );
        };
        check(RunState::Suspended, 0, None, Ok(()));
        check(RunState::Suspended, 2, None, Err(PendingConflicts(2)));
        check(RunState::Suspended, 0, Some("w1"), Err(Executing("w1".into())));
        check(RunState::Planned, 0, None, Ok(()));
        // An interrupted run parked conflicts as it went; continuing it
        // does not need them decided.
        check(RunState::Running, 3, None, Ok(()));
        check(RunState::Running, 0, Some("w1"), Err(Executing("w1".into())));
        for done in [RunState::Succeeded, RunState::Cancelled] {
            check(done, 0, None, Err(Finished(done)));
            check(done, 1, Some("w1"), Err(Finished(done)));
        }
        // A failed run, unless a later run of its integration followed it.
        check(RunState::Failed, 0, None, Ok(()));
        let later = Uuid::nil();
        assert_eq!(
            may_resume(Uuid::nil(), RunState::Failed, 0, None, false, Some(later)),
            Err(Superseded(later))
        );
        // A run the brake holds waits for its deletions to be confirmed.
        let run = Uuid::from_u128(7);
        assert_eq!(
            may_resume(run, RunState::Suspended, 0, None, true, None),
            Err(Held(run))
        );
    }

    /// What an operator may resume (but a failed run, which is reopened
    /// first) is what a worker would take up, in every state.
    #[test]
    fn resumable_runs_are_ready_to_execute() {
        for state in RunState::ALL {
            for pending in [0, 1] {
                for executing in [None, Some("w1")] {
                    for held in [false, true] {
                        let ready = ready_to_execute(state, pending > 0, executing.is_some(), held);
                        let may = may_resume(Uuid::nil(), state, pending, executing, held, None).is_ok();
                        if state != RunState::Failed {
                            assert_eq!(may, ready, "{state} pending {pending} {executing:?} held {held}");
                        }
                    }
                }
            }
        }
        assert!(!ready_to_execute(RunState::Failed, false, false, false));
    }

    #[test]
    fn steps_run_forward_then_backward_per_entity_then_deletes_in_reverse() {
        let plan =
            crate::plan::DependencyGraph::from_dependencies([("b", vec![]), ("a", vec![]), ("c", vec!["a"])])
                .stages()
                .unwrap();
        let steps: Vec<String> = steps_of(&plan, true)
            .iter()
            .map(|s| format!("{}:{}:{}", s.stage, s.entity_type, s.direction.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                "1:a:forward",
                "1:a:backward",
                "1:b:forward",
                "1:b:backward",
                "2:c:forward",
                "2:c:backward",
                "2:c:delete",
                "1:b:delete",
                "1:a:delete"
            ]
        );
        assert_eq!(steps_of(&plan, false).len(), 6);
    }
}
