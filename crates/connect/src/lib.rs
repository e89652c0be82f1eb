//! Connectors: how the engine reads and writes the records of one system.
//!
//! Every connector speaks CDM records ([`Record`]): native id, CDM fields and
//! modification time. It reads changes after a cursor page by page, reads
//! records by id, creates (safe to repeat: deterministic ids or idempotency
//! keys) and updates, always in batches.

pub mod http;
pub mod sql;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use syncd_core::record::{Fields, Record, Side};
use syncd_core::value::{Class, Kind};
use syncd_core::workflow::{ConnectorKind, EntityDef, SystemDef};

pub use http::HttpConnector;
pub use sql::SqlConnector;
pub use syncd_core::record::BadRow;
pub use syncd_core::redact::redacted;
pub use syncd_core::references::id_text;

/// Errors of a connector, naming the system and table they happened in.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("system `{system}`: cannot connect to {}: {source}", redacted(url))]
    Connect {
        system: String,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "system `{system}`: unsupported URL `{}` (expected postgres://..., mysql://... or sqlite://...)",
        redacted(url)
    )]
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
    #[error(
        "system `{system}`, table `{table}`: {change}: what the page wrote may have been converted to the new \
         type, so none of it is recorded as synced; resume the run to write the page again against the column as it is"
    )]
    ColumnChanged {
        system: String,
        table: String,
        /// Which column, bound as what, is what now.
        change: String,
    },
    #[error("system `{system}`, table `{table}`: {source}")]
    Query {
        system: String,
        table: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("system `{system}`: {reason}")]
    Config { system: String, reason: String },
    #[error("system `{system}`: {request}: {detail}")]
    Http {
        system: String,
        request: String,
        detail: String,
    },
    /// The API kept failing transiently (5xx, 408, 429, the network) through
    /// every retry of the request: the run waits and goes on later.
    #[error("system `{system}`: {request}: {detail}")]
    Unavailable {
        system: String,
        request: String,
        detail: String,
    },
    /// 401 or 403: retrying would not help, so the step stops at once.
    #[error("system `{system}` refused the credentials: {detail}. The step stopped without retrying")]
    Unauthorized { system: String, detail: String },
}

impl ConnectorError {
    /// Whether the system could not be reached or answered for a while (a
    /// connection refused or lost, a pool timed out, a server shutting down
    /// or busy, an API failing through every retry), rather than refused
    /// what it was sent: the step's fault to wait out, never a record's.
    pub fn is_outage(&self) -> bool {
        match self {
            ConnectorError::Query { source, .. } | ConnectorError::Connect { source, .. } => {
                transient_sql(source)
            }
            ConnectorError::Unavailable { .. } => true,
            _ => false,
        }
    }

    /// Whether the database says that `b`'s table, or one of the columns
    /// it had when the run bound it, does not exist (altered under a run):
    /// the schema's or the definition's fault, to stop the step on, never
    /// one record's (a record failed for it would not be written again
    /// until it changes). A missing relation or column of another name (a
    /// trigger's) is the record's. A write the system refuses to syncd's
    /// login or connection whatever the record (PostgreSQL's `permission
    /// denied`, a read-only standby or transaction; MySQL's `command
    /// denied`, a server `--read-only`; a SQLite database opened
    /// read-only) stops the step too: every record would fail for it, and
    /// the run would say succeeded. (A row-level security policy's refusal,
    /// which shares PostgreSQL's code, is the record's.)
    pub fn is_schema_fault(&self, b: &TableBinding) -> bool {
        let ConnectorError::Query {
            source: sqlx::Error::Database(db),
            ..
        } = self
        else {
            return false;
        };
        let m = db.message();
        // The table's name, or a column's, as each database quotes it:
        // PostgreSQL `"name"` (and `r.name` for a column of a row it was
        // given), MySQL `'t.name'`, SQLite `no such column: name`.
        let mentions = |n: &str| {
            m.contains(&format!("\"{n}\""))
                || m.contains(&format!("'{n}'"))
                || m.contains(&format!(".{n}'"))
                || m.contains(&format!(".{n} "))
                || m.ends_with(&format!(": {n}"))
                || m.ends_with(&format!("column named {n}"))
        };
        let table = b.table.rsplit('.').next().unwrap_or(&b.table).trim_matches('"');
        let names_ours =
            || mentions(table) || mentions(&b.table) || b.column_types.keys().any(|c| mentions(c));
        if m.starts_with("attempt to write a readonly database")
            || m.contains("command denied to user")
            || m.contains("running with the --read-only option")
        {
            return true;
        }
        match db.code().as_deref() {
            // PostgreSQL's undefined column and table; MySQL's (by SQLSTATE).
            Some("42703" | "42P01" | "42S22" | "42S02") => names_ours(),
            // PostgreSQL's insufficient privilege (not a row-level security
            // policy's refusal, which shares its code), and a read-only
            // transaction or standby.
            Some("42501") => m.starts_with("permission denied"),
            Some("25006") => true,
            // SQLite (its generic error code) says so in words only.
            Some("1") => {
                (m.starts_with("no such column")
                    || m.starts_with("no such table")
                    || m.contains("has no column named"))
                    && names_ours()
            }
            _ => false,
        }
    }
}

/// Whether a database client's error is a passing fault (the server out
/// of reach, restarting, or too busy), not a refusal of the statement.
pub fn transient_sql(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Connection exceptions, shutdown and start-up, too many
            // connections, serialization failures and deadlocks.
            Some(code) if code.starts_with("08") => true,
            Some("57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01") => true,
            // SQLite: busy, locked.
            Some("5" | "6" | "261" | "262" | "517") => true,
            _ => false,
        },
        _ => false,
    }
}

/// A system the engine reads and writes: a SQL database or a REST API.
/// Every operation works on a batch of records.
#[derive(Clone)]
pub enum Connector {
    Sql(SqlConnector),
    Http(HttpConnector),
}

impl Connector {
    /// Connects to `system` at `url` (an API's credentials come from the
    /// environment variable the definition names).
    pub async fn connect(system: &SystemDef, url: &str) -> Result<Connector, ConnectorError> {
        match system.connector {
            ConnectorKind::Sql => Ok(Connector::Sql(
                SqlConnector::connect_in(&system.name, url, system.schema.as_deref()).await?,
            )),
            ConnectorKind::Http => Ok(Connector::Http(HttpConnector::connect(system, url, |var| {
                std::env::var(var).ok()
            })?)),
        }
    }

    /// Whether the system is a SQLite file, which takes one writer at a
    /// time.
    pub fn is_sqlite(&self) -> bool {
        matches!(self, Connector::Sql(SqlConnector::Sqlite { .. }))
    }

    /// The system's name in the definition.
    pub fn system(&self) -> &str {
        match self {
            Connector::Sql(c) => c.system(),
            Connector::Http(c) => c.system(),
        }
    }

    /// Why a connection to the system cannot be made now (refused, no such
    /// host, a password), by one connection of its own outside the pool: a
    /// pool that timed out keeps no reason. `None` when it connects, or for
    /// an API (its errors say why themselves).
    pub async fn why_unreachable(&self) -> Option<String> {
        match self {
            Connector::Sql(c) => c.why_unreachable().await,
            Connector::Http(_) => None,
        }
    }

    /// The columns (fields) of entity `def`'s table or collection on `side`,
    /// with their types; `None` when the table does not exist.
    pub async fn columns(
        &self,
        def: &EntityDef,
        side: Side,
    ) -> Result<Option<BTreeMap<String, String>>, ConnectorError> {
        match self {
            Connector::Sql(c) => c.columns(def.table(side)).await,
            Connector::Http(c) => {
                let mut named: Vec<&str> = def.fields.iter().map(|f| f.native(side)).collect();
                named.extend(def.deletes.deleted_column(side));
                if side == Side::Target {
                    named.extend(def.deletes.archive_column.as_deref());
                }
                c.columns(def.name.as_str(), &named).map(Some)
            }
        }
    }

    /// That the columns of `b` a write gives values to still have the
    /// types they were bound with. A column altered while a run writes
    /// (`numeric(12,4)` to `numeric(12,2)`, `datetime(6)` to
    /// `datetime(0)`) has the database convert each value the checks made
    /// for the old type let through, without a word: the page that met it
    /// must not be recorded as synced. An API's fields have no types.
    pub async fn still_bound(&self, b: &TableBinding) -> Result<(), ConnectorError> {
        let Connector::Sql(c) = self else {
            return Ok(());
        };
        let now = c.columns(&b.table).await?.unwrap_or_default();
        let written = b
            .fields
            .iter()
            .map(|f| f.column.as_str())
            .chain(b.key_column.as_deref())
            .chain(b.deleted_column.as_deref());
        for column in written {
            let (Some(was), is) = (b.column_types.get(column), now.get(column)) else {
                continue;
            };
            if is != Some(was) {
                return Err(ConnectorError::ColumnChanged {
                    system: b.system.clone(),
                    table: b.table.clone(),
                    change: format!(
                        "column `{column}` changed under the run (bound as {was}, now {})",
                        is.map_or("gone", String::as_str)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether creates into `b` can find earlier attempts by their key
    /// without reading the whole table: `false` only for a SQL table whose
    /// idempotency column no index serves (an API's search is its own).
    pub async fn key_is_searchable(&self, b: &TableBinding) -> Result<bool, ConnectorError> {
        match self {
            Connector::Sql(c) => c.key_search_uses_an_index(b).await,
            Connector::Http(_) => Ok(true),
        }
    }

    /// Resolves entity `def`'s table or collection on `side`.
    pub fn binding(
        &self,
        def: &EntityDef,
        side: Side,
        columns: BTreeMap<String, String>,
        fields: Vec<FieldColumn>,
    ) -> Result<TableBinding, ConnectorError> {
        let deleted = def.deletes.deleted_column(side).map(str::to_owned);
        match self {
            Connector::Sql(c) => c.binding(
                def.name.as_str(),
                def.table(side),
                columns,
                fields,
                def.idempotency_column.clone(),
                deleted,
            ),
            Connector::Http(c) => c.binding(def.name.as_str(), columns, fields, deleted),
        }
    }

    /// Reads up to `limit` records changed after `after`, oldest first.
    pub async fn read_changes(
        &self,
        b: &TableBinding,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        match self {
            Connector::Sql(c) => c.read_changes(b, after, limit).await,
            Connector::Http(c) => c.read_changes(b, after, limit).await,
        }
    }

    /// Reads up to `limit` records whose change time cannot be read, by id
    /// after `after` (see [`SqlConnector::read_untimed`]). An API's records
    /// without a time are its change scan's own.
    pub async fn read_untimed(
        &self,
        b: &TableBinding,
        after: Option<&serde_json::Value>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        match self {
            Connector::Sql(c) => c.read_untimed(b, after, limit).await,
            Connector::Http(_) => Ok(ChangePage {
                done: true,
                ..ChangePage::default()
            }),
        }
    }

    /// The class of a column of this system from the type [`columns`]
    /// gave it.
    ///
    /// [`columns`]: Self::columns
    pub fn class_of(&self, type_name: &str) -> Class {
        match self {
            Connector::Sql(SqlConnector::Postgres { .. }) => Class::postgres(type_name),
            Connector::Sql(SqlConnector::Sqlite { .. }) => Class::sqlite(type_name),
            Connector::Sql(SqlConnector::Mysql { .. }) => Class::mysql(type_name),
            Connector::Http(_) => Class::Any,
        }
    }

    /// Whether ids of `entity`'s records are JSON numbers in this system,
    /// for a reference field to them held in a column of `class`; `None`
    /// when neither the column nor the definition says (an untyped column,
    /// an API without `id_type`).
    pub fn numeric_ids(&self, entity: &str, class: Class) -> Option<bool> {
        match self {
            Connector::Sql(_) => match class {
                Class::Integer { .. }
                | Class::Unsigned { .. }
                | Class::Decimal { .. }
                | Class::Numeric
                | Class::Float { .. } => Some(true),
                Class::Any | Class::Json => None,
                _ => Some(false),
            },
            Connector::Http(c) => c.numeric_ids(entity),
        }
    }

    /// The records with `ids`; ids that do not exist are absent, and rows
    /// that exist but cannot be read are in `bad`. A record whose
    /// modification time cannot be read is still a record (its time is
    /// the Unix epoch): it is compared by value.
    pub async fn read_by_ids(&self, b: &TableBinding, ids: &[String]) -> Result<ByIds, ConnectorError> {
        match self {
            Connector::Sql(c) => c.read_by_ids(b, ids).await,
            Connector::Http(c) => c.read_by_ids(b, ids).await,
        }
    }

    /// Which of `ids` exist and are not marked deleted.
    pub async fn present(&self, b: &TableBinding, ids: &[String]) -> Result<HashSet<String>, ConnectorError> {
        match self {
            Connector::Sql(c) => c.present(b, ids).await,
            Connector::Http(c) => c.present(b, ids).await,
        }
    }

    /// Which of `ids` exist and are not marked deleted, for ids that come
    /// in (about) the system's key order: a SQL table answers with a range
    /// scan of its key; other systems as [`present`](Self::present).
    pub async fn present_in_key_order(
        &self,
        b: &TableBinding,
        ids: &[String],
    ) -> Result<HashSet<String>, ConnectorError> {
        match self {
            Connector::Sql(c) => c.present_in_key_order(b, ids).await,
            Connector::Http(c) => c.present(b, ids).await,
        }
    }

    /// Deletes the records with `ids`; one already gone counts as deleted.
    pub async fn delete(&self, b: &TableBinding, ids: &[String]) -> Result<(), ConnectorError> {
        match self {
            Connector::Sql(c) => c.delete(b, ids).await,
            Connector::Http(c) => c.delete(b, ids).await,
        }
    }

    /// Sets `column` to the time of archiving on the records with `ids`.
    pub async fn archive(
        &self,
        b: &TableBinding,
        ids: &[String],
        column: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectorError> {
        match self {
            Connector::Sql(c) => c.archive(b, ids, column, now).await,
            Connector::Http(c) => c.archive(b, ids, column, now).await,
        }
    }

    /// Whether `find_by_keys` asks for many keys at once (one query a
    /// page), rather than one request a key as an API's search does.
    pub fn finds_keys_at_once(&self) -> bool {
        matches!(self, Connector::Sql(_))
    }

    /// Whether any record of `b` may hold an idempotency key (`true` for
    /// an API, which is not asked).
    pub async fn holds_keyed_rows(&self, b: &TableBinding) -> Result<bool, ConnectorError> {
        match self {
            Connector::Sql(c) => c.holds_keyed_rows(b).await,
            Connector::Http(_) => Ok(true),
        }
    }

    /// Ids of records an earlier attempt created with each of `keys`.
    pub async fn find_by_keys(
        &self,
        b: &TableBinding,
        keys: &[String],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        match self {
            Connector::Sql(c) => c.find_by_keys(b, keys).await,
            Connector::Http(c) => c.find_by_keys(b, keys).await,
        }
    }

    /// Creates `records` and answers each one's id, or the reason the system
    /// refused that record: a refused record fails alone. A SQL batch that
    /// fails is retried one record at a time to find out which.
    pub async fn create(
        &self,
        b: &TableBinding,
        records: &[NewRecord],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<String, String>>, ConnectorError> {
        match self {
            Connector::Http(c) => c.create(b, records).await,
            Connector::Sql(c) => match c.create(b, records, now).await {
                Ok(ids) => Ok(ids),
                // Only what the database refuses can be a record's fault;
                // an outage, or a table or column gone, is the step's.
                Err(e) if e.is_outage() || e.is_schema_fault(b) => Err(e),
                Err(batch_error) if records.len() > 1 => {
                    tracing::warn!(error = %batch_error, "batch create failed; retrying one by one");
                    let mut out = Vec::with_capacity(records.len());
                    for r in records {
                        out.push(match c.create(b, std::slice::from_ref(r), now).await {
                            Ok(mut one) => one.remove(0),
                            Err(e) if e.is_outage() || e.is_schema_fault(b) => return Err(e),
                            Err(e) => Err(e.to_string()),
                        });
                    }
                    Ok(out)
                }
                Err(e) => Ok(vec![Err(e.to_string())]),
            },
        }
    }

    /// A change time of `b`'s to stamp writes like, and whether the table
    /// holds both layouts (see [`TableBinding::stamp_like`]).
    pub async fn stamp_example(&self, b: &TableBinding) -> Result<(Option<String>, bool), ConnectorError> {
        match self {
            Connector::Sql(c) => c.stamp_example(b).await,
            Connector::Http(_) => Ok((None, false)),
        }
    }

    /// Why the system's columns cannot hold `fields` as they are, without
    /// writing anything (`None` when they can, or when only the system
    /// itself can tell; an API: a number a double would change, unless it
    /// keeps numbers exactly).
    pub fn cannot_hold(&self, b: &TableBinding, fields: &Fields) -> Option<String> {
        match self {
            Connector::Sql(c) => c.native_fields(b, fields).err(),
            Connector::Http(c) => c.cannot_hold(b, fields),
        }
    }

    /// Writes `fields` to each existing record; answers the records the
    /// system refused, with its reason: a value its column cannot hold, or
    /// one the database refuses (a SQL batch it refuses is written again
    /// one record at a time to find which). An outage is an error.
    pub async fn update(
        &self,
        b: &TableBinding,
        records: &[(String, Fields)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        match self {
            Connector::Sql(c) => match c.update(b, records, now).await {
                // A statement the database refuses (a constraint, a type):
                // found record by record, so that it fails alone. An
                // outage, or a table or column gone, stops the step instead.
                Err(e) if e.is_outage() || e.is_schema_fault(b) => Err(e),
                Err(e @ ConnectorError::Query { .. }) if records.len() > 1 => {
                    tracing::warn!(error = %e, "batch update failed; retrying one by one");
                    let mut refused = Vec::new();
                    for r in records {
                        match c.update(b, std::slice::from_ref(r), now).await {
                            Ok(more) => refused.extend(more),
                            Err(e) if e.is_outage() || e.is_schema_fault(b) => return Err(e),
                            Err(e @ ConnectorError::Query { .. }) => {
                                refused.push((r.0.clone(), e.to_string()))
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(refused)
                }
                Err(e @ ConnectorError::Query { .. }) => Ok(vec![(records[0].0.clone(), e.to_string())]),
                other => other,
            },
            Connector::Http(c) => c.update(b, records).await,
        }
    }
}

/// How a table's ids are typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdKind {
    /// Text ids: creates use a deterministic UUID v5, so repeats upsert.
    Text,
    /// Ids the system assigns (integer columns, most APIs): creates carry an
    /// idempotency key in a column or field, so a repeat finds the first
    /// create.
    Assigned,
}

/// One synced field: its CDM name, its column, what the column holds and
/// the kind of value the field is in the engine (agreed for both sides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldColumn {
    pub cdm: String,
    pub column: String,
    pub class: Class,
    pub kind: Kind,
}

impl FieldColumn {
    /// A field whose values are kept as the system gives them.
    pub fn untyped(cdm: &str, column: &str) -> FieldColumn {
        FieldColumn {
            cdm: cdm.to_owned(),
            column: column.to_owned(),
            class: Class::Any,
            kind: Kind::Any,
        }
    }
}

/// What [`Connector::read_by_ids`] found: the records, and the rows that
/// exist but cannot be read as records (they are not gone).
#[derive(Clone, Debug, Default)]
pub struct ByIds {
    pub records: Vec<Record>,
    pub bad: Vec<BadRow>,
}

impl ByIds {
    /// The ids found, readable or not: every id asked for that is not
    /// among them is gone.
    pub fn found_ids(&self) -> std::collections::HashSet<&str> {
        self.records
            .iter()
            .map(|r| r.id.as_str())
            .chain(self.bad.iter().map(|b| b.id.as_str()))
            .collect()
    }
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
    /// The tenant column and this tenant's value in it, when tenants share
    /// the table: every read, reconciliation, update and delete sees only
    /// the tenant's rows, and every create sets it.
    pub tenant: Option<(String, String)>,
    /// A change time the table holds, that writes are stamped like, so
    /// that they order among the table's own: text (SQLite, or a
    /// PostgreSQL text column) with a space rather than a `T` (text orders
    /// a space before a `T`), or an offset of its own; or Unix seconds
    /// (digits only), which SQLite orders before any text.
    pub stamp_like: Option<String>,
    /// The table holds change times in both layouts (a space and a `T`),
    /// which its change scan then orders alike.
    pub mixed_layouts: bool,
}

impl TableBinding {
    /// A binding of table `accounts` of system `shop` with text ids, no
    /// fields and `column_types`, for unit tests of the statements built.
    #[cfg(test)]
    pub(crate) fn accounts(column_types: std::collections::BTreeMap<String, String>) -> TableBinding {
        TableBinding {
            system: "shop".into(),
            entity: "account".into(),
            table: "accounts".into(),
            id_kind: IdKind::Text,
            fields: Vec::new(),
            key_column: None,
            deleted_column: None,
            column_types,
            tenant: None,
            stamp_like: None,
            mixed_layouts: false,
        }
    }

    /// Whether a record is marked deleted in the soft-delete column;
    /// `value_of` reads one of its fields.
    pub fn marked_deleted<'a>(&self, value_of: impl FnOnce(&str) -> Option<&'a serde_json::Value>) -> bool {
        self.deleted_column
            .as_deref()
            .is_some_and(|c| value_of(c).is_some_and(syncd_core::deletes::is_deleted_mark))
    }
}

/// Where a change scan stands: the last (`updated_at`, `id`) read, in the
/// table's own representation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub updated_at: serde_json::Value,
    pub id: serde_json::Value,
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
    /// Tried before (its mapping was pending, failed or stale): the record
    /// may exist already.
    pub tried: bool,
}

/// Formats a time the way syncd writes `updated_at`: RFC 3339, UTC,
/// microseconds, so text columns sort in time order.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Reads a modification time from a column value: RFC 3339 text, a
/// `YYYY-MM-DD HH:MM:SS[.f]` text (taken as UTC), a date alone (its
/// midnight, UTC), or an integer of Unix seconds, milliseconds,
/// microseconds or nanoseconds (`value::epoch_units`).
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
            })
            .or_else(|| {
                syncd_core::value::bare_date(s).map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
            }),
        serde_json::Value::Number(n) => n.as_i64().and_then(syncd_core::value::epoch_time),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_outage_is_told_from_a_refusal() {
        let query = |source| ConnectorError::Query {
            system: "s".into(),
            table: "t".into(),
            source,
        };
        assert!(query(sqlx::Error::PoolTimedOut).is_outage());
        assert!(query(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())).is_outage());
        assert!(
            !query(sqlx::Error::RowNotFound).is_outage(),
            "a statement's own error is a refusal"
        );
        assert!(!query(sqlx::Error::ColumnNotFound("x".into())).is_outage());
        let gave_up = ConnectorError::Unavailable {
            system: "api".into(),
            request: "GET /x".into(),
            detail: "gave up".into(),
        };
        assert!(gave_up.is_outage());
    }

    #[test]
    fn passwords_in_urls_are_never_shown() {
        for (url, shown) in [
            (
                "postgres://postgres:TopSecret@db:5432/x",
                "postgres://postgres:***@db:5432/x",
            ),
            (
                "postgres://u:p%40ss@db/x?sslmode=require",
                "postgres://u:***@db/x?sslmode=require",
            ),
            (
                "postgres://db/x?user=u&password=TopSecret",
                "postgres://db/x?user=u&password=***",
            ),
            ("mysql://root@db/x", "mysql://root@db/x"),
            ("redis://:TopSecret@cache:6379", "redis://:***@cache:6379"),
            ("sqlite://demo-data/crm.db", "sqlite://demo-data/crm.db"),
            ("https://api.example/v1?q=a@b:c", "https://api.example/v1?q=a@b:c"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }

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
        // `Date.now()` and a finer clock's numbers are the same instant as
        // Unix seconds, not a time past year 9999.
        let second = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for n in [1_772_359_200_i64, 1_772_359_200_500, 1_772_359_200_500_000] {
            let read = parse_time(&json!(n)).unwrap();
            assert!(
                read >= second && read < t + chrono::Duration::milliseconds(1),
                "{n}: {read}"
            );
        }
        assert_eq!(
            parse_time(&json!("2026-03-01")),
            Some(second - chrono::Duration::hours(10))
        );
        assert_eq!(parse_time(&json!("yesterday")), None);
        assert_eq!(format_time(t), "2026-03-01T10:00:00.500000Z");
    }
}
