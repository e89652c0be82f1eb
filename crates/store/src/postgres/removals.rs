//! Reconciliation pages, delete candidates and brake holds in the postgres state store.

use super::*;

impl PgStore {}
