//! syncd: a durable, bidirectional data-sync engine.
//!
//! The pure core ([`plan`], [`mapping`], [`conflict`], [`workflow`],
//! [`record`]) decides; the layers around it ([`store`], [`cache`], [`run`],
//! the CLI) perform I/O and persist what the core decided. See
//! `ARCHITECTURE.md`.

pub mod api;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod conflict;
pub mod connector;
pub mod deletes;
pub mod ids;
pub mod mapping;
pub mod plan;
pub mod record;
pub mod run;
pub mod schedule;
pub mod store;
pub mod value;
pub mod worker;
pub mod workflow;
