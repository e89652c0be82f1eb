//! Records in common-data-model (CDM) form, as they cross every boundary of
//! the engine: connectors produce them, the conflict engine compares them,
//! the store keeps their agreed values as the base snapshot.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// CDM field values of one record, by CDM field name.
///
/// A field that is absent compares equal to an explicit `null`.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// One record of one system: its native id, its CDM fields and when that
/// system last modified it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub fields: Fields,
    pub modified_at: DateTime<Utc>,
}

/// One of the two systems of an integration. "Source" and "target" are the
/// declared roles, also when a change flows target → source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    /// The other system.
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }

    /// `source` or `target`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// Whether changes flow one way (source → target) or both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    OneWay,
    Bidirectional,
}

/// A row that could not be read as a record; it fails alone.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRow {
    pub id: String,
    pub reason: String,
}
