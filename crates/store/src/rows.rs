//! What the two backends read and bind differently, behind one face, so
//! that every statement they share is written once (in the `Store`'s
//! modules, expanded for each backend by `on_backend!`): SQL with `$n`
//! parameters (which SQLite reads too), ids bound through
//! [`Dialect::id`], and rows decoded through [`Cols`].

use crate::{RunHold, RunRow, StoreError};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use syncd_core::conflict::ConflictRecord;
use syncd_core::ids::{EntityScope, IntegrationId, TenantId};
use syncd_core::run::StepCheckpoint;
use uuid::Uuid;

pub(crate) const MAPPING_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, source_id, target_id, status, base, \
     idempotency_key, last_error, attempts, version, created_at, updated_at";

/// [`MAPPING_COLUMNS`], or the same with `null` (the dialect's typed NULL)
/// read as the base.
fn mapping_columns(with_base: bool, null: &str) -> std::borrow::Cow<'static, str> {
    match with_base {
        true => MAPPING_COLUMNS.into(),
        false => MAPPING_COLUMNS
            .replace(" base,", &format!(" {null} AS base,"))
            .into(),
    }
}

pub(crate) const RUN_COLUMNS: &str =
    "id, tenant_id, integration_id, state, plan, trigger, error, created_at, updated_at, finished_at";

pub(crate) const HOLD_COLUMNS: &str =
    "run_id, tenant_id, entity_type, count, mapped, delete_limit, confirmed_by, confirmed_at, created_at";

pub(crate) const CONFLICT_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, run_id, source_record, \
     target_record, base, conflicting_fields, strategy_applied, resolution, status, resolved_by, created_at, \
     resolved_at, outcome";

pub(crate) const STEP_COLUMNS: &str =
    "run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, error";

/// A table's row that does not say what syncd wrote.
pub(crate) fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

/// The columns of a row, read the same way from either database.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    /// Any integer column (PostgreSQL's `int4` and `int8`, SQLite's one).
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    fn opt_uuid(&self, col: &str, table: &'static str) -> Result<Option<Uuid>, StoreError>;
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>, StoreError>;

    fn uuid(&self, col: &str, table: &'static str) -> Result<Uuid, StoreError> {
        self.opt_uuid(col, table)?
            .ok_or_else(|| corrupt(table, format!("{col} is NULL")))
    }

    fn json<T: DeserializeOwned>(&self, col: &str, table: &'static str) -> Result<T, StoreError> {
        self.opt_json(col)?
            .ok_or_else(|| corrupt(table, format!("{col} is NULL")))
    }

    /// A column holding the name of a state or kind.
    fn parsed<T: std::str::FromStr>(&self, col: &str, table: &'static str) -> Result<T, StoreError>
    where
        T::Err: ToString,
    {
        self.text(col)?.parse().map_err(|e: T::Err| corrupt(table, e))
    }
}

impl Cols for PgRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        match self.try_get::<Option<i64>, _>(col) {
            Err(sqlx::Error::ColumnDecode { .. }) => Ok(self.try_get::<i32, _>(col)?.into()),
            other => other?.ok_or_else(|| corrupt("?", format!("{col} is NULL"))),
        }
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_uuid(&self, col: &str, _: &'static str) -> Result<Option<Uuid>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>, StoreError> {
        Ok(self.try_get::<Option<Json<T>>, _>(col)?.map(|j| j.0))
    }
}

impl Cols for SqliteRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(col)?)
    }
    /// SQLite keeps ids as hyphenated text.
    fn opt_uuid(&self, col: &str, table: &'static str) -> Result<Option<Uuid>, StoreError> {
        self.try_get::<Option<String>, _>(col)?
            .map(|text| Uuid::parse_str(&text).map_err(|e| corrupt(table, format!("{col}: {e}"))))
            .transpose()
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>, StoreError> {
        Ok(self.try_get::<Option<Json<T>>, _>(col)?.map(|j| j.0))
    }
}

/// A `LIKE` pattern for texts that start with `prefix`, which may only
/// hold what an id's text holds (hex digits and hyphens; callers check).
pub(crate) fn starts_with(prefix: &str) -> String {
    format!("{}%", prefix.to_ascii_lowercase())
}

/// How a backend binds what the two databases keep differently.
pub(crate) trait Dialect {
    /// An id as the database keeps it (PostgreSQL: `uuid`; SQLite: text).
    type Id: Send;
    fn id_of(id: Uuid) -> Self::Id;
    fn id(&self, id: Uuid) -> Self::Id {
        Self::id_of(id)
    }
    /// A list of texts bound as one parameter (PostgreSQL: `text[]`;
    /// SQLite: a JSON array).
    /// (Borrowed: the lookups of every page bind their ids this way.)
    type Texts<'a>: Send
    where
        Self: 'a;
    fn texts<'a>(&self, items: &'a [String]) -> Self::Texts<'a>;
    /// A list of ids bound as one parameter.
    type Ids: Send;
    fn ids(&self, ids: &[Uuid]) -> Self::Ids;
    /// `IN` such a list, bound as `param`.
    fn in_list(param: &str) -> String;
    /// How statements name an entity type's mappings (PostgreSQL: by the
    /// scope's number; SQLite: by its three columns).
    type Scope: Send;
    /// `None` while the scope has no mappings (PostgreSQL: no number yet).
    async fn scope_key(&self, scope: &EntityScope) -> Result<Option<Self::Scope>, StoreError>;
    /// The condition on `id_mappings`, with the key bound as `param`.
    fn in_scope(param: &str) -> String;
    /// The mappings of a scope (`$1`) whose `column` is one of a list of
    /// ids (`$2`), with their base snapshots or (`with_base` false) without.
    fn mappings_by_ids(column: &str, with_base: bool) -> String;
    /// (entity type, status, count) of a tenant's (`$1`) integration's
    /// (`$2`) mappings.
    const MAPPING_COUNTS: &str;
    /// The entity types of a tenant (`$1`) and integration (`$2`) that
    /// hold a mapping, each found through an index, not by counting.
    const MAPPED_ENTITY_TYPES: &str;
    /// Keeps a page's reservation: id, scope (`$1`..`$4`), its mappings as
    /// JSON text (`$5`), time (`$6`).
    const INSERT_RESERVATION: &str;
    /// What a read of a lease row adds to hold it until the commit.
    const LOCK_SHARE: &str;
}

impl Dialect for crate::PgStore {
    type Id = Uuid;
    fn id_of(id: Uuid) -> Uuid {
        id
    }
    type Texts<'a> = &'a [String];
    fn texts<'a>(&self, items: &'a [String]) -> &'a [String] {
        items
    }
    type Ids = Vec<Uuid>;
    fn ids(&self, ids: &[Uuid]) -> Vec<Uuid> {
        ids.to_vec()
    }
    fn in_list(param: &str) -> String {
        format!("= ANY({param})")
    }
    type Scope = i32;
    async fn scope_key(&self, scope: &EntityScope) -> Result<Option<i32>, StoreError> {
        self.scope_number(scope, false).await
    }
    fn in_scope(param: &str) -> String {
        format!("scope = {param}")
    }
    /// One index probe per id (a nested loop over the ids): with
    /// `id = ANY($2)` the planner, on statistics older than a large first
    /// sync, scanned the scope's whole index prefix instead (migration 0002).
    fn mappings_by_ids(column: &str, with_base: bool) -> String {
        let columns = mapping_columns(with_base, "NULL::jsonb");
        format!(
            "SELECT m.* FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL \
             (SELECT {columns} FROM id_mappings WHERE scope = $1 AND {column} = k.key OFFSET 0) AS m"
        )
    }
    const MAPPING_COUNTS: &str = "SELECT s.entity_type, m.status, count(*) \
         FROM mapping_scopes s JOIN id_mappings m ON m.scope = s.id \
         WHERE s.tenant_id = $1 AND s.integration_id = $2 GROUP BY 1, 2 ORDER BY 1, 2";
    const MAPPED_ENTITY_TYPES: &str = "SELECT s.entity_type FROM mapping_scopes s \
         WHERE s.tenant_id = $1 AND s.integration_id = $2 \
         AND EXISTS (SELECT 1 FROM id_mappings m WHERE m.scope = s.id) ORDER BY 1";
    const INSERT_RESERVATION: &str = "INSERT INTO reservations (id, tenant_id, integration_id, entity_type, mappings, created_at) \
         VALUES ($1, $2, $3, $4, $5::json, $6)";
    const LOCK_SHARE: &str = " FOR SHARE";
}

impl Dialect for crate::SqliteStore {
    type Id = String;
    fn id_of(id: Uuid) -> String {
        id.to_string()
    }
    type Texts<'a> = Json<&'a [String]>;
    fn texts<'a>(&self, items: &'a [String]) -> Json<&'a [String]> {
        Json(items)
    }
    type Ids = Json<Vec<String>>;
    fn ids(&self, ids: &[Uuid]) -> Json<Vec<String>> {
        Json(ids.iter().map(Uuid::to_string).collect())
    }
    fn in_list(param: &str) -> String {
        format!("IN (SELECT value FROM json_each({param}))")
    }
    type Scope = Json<[String; 3]>;
    async fn scope_key(&self, scope: &EntityScope) -> Result<Option<Self::Scope>, StoreError> {
        Ok(Some(Json([
            scope.tenant_id.to_string(),
            scope.integration_id.to_string(),
            scope.entity_type.to_string(),
        ])))
    }
    fn in_scope(param: &str) -> String {
        format!(
            "tenant_id = json_extract({param}, '$[0]') AND integration_id = json_extract({param}, '$[1]') \
             AND entity_type = json_extract({param}, '$[2]')"
        )
    }
    fn mappings_by_ids(column: &str, with_base: bool) -> String {
        format!(
            "SELECT {} FROM id_mappings WHERE {} AND {column} IN (SELECT value FROM json_each($2))",
            mapping_columns(with_base, "NULL"),
            Self::in_scope("$1")
        )
    }
    const MAPPING_COUNTS: &str = "SELECT entity_type, status, count(*) FROM id_mappings \
         WHERE tenant_id = $1 AND integration_id = $2 GROUP BY entity_type, status ORDER BY 1, 2";
    /// Entity type after entity type, each a step along the by-source
    /// index (a skip scan, as SQLite has none of its own).
    const MAPPED_ENTITY_TYPES: &str = "WITH RECURSIVE e(t) AS ( \
         SELECT min(entity_type) FROM id_mappings WHERE tenant_id = $1 AND integration_id = $2 \
         UNION ALL SELECT (SELECT min(entity_type) FROM id_mappings \
           WHERE tenant_id = $1 AND integration_id = $2 AND entity_type > e.t) FROM e WHERE e.t IS NOT NULL) \
         SELECT t FROM e WHERE t IS NOT NULL";
    const INSERT_RESERVATION: &str = "INSERT INTO reservations (id, tenant_id, integration_id, entity_type, mappings, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)";
    /// A write transaction (`BEGIN IMMEDIATE`) already holds the database.
    const LOCK_SHARE: &str = "";
}

/// A run, from [`RUN_COLUMNS`].
pub(crate) fn run(row: &impl Cols) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: row.uuid("id", "runs")?,
        tenant_id: TenantId(row.text("tenant_id")?),
        integration_id: IntegrationId(row.text("integration_id")?),
        state: row.parsed("state", "runs")?,
        plan: row.json("plan", "runs")?,
        trigger: row.text("trigger")?,
        error: row.opt_text("error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        finished_at: row.opt_time("finished_at")?,
    })
}

/// A brake hold, from [`HOLD_COLUMNS`].
pub(crate) fn hold(row: &impl Cols) -> Result<RunHold, StoreError> {
    Ok(RunHold {
        run_id: row.uuid("run_id", "run_holds")?,
        tenant_id: TenantId(row.text("tenant_id")?),
        entity_type: row.text("entity_type")?,
        count: row.int("count")? as u64,
        mapped: row.int("mapped")? as u64,
        limit: row.int("delete_limit")? as u64,
        confirmed_by: row.opt_text("confirmed_by")?,
        confirmed_at: row.opt_time("confirmed_at")?,
        created_at: row.time("created_at")?,
    })
}

/// A conflict record, from [`CONFLICT_COLUMNS`].
pub(crate) fn conflict(row: &impl Cols) -> Result<ConflictRecord, StoreError> {
    const T: &str = "conflicts";
    Ok(ConflictRecord {
        id: row.uuid("id", T)?,
        tenant_id: TenantId(row.text("tenant_id")?),
        integration_id: IntegrationId(row.text("integration_id")?),
        entity_type: row.text("entity_type")?.into(),
        run_id: row.opt_uuid("run_id", T)?,
        source_record: row.json("source_record", T)?,
        target_record: row.json("target_record", T)?,
        base: row.opt_json("base")?,
        conflicting_fields: row.json("conflicting_fields", T)?,
        strategy_applied: row.parsed("strategy_applied", T)?,
        resolution: row.opt_json("resolution")?,
        status: row.parsed("status", T)?,
        resolved_by: row.opt_text("resolved_by")?,
        created_at: row.time("created_at")?,
        resolved_at: row.opt_time("resolved_at")?,
        outcome: row.opt_text("outcome")?,
    })
}

/// A step's checkpoint, from [`STEP_COLUMNS`].
pub(crate) fn step(row: &impl Cols) -> Result<StepCheckpoint, StoreError> {
    const T: &str = "steps";
    Ok(StepCheckpoint {
        run_id: row.uuid("run_id", T)?,
        tenant_id: TenantId(row.text("tenant_id")?),
        stage: row.int("stage")? as u32,
        entity_type: row.text("entity_type")?.into(),
        direction: row.parsed("direction", T)?,
        state: row.parsed("state", T)?,
        cursor: row.opt_json("cursor")?.map(nul_restored),
        counters: row.json("counters", T)?,
        error: row.opt_text("error")?,
    })
}

/// The key of the object a cursor's text holding a NUL is kept as: a
/// PostgreSQL `jsonb` column holds no NUL, and a cursor must keep the id
/// it stopped at exactly.
const NUL_KEY: &str = "$syncd_text_with_nul";

/// `v` with each string holding a NUL kept as `{NUL_KEY: [its parts]}`,
/// which [`nul_restored`] reads back; `v` itself when it holds none.
pub(crate) fn nul_safe(v: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    use serde_json::Value;
    fn encode(v: &Value) -> Value {
        match v {
            Value::String(s) if s.contains('\0') => {
                serde_json::json!({ NUL_KEY: s.split('\0').collect::<Vec<_>>() })
            }
            Value::Array(a) => Value::Array(a.iter().map(encode).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.replace('\0', ""), encode(v))).collect())
            }
            other => other.clone(),
        }
    }
    if crate::mappings::holds_nul(v) {
        std::borrow::Cow::Owned(encode(v))
    } else {
        std::borrow::Cow::Borrowed(v)
    }
}

/// A cursor as [`nul_safe`] kept it.
pub(crate) fn nul_restored(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(o) if o.len() == 1 && o.get(NUL_KEY).is_some_and(Value::is_array) => {
            let parts = o[NUL_KEY].as_array().expect("checked");
            Value::String(
                parts
                    .iter()
                    .map(|p| p.as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\0"),
            )
        }
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, nul_restored(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(nul_restored).collect()),
        other => other,
    }
}

#[cfg(test)]
mod nul_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cursor_holding_a_nul_comes_back_as_it_was() {
        let cursor = json!({"scan": {"updated_at": "2026-01-01", "id": "n\0 1\0"}, "n": [1, "a\0"]});
        let kept = nul_safe(&cursor).into_owned();
        assert!(!kept.to_string().contains("\\u0000"), "{kept}");
        assert_eq!(nul_restored(kept), cursor);
        let plain = json!({"scan": {"id": "a"}});
        assert!(matches!(nul_safe(&plain), std::borrow::Cow::Borrowed(_)));
        assert_eq!(nul_restored(plain.clone()), plain);
    }
}
