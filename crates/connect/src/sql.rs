//! The SQL table connector: PostgreSQL and SQLite tables as systems.
//!
//! Conventions, so that any existing table can be synced: a primary-key
//! column `id` (text or integer), a modification-time column `updated_at`
//! (RFC 3339 text or a timestamp type), and every other column a field.
//! Changes are found by keyset on (`updated_at`, `id`), so rows sharing a
//! timestamp are never skipped between pages.
//!
//! Table and column names come from the definition and cannot be bound as
//! parameters; they are always quoted as identifiers. Every value is bound.

use super::{BadRow, ChangePage, ConnectorError, Cursor, FieldColumn, IdKind, NewRecord, TableBinding};
use super::{ByIds, format_time, id_text, parse_time};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, TypeInfo, ValueRef};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use syncd_core::deletes::is_deleted_mark;
use syncd_core::record::{Fields, Record};
use syncd_core::value::{self, Class, Dialect};

/// The column every synced table keys on.
pub const ID_COLUMN: &str = "id";
/// The column every synced table records its modification time in.
pub const UPDATED_AT_COLUMN: &str = "updated_at";

/// A database whose tables are synced.
#[derive(Clone)]
pub enum SqlConnector {
    Postgres { system: String, pool: PgPool },
    Sqlite { system: String, pool: SqlitePool },
}

/// The columns a SQLite read selects, in order: id, time, the fields, and
/// the soft-delete column when there is one.
fn sqlite_columns(b: &TableBinding) -> Vec<&str> {
    let mut cols = vec![ID_COLUMN, UPDATED_AT_COLUMN];
    cols.extend(b.fields.iter().map(|f| f.column.as_str()));
    cols.extend(b.deleted_column.as_deref());
    cols
}

/// Quotes an identifier for SQL: `a"b` becomes `"a""b"`.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqlConnector {
    /// Connects to the database of `system` at `url`.
    pub async fn connect(system: &str, url: &str) -> Result<SqlConnector, ConnectorError> {
        let err = |source| ConnectorError::Connect {
            system: system.to_owned(),
            url: url.to_owned(),
            source,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Floats as the shortest text that reads back as the same
            // float, whatever the server's default.
            let options = PgConnectOptions::from_str(url)
                .map_err(err)?
                .options([syncd_core::sql::CUSTOM_PLANS, ("extra_float_digits", "1")]);
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(err)?;
            Ok(SqlConnector::Postgres {
                system: system.to_owned(),
                pool,
            })
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(err)?
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(err)?;
            Ok(SqlConnector::Sqlite {
                system: system.to_owned(),
                pool,
            })
        } else {
            Err(ConnectorError::UnsupportedUrl {
                system: system.to_owned(),
                url: url.to_owned(),
            })
        }
    }

    /// The system's name in the definition.
    pub fn system(&self) -> &str {
        match self {
            SqlConnector::Postgres { system, .. } | SqlConnector::Sqlite { system, .. } => system,
        }
    }

    fn query_error(&self, table: &str) -> impl Fn(sqlx::Error) -> ConnectorError + '_ {
        let table = table.to_owned();
        move |source| ConnectorError::Query {
            system: self.system().to_owned(),
            table: table.clone(),
            source,
        }
    }

    /// The columns of `table` with their types, or `None` if it does not exist.
    pub async fn columns(&self, table: &str) -> Result<Option<BTreeMap<String, String>>, ConnectorError> {
        let rows: Vec<(String, String)> = match self {
            SqlConnector::Postgres { pool, .. } => sqlx::query_as(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(table)
            .fetch_all(pool)
            .await
            .map_err(self.query_error(table))?,
            SqlConnector::Sqlite { pool, .. } => {
                sqlx::query_as("SELECT name, upper(type) FROM pragma_table_info(?1)")
                    .bind(table)
                    .fetch_all(pool)
                    .await
                    .map_err(self.query_error(table))?
            }
        };
        Ok((!rows.is_empty()).then(|| rows.into_iter().collect()))
    }

    /// Resolves a table against its real columns. `fields` are the synced
    /// (CDM name, column) pairs, already checked to exist on both sides.
    pub fn binding(
        &self,
        entity: &str,
        table: &str,
        columns: BTreeMap<String, String>,
        fields: Vec<FieldColumn>,
        key_column: Option<String>,
        deleted_column: Option<String>,
    ) -> Result<TableBinding, ConnectorError> {
        let missing = |column: &str| ConnectorError::MissingColumn {
            system: self.system().to_owned(),
            table: table.to_owned(),
            column: column.to_owned(),
            entity: entity.to_owned(),
            field: String::new(),
        };
        let id_type = columns.get(ID_COLUMN).ok_or_else(|| missing(ID_COLUMN))?;
        columns
            .get(UPDATED_AT_COLUMN)
            .ok_or_else(|| missing(UPDATED_AT_COLUMN))?;
        if let Some(c) = &deleted_column
            && !columns.contains_key(c)
        {
            return Err(missing(c));
        }
        let id_kind = if id_type.contains("INT") || id_type.contains("int") || id_type == "serial" {
            IdKind::Assigned
        } else {
            IdKind::Text
        };
        if id_kind == IdKind::Assigned {
            match &key_column {
                None => {
                    return Err(ConnectorError::NoIdempotencyColumn {
                        system: self.system().to_owned(),
                        table: table.to_owned(),
                        entity: entity.to_owned(),
                    });
                }
                Some(k) if !columns.contains_key(k) => return Err(missing(k)),
                Some(_) => {}
            }
        }
        Ok(TableBinding {
            system: self.system().to_owned(),
            entity: entity.to_owned(),
            table: table.to_owned(),
            id_kind,
            fields,
            key_column: if id_kind == IdKind::Assigned {
                key_column
            } else {
                None
            },
            deleted_column,
            column_types: columns,
        })
    }

    /// Reads up to `limit` rows changed after `after`, oldest first.
    pub async fn read_changes(
        &self,
        b: &TableBinding,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        let t = ident(&b.table);
        let (id, upd) = (ident(ID_COLUMN), ident(UPDATED_AT_COLUMN));
        let rows = match self {
            SqlConnector::Postgres { pool, .. } => {
                let doc = pg_row_document(b);
                let sql = match after {
                    None => format!("SELECT {doc} FROM {t} t ORDER BY t.{upd}, t.{id} LIMIT $1"),
                    Some(_) => format!(
                        "SELECT {doc} FROM {t} t WHERE (t.{upd}, t.{id}) > (CAST($2 AS {}), CAST($3 AS {})) \
                         ORDER BY t.{upd}, t.{id} LIMIT $1",
                        b.column_types[UPDATED_AT_COLUMN], b.column_types[ID_COLUMN]
                    ),
                };
                let mut q = sqlx::query(&sql).bind(limit as i64);
                if let Some(c) = after {
                    q = q.bind(text_of(&c.updated_at)).bind(text_of(&c.id));
                }
                let rows = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
                rows.iter()
                    .map(|r| pg_row(b, r).map(|d| (d, None)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(self.query_error(&b.table))?
            }
            SqlConnector::Sqlite { pool, .. } => {
                let cols = self.sqlite_select_list(b);
                let sql = match after {
                    None => format!("SELECT {cols} FROM {t} ORDER BY {upd}, {id} LIMIT ?1"),
                    Some(_) => format!(
                        "SELECT {cols} FROM {t} WHERE ({upd}, {id}) > (?2, ?3) ORDER BY {upd}, {id} LIMIT ?1"
                    ),
                };
                let mut q = sqlx::query(&sql).bind(limit as i64);
                if let Some(c) = after {
                    q = bind_sqlite(bind_sqlite(q, &c.updated_at), &c.id);
                }
                let rows = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
                rows.iter().map(|r| self.sqlite_row(b, r)).collect()
            }
        };
        let mut page = ChangePage {
            done: rows.len() < limit as usize,
            ..Default::default()
        };
        for (doc, bad) in rows {
            // Past every row read, bad ones too: a page that ended on a bad
            // row would read it again, and a page of bad rows forever.
            page.next = Some(Cursor {
                updated_at: doc.get(UPDATED_AT_COLUMN).cloned().unwrap_or(Value::Null),
                id: doc.get(ID_COLUMN).cloned().unwrap_or(Value::Null),
            });
            if let Some(bad) = bad {
                page.bad.push(bad);
                continue;
            }
            if b.marked_deleted(|c| doc.get(c)) {
                page.deleted.extend(doc.get(ID_COLUMN).and_then(id_text));
                continue;
            }
            match self.record_of(b, doc, false) {
                Ok(r) => page.records.push(r),
                Err(bad) => page.bad.push(bad),
            }
        }
        Ok(page)
    }

    /// The records with `ids`; ids that do not exist are absent.
    pub async fn read_by_ids(&self, b: &TableBinding, ids: &[String]) -> Result<ByIds, ConnectorError> {
        if ids.is_empty() {
            return Ok(ByIds::default());
        }
        let t = ident(&b.table);
        let id = ident(ID_COLUMN);
        let docs: Vec<(Fields, Option<BadRow>)> = match self {
            SqlConnector::Postgres { pool, .. } => {
                let sql = format!(
                    "SELECT {} FROM {t} t WHERE t.{id} = ANY(CAST($1 AS {}[]))",
                    pg_row_document(b),
                    b.column_types[ID_COLUMN]
                );
                let rows = sqlx::query(&sql)
                    .bind(ids)
                    .fetch_all(pool)
                    .await
                    .map_err(self.query_error(&b.table))?;
                rows.iter()
                    .map(|r| pg_row(b, r).map(|d| (d, None)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(self.query_error(&b.table))?
            }
            SqlConnector::Sqlite { pool, .. } => {
                let cols = self.sqlite_select_list(b);
                let sql = format!("SELECT {cols} FROM {t} WHERE {id} IN (SELECT value FROM json_each(?1))");
                let rows = sqlx::query(&sql)
                    .bind(sqlx::types::Json(self.native_ids(b, ids)))
                    .fetch_all(pool)
                    .await
                    .map_err(self.query_error(&b.table))?;
                rows.iter().map(|r| self.sqlite_row(b, r)).collect()
            }
        };
        let mut found = ByIds::default();
        for (doc, bad) in docs {
            if let Some(bad) = bad {
                found.bad.push(bad);
            } else if !b.marked_deleted(|c| doc.get(c)) {
                match self.record_of(b, doc, true) {
                    Ok(r) => found.records.push(r),
                    Err(bad) => found.bad.push(bad),
                }
            }
        }
        Ok(found)
    }

    /// Which of `ids` exist and are not marked deleted: one query, reading
    /// only the id (and the soft-delete column).
    pub async fn present(&self, b: &TableBinding, ids: &[String]) -> Result<HashSet<String>, ConnectorError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let t = ident(&b.table);
        let id = ident(ID_COLUMN);
        let mark = b.deleted_column.as_deref().map(ident);
        let rows: Vec<(String, Option<sqlx::types::Json<Value>>)> = match self {
            SqlConnector::Postgres { pool, .. } => {
                let mark = mark.map_or("NULL::jsonb".into(), |m| format!("to_jsonb({m})"));
                let sql = format!(
                    "SELECT {id}::text, {mark} FROM {t} WHERE {id} = ANY(CAST($1 AS {}[]))",
                    b.column_types[ID_COLUMN]
                );
                sqlx::query_as(&sql).bind(ids).fetch_all(pool).await
            }
            SqlConnector::Sqlite { pool, .. } => {
                let mark = mark.map_or("NULL".into(), |m| format!("json_quote({m})"));
                let sql = format!(
                    "SELECT CAST({id} AS TEXT), {mark} FROM {t} \
                     WHERE {id} IN (SELECT value FROM json_each(?1))"
                );
                sqlx::query_as(&sql)
                    .bind(sqlx::types::Json(self.native_ids(b, ids)))
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(self.query_error(&b.table))?;
        Ok(rows
            .into_iter()
            .filter(|(_, mark)| !mark.as_ref().is_some_and(|m| is_deleted_mark(&m.0)))
            .map(|(id, _)| id)
            .collect())
    }

    /// Which of `ids` exist and are not marked deleted, for ids that come
    /// in (about) the table's key order, as a reconciliation pass reads
    /// them: one range scan of the primary key from the least of `ids` to
    /// the greatest, as the table orders them, instead of one index descent
    /// an id. The answer never depends on that order: an id the scan did not
    /// see (gone, or outside what it read when the orders differ) is asked
    /// for by [`present`](Self::present). The scan reads at most twice as
    /// many rows as `ids`, so memory stays bounded however the ids fall.
    pub async fn present_in_key_order(
        &self,
        b: &TableBinding,
        ids: &[String],
    ) -> Result<HashSet<String>, ConnectorError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let t = ident(&b.table);
        let id = ident(ID_COLUMN);
        let mark = b.deleted_column.as_deref().map(ident);
        let limit = (ids.len() * 2 + 64) as i64;
        let rows: Vec<(String, Option<sqlx::types::Json<Value>>)> = match self {
            SqlConnector::Postgres { pool, .. } => {
                let mark = mark.map_or("NULL::jsonb".into(), |m| format!("to_jsonb({t}.{m})"));
                let sql = format!(
                    "WITH page AS (SELECT unnest(CAST($1 AS {}[])) AS id) \
                     SELECT {t}.{id}::text, {mark} FROM {t} \
                     WHERE {t}.{id} >= (SELECT min(id) FROM page) AND {t}.{id} <= (SELECT max(id) FROM page) \
                     ORDER BY {t}.{id} LIMIT $2",
                    b.column_types[ID_COLUMN]
                );
                sqlx::query_as(&sql).bind(ids).bind(limit).fetch_all(pool).await
            }
            SqlConnector::Sqlite { pool, .. } => {
                let mark = mark.map_or("NULL".into(), |m| format!("json_quote({t}.{m})"));
                let sql = format!(
                    "WITH page AS (SELECT value AS id FROM json_each(?1)) \
                     SELECT CAST({t}.{id} AS TEXT), {mark} FROM {t} \
                     WHERE {t}.{id} >= (SELECT min(id) FROM page) AND {t}.{id} <= (SELECT max(id) FROM page) \
                     ORDER BY {t}.{id} LIMIT ?2"
                );
                sqlx::query_as(&sql)
                    .bind(sqlx::types::Json(self.native_ids(b, ids)))
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(self.query_error(&b.table))?;
        // The span also holds rows not asked about (records not mapped).
        let mut unseen: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut present = HashSet::with_capacity(ids.len());
        for (row, mark) in rows {
            if unseen.remove(row.as_str()) && !mark.as_ref().is_some_and(|m| is_deleted_mark(&m.0)) {
                present.insert(row);
            }
        }
        let unseen: Vec<String> = unseen.into_iter().map(str::to_owned).collect();
        present.extend(self.present(b, &unseen).await?);
        Ok(present)
    }

    /// Deletes the rows with `ids`; ids already gone are no error.
    pub async fn delete(&self, b: &TableBinding, ids: &[String]) -> Result<(), ConnectorError> {
        if ids.is_empty() {
            return Ok(());
        }
        let t = ident(&b.table);
        let id = ident(ID_COLUMN);
        match self {
            SqlConnector::Postgres { pool, .. } => {
                let sql = format!(
                    "DELETE FROM {t} WHERE {id} = ANY(CAST($1 AS {}[]))",
                    b.column_types[ID_COLUMN]
                );
                sqlx::query(&sql).bind(ids).execute(pool).await.map(|_| ())
            }
            SqlConnector::Sqlite { pool, .. } => {
                let sql = format!("DELETE FROM {t} WHERE {id} IN (SELECT value FROM json_each(?1))");
                sqlx::query(&sql)
                    .bind(sqlx::types::Json(self.native_ids(b, ids)))
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
        }
        .map_err(self.query_error(&b.table))?;
        Ok(())
    }

    /// Marks the rows with `ids` archived: `column` set to `true`, or to
    /// `now` when it holds times; `updated_at` moves too.
    pub async fn archive(
        &self,
        b: &TableBinding,
        ids: &[String],
        column: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectorError> {
        if ids.is_empty() {
            return Ok(());
        }
        let t = ident(&b.table);
        let (id, upd, col) = (ident(ID_COLUMN), ident(UPDATED_AT_COLUMN), ident(column));
        let column_type = b
            .column_types
            .get(column)
            .map(|c| c.to_lowercase())
            .unwrap_or_default();
        let is_time = column_type.contains("time") || column_type.contains("date");
        let stamp = format_time(now);
        match self {
            SqlConnector::Postgres { pool, .. } => {
                let value = if is_time { "CAST($2 AS timestamptz)" } else { "true" };
                let sql = format!(
                    "UPDATE {t} SET {col} = {value}, {upd} = CAST($2 AS {}) WHERE {id} = ANY(CAST($1 AS {}[]))",
                    b.column_types[UPDATED_AT_COLUMN], b.column_types[ID_COLUMN]
                );
                sqlx::query(&sql).bind(ids).bind(&stamp).execute(pool).await.map(|_| ())
            }
            SqlConnector::Sqlite { pool, .. } => {
                let value = if is_time { "?2" } else { "1" };
                let sql = format!(
                    "UPDATE {t} SET {col} = {value}, {upd} = ?2 WHERE {id} IN (SELECT value FROM json_each(?1))"
                );
                sqlx::query(&sql)
                    .bind(sqlx::types::Json(self.native_ids(b, ids)))
                    .bind(&stamp)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
        }
        .map_err(self.query_error(&b.table))?;
        Ok(())
    }

    /// Ids of rows created earlier with each of `keys` (integer-id tables).
    pub async fn find_by_keys(
        &self,
        b: &TableBinding,
        keys: &[String],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        let Some(key_col) = &b.key_column else {
            return Ok(HashMap::new());
        };
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let (t, k, id) = (ident(&b.table), ident(key_col), ident(ID_COLUMN));
        let rows: Vec<(String, String)> = match self {
            SqlConnector::Postgres { pool, .. } => {
                sqlx::query_as(&format!(
                    "SELECT {k}::text, {id}::text FROM {t} WHERE {k}::text = ANY($1)"
                ))
                .bind(keys)
                .fetch_all(pool)
                .await
            }
            SqlConnector::Sqlite { pool, .. } => {
                sqlx::query_as(&format!(
                    "SELECT CAST({k} AS TEXT), CAST({id} AS TEXT) FROM {t} \
                     WHERE {k} IN (SELECT value FROM json_each(?1))"
                ))
                .bind(sqlx::types::Json(keys))
                .fetch_all(pool)
                .await
            }
        }
        .map_err(self.query_error(&b.table))?;
        Ok(rows.into_iter().collect())
    }

    /// Creates `records` (upserting text ids, so a repeat is harmless) and
    /// returns their ids in order. A text-id page is inserted plainly, which
    /// costs PostgreSQL about a quarter less than the upsert, unless it holds
    /// a record tried before (a create repeated after a crash): that page is
    /// an upsert at once, so a recovery does not leave PostgreSQL logging a
    /// unique violation. A plain insert that meets an id already there all
    /// the same is written again as an upsert.
    pub async fn create(
        &self,
        b: &TableBinding,
        records: &[NewRecord],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<String, String>>, ConnectorError> {
        // A record holding a value its column cannot hold fails alone; the
        // others are written.
        let mut refused: Vec<Option<String>> = Vec::with_capacity(records.len());
        let mut rows: Vec<Fields> = Vec::with_capacity(records.len());
        let mut accepted: Vec<&NewRecord> = Vec::with_capacity(records.len());
        for r in records {
            match self.native_fields(b, &r.fields) {
                Ok(row) => {
                    rows.push(row);
                    accepted.push(r);
                    refused.push(None);
                }
                Err(why) => refused.push(Some(why)),
            }
        }
        let mut created = self.insert(b, &accepted, rows, now).await?.into_iter();
        Ok(refused
            .into_iter()
            .map(|why| match why {
                Some(why) => Err(why),
                None => Ok(created.next().unwrap_or_default()),
            })
            .collect())
    }

    /// Inserts `rows` (native columns, converted) of `records`.
    async fn insert(
        &self,
        b: &TableBinding,
        records: &[&NewRecord],
        mut rows: Vec<Fields>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, ConnectorError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let stamp = Value::String(format_time(now));
        for (row, r) in rows.iter_mut().zip(records) {
            row.insert(UPDATED_AT_COLUMN.into(), stamp.clone());
            if let (Some(id), IdKind::Text) = (&r.id, b.id_kind) {
                row.insert(ID_COLUMN.into(), Value::String(id.clone()));
            }
            if let Some(k) = &b.key_column {
                row.insert(k.clone(), Value::String(r.key.clone()));
            }
        }
        let columns: Vec<&str> = rows[0].keys().map(String::as_str).collect();
        let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let t = ident(&b.table);
        let id = ident(ID_COLUMN);
        let upsert = match b.id_kind {
            IdKind::Text => format!(
                " ON CONFLICT ({id}) DO UPDATE SET {}",
                columns
                    .iter()
                    .filter(|c| **c != ID_COLUMN)
                    .map(|c| format!("{0} = excluded.{0}", ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            IdKind::Assigned => String::new(),
        };
        // Text ids are the ones given; integer ids come back with the key
        // each row was created under (RETURNING does not promise an order).
        let key = b
            .key_column
            .as_deref()
            .map(ident)
            .unwrap_or_else(|| "NULL".into());
        let returning = match (b.id_kind, self) {
            (IdKind::Text, _) => String::new(),
            (IdKind::Assigned, SqlConnector::Postgres { .. }) => {
                format!(" RETURNING {key}::text, {id}::text")
            }
            (IdKind::Assigned, SqlConnector::Sqlite { .. }) => {
                format!(" RETURNING CAST({key} AS TEXT), CAST({id} AS TEXT)")
            }
        };
        // SQLite reads each column of a `json_each` row by a bound path.
        let (sqlite_select, sqlite_paths) = sqlite_json_select(&columns);
        let insert = |on_conflict: &str| -> String {
            match self {
                SqlConnector::Postgres { .. } => format!(
                    "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{t}, $1)\
                     {on_conflict}{returning}"
                ),
                SqlConnector::Sqlite { .. } => format!(
                    "INSERT INTO {t} ({list}) SELECT {sqlite_select} FROM json_each(?1) WHERE true{on_conflict}\
                     {returning}"
                ),
            }
        };
        let run = |sql: String| {
            let (rows, paths) = (&rows, &sqlite_paths);
            async move {
                match self {
                    SqlConnector::Postgres { pool, .. } => {
                        sqlx::query_as::<_, (Option<String>, String)>(&sql)
                            .bind(sqlx::types::Json(rows))
                            .fetch_all(pool)
                            .await
                    }
                    SqlConnector::Sqlite { pool, .. } => {
                        let mut q = sqlx::query_as(&sql).bind(sqlx::types::Json(rows));
                        for p in paths {
                            q = q.bind(p);
                        }
                        q.fetch_all(pool).await
                    }
                }
            }
        };
        let repeat = records.iter().any(|r| r.tried) && !upsert.is_empty();
        let returned: Vec<(Option<String>, String)> =
            match run(insert(if repeat { &upsert } else { "" })).await {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && !upsert.is_empty() && !repeat => {
                    run(insert(&upsert)).await
                }
                other => other,
            }
            .map_err(self.query_error(&b.table))?;
        match b.id_kind {
            IdKind::Text => Ok(records.iter().map(|r| r.id.clone().unwrap_or_default()).collect()),
            IdKind::Assigned => {
                let by_key: HashMap<String, String> = returned
                    .into_iter()
                    .filter_map(|(k, id)| k.map(|k| (k, id)))
                    .collect();
                Ok(records
                    .iter()
                    .map(|r| by_key.get(&r.key).cloned().unwrap_or_default())
                    .collect())
            }
        }
    }

    /// Writes `fields` (every synced field) to each existing record.
    pub async fn update(
        &self,
        b: &TableBinding,
        records: &[(String, Fields)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let stamp = Value::String(format_time(now));
        let mut refused = Vec::new();
        let mut ids: Vec<&str> = Vec::with_capacity(records.len());
        let mut rows: Vec<Fields> = Vec::with_capacity(records.len());
        for (id, fields) in records {
            match self.native_fields(b, fields) {
                Ok(mut row) => {
                    row.insert(UPDATED_AT_COLUMN.into(), stamp.clone());
                    row.insert(ID_COLUMN.into(), self.native_id(b, id));
                    rows.push(row);
                    ids.push(id);
                }
                Err(why) => refused.push((id.clone(), why)),
            }
        }
        if rows.is_empty() {
            return Ok(refused);
        }
        let columns: Vec<&str> = rows[0]
            .keys()
            .map(String::as_str)
            .filter(|c| *c != ID_COLUMN)
            .collect();
        let t = ident(&b.table);
        let id = ident(ID_COLUMN);
        match self {
            SqlConnector::Postgres { pool, .. } => {
                let set = columns
                    .iter()
                    .map(|c| format!("{0} = r.{0}", ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "UPDATE {t} AS t SET {set} FROM jsonb_populate_recordset(NULL::{t}, $1) AS r \
                     WHERE t.{id} = ANY(CAST($2 AS {}[])) AND t.{id} = r.{id}",
                    b.column_types[ID_COLUMN]
                );
                sqlx::query(&sql)
                    .bind(sqlx::types::Json(&rows))
                    .bind(&ids)
                    .execute(pool)
                    .await
                    .map_err(self.query_error(&b.table))?;
            }
            SqlConnector::Sqlite { pool, .. } => {
                let set = columns
                    .iter()
                    .map(|c| format!("{0} = u.{0}", ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut all = columns.clone();
                all.push(ID_COLUMN);
                let (select, paths) = sqlite_json_select(&all);
                let aliased: Vec<String> = select
                    .split(", ")
                    .zip(&all)
                    .map(|(e, c)| format!("{e} AS {}", ident(c)))
                    .collect();
                let sql = format!(
                    "UPDATE {t} SET {set} FROM (SELECT {} FROM json_each(?1)) AS u WHERE {t}.{id} = u.{id}",
                    aliased.join(", ")
                );
                let mut q = sqlx::query(&sql).bind(sqlx::types::Json(&rows));
                for p in paths {
                    q = q.bind(p);
                }
                q.execute(pool).await.map_err(self.query_error(&b.table))?;
            }
        }
        Ok(refused)
    }

    fn dialect(&self) -> Dialect {
        match self {
            SqlConnector::Postgres { .. } => Dialect::Postgres,
            SqlConnector::Sqlite { .. } => Dialect::Sqlite,
        }
    }

    /// CDM fields to native columns, each converted into what its column
    /// holds; `Err` names the first field its column cannot hold exactly.
    fn native_fields(&self, b: &TableBinding, fields: &Fields) -> Result<Fields, String> {
        let dialect = self.dialect();
        b.fields
            .iter()
            .map(|f| {
                let v = fields.get(&f.cdm).unwrap_or(&Value::Null);
                let native = value::write(f.kind, f.class, dialect, v).map_err(|why| {
                    format!(
                        "entity `{}`, field `{}`: system `{}`, table `{}`, column `{}` cannot hold the value: {why}",
                        b.entity, f.cdm, b.system, b.table, f.column
                    )
                })?;
                Ok((f.column.clone(), native))
            })
            .collect()
    }

    fn native_id(&self, b: &TableBinding, id: &str) -> Value {
        match b.id_kind {
            IdKind::Assigned => id
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(id.into())),
            IdKind::Text => Value::String(id.into()),
        }
    }

    fn native_ids(&self, b: &TableBinding, ids: &[String]) -> Vec<Value> {
        ids.iter().map(|id| self.native_id(b, id)).collect()
    }

    /// A row (all columns, native names) as a record.
    /// `any_time`: a row whose modification time cannot be read is still
    /// read (its time the Unix epoch), as a counterpart to compare by value.
    fn record_of(&self, b: &TableBinding, mut doc: Fields, any_time: bool) -> Result<Record, BadRow> {
        let id = doc.get(ID_COLUMN).and_then(id_text).unwrap_or_default();
        let bad = |reason: String| BadRow {
            id: id.clone(),
            reason,
        };
        let updated = doc.get(UPDATED_AT_COLUMN).cloned().unwrap_or(Value::Null);
        let modified_at = parse_time(&updated)
            .or(any_time.then_some(DateTime::UNIX_EPOCH))
            .ok_or_else(|| {
            bad(format!(
                "system `{}`, table `{}`, row `{id}`: `{UPDATED_AT_COLUMN}` value {updated} is not a time",
                b.system, b.table
            ))
        })?;
        let mut fields = Fields::new();
        for f in &b.fields {
            let raw = doc.remove(&f.column).unwrap_or(Value::Null);
            let v = value::read(f.kind, f.class, raw).map_err(|why| {
                bad(format!(
                    "system `{}`, table `{}`, row `{id}`: entity `{}`, field `{}` (column `{}`): {why}",
                    b.system, b.table, b.entity, f.cdm, f.column
                ))
            })?;
            fields.insert(f.cdm.clone(), v);
        }
        Ok(Record {
            id,
            fields,
            modified_at,
        })
    }

    fn sqlite_select_list(&self, b: &TableBinding) -> String {
        sqlite_columns(b)
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads a SQLite row by the runtime type of each value; a BLOB cannot be
    /// a JSON field value, so its row is bad.
    /// A row as JSON, and why it cannot be synced if one of its columns
    /// holds no JSON value (that column is then read as null, so that the
    /// row's id and modification time are still known).
    fn sqlite_row(&self, b: &TableBinding, row: &SqliteRow) -> (Fields, Option<BadRow>) {
        let names = sqlite_columns(b);
        let json_columns: Vec<&str> = b
            .fields
            .iter()
            .filter(|f| f.class == Class::Json)
            .map(|f| f.column.as_str())
            .collect();
        let mut doc = Fields::new();
        let mut unreadable: Option<String> = None;
        for (i, name) in names.iter().enumerate() {
            let raw = match row.try_get_raw(i) {
                Ok(raw) => raw,
                Err(e) => {
                    unreadable.get_or_insert(format!("column `{name}`: {e}"));
                    doc.insert((*name).to_owned(), Value::Null);
                    continue;
                }
            };
            let value = if raw.is_null() {
                Value::Null
            } else {
                let read = match raw.type_info().name() {
                    "INTEGER" => row
                        .try_get_unchecked::<i64, _>(i)
                        .map(Value::from)
                        .map_err(|e| e.to_string()),
                    "REAL" => row
                        .try_get_unchecked::<f64, _>(i)
                        .map(value::float_value)
                        .map_err(|e| e.to_string()),
                    "TEXT" => row
                        .try_get_unchecked::<&[u8], _>(i)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| match std::str::from_utf8(bytes) {
                            Ok(text) => Ok(text),
                            Err(e) => Err(format!(
                                "text is not valid UTF-8 (byte {} of {}: {})",
                                e.valid_up_to(),
                                hex_head(bytes),
                                e
                            )),
                        })
                        .and_then(|text| {
                            // A JSON column keeps its document as text.
                            if json_columns.contains(name) {
                                serde_json::from_str(text).map_err(|e| format!("`{text}` is not JSON: {e}"))
                            } else {
                                Ok(Value::String(text.to_owned()))
                            }
                        }),
                    other => Err(format!("it holds a {other} value, which is not JSON")),
                };
                match read {
                    Ok(v) => v,
                    Err(why) => {
                        let field = b
                            .fields
                            .iter()
                            .find(|f| f.column == *name)
                            .map(|f| format!("entity `{}`, field `{}` (column `{name}`)", b.entity, f.cdm))
                            .unwrap_or_else(|| format!("column `{name}`"));
                        unreadable.get_or_insert(format!("{field}: {why}"));
                        Value::Null
                    }
                }
            };
            doc.insert((*name).to_owned(), value);
        }
        let bad = unreadable.map(|why| {
            let id = doc.get(ID_COLUMN).and_then(id_text).unwrap_or_default();
            BadRow {
                reason: format!("system `{}`, table `{}`, row `{id}`: {why}", b.system, b.table),
                id,
            }
        });
        (doc, bad)
    }
}

/// The first bytes of `bytes` in hex, for an error message.
fn hex_head(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 16 {
        format!("x'{}…'", head.join(""))
    } else {
        format!("x'{}'", head.join(""))
    }
}

/// `value ->> ?2, value ->> ?3, ...` reading each column of a `json_each`
/// row, with the JSON paths to bind (column names are bound, not spliced).
fn sqlite_json_select(columns: &[&str]) -> (String, Vec<String>) {
    let select = (0..columns.len())
        .map(|i| format!("value ->> ?{}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let paths = columns
        .iter()
        .map(|c| format!("$.\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    (select, paths)
}

/// The select list that reads a PostgreSQL row `t`: `to_jsonb(t)`, then
/// for each float column its text when it is zero. `to_jsonb` writes a
/// float exactly (shortest text that reads back as the same float, and
/// `NaN` and the infinities as text) except a negative zero, which it
/// writes `0`; [`pg_row`] puts `-0` back.
fn pg_row_document(b: &TableBinding) -> String {
    let mut select = "to_jsonb(t)".to_owned();
    for f in pg_floats(b) {
        let c = ident(&f.column);
        select.push_str(&format!(", CASE WHEN t.{c} = 0 THEN t.{c}::text END"));
    }
    select
}

fn pg_floats(b: &TableBinding) -> impl Iterator<Item = &FieldColumn> {
    b.fields.iter().filter(|f| matches!(f.class, Class::Float { .. }))
}

/// A row selected by [`pg_row_document`] as one document.
fn pg_row(b: &TableBinding, row: &sqlx::postgres::PgRow) -> Result<Fields, sqlx::Error> {
    let mut doc = row.try_get::<sqlx::types::Json<Fields>, _>(0)?.0;
    for (i, f) in pg_floats(b).enumerate() {
        if row.try_get::<Option<&str>, _>(i + 1)? == Some("-0") {
            doc.insert(f.column.clone(), Value::String("-0".into()));
        }
    }
    Ok(doc)
}

/// A cursor value as text, for PostgreSQL's casts.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a JSON value as the SQLite value it stands for.
fn bind_sqlite<'q>(q: SqliteQuery<'q>, v: &Value) -> SqliteQuery<'q> {
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(*b as i64),
        Value::Number(n) => match n.as_i64() {
            Some(i) => q.bind(i),
            None => q.bind(n.as_f64()),
        },
        Value::String(s) => q.bind(s.clone()),
        other => q.bind(other.to_string()),
    }
}
