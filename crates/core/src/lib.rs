//! syncd's pure core: what a sync decides, with no I/O.
//!
//! Records and ids ([`record`], [`ids`], [`value`]), integration
//! definitions ([`workflow`]), the dependency plan ([`plan`]), the ID map's
//! lifecycle ([`mapping`]), conflict detection and resolution
//! ([`conflict`]), delete policies ([`deletes`]), schedules ([`schedule`])
//! and the run state machines ([`run`]). Nothing here reaches a database,
//! a network or a clock: callers pass `now` in. See `ARCHITECTURE.md`.

pub mod clock;
pub mod conflict;
pub mod decide;
pub mod deletes;
pub mod ids;
pub mod mapping;
pub mod plan;
pub mod record;
pub mod redact;
pub mod references;
pub mod run;
pub mod schedule;
pub mod sql;
pub mod value;
pub mod workflow;
