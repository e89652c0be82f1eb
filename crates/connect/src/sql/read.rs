//! Reading a table: keyset pages of changes, records by id, presence; rows decoded to exact values.

use super::*;

impl SqlConnector {
    /// Reads up to `limit` rows changed after `after`, oldest first.
    pub async fn read_changes(
        &self,
        b: &TableBinding,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        let t = table_ident(&b.table);
        let (id, upd) = (ident(ID_COLUMN), ident(UPDATED_AT_COLUMN));
        let rows = match self {
            SqlConnector::Postgres { pool, .. } => {
                let doc = pg_row_document(b);
                let ta = tenant_and(b, "t.", Dialect::Postgres);
                // Rows without a time (NULL, or a time type's infinities)
                // are read by `read_untimed`: in the scan, a cursor on one
                // would end it, or stop every later run's scan there.
                let timed = format!(" AND {}", time_condition(b, Dialect::Postgres, "t.", false));
                let sql = match after {
                    None => {
                        format!(
                            "SELECT {doc} FROM {t} t WHERE true{timed}{ta} ORDER BY t.{upd}, t.{id} LIMIT $1"
                        )
                    }
                    Some(_) => format!(
                        "SELECT {doc} FROM {t} t WHERE (t.{upd}, t.{id}) > (CAST($2 AS {}), CAST($3 AS {})){timed}{ta} \
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
                    .map(|r| pg_row(b, r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(self.query_error(&b.table))?
            }
            SqlConnector::Sqlite { pool, .. } => {
                let cols = self.sqlite_select_list(b);
                let ta = tenant_and(b, "", Dialect::Sqlite);
                // Times are compared as text. A table that holds times
                // written with a space (`datetime('now')`) as well as with
                // the `T` of RFC 3339 is ordered as if every space were a
                // `T`: as they are, a space orders before a `T` on the same
                // day whatever the time, and the scan would miss (or, with
                // the cursor rewritten, read again and again) rows. That
                // order has no index: only such a table pays for it.
                // The cursor goes through the same rewriting as the rows.
                let (key, at) = match b.mixed_layouts {
                    true => (format!("replace({upd}, ' ', 'T')"), "replace(?2, ' ', 'T')"),
                    false => (upd.clone(), "?2"),
                };
                // Rows without a time (NULL, or a BLOB) are read by
                // `read_untimed`.
                let timed = format!(" AND {}", time_condition(b, Dialect::Sqlite, "", false));
                let sql = match after {
                    None => {
                        format!("SELECT {cols} FROM {t} WHERE true{timed}{ta} ORDER BY {key}, {id} LIMIT ?1")
                    }
                    Some(_) => format!(
                        "SELECT {cols} FROM {t} WHERE ({key}, {id}) > ({at}, ?3){timed}{ta} ORDER BY {key}, {id} LIMIT ?1"
                    ),
                };
                let mut q = sqlx::query(&sql).bind(limit as i64);
                if let Some(c) = after {
                    q = bind_sqlite(bind_sqlite(q, &cursor_like_table(b, &c.updated_at)), &c.id);
                }
                let rows = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
                rows.iter().map(|r| self.sqlite_row(b, r)).collect()
            }
            SqlConnector::Mysql { pool, .. } => self.mysql_changes(pool, b, after, limit).await?,
        };
        Ok(self.change_page(b, rows, limit, false))
    }

    /// Reads up to `limit` rows whose change time cannot be read (NULL,
    /// or a value no scan by time can pass: PostgreSQL's infinities, a
    /// SQLite BLOB), by id after `after`. No cursor can tell whether such a
    /// row changed: every run reads them all and compares them by value.
    /// Each is a record as of the Unix epoch (the oldest time a conflict
    /// can weigh).
    pub async fn read_untimed(
        &self,
        b: &TableBinding,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        let t = table_ident(&b.table);
        let id = ident(ID_COLUMN);
        let rows = match self {
            SqlConnector::Postgres { pool, .. } => {
                let doc = pg_row_document(b);
                let ta = tenant_and(b, "t.", Dialect::Postgres);
                let untimed = time_condition(b, Dialect::Postgres, "t.", true);
                let from = match after {
                    None => String::new(),
                    Some(_) => format!(" AND t.{id} > CAST($2 AS {})", b.column_types[ID_COLUMN]),
                };
                let sql =
                    format!("SELECT {doc} FROM {t} t WHERE {untimed}{from}{ta} ORDER BY t.{id} LIMIT $1");
                let mut q = sqlx::query(&sql).bind(limit as i64);
                if let Some(a) = after {
                    q = q.bind(text_of(a));
                }
                let rows = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
                rows.iter()
                    .map(|r| pg_row(b, r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(self.query_error(&b.table))?
            }
            SqlConnector::Sqlite { pool, .. } => {
                let cols = self.sqlite_select_list(b);
                let ta = tenant_and(b, "", Dialect::Sqlite);
                let from = match after {
                    None => "",
                    Some(_) => " AND CAST({id} AS TEXT) > ?2",
                }
                .replace("{id}", &id);
                // Ids compare as text: the one order a text cursor keeps.
                let sql = format!(
                    "SELECT {cols} FROM {t} WHERE {}{from}{ta} \
                     ORDER BY CAST({id} AS TEXT) LIMIT ?1",
                    time_condition(b, Dialect::Sqlite, "", true)
                );
                let mut q = sqlx::query(&sql).bind(limit as i64);
                if let Some(a) = after {
                    q = q.bind(id_text(a).unwrap_or_default());
                }
                let rows = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
                rows.iter().map(|r| self.sqlite_row(b, r)).collect()
            }
            SqlConnector::Mysql { pool, .. } => self.mysql_untimed(pool, b, after, limit).await?,
        };
        Ok(self.change_page(b, rows, limit, true))
    }

    /// A page of rows read in order: records, bad rows and rows marked
    /// deleted, and the position after the last. `any_time`: see
    /// [`record_of`](Self::record_of).
    fn change_page(
        &self,
        b: &TableBinding,
        rows: Vec<(Fields, Option<BadRow>)>,
        limit: u32,
        any_time: bool,
    ) -> ChangePage {
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
            match self.record_of(b, doc, any_time) {
                Ok(r) => page.records.push(r),
                Err(bad) => page.bad.push(bad),
            }
        }
        page
    }

    /// The records with `ids`; ids that do not exist are absent.
    pub async fn read_by_ids(&self, b: &TableBinding, ids: &[String]) -> Result<ByIds, ConnectorError> {
        if ids.is_empty() {
            return Ok(ByIds::default());
        }
        let t = table_ident(&b.table);
        let id = ident(ID_COLUMN);
        let docs: Vec<(Fields, Option<BadRow>)> = match self {
            SqlConnector::Postgres { pool, .. } => {
                let sql = format!(
                    "SELECT {} FROM {t} t WHERE t.{id} = ANY(CAST($1 AS {}[])){}",
                    pg_row_document(b),
                    b.column_types[ID_COLUMN],
                    tenant_and(b, "t.", Dialect::Postgres)
                );
                let rows = sqlx::query(&sql)
                    .bind(ids)
                    .fetch_all(pool)
                    .await
                    .map_err(self.query_error(&b.table))?;
                rows.iter()
                    .map(|r| pg_row(b, r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(self.query_error(&b.table))?
            }
            SqlConnector::Sqlite { pool, .. } => {
                let cols = self.sqlite_select_list(b);
                let sql = format!(
                    "SELECT {cols} FROM {t} WHERE {id} IN (SELECT value FROM json_each(?1)){}",
                    tenant_and(b, "", Dialect::Sqlite)
                );
                let rows = sqlx::query(&sql)
                    .bind(sqlx::types::Json(self.native_ids(b, ids)))
                    .fetch_all(pool)
                    .await
                    .map_err(self.query_error(&b.table))?;
                rows.iter().map(|r| self.sqlite_row(b, r)).collect()
            }
            SqlConnector::Mysql { pool, .. } => self.mysql_read_by_ids(pool, b, ids).await?,
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
        let t = table_ident(&b.table);
        let id = ident(ID_COLUMN);
        let mark = b.deleted_column.as_deref().map(ident);
        let rows: Vec<(String, Option<sqlx::types::Json<Value>>)> = match self {
            SqlConnector::Mysql { pool, .. } => return self.mysql_present(pool, b, ids).await,
            SqlConnector::Postgres { pool, .. } => {
                let mark = mark.map_or("NULL::jsonb".into(), |m| format!("to_jsonb({m})"));
                let sql = format!(
                    "SELECT to_jsonb({id}), {mark} FROM {t} WHERE {id} = ANY(CAST($1 AS {}[])){}",
                    b.column_types[ID_COLUMN],
                    tenant_and(b, "", Dialect::Postgres)
                );
                sqlx::query_as(&sql)
                    .bind(ids)
                    .fetch_all(pool)
                    .await
                    .map(as_read_ids)
            }
            SqlConnector::Sqlite { pool, .. } => {
                let mark = mark.map_or("NULL".into(), |m| format!("json_quote({m})"));
                let sql = format!(
                    "SELECT CAST({id} AS TEXT), {mark} FROM {t} \
                     WHERE {id} IN (SELECT value FROM json_each(?1)){}",
                    tenant_and(b, "", Dialect::Sqlite)
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
        let t = table_ident(&b.table);
        let id = ident(ID_COLUMN);
        let mark = b.deleted_column.as_deref().map(ident);
        let limit = (ids.len() * 2 + 64) as i64;
        // A shared table's key spans other tenants' rows too: one probe an id.
        if b.tenant.is_some() {
            return self.present(b, ids).await;
        }
        let rows: Vec<(String, Option<sqlx::types::Json<Value>>)> = match self {
            // One `IN` list a chunk: MySQL finds each id by its key.
            SqlConnector::Mysql { pool, .. } => return self.mysql_present(pool, b, ids).await,
            SqlConnector::Postgres { pool, .. } => {
                let mark = mark.map_or("NULL::jsonb".into(), |m| format!("to_jsonb({t}.{m})"));
                let sql = format!(
                    "WITH page AS (SELECT unnest(CAST($1 AS {}[])) AS id) \
                     SELECT to_jsonb({t}.{id}), {mark} FROM {t} \
                     WHERE {t}.{id} >= (SELECT min(id) FROM page) AND {t}.{id} <= (SELECT max(id) FROM page) \
                     ORDER BY {t}.{id} LIMIT $2",
                    b.column_types[ID_COLUMN]
                );
                sqlx::query_as(&sql)
                    .bind(ids)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map(as_read_ids)
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

    /// A row (all columns, native names) as a record.
    /// `any_time`: a row whose modification time cannot be read is still
    /// read (its time the Unix epoch), as a counterpart to compare by value.
    pub(super) fn record_of(
        &self,
        b: &TableBinding,
        mut doc: Fields,
        any_time: bool,
    ) -> Result<Record, BadRow> {
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

    pub(super) fn sqlite_select_list(&self, b: &TableBinding) -> String {
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
    pub(super) fn sqlite_row(&self, b: &TableBinding, row: &SqliteRow) -> (Fields, Option<BadRow>) {
        let names = sqlite_columns(b);
        let json_columns: Vec<&str> = b
            .fields
            .iter()
            .filter(|f| f.class == Class::Json)
            .map(|f| f.column.as_str())
            .collect();
        let bytes_columns: Vec<&str> = b
            .fields
            .iter()
            .filter(|f| f.class == Class::Bytes)
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
                    // Bytes in a `BLOB` column: as they cross the engine.
                    "BLOB" if bytes_columns.contains(name) => row
                        .try_get_unchecked::<&[u8], _>(i)
                        .map(|bytes| {
                            let mut text = String::with_capacity(2 + 2 * bytes.len());
                            text.push_str("\\x");
                            for byte in bytes {
                                text.push_str(&format!("{byte:02x}"));
                            }
                            Value::String(text)
                        })
                        .map_err(|e| e.to_string()),
                    other => Err(format!("it holds a {other} value, which is not JSON")),
                };
                match read {
                    Ok(v) => v,
                    Err(why) => {
                        unreadable.get_or_insert(format!("{}: {why}", column_label(b, name)));
                        Value::Null
                    }
                }
            };
            doc.insert((*name).to_owned(), value);
        }
        let bad = unreadable.map(|why| unreadable_row(b, &doc, why));
        (doc, bad)
    }
}

/// A column in a reason: the entity's field it holds, when it holds one.
pub(super) fn column_label(b: &TableBinding, name: &str) -> String {
    b.fields
        .iter()
        .find(|f| f.column == name)
        .map(|f| format!("entity `{}`, field `{}` (column `{name}`)", b.entity, f.cdm))
        .unwrap_or_else(|| format!("column `{name}`"))
}

/// PostgreSQL ids as a document gives them, in the text the read path
/// makes of them (`id_text`): `id::text` drops a `char(n)` id's padding,
/// which the mapping keeps, and such a record looked gone.
type PgPresent = (sqlx::types::Json<Value>, Option<sqlx::types::Json<Value>>);
fn as_read_ids(rows: Vec<PgPresent>) -> Vec<(String, Option<sqlx::types::Json<Value>>)> {
    rows.into_iter()
        .map(|(id, mark)| (id_text(&id.0).unwrap_or_default(), mark))
        .collect()
}

/// The bad row of a document one of whose columns could not be read.
pub(super) fn unreadable_row(b: &TableBinding, doc: &Fields, why: String) -> BadRow {
    let id = doc.get(ID_COLUMN).and_then(id_text).unwrap_or_default();
    BadRow {
        reason: format!("system `{}`, table `{}`, row `{id}`: {why}", b.system, b.table),
        id,
    }
}

/// The first bytes of `bytes` in hex, for an error message.
pub(super) fn hex_head(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 16 {
        format!("x'{}…'", head.join(""))
    } else {
        format!("x'{}'", head.join(""))
    }
}

/// `value ->> ?2, value ->> ?3, ...` reading each column of a `json_each`
/// row, with the JSON paths to bind (column names are bound, not spliced).
pub(super) fn sqlite_json_select(b: &TableBinding, columns: &[&str]) -> (String, Vec<String>) {
    // A field of bytes in a `BLOB` column takes them as bytes, from their
    // `\x` and hex (not the change time, a key or a mark: syncd's own).
    let bytes = |c: &str| b.fields.iter().any(|f| f.column == c && f.class == Class::Bytes);
    let select = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match bytes(c) {
            true => format!("unhex(substr(value ->> ?{},3))", i + 2),
            false => format!("value ->> ?{}", i + 2),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let paths = columns
        .iter()
        .map(|c| format!("$.\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    (select, paths)
}

/// A SQLite cursor's change time as the table writes its own, a space or a `T`
/// between date and time (as [`TableBinding::stamp_like`] shows it), for
/// a table that holds one layout: text orders a space before a `T`, so a
/// cursor of syncd's `T` (saved while the table held only syncd's stamps)
/// came after every row its application stamped with a space that day
/// (`datetime('now')`), and those rows were never read.
pub(super) fn cursor_like_table(b: &TableBinding, at: &Value) -> Value {
    let separator = |s: &str| {
        let bytes = s.as_bytes();
        (bytes.len() > 11
            && bytes[..10].iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                _ => c.is_ascii_digit(),
            }))
        .then(|| bytes[10])
        .filter(|c| *c == b' ' || *c == b'T')
    };
    match (b.mixed_layouts, b.stamp_like.as_deref(), at) {
        (false, Some(example), Value::String(text)) => match (separator(example), separator(text)) {
            (Some(want), Some(have)) if want != have => {
                let mut text = text.clone();
                text.replace_range(10..11, if want == b' ' { " " } else { "T" });
                Value::String(text)
            }
            _ => at.clone(),
        },
        _ => at.clone(),
    }
}

/// The select list that reads a PostgreSQL row `t` as one JSON document,
/// then for each float column its text when it is zero.
///
/// The document is `row_to_json(t.*)` when every column of the table is a
/// scalar of a known type: each value is then written by its type's output
/// function (a float as the shortest text that reads back as the same
/// float, `NaN` and the infinities as text), which is what `to_jsonb`
/// writes too, at half the server's cost (no `jsonb` built and printed
/// again). A table with a `json` or `jsonb` column, an array or a type not
/// known here keeps `to_jsonb(t.*)`: `row_to_json` would pass a `json`
/// value's text through as written (`1e2`, repeated keys), which `jsonb`
/// normalizes. A negative zero reads `0` through `to_jsonb`; [`pg_row`]
/// puts `-0` back either way. `t.*`, not `t`: a column named `t` would
/// be taken for the row.
pub(super) fn pg_row_document(b: &TableBinding) -> String {
    let scalar = |t: &String| !t.ends_with("[]") && !matches!(Class::postgres(t), Class::Any | Class::Json);
    let mut select = if b.column_types.values().all(scalar) {
        "row_to_json(t.*)".to_owned()
    } else {
        "to_jsonb(t.*)".to_owned()
    };
    for f in pg_floats(b) {
        let c = ident(&f.column);
        select.push_str(&format!(", CASE WHEN t.{c} = 0 THEN t.{c}::text END"));
    }
    // A document that is JSON's `null` reads as SQL NULL in the row's
    // document: said apart, so that its row fails rather than arrive
    // as no value.
    for f in pg_documents(b) {
        let c = ident(&f.column);
        select.push_str(&format!(", jsonb_typeof(to_jsonb(t.{c})) = 'null'"));
    }
    select
}

fn pg_documents(b: &TableBinding) -> impl Iterator<Item = &FieldColumn> {
    b.fields.iter().filter(|f| f.class == Class::Json)
}

pub(super) fn pg_floats(b: &TableBinding) -> impl Iterator<Item = &FieldColumn> {
    b.fields.iter().filter(|f| matches!(f.class, Class::Float { .. }))
}

/// A row selected by [`pg_row_document`] as one document, and why it
/// cannot be synced if it cannot.
pub(super) fn pg_row(
    b: &TableBinding,
    row: &sqlx::postgres::PgRow,
) -> Result<(Fields, Option<BadRow>), sqlx::Error> {
    let mut doc = row.try_get::<sqlx::types::Json<Fields>, _>(0)?.0;
    // The row is read whole (`t.*`): a column renamed or dropped after the
    // run bound the table is absent from it, where a NULL is present. Read
    // as NULL, its values would be written over the other side's.
    if let Some(gone) = [ID_COLUMN]
        .into_iter()
        .chain(b.fields.iter().map(|f| f.column.as_str()))
        .find(|c| !doc.contains_key(*c))
    {
        return Err(sqlx::Error::ColumnNotFound(format!(
            "{gone} (table `{}` has no column `{gone}` any more: renamed or dropped while the run read it; \
             nothing of this page is written)",
            b.table
        )));
    }
    let floats = pg_floats(b).count();
    for (i, f) in pg_floats(b).enumerate() {
        if row.try_get::<Option<&str>, _>(i + 1)? == Some("-0") {
            doc.insert(f.column.clone(), Value::String("-0".into()));
        } else if let (Some(v), Class::Float { bits, .. }) = (doc.get_mut(&f.column), &f.class) {
            *v = value::float_column_value(v.take(), *bits);
        }
    }
    let mut bad = None;
    for (i, f) in pg_documents(b).enumerate() {
        if row.try_get::<Option<bool>, _>(1 + floats + i)? == Some(true) {
            let why = format!(
                "{}: the document is JSON's `null`, which syncd cannot tell from SQL NULL (no value)",
                column_label(b, &f.column)
            );
            bad.get_or_insert_with(|| unreadable_row(b, &doc, why));
        }
    }
    Ok((doc, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cursor saved in syncd's layout is read in the table's own, and
    /// one in the table's own (or of a table of both layouts) as it is.
    #[test]
    fn a_cursor_is_compared_in_the_layout_the_table_writes() {
        let table = |example: Option<&str>, mixed: bool| TableBinding {
            stamp_like: example.map(str::to_owned),
            mixed_layouts: mixed,
            ..TableBinding::accounts(Default::default())
        };
        let syncd = serde_json::json!("2026-12-08T01:16:19.376019Z");
        let spaced = table(Some("2026-12-08 01:17:20"), false);
        assert_eq!(cursor_like_table(&spaced, &syncd), "2026-12-08 01:16:19.376019Z");
        let t = table(Some("2026-01-01T00:00:00.000000Z"), false);
        assert_eq!(
            cursor_like_table(&t, &serde_json::json!("2026-12-08 01:17:20")),
            "2026-12-08T01:17:20"
        );
        for same in [
            cursor_like_table(&t, &syncd),
            cursor_like_table(&table(Some("2026-12-08 01:17:20"), true), &syncd),
            cursor_like_table(&table(None, false), &syncd),
            cursor_like_table(&spaced, &serde_json::json!("2026-12-08")),
        ] {
            assert!(same == syncd || same == "2026-12-08", "{same}");
        }
        assert_eq!(
            cursor_like_table(&spaced, &serde_json::json!(1_765_000_000)),
            1_765_000_000
        );
    }

    /// A table of plain scalars is read by `row_to_json`; one with a
    /// document, an array or a type not known here by `to_jsonb`, which
    /// normalizes a `json` value's text as `jsonb` does.
    #[test]
    fn a_row_is_read_by_row_to_json_only_when_every_column_is_a_known_scalar() {
        let table = |types: &[&str]| {
            TableBinding::accounts(
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("c{i}"), t.to_string()))
                    .collect(),
            )
        };
        let scalars = [
            "text",
            "numeric(38,18)",
            "double precision",
            "bigint",
            "boolean",
            "timestamp with time zone",
            "date",
            "uuid",
            "bytea",
            "character varying(20)",
        ];
        assert_eq!(pg_row_document(&table(&scalars)), "row_to_json(t.*)");
        for other in [
            "json",
            "jsonb",
            "integer[]",
            "text[]",
            "interval",
            "point",
            "my_domain",
        ] {
            let mut types = scalars.to_vec();
            types.push(other);
            assert_eq!(
                pg_row_document(&table(&types)),
                "to_jsonb(t.*)",
                "with a column of {other}"
            );
        }
    }
}
