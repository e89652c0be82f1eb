//! Conventions shared by the crates that speak SQL.

/// Batched lookups bind arrays of ids; a generic plan made while a table was
/// small scans it sequentially forever after, so every PostgreSQL statement
/// is planned for its actual parameters.
pub const CUSTOM_PLANS: (&str, &str) = ("plan_cache_mode", "force_custom_plan");
