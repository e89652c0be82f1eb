//! Writing to a table: batched creates (found again by key after a crash), updates, deletes and archives.

use super::*;

impl SqlConnector {
    /// Deletes the rows with `ids`; ids already gone are no error.
    pub async fn delete(&self, b: &TableBinding, ids: &[String]) -> Result<(), ConnectorError> {
        if ids.is_empty() {
            return Ok(());
        }
        let t = table_ident(&b.table);
        let id = ident(ID_COLUMN);
        match self {
            SqlConnector::Mysql { pool, .. } => return self.mysql_delete(pool, b, ids).await,
            SqlConnector::Postgres { pool, .. } => {
                let sql = format!(
                    "DELETE FROM {t} WHERE {id} = ANY(CAST($1 AS {}[])){}",
                    b.column_types[ID_COLUMN],
                    tenant_and(b, "", Dialect::Postgres)
                );
                sqlx::query(&sql).bind(ids).execute(pool).await.map(|_| ())
            }
            SqlConnector::Sqlite { pool, .. } => {
                let sql = format!(
                    "DELETE FROM {t} WHERE {id} IN (SELECT value FROM json_each(?1)){}",
                    tenant_and(b, "", Dialect::Sqlite)
                );
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
        let t = table_ident(&b.table);
        let (id, upd, col) = (ident(ID_COLUMN), ident(UPDATED_AT_COLUMN), ident(column));
        let column_type = b
            .column_types
            .get(column)
            .map(|c| c.to_lowercase())
            .unwrap_or_default();
        let is_time = column_type.contains("time") || column_type.contains("date");
        let stamp = format_time(now);
        match self {
            SqlConnector::Mysql { pool, .. } => return self.mysql_archive(pool, b, ids, column, now).await,
            SqlConnector::Postgres { pool, .. } => {
                let value = if is_time { "CAST($2 AS timestamptz)" } else { "true" };
                let sql = format!(
                    "UPDATE {t} SET {col} = {value}, {upd} = CAST($2 AS {}) WHERE {id} = ANY(CAST($1 AS {}[])){}",
                    b.column_types[UPDATED_AT_COLUMN],
                    b.column_types[ID_COLUMN],
                    tenant_and(b, "", Dialect::Postgres)
                );
                sqlx::query(&sql).bind(ids).bind(&stamp).execute(pool).await.map(|_| ())
            }
            SqlConnector::Sqlite { pool, .. } => {
                let value = if is_time { "?2" } else { "1" };
                let sql = format!(
                    "UPDATE {t} SET {col} = {value}, {upd} = ?2 WHERE {id} IN (SELECT value FROM json_each(?1)){}",
                    tenant_and(b, "", Dialect::Sqlite)
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
        let rows: Vec<(String, String)> = match self {
            SqlConnector::Mysql { pool, .. } => return self.mysql_find_by_keys(pool, b, key_col, keys).await,
            SqlConnector::Postgres { pool, .. } => {
                sqlx::query_as(&key_search(b, key_col, Dialect::Postgres))
                    .bind(keys)
                    .fetch_all(pool)
                    .await
            }
            SqlConnector::Sqlite { pool, .. } => {
                sqlx::query_as(&key_search(b, key_col, Dialect::Sqlite))
                    .bind(sqlx::types::Json(keys))
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(self.query_error(&b.table))?;
        Ok(rows.into_iter().collect())
    }

    /// Whether any row of `b`'s table (the tenant's, where it has a tenant
    /// column) holds an idempotency key: none does before a first load
    /// into a table no run has created in. (`true` without a key column.)
    pub async fn holds_keyed_rows(&self, b: &TableBinding) -> Result<bool, ConnectorError> {
        let Some(key_col) = &b.key_column else {
            return Ok(true);
        };
        let sql = match self {
            SqlConnector::Mysql { .. } => format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL{})",
                super::mysql::table(&b.table),
                super::mysql::ident(key_col),
                tenant_and(b, "", Dialect::Mysql)
            ),
            _ => format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL{})",
                table_ident(&b.table),
                ident(key_col),
                tenant_and(b, "", self.dialect())
            ),
        };
        match self {
            SqlConnector::Postgres { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
            SqlConnector::Sqlite { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
            SqlConnector::Mysql { pool, .. } => sqlx::query_scalar(&sql)
                .fetch_one(pool)
                .await
                .map(|found: i64| found != 0),
        }
        .map_err(self.query_error(&b.table))
    }

    /// Whether the database can answer `find_by_keys` on `b` through an
    /// index, rather than by reading the whole table for every page of
    /// creates: an index whose first column is the key, or whose first is
    /// the tenant column (when `b` has the tenant's filter) and second the
    /// key; partial only on `key IS NOT NULL`; a B-tree (or a hash index
    /// on the key alone). SQLite's planner is asked about the very search;
    /// PostgreSQL's and MySQL's catalogs are.
    pub async fn key_search_uses_an_index(&self, b: &TableBinding) -> Result<bool, ConnectorError> {
        let Some(key_col) = &b.key_column else {
            return Ok(true);
        };
        match self {
            // Its planner would rather read a whole index than the table
            // when told not to scan, so PostgreSQL is asked its catalog.
            // (Not looked at: a `char(n)` key, which the search casts to
            // text, and an index in another collation than the column's.)
            SqlConnector::Postgres { pool, .. } => sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_index i \
                 JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am am ON am.oid = x.relam \
                 WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND am.amname IN ('btree', 'hash') \
                 AND (i.indpred IS NULL \
                      OR pg_get_expr(i.indpred, i.indrelid) = '(' || quote_ident($2) || ' IS NOT NULL)') \
                 AND ((SELECT attname::text FROM pg_attribute \
                       WHERE attrelid = i.indrelid AND attnum = i.indkey[0]) = $2 \
                      OR (i.indnkeyatts > 1 \
                          AND (SELECT attname::text FROM pg_attribute \
                               WHERE attrelid = i.indrelid AND attnum = i.indkey[0]) = $3 \
                          AND (SELECT attname::text FROM pg_attribute \
                               WHERE attrelid = i.indrelid AND attnum = i.indkey[1]) = $2)))",
            )
            .bind(super::table_ident(&b.table))
            .bind(key_col)
            .bind(b.tenant.as_ref().map(|(column, _)| column.as_str()))
            .fetch_one(pool)
            .await
            .map_err(self.query_error(&b.table)),
            SqlConnector::Sqlite { pool, .. } => {
                let plan: Vec<String> = sqlx::query(&format!(
                    "EXPLAIN QUERY PLAN {}",
                    key_search(b, key_col, Dialect::Sqlite)
                ))
                .bind(sqlx::types::Json(Vec::<String>::new()))
                .fetch_all(pool)
                .await
                .map_err(self.query_error(&b.table))?
                .iter()
                .map(|row| row.try_get::<String, _>("detail").unwrap_or_default())
                .collect();
                // `SEARCH t USING INDEX i (key=?)`, or `(tenant=? AND key=?)`:
                // an index on the tenant column alone reads all its rows.
                let searched = format!("{key_col}=?");
                Ok(plan
                    .iter()
                    .any(|step| step.starts_with("SEARCH ") && step.contains(&searched)))
            }
            SqlConnector::Mysql { pool, .. } => self.mysql_key_indexed(pool, b, key_col).await,
        }
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
    pub(super) async fn insert(
        &self,
        b: &TableBinding,
        records: &[&NewRecord],
        mut rows: Vec<Fields>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, ConnectorError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let stamp = self.stamp(b, now);
        // PostgreSQL pads an id in a `character(n)` column with spaces and
        // reads it back so: each id is given, and recorded, as it is read.
        let width = match self {
            SqlConnector::Postgres { .. } => b.column_types[ID_COLUMN]
                .strip_prefix("character(")
                .and_then(|n| n.strip_suffix(')'))
                .and_then(|n| n.parse::<usize>().ok()),
            _ => None,
        };
        let given: Vec<String> = records
            .iter()
            .map(|r| {
                let id = r.id.clone().unwrap_or_default();
                match width {
                    Some(n) if id.chars().count() < n => format!("{id:<n$}"),
                    _ => id,
                }
            })
            .collect();
        for ((row, r), id) in rows.iter_mut().zip(records).zip(&given) {
            row.insert(UPDATED_AT_COLUMN.into(), stamp.clone());
            if let (Some(_), IdKind::Text) = (&r.id, b.id_kind) {
                row.insert(ID_COLUMN.into(), Value::String(id.clone()));
            }
            if let Some(k) = &b.key_column {
                row.insert(k.clone(), Value::String(r.key.clone()));
            }
            if let Some((column, value)) = &b.tenant {
                row.insert(column.clone(), Value::String(value.clone()));
            }
        }
        if let SqlConnector::Mysql { pool, .. } = self {
            return self.mysql_create(pool, b, records, &rows).await;
        }
        let columns: Vec<&str> = rows[0].keys().map(String::as_str).collect();
        let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let t = table_ident(&b.table);
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
            (IdKind::Assigned, _) => {
                format!(" RETURNING CAST({key} AS TEXT), CAST({id} AS TEXT)")
            }
        };
        // SQLite reads each column of a `json_each` row by a bound path.
        let (sqlite_select, sqlite_paths) = sqlite_json_select(b, &columns);
        let insert = |on_conflict: &str| -> String {
            match self {
                SqlConnector::Postgres { .. } => format!(
                    "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{t}, $1)\
                     {on_conflict}{returning}"
                ),
                _ => format!(
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
                    SqlConnector::Mysql { .. } => unreachable!("MySQL inserts by mysql_create"),
                }
            }
        };
        let repeat = records.iter().any(|r| r.tried) && !upsert.is_empty();
        // A page of first creates into PostgreSQL goes in by `COPY`; one
        // that meets an id already there (a crash between its create and
        // its commit, not seen as such) is written again as an upsert.
        if let (SqlConnector::Postgres { pool, .. }, IdKind::Text, false) = (self, b.id_kind, repeat)
            && let Some(data) = copy_text(b, &columns, &rows)
        {
            let sql = format!("COPY {t} ({list}) FROM STDIN");
            // Spawned: a COPY dropped half-way would leave its connection
            // owing a reply to the pool.
            let copied = tokio::spawn(copy_in(pool.clone(), table_ident(&b.table), sql, data)).await;
            let copied =
                copied.unwrap_or_else(|e| Err(sqlx::Error::Protocol(format!("the COPY task ended: {e}"))));
            match copied {
                Ok(true) => return Ok(given),
                // Not a plain table (a view, rules, row security): inserted
                // from JSON below, as before.
                Ok(false) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tracing::debug!(table = %b.table, "COPY met an id already there; upserting the page");
                    run(insert(&upsert)).await.map_err(self.query_error(&b.table))?;
                    return Ok(given);
                }
                Err(e) => return Err(self.query_error(&b.table)(e)),
            }
        }
        let returned: Vec<(Option<String>, String)> =
            match run(insert(if repeat { &upsert } else { "" })).await {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && !upsert.is_empty() && !repeat => {
                    run(insert(&upsert)).await
                }
                other => other,
            }
            .map_err(self.query_error(&b.table))?;
        match b.id_kind {
            IdKind::Text => Ok(given),
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
        let stamp = self.stamp(b, now);
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
        let t = table_ident(&b.table);
        let id = ident(ID_COLUMN);
        match self {
            SqlConnector::Mysql { pool, .. } => refused.extend(self.mysql_update(pool, b, &rows).await?),
            SqlConnector::Postgres { pool, .. } => {
                let set = columns
                    .iter()
                    .map(|c| format!("{0} = r.{0}", ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "UPDATE {t} AS t SET {set} FROM jsonb_populate_recordset(NULL::{t}, $1) AS r \
                     WHERE t.{id} = ANY(CAST($2 AS {}[])) AND t.{id} = r.{id}{}",
                    b.column_types[ID_COLUMN],
                    tenant_and(b, "t.", Dialect::Postgres)
                );
                let returning = format!("{sql} RETURNING to_jsonb(t.{id})");
                let taken = match exact_ids(b) {
                    true => sqlx::query_scalar::<_, sqlx::types::Json<Value>>(&returning)
                        .bind(sqlx::types::Json(&rows))
                        .bind(&ids)
                        .fetch_all(pool)
                        .await
                        .map(Some),
                    false => Ok(None),
                };
                match taken {
                    Ok(Some(updated)) => {
                        refused.extend(not_updated(&ids, updated.iter().filter_map(|j| id_text(&j.0))))
                    }
                    // A view updated through a rule without RETURNING
                    // (feature_not_supported): written without the check.
                    result => {
                        if let Err(e) = result
                            && e.as_database_error().and_then(|d| d.code()).as_deref() != Some("0A000")
                        {
                            return Err(self.query_error(&b.table)(e));
                        }
                        sqlx::query(&sql)
                            .bind(sqlx::types::Json(&rows))
                            .bind(&ids)
                            .execute(pool)
                            .await
                            .map_err(self.query_error(&b.table))?;
                    }
                }
            }
            SqlConnector::Sqlite { pool, .. } => {
                let set = columns
                    .iter()
                    .map(|c| format!("{0} = u.{0}", ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut all = columns.clone();
                all.push(ID_COLUMN);
                let (select, paths) = sqlite_json_select(b, &all);
                let aliased: Vec<String> = select
                    .split(", ")
                    .zip(&all)
                    .map(|(e, c)| format!("{e} AS {}", ident(c)))
                    .collect();
                let sql = format!(
                    "UPDATE {t} SET {set} FROM (SELECT {} FROM json_each(?1)) AS u WHERE {t}.{id} = u.{id}{}",
                    aliased.join(", "),
                    tenant_and(b, &format!("{t}."), Dialect::Sqlite)
                );
                if exact_ids(b) {
                    let returning = format!("{sql} RETURNING CAST({t}.{id} AS TEXT)");
                    let mut q =
                        sqlx::query_scalar::<_, Option<String>>(&returning).bind(sqlx::types::Json(&rows));
                    for p in paths {
                        q = q.bind(p);
                    }
                    let updated = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
                    refused.extend(not_updated(&ids, updated.into_iter().flatten()));
                } else {
                    let mut q = sqlx::query(&sql).bind(sqlx::types::Json(&rows));
                    for p in paths {
                        q = q.bind(p);
                    }
                    q.execute(pool).await.map_err(self.query_error(&b.table))?;
                }
            }
        }
        Ok(refused)
    }
}

/// Whether the ids `RETURNING` gives back read as the ids read do: not for
/// an id column of floats (SQLite's `5.0` for `5`, PostgreSQL's `1e+20`),
/// whose updates go unchecked.
fn exact_ids(b: &TableBinding) -> bool {
    let t = b.column_types[ID_COLUMN].to_ascii_lowercase();
    !(t.contains("real") || t.contains("floa") || t.contains("doub"))
}

/// The ids of `ids` the database did not say it updated: the row is gone
/// since it was read, or a trigger skipped its write (PostgreSQL's `RETURN
/// NULL`, SQLite's `RAISE(IGNORE)`). Each is refused, so that its mapping
/// keeps the error and its old base instead of recording a write that was
/// not made.
fn not_updated(ids: &[&str], updated: impl Iterator<Item = String>) -> Vec<(String, String)> {
    let updated: std::collections::HashSet<String> = updated.collect();
    ids.iter()
        .filter(|id| !updated.contains(**id))
        .map(|id| {
            (
                (*id).to_owned(),
                "no row was updated: the row is gone since it was read, or a trigger skipped the write"
                    .to_owned(),
            )
        })
        .collect()
}

impl SqlConnector {
    /// The modification time a write sets, as this database takes it, and
    /// as the table writes its own (`TableBinding::stamp_like`).
    fn stamp(&self, b: &TableBinding, now: DateTime<Utc>) -> Value {
        match (self, b.stamp_like.as_deref()) {
            // A number in the unit the table's own numbers count.
            (_, Some(number)) if let Ok(n) = number.parse::<i64>() => {
                Value::from(value::epoch_of(now, value::epoch_units(n).unwrap_or(1)))
            }
            (SqlConnector::Mysql { .. }, _) => mysql::mysql_time(now),
            (_, example) => Value::String(
                example
                    .and_then(|example| value::time_like(example, now))
                    .unwrap_or_else(|| format_time(now)),
            ),
        }
    }

    /// A change time of `b`'s to stamp writes like (see
    /// [`TableBinding::stamp_like`]): in SQLite the latest written with a
    /// space (one pass over the table), else a text time of a few of its
    /// values, else a number of them (a SQLite `INTEGER` column of
    /// `unixepoch()`, or an empty one declared so); in a PostgreSQL text
    /// column a time of a few of its values; and whether the table holds
    /// times written with a space and with a `T`.
    /// `None` where syncd's own layout is the table's: a time column, or a
    /// table without times.
    pub async fn stamp_example(&self, b: &TableBinding) -> Result<(Option<String>, bool), ConnectorError> {
        let upd = ident(UPDATED_AT_COLUMN);
        // A few of the column's values (neither a pass over the table nor
        // a sort of it), with their SQLite types.
        let sample = |sql: String| async move {
            let rows: Vec<(String, String)> = match self {
                SqlConnector::Sqlite { pool, .. } => sqlx::query_as(&sql).fetch_all(pool).await,
                SqlConnector::Postgres { pool, .. } => sqlx::query_as(&sql).fetch_all(pool).await,
                SqlConnector::Mysql { pool, .. } => sqlx::query_as(&sql).fetch_all(pool).await,
            }
            .map_err(self.query_error(&b.table))?;
            let text = rows
                .iter()
                .find(|(v, kind)| kind == "text" && value::time_like(v, chrono::Utc::now()).is_some())
                .map(|(v, _)| v.clone());
            // The finest unit among them (a table stamped in seconds
            // before its application stamped milliseconds).
            let number = rows
                .iter()
                .filter(|(_, kind)| kind == "integer")
                .filter_map(|(v, _)| v.parse::<i64>().ok())
                .max_by_key(|n| (value::epoch_units(*n), *n))
                .map(|n| n.to_string());
            Ok::<_, ConnectorError>((text, number))
        };
        let table = table_ident(&b.table);
        let declared = b
            .column_types
            .get(UPDATED_AT_COLUMN)
            .map(String::as_str)
            .unwrap_or_default();
        let integers = match self {
            SqlConnector::Postgres { .. } => matches!(Class::postgres(declared), Class::Integer { .. }),
            SqlConnector::Mysql { .. } => {
                matches!(
                    Class::mysql(declared),
                    Class::Integer { .. } | Class::Unsigned { .. }
                )
            }
            SqlConnector::Sqlite { .. } => false,
        };
        let (spaced, t, text, number) = match self {
            SqlConnector::Sqlite { pool, .. } => {
                let (spaced, t): (Option<String>, Option<bool>) = sqlx::query_as(&format!(
                    "SELECT max(CASE WHEN substr({upd}, 11, 1) = ' ' THEN {upd} END), \
                            max(substr({upd}, 11, 1) = 'T') \
                     FROM {table} WHERE typeof({upd}) = 'text'"
                ))
                .fetch_one(pool)
                .await
                .map_err(self.query_error(&b.table))?;
                let (text, number) = sample(format!(
                    "SELECT CAST({upd} AS TEXT), typeof({upd}) FROM {table} WHERE {upd} IS NOT NULL LIMIT 32"
                ))
                .await?;
                (spaced, t, text, number)
            }
            SqlConnector::Postgres { .. }
                if b.column_types
                    .get(UPDATED_AT_COLUMN)
                    .is_some_and(|t| t == "text" || t.starts_with("character")) =>
            {
                let (text, _) = sample(format!(
                    "SELECT {upd}, 'text' FROM {table} WHERE {upd} IS NOT NULL LIMIT 32"
                ))
                .await?;
                let spaced = text.clone().filter(|t| t.get(10..11) == Some(" "));
                // (A PostgreSQL table of both layouts is read as it orders.)
                (spaced, None, text, None)
            }
            // A PostgreSQL or MySQL column of integers (Unix seconds, or
            // milliseconds).
            SqlConnector::Postgres { .. } | SqlConnector::Mysql { .. } if integers => {
                let cast = match self {
                    SqlConnector::Mysql { .. } => format!(
                        "SELECT CAST({0} AS CHAR), 'integer' FROM {1} WHERE {0} IS NOT NULL LIMIT 32",
                        super::mysql::ident(UPDATED_AT_COLUMN),
                        super::mysql::table(&b.table)
                    ),
                    _ => {
                        format!("SELECT {upd}::text, 'integer' FROM {table} WHERE {upd} IS NOT NULL LIMIT 32")
                    }
                };
                let (_, number) = sample(cast).await?;
                (None, None, None, number)
            }
            _ => return Ok((None, false)),
        };
        let mixed = spaced.is_some() && t == Some(true);
        let declared_seconds = integers
            || matches!(self, SqlConnector::Sqlite { .. })
                && b.column_types
                    .get(UPDATED_AT_COLUMN)
                    .is_some_and(|t| t.contains("INT"));
        let seconds = number;
        let example = match declared_seconds {
            // A column declared as integers keeps its numbers (the text an
            // earlier version stamped there orders after them all), and
            // an empty one is stamped with numbers.
            true => seconds.or(spaced).or(text).or_else(|| Some("0".to_owned())),
            false => spaced.or(text).or(seconds),
        };
        Ok((example, mixed))
    }

    /// Creates text-id `rows` some of which may exist already: those are
    /// written over by id, the others inserted.
    async fn mysql_create_again(
        &self,
        pool: &sqlx::mysql::MySqlPool,
        b: &TableBinding,
        rows: &[Fields],
    ) -> Result<(), ConnectorError> {
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get(ID_COLUMN).and_then(id_text))
            .collect();
        let there = self.mysql_present_any(pool, b, &ids).await?;
        let (existing, new): (Vec<Fields>, Vec<Fields>) = rows.iter().cloned().partition(|r| {
            r.get(ID_COLUMN)
                .and_then(id_text)
                .is_some_and(|id| there.contains(&id))
        });
        if !existing.is_empty()
            && let Some((id, why)) = self.mysql_update(pool, b, &existing).await?.into_iter().next()
        {
            // (A create into a table with a generated column fails on
            // MySQL's own error before it gets here.)
            return Err(ConnectorError::Config {
                system: b.system.clone(),
                reason: format!("table `{}`, row `{id}`: {why}", b.table),
            });
        }
        if !new.is_empty() {
            self.mysql_insert(pool, b, &new)
                .await
                .map_err(self.query_error(&b.table))?;
        }
        Ok(())
    }

    /// Creates `rows` of `records` in MySQL: one multi-row insert (rows
    /// already there, after a crash, written over by id); integer ids are
    /// found again by key.
    async fn mysql_create(
        &self,
        pool: &sqlx::mysql::MySqlPool,
        b: &TableBinding,
        records: &[&NewRecord],
        rows: &[Fields],
    ) -> Result<Vec<String>, ConnectorError> {
        let text = b.id_kind == IdKind::Text;
        let repeat = text && records.iter().any(|r| r.tried);
        let first = match repeat {
            true => None,
            false => Some(self.mysql_insert(pool, b, rows).await),
        };
        match first {
            Some(Ok(())) => {}
            // A text-id row created before (a create repeated after a
            // crash): the rows whose id is there are written over by id (a
            // MySQL upsert would fire on any unique key, and overwrite
            // another row); the others are inserted, and any other unique
            // key they break fails them loudly.
            Some(Err(sqlx::Error::Database(e))) if e.is_unique_violation() && text => {
                self.mysql_create_again(pool, b, rows).await?
            }
            None => self.mysql_create_again(pool, b, rows).await?,
            Some(Err(e)) => return Err(self.query_error(&b.table)(e)),
        }
        match (b.id_kind, &b.key_column) {
            (IdKind::Assigned, Some(k)) => {
                let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
                let by_key = self.mysql_find_by_keys(pool, b, k, &keys).await?;
                Ok(records
                    .iter()
                    .map(|r| by_key.get(&r.key).cloned().unwrap_or_default())
                    .collect())
            }
            _ => Ok(records.iter().map(|r| r.id.clone().unwrap_or_default()).collect()),
        }
    }
}

/// A cursor value as text, for PostgreSQL's casts.
pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Binds a JSON value as the SQLite value it stands for.
pub(super) fn bind_sqlite<'q>(q: SqliteQuery<'q>, v: &Value) -> SqliteQuery<'q> {
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

/// Sends `data` (COPY's text format) by `sql` into `table` on a connection
/// of `pool`; `false`, sending nothing, when the table is not one COPY
/// writes as an INSERT would (a view, a table with rules, which COPY
/// ignores, or with row security, which COPY refuses).
async fn copy_in(pool: sqlx::PgPool, table: String, sql: String, data: String) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let plain: Option<bool> = sqlx::query_scalar(
        "SELECT relkind IN ('r', 'p') AND NOT relhasrules AND NOT relrowsecurity FROM pg_class \
         WHERE oid = to_regclass($1)",
    )
    .bind(&table)
    .fetch_optional(&mut *conn)
    .await?;
    if plain != Some(true) {
        return Ok(false);
    }
    let mut copy = conn.copy_in_raw(&sql).await?;
    if let Err(e) = copy.send(data.into_bytes()).await {
        // The server may already have said why it stopped.
        let _ = copy.abort("syncd: sending the rows failed").await;
        return Err(e);
    }
    copy.finish().await.map(|_| true)
}

/// `rows` in COPY's text format, or `None` when a column's type is one
/// whose text input this does not know to match the JSON insert's: that
/// page is inserted from JSON instead.
fn copy_text(b: &TableBinding, columns: &[&str], rows: &[Fields]) -> Option<String> {
    // A column of a type whose text input is not what the JSON insert
    // gives it keeps the page on the JSON insert: an array, a `json`
    // column (the insert checked the document as `jsonb`, which refuses
    // what `json` keeps and every later read would fail on), and a type
    // not known here (a domain over a document would take a string's text
    // as JSON).
    let mut classes: Vec<Class> = Vec::with_capacity(columns.len());
    for c in columns {
        let t = b.column_types.get(*c)?.as_str();
        let class = Class::postgres(t);
        if t.ends_with("[]") || class == Class::Any || (class == Class::Json && t != "jsonb") {
            return None;
        }
        classes.push(class);
    }
    let mut out = String::with_capacity(rows.len() * 128);
    for row in rows {
        for (i, (column, class)) in columns.iter().zip(&classes).enumerate() {
            if i > 0 {
                out.push('\t');
            }
            match row.get(*column).unwrap_or(&Value::Null) {
                Value::Null => out.push_str("\\N"),
                v if *class == Class::Json => copy_escape(&v.to_string(), &mut out),
                Value::String(s) => copy_escape(s, &mut out),
                Value::Number(n) => out.push_str(&n.to_string()),
                Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Value::Object(_) | Value::Array(_) => return None,
            }
        }
        out.push('\n');
    }
    Some(out)
}

/// `text` escaped for COPY's text format.
fn copy_escape(text: &str, out: &mut String) {
    // The four bytes escaped are ASCII, so every run between them ends on
    // a character boundary and is copied whole.
    let mut from = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        out.push_str(&text[from..i]);
        out.push_str(escaped);
        from = i + 1;
    }
    out.push_str(&text[from..]);
}

/// The search of `find_by_keys` on PostgreSQL (`$1`: the keys as an array)
/// and SQLite (`?1`: the keys as a JSON array).
fn key_search(b: &TableBinding, key_col: &str, dialect: Dialect) -> String {
    let (t, k, id) = (table_ident(&b.table), ident(key_col), ident(ID_COLUMN));
    match dialect {
        Dialect::Postgres => format!(
            "SELECT {k}::text, {id}::text FROM {t} WHERE {k}::text = ANY($1){}",
            tenant_and(b, "", dialect)
        ),
        _ => format!(
            "SELECT CAST({k} AS TEXT), CAST({id} AS TEXT) FROM {t} \
             WHERE {k} IN (SELECT value FROM json_each(?1)){}",
            tenant_and(b, "", dialect)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::copy_escape;

    /// COPY's text format takes a backslash, a newline, a carriage return
    /// and a tab only escaped; every other character, multi-byte ones
    /// beside them too, goes through as it is.
    #[test]
    fn copy_text_escapes_its_four_special_characters_and_nothing_else() {
        let mut out = String::from("kept|");
        copy_escape("é\\\tÅ\n\r✓ \\N\u{0}x", &mut out);
        assert_eq!(out, "kept|é\\\\\\tÅ\\n\\r✓ \\\\N\u{0}x");
        let mut plain = String::new();
        copy_escape("plain text ✓", &mut plain);
        assert_eq!(plain, "plain text ✓");
        let mut edges = String::new();
        copy_escape("\t\\", &mut edges);
        assert_eq!(edges, "\\t\\\\");
    }
}
