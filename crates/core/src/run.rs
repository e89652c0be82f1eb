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
        [
            StepState::Pending,
            StepState::Running,
            StepState::Done,
            StepState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown step state `{s}`"))
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a step has done so far.
///
/// In a sync step every record read has exactly one outcome, so `read`
/// equals [`outcomes`](Self::outcomes): `created`, `updated`, `unchanged`,
/// `parked`, `failed`, `skipped` and `postponed`. `conflicts` and
/// `deferred` say more about some of those records (a conflict a strategy
/// settled is also updated or unchanged; a record written with an empty
/// self-reference is also created or updated).
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
    /// Left for the step's patch pass: it references a record not synced
    /// yet.
    pub postponed: u64,
    /// Self-references written empty, to be patched once their target
    /// exists (of the created and updated).
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
            (Running, Fail) => Ok(Failed),
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
}

/// Decides whether an operator may resume a run in `state` that has
/// `pending` undecided conflicts and whose live lease, if any, `executing`
/// names the holder of: a suspended run once every conflict is decided, a
/// planned or interrupted run that no worker holds, and a failed run that
/// no later run of its integration (`newer`) has followed. The executor
/// makes the state transition itself ([`RunEvent::Resume`] or
/// [`RunEvent::Start`]); a failed run is reopened first.
pub fn may_resume(
    state: RunState,
    pending: u64,
    executing: Option<&str>,
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
    Ok(())
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    fn who_may_resume() {
        use ResumeRefused::*;
        let check = |state, pending, executing, expected: Result<(), ResumeRefused>| {
            assert_eq!(
                may_resume(state, pending, executing, None),
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
            may_resume(RunState::Failed, 0, None, Some(later)),
            Err(Superseded(later))
        );
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
