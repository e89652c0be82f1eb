//! Reconciliation pages, delete candidates and brake holds in the sqlite state store.

use super::*;

impl SqliteStore {}
