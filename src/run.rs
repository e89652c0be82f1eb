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
}

impl StepDirection {
    /// `forward` or `backward`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDirection::Forward => "forward",
            StepDirection::Backward => "backward",
        }
    }
}

impl FromStr for StepDirection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "forward" => Ok(StepDirection::Forward),
            "backward" => Ok(StepDirection::Backward),
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounters {
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub conflicts: u64,
    pub parked: u64,
    pub skipped: u64,
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
