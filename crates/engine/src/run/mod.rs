//! Runs: the state machines of `syncd_core::run`, and the executor that
//! drives them.

pub use syncd_core::run::*;

pub mod executor;
