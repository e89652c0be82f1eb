//! syncd's engine: executes runs ([`run::executor`]) against the
//! connectors and the state store, schedules them ([`worker`]) and serves
//! the HTTP API and review page ([`api`]).

pub mod api;
pub mod run;
pub mod worker;
