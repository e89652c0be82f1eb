//! Connectors: how the engine reads and writes the records of one system.
//!
//! Every connector speaks CDM records ([`Record`]): native id, CDM fields and
//! modification time. It reads changes after a cursor page by page, reads
//! records by id, creates (safe to repeat: deterministic ids or idempotency
//! keys) and updates, always in batches.

pub mod sql;

use crate::record::{Fields, Record};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use sql::SqlConnector;

/// Errors of a connector, naming the system and table they happened in.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("system `{system}`: cannot connect to {url}: {source}")]
    Connect {
        system: String,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("system `{system}`: unsupported URL `{url}` (expected postgres://... or sqlite://...)")]
    UnsupportedUrl { system: String, url: String },
    #[error("system `{system}`: table `{table}` does not exist (entity `{entity}`)")]
    MissingTable {
        system: String,
        table: String,
        entity: String,
    },
    #[error("system `{system}`: table `{table}` has no column `{column}` (entity `{entity}`{field})")]
    MissingColumn {
        system: String,
        table: String,
        column: String,
        entity: String,
        /// `, field `x`` when a field map named the column.
        field: String,
    },
    #[error(
        "system `{system}`: table `{table}` has integer ids; name a text `idempotency_column` for entity \
         `{entity}` so that a repeated create is recognised"
    )]
    NoIdempotencyColumn {
        system: String,
        table: String,
        entity: String,
    },
    #[error("system `{system}`, table `{table}`: {source}")]
    Query {
        system: String,
        table: String,
        #[source]
        source: sqlx::Error,
    },
}

/// How a table's ids are typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdKind {
    /// Text ids: creates use a deterministic UUID v5, so repeats upsert.
    Text,
    /// Integer ids assigned by the database: creates store an idempotency
    /// key in a column so a repeat finds the first create.
    Integer,
}

/// One synced field: its CDM name and its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldColumn {
    pub cdm: String,
    pub column: String,
}

/// A table of one system, resolved against its real columns.
#[derive(Clone, Debug)]
pub struct TableBinding {
    pub system: String,
    pub entity: String,
    pub table: String,
    pub id_kind: IdKind,
    /// The fields both systems have, in CDM name order.
    pub fields: Vec<FieldColumn>,
    /// Holds the idempotency key of creates (integer-id tables).
    pub key_column: Option<String>,
    /// Soft-delete column: a row whose value there is set counts as deleted.
    pub deleted_column: Option<String>,
    /// Native column types by name, as the database names them.
    pub(crate) column_types: std::collections::BTreeMap<String, String>,
}

/// Where a change scan stands: the last (`updated_at`, `id`) read, in the
/// table's own representation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub updated_at: serde_json::Value,
    pub id: serde_json::Value,
}

/// A row that could not be read as a record; it fails alone.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRow {
    pub id: String,
    pub reason: String,
}

/// One page of changes.
#[derive(Clone, Debug, Default)]
pub struct ChangePage {
    pub records: Vec<Record>,
    pub bad: Vec<BadRow>,
    /// Ids of rows marked deleted in the soft-delete column: not records to
    /// sync, but deletions to act on.
    pub deleted: Vec<String>,
    /// The position after the last row of the page; `None` for an empty page.
    pub next: Option<Cursor>,
    /// True when the page was shorter than asked: the scan is done.
    pub done: bool,
}

/// One record to create.
#[derive(Clone, Debug)]
pub struct NewRecord {
    /// The id to create it under (text-id tables), derived deterministically.
    pub id: Option<String>,
    /// The idempotency key (stored in the key column of integer-id tables).
    pub key: String,
    pub fields: Fields,
}

/// Formats a time the way syncd writes `updated_at`: RFC 3339, UTC,
/// microseconds, so text columns sort in time order.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Reads a modification time from a column value: RFC 3339 text, a
/// `YYYY-MM-DD HH:MM:SS[.f]` text (taken as UTC), or Unix seconds.
pub fn parse_time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    match v {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                let s = s.replace('T', " ");
                chrono::NaiveDateTime::parse_from_str(s.trim_end_matches('Z'), "%Y-%m-%d %H:%M:%S%.f")
                    .ok()
                    .map(|n| n.and_utc())
            }),
        serde_json::Value::Number(n) => n.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)),
        _ => None,
    }
}

/// Numbers compare by value, not representation: `12.0` read from one
/// database and `12` from another are the same field value.
pub fn normalize(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => serde_json::Value::from(f as i64),
            _ => serde_json::Value::Number(n),
        },
        other => other,
    }
}

/// The id of a row as the engine carries it: text, or an integer as text.
pub fn id_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_in_the_formats_tables_use() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        for v in [
            json!("2026-03-01T10:00:00.5Z"),
            json!("2026-03-01T11:00:00.500+01:00"),
            json!("2026-03-01 10:00:00.5"),
            json!("2026-03-01T10:00:00.500000"),
        ] {
            assert_eq!(parse_time(&v), Some(t), "{v}");
        }
        assert_eq!(parse_time(&json!(0)), Some(DateTime::UNIX_EPOCH));
        assert_eq!(parse_time(&json!("yesterday")), None);
        assert_eq!(format_time(t), "2026-03-01T10:00:00.500000Z");
    }

    #[test]
    fn numbers_normalize_by_value() {
        assert_eq!(normalize(json!(12.0)), json!(12));
        assert_eq!(normalize(json!(12.5)), json!(12.5));
        assert_eq!(normalize(json!("12.0")), json!("12.0"));
    }
}
