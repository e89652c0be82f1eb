//! MySQL and MariaDB tables: the same conventions as the other databases
//! (`id`, `updated_at`, every other column a field), in MySQL's SQL:
//! backquoted identifiers, `?` parameters, multi-row statements (never a
//! round trip a record), and a session that is strict (a value the column
//! cannot hold is an error, not a warning) and in UTC.
//!
//! Values are read exactly: integers (signed and `UNSIGNED`) and floats by
//! their binary form, decimals as their text, times and dates formatted by
//! the server (`DATE_FORMAT`, all six digits of a second), binary strings as
//! hex, and every other type as the server's text of it.

use super::*;
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Executor, Row};

type MyQuery<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// The most placeholders syncd puts in one statement (MySQL takes 65,535).
const MAX_PARAMS: usize = 60_000;

/// Quotes a MySQL identifier: `` a`b `` becomes `` `a``b` ``.
pub(super) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A table's name as MySQL reads it: `db.table` is a table of another
/// database, each part quoted on its own.
/// A table's database (when its name gives one: `db.table`) and name, as
/// `information_schema` keeps them.
fn db_and_table(name: &str) -> (Option<&str>, &str) {
    match name.split_once('.') {
        Some((db, t)) => (Some(db), t),
        None => (None, name),
    }
}

pub(super) fn table(name: &str) -> String {
    match name.split_once('.') {
        Some((db, t)) => format!("{}.{}", ident(db), ident(t)),
        None => ident(name),
    }
}

/// Whether `url` names a MySQL or MariaDB database.
pub(super) fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

/// A pool on the database at `url` (`mysql://` or `mariadb://`), or on
/// database `schema` of that server: strict, in UTC, utf8mb4.
pub(super) async fn connect(url: &str, schema: Option<&str>) -> Result<MySqlPool, sqlx::Error> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let mut options = MySqlConnectOptions::from_str(&url)?
        .charset("utf8mb4")
        .timezone(Some("+00:00".into()));
    if let Some(schema) = schema {
        options = options.database(schema);
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                // The session's mode is set whole, not added to the
                // server's: a value the column cannot hold is an error on
                // every engine, never a warning and a changed value;
                // backslashes escape in string literals (the tenant filter
                // doubles them); and no server default changes what is
                // written (`EMPTY_STRING_IS_NULL` would store '' as NULL,
                // `PAD_CHAR_TO_FULL_LENGTH` read CHAR values padded,
                // `ANSI_QUOTES` or `ORACLE` read the statements otherwise).
                conn.execute(
                    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await;
    match pool {
        // The pool tried until its timeout and kept no reason: one
        // connection of its own says why.
        Err(sqlx::Error::PoolTimedOut) => {
            use sqlx::Connection;
            let once = tokio::time::timeout(
                Duration::from_secs(10),
                sqlx::MySqlConnection::connect_with(&options),
            );
            Err(once
                .await
                .ok()
                .and_then(Result::err)
                .unwrap_or(sqlx::Error::PoolTimedOut))
        }
        other => other,
    }
}

/// `?, ?, ...`: `n` placeholders.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Binds a JSON value as the MySQL value it stands for: integers as
/// integers, every other number as its exact text (the server converts
/// text to a decimal or a double exactly), documents as their text.
/// `q` with the values of `columns` of each row bound in turn.
fn with_rows<'q>(mut q: MyQuery<'q>, rows: &[Fields], columns: &[&str], classes: &[Class]) -> MyQuery<'q> {
    for row in rows {
        for (c, class) in columns.iter().zip(classes) {
            q = bind(q, row.get(*c).unwrap_or(&Value::Null), *class);
        }
    }
    q
}

fn bind<'q>(q: MyQuery<'q>, v: &Value, class: Class) -> MyQuery<'q> {
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => q.bind(i),
            (_, Some(u)) => q.bind(u),
            _ => q.bind(n.as_str().to_owned()),
        },
        // Bytes travel as `\x` and hex, as PostgreSQL writes them.
        Value::String(s) if class == Class::Bytes => match s.strip_prefix("\\x").and_then(unhex) {
            Some(bytes) => q.bind(bytes),
            None => q.bind(s.clone()),
        },
        Value::String(s) => q.bind(s.clone()),
        other => q.bind(other.to_string()),
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a MySQL column of `column_type` gives `v` (as `value::write`
/// made it for the column's class) back as it is; `Err` says what it would
/// store instead. Its class cannot say so for an `ENUM`'s or `SET`'s
/// members, a `YEAR`'s short forms, a `TIME`'s digits of a second, a
/// `BINARY(n)`'s padding, a `FLOAT(M,D)`'s rounding, or a TEXT's or BLOB's
/// length in bytes: MySQL stores another value for those, without an error
/// outside strict mode (an UPDATE that joins its rows cuts a TEXT short in
/// strict mode too).
pub(super) fn holds(column_type: &str, v: &Value) -> Result<(), String> {
    let lower = column_type.to_ascii_lowercase();
    let (base, args) = match lower.split_once('(') {
        Some((b, rest)) => (b.trim(), rest.rsplit_once(')').map_or(rest, |(a, _)| a)),
        None => (lower.split_whitespace().next().unwrap_or(""), ""),
    };
    let text = match v {
        Value::Null => return Ok(()),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    match base {
        "enum" | "set" => {
            // Members keep their case: read them from the type as written.
            let members = quoted_members(column_type.split_once('(').map_or("", |(_, m)| m));
            let list = members
                .iter()
                .map(|m| format!("'{m}'"))
                .collect::<Vec<_>>()
                .join(", ");
            let Value::String(s) = v else {
                return Err(format!(
                    "{text} is not one of the {}'s values ({list}): a number picks one by its position",
                    base.to_ascii_uppercase()
                ));
            };
            if base == "enum" {
                if members.iter().any(|m| m == s) {
                    return Ok(());
                }
                return Err(format!(
                    "`{s}` is not one of the ENUM's values ({list}): MySQL would store another (it ignores case \
                     and trailing spaces, takes a number as a position, and stores '' for the rest)"
                ));
            }
            let mut last = None;
            for part in s.split(',').filter(|_| !s.is_empty()) {
                match members.iter().position(|m| m == part) {
                    Some(i) if last.is_none_or(|l| i > l) => last = Some(i),
                    _ => {
                        return Err(format!(
                            "`{s}` is not a SET value as the column gives it back: its values ({list}), each once, \
                             in the column's order, joined by commas"
                        ));
                    }
                }
            }
            Ok(())
        }
        "year" => {
            let year = match v {
                Value::String(s) if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            };
            match year {
                // 0000 is YEAR's own zero, kept as it is.
                Some(1901..=2155) => Ok(()),
                Some(0) if v.is_number() || text == "0000" => Ok(()),
                _ => Err(format!(
                    "`{text}` is not a year from 1901 to 2155 written with four digits: a YEAR column would store \
                     another (`99` becomes 1999, `5` becomes 2005)"
                )),
            }
        }
        "time" => {
            let digits: usize = args.trim().parse().unwrap_or(0);
            let Value::String(s) = v else {
                return Err(format!(
                    "{text} is not a time of day as `HH:MM:SS`: a TIME column reads a number by its digits"
                ));
            };
            let (clock, fraction) = s.split_once('.').unwrap_or((s, ""));
            let parts: Vec<&str> = clock.trim_start_matches('-').split(':').collect();
            let numeric = |p: &str, max: u32| {
                (2..=3).contains(&p.len())
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u32>().is_ok_and(|n| n <= max)
            };
            let well_formed = parts.len() == 3
                && numeric(parts[0], 838)
                && parts[1..].iter().all(|p| p.len() == 2 && numeric(p, 59))
                && fraction.bytes().all(|b| b.is_ascii_digit())
                && (parts[0] != "838" || (parts[1..] == ["59", "59"] && fraction.bytes().all(|b| b == b'0')));
            if !well_formed {
                return Err(format!(
                    "`{s}` is not a time as `HH:MM:SS` within ±838:59:59, which is what a TIME column holds"
                ));
            }
            if fraction.bytes().skip(digits).any(|b| b != b'0') {
                return Err(format!(
                    "`{s}` has more digits of a second than the column keeps ({digits}): MySQL would round it"
                ));
            }
            Ok(())
        }
        // Past `n`, MySQL cuts trailing spaces off with a warning only,
        // whatever the mode.
        "varchar" | "char" => {
            let limit = match args.trim() {
                "" if base == "char" => Some(1),
                n => n.parse::<usize>().ok(),
            };
            match (limit, v) {
                (Some(n), Value::String(s)) if s.chars().count() > n => Err(format!(
                    "{} characters are more than the column ({lower}) holds ({n})",
                    s.chars().count()
                )),
                _ => Ok(()),
            }
        }
        // An UPDATE that joins the rows it writes cuts a value too long for
        // these down to the length its length prefix can hold (300
        // characters into a TINYTEXT became 44), strict mode or not; an
        // insert refuses it, or trims trailing spaces with a note only.
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob"
        | "varbinary" => {
            let limit: u64 = match base {
                "tinytext" | "tinyblob" => 255,
                "text" | "blob" => 65_535,
                "mediumtext" | "mediumblob" => 16_777_215,
                "varbinary" => match args.trim().parse() {
                    Ok(n) => n,
                    Err(_) => return Ok(()),
                },
                _ => 4_294_967_295,
            };
            let (bytes, unit) = match (base.contains("blob") || base == "varbinary", v) {
                (true, Value::String(s)) => (s.strip_prefix("\\x").map_or(s.len(), |h| h.len() / 2), "bytes"),
                (_, Value::String(s)) => (s.len(), "bytes of UTF-8"),
                _ => (text.len(), "bytes"),
            };
            if bytes as u64 > limit {
                return Err(format!(
                    "{bytes} {unit} are more than the column ({lower}) holds ({limit} bytes): MySQL would cut the \
                     value short"
                ));
            }
            Ok(())
        }
        "binary" => {
            let width: usize = args.trim().parse().unwrap_or(1);
            let bytes = text.strip_prefix("\\x").map_or(0, |h| h.len() / 2);
            if bytes == width {
                return Ok(());
            }
            Err(format!(
                "{bytes} bytes are not the {width} a BINARY({width}) column holds: MySQL would pad them with zeros"
            ))
        }
        "float" | "double" | "real" if args.contains(',') => {
            let scale: usize = args
                .split(',')
                .nth(1)
                .and_then(|d| d.trim().parse().ok())
                .unwrap_or(0);
            let decimals = text
                .trim_start_matches('-')
                .split_once('.')
                .map_or(0, |(_, f)| f.trim_end_matches('0').len());
            if text.contains(['e', 'E']) || decimals > scale {
                return Err(format!(
                    "{text} has more digits after the point than the column ({lower}) keeps ({scale}): MySQL would \
                     round it"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The members of an `ENUM` or `SET` type from what follows its `(`:
/// quoted, with a quote inside doubled.
fn quoted_members(list: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut member = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    member.push('\'');
                }
                '\'' => break,
                c => member.push(c),
            }
        }
        members.push(member);
    }
    members
}

impl TableBinding {
    /// The class of one of the table's columns in MySQL.
    fn my_class(&self, column: &str) -> Class {
        self.column_types
            .get(column)
            .map(|t| Class::mysql(t))
            .unwrap_or(Class::Any)
    }
}

/// The expression that selects `column` so that [`decode`] reads it
/// exactly.
fn select_expr(b: &TableBinding, column: &str) -> String {
    let c = ident(column);
    // A BIT column's value is bytes; its number is what it holds.
    if b.column_types
        .get(column)
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("bit"))
    {
        return format!("CAST({c} AS UNSIGNED)");
    }
    match b.my_class(column) {
        Class::Timestamp { .. } => format!("DATE_FORMAT({c}, '%Y-%m-%d %H:%i:%s.%f')"),
        Class::Date => format!("DATE_FORMAT({c}, '%Y-%m-%d')"),
        Class::Bytes => format!("LOWER(HEX({c}))"),
        // A TIME as PostgreSQL writes a time: `10:30:00.5`, not
        // `10:30:00.500000` (the same time, read alike on both sides).
        Class::Any
            if b.column_types.get(column).is_some_and(|t| {
                t.to_ascii_lowercase().starts_with("time") && !t.to_ascii_lowercase().starts_with("times")
            }) =>
        {
            format!(
                "CASE WHEN LOCATE('.', CAST({c} AS CHAR)) > 0 \
                 THEN TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST({c} AS CHAR))) ELSE CAST({c} AS CHAR) END"
            )
        }
        Class::Any => format!("CAST({c} AS CHAR)"),
        _ => c,
    }
}

/// The select list of `columns`.
fn select_list(b: &TableBinding, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| select_expr(b, c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Column `i` of `row` (selected by [`select_expr`]) as JSON, or why it
/// cannot be read.
fn decode(row: &MySqlRow, i: usize, class: Class) -> Result<Value, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = raw.type_info().name().to_owned();
    let err = |e: sqlx::Error| e.to_string();
    let integer = matches!(
        type_name.as_str(),
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR"
    ) || type_name.ends_with("UNSIGNED");
    // The column's own type decides the sign (sqlx names any one-wide
    // TINYINT `BOOLEAN`, signed or not).
    let unsigned = type_name.ends_with("UNSIGNED") || matches!(class, Class::Unsigned { .. });
    Ok(match type_name.as_str() {
        _ if integer && unsigned => Value::from(row.try_get_unchecked::<u64, _>(i).map_err(err)?),
        _ if integer => Value::from(row.try_get_unchecked::<i64, _>(i).map_err(err)?),
        "FLOAT" => {
            let f = row.try_get_unchecked::<f32, _>(i).map_err(err)?;
            match value::canonical_number(&f.to_string()) {
                Some(text) if f.is_finite() => Value::Number(text.parse().map_err(|e| format!("{e}"))?),
                _ => value::float_value(f64::from(f)),
            }
        }
        "DOUBLE" => value::float_value(row.try_get_unchecked::<f64, _>(i).map_err(err)?),
        _ => {
            let bytes = row.try_get_unchecked::<&[u8], _>(i).map_err(err)?;
            let text = std::str::from_utf8(bytes).map_err(|e| {
                format!(
                    "text is not valid UTF-8 (byte {} of {}: {e})",
                    e.valid_up_to(),
                    read::hex_head(bytes)
                )
            })?;
            match class {
                Class::Json => {
                    serde_json::from_str(text).map_err(|e| format!("`{text}` is not JSON: {e}"))?
                }
                Class::Bytes => Value::String(format!("\\x{text}")),
                // A decimal keeps every digit of its text.
                Class::Decimal { .. } => match serde_json::from_str::<serde_json::Number>(text) {
                    Ok(n) => Value::Number(n),
                    Err(_) => Value::String(text.to_owned()),
                },
                _ => Value::String(text.to_owned()),
            }
        }
    })
}

impl SqlConnector {
    /// The columns of `table` with their types (a MariaDB `longtext`
    /// checked by `json_valid` is `json`), or `None` when it does not exist.
    pub(super) async fn mysql_columns(
        &self,
        pool: &MySqlPool,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConnectorError> {
        let (db, t) = db_and_table(name);
        // A generated column's type says so (` generated`): MySQL and
        // MariaDB ignore what an `UPDATE … JOIN` writes to it. (Not MySQL's
        // `DEFAULT_GENERATED`, a column with an expression as its default.)
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(CONCAT(COLUMN_TYPE, \
                    CASE WHEN EXTRA LIKE '%VIRTUAL GENERATED%' OR EXTRA LIKE '%STORED GENERATED%' \
                    OR EXTRA LIKE '%PERSISTENT GENERATED%' THEN ' generated' ELSE '' END) AS CHAR) \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
        )
        .bind(db)
        .bind(t)
        .fetch_all(pool)
        .await
        .map_err(self.query_error(name))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns: BTreeMap<String, String> = rows.into_iter().collect();
        if columns.values().any(|t| t == "longtext") {
            // MariaDB's JSON: a longtext with a json_valid check (MySQL has
            // a type of its own, and no TABLE_NAME here: nothing to find).
            let checks: Vec<String> = sqlx::query_scalar(
                "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
            )
            .bind(db)
            .bind(t)
            .fetch_all(pool)
            .await
            .unwrap_or_default();
            for (column, kind) in columns.iter_mut() {
                if kind == "longtext"
                    && checks
                        .iter()
                        .any(|c| c.contains(&format!("json_valid(`{column}`)")))
                {
                    *kind = "json".into();
                }
            }
        }
        Ok(Some(columns))
    }

    /// A row of the columns `names`, as the document the engine reads.
    fn mysql_row(b: &TableBinding, row: &MySqlRow, names: &[&str]) -> (Fields, Option<BadRow>) {
        let mut doc = Fields::new();
        let mut unreadable: Option<String> = None;
        for (i, name) in names.iter().enumerate() {
            let value = decode(row, i, b.my_class(name)).unwrap_or_else(|why| {
                unreadable.get_or_insert(format!("{}: {why}", read::column_label(b, name)));
                Value::Null
            });
            doc.insert((*name).to_owned(), value);
        }
        let bad = unreadable.map(|why| read::unreadable_row(b, &doc, why));
        (doc, bad)
    }

    /// Up to `limit` rows changed after `after`, by keyset on
    /// (`updated_at`, `id`), each with why it cannot be read, if so.
    pub(super) async fn mysql_changes(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<(Fields, Option<BadRow>)>, ConnectorError> {
        let names = sqlite_columns(b);
        let (t, id, upd) = (table(&b.table), ident(ID_COLUMN), ident(UPDATED_AT_COLUMN));
        let cols = select_list(b, &names);
        let ta = tenant_and(b, "", Dialect::Mysql);
        // Rows whose `updated_at` is NULL or a zero date (ordered first)
        // are read by `mysql_untimed`: a cursor on one would end the scan
        // there, and one written later would never be reached.
        let timed = time_condition(b, Dialect::Mysql, "", false);
        let sql = match after {
            None => format!("SELECT {cols} FROM {t} WHERE {timed}{ta} ORDER BY {upd}, {id} LIMIT ?"),
            Some(_) => format!(
                "SELECT {cols} FROM {t} WHERE ({upd} > ? OR ({upd} = ? AND {id} > ?)) AND {timed}{ta} \
                 ORDER BY {upd}, {id} LIMIT ?"
            ),
        };
        let mut q = sqlx::query(&sql);
        if let Some(c) = after {
            let time_class = b.my_class(UPDATED_AT_COLUMN);
            q = bind(q, &c.updated_at, time_class);
            q = bind(q, &c.updated_at, time_class);
            q = bind(q, &c.id, b.my_class(ID_COLUMN));
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(self.query_error(&b.table))?;
        Ok(rows.iter().map(|r| Self::mysql_row(b, r, &names)).collect())
    }

    /// Up to `limit` rows whose `updated_at` is NULL or a zero date, by id
    /// after `after` (see `read_untimed`).
    pub(super) async fn mysql_untimed(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        after: Option<&Value>,
        limit: u32,
    ) -> Result<Vec<(Fields, Option<BadRow>)>, ConnectorError> {
        let names = sqlite_columns(b);
        let (t, id) = (table(&b.table), ident(ID_COLUMN));
        let cols = select_list(b, &names);
        let ta = tenant_and(b, "", Dialect::Mysql);
        let from = if after.is_some() {
            format!(" AND {id} > ?")
        } else {
            String::new()
        };
        let untimed = time_condition(b, Dialect::Mysql, "", true);
        let sql = format!("SELECT {cols} FROM {t} WHERE {untimed}{from}{ta} ORDER BY {id} LIMIT ?");
        let mut q = sqlx::query(&sql);
        if let Some(a) = after {
            q = bind(q, a, b.my_class(ID_COLUMN));
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(self.query_error(&b.table))?;
        Ok(rows.iter().map(|r| Self::mysql_row(b, r, &names)).collect())
    }

    /// The rows with `ids`, `chunk` at a time: `select` selects the columns
    /// `names` of the rows whose id is in the list it is given.
    async fn mysql_by_ids(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        ids: &[String],
        names: &[&str],
    ) -> Result<Vec<(Fields, Option<BadRow>)>, ConnectorError> {
        let (t, id) = (table(&b.table), ident(ID_COLUMN));
        let cols = select_list(b, names);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_PARAMS) {
            let sql = format!(
                "SELECT {cols} FROM {t} WHERE {id} IN ({}){}",
                marks(chunk.len()),
                tenant_and(b, "", Dialect::Mysql)
            );
            let mut q = sqlx::query(&sql);
            for v in self.native_ids(b, chunk) {
                q = bind(q, &v, Class::Any);
            }
            let rows = q.fetch_all(pool).await.map_err(self.query_error(&b.table))?;
            out.extend(rows.iter().map(|r| Self::mysql_row(b, r, names)));
        }
        Ok(out)
    }

    /// The records with `ids` (every column the binding reads).
    pub(super) async fn mysql_read_by_ids(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        ids: &[String],
    ) -> Result<Vec<(Fields, Option<BadRow>)>, ConnectorError> {
        self.mysql_by_ids(pool, b, ids, &sqlite_columns(b)).await
    }

    /// Which of `ids` exist (of the tenant's rows), marked deleted or not.
    pub(super) async fn mysql_present_any(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        ids: &[String],
    ) -> Result<HashSet<String>, ConnectorError> {
        let rows = self.mysql_by_ids(pool, b, ids, &[ID_COLUMN]).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(doc, _)| doc.get(ID_COLUMN).and_then(id_text))
            .collect())
    }

    /// Which of `ids` exist and are not marked deleted.
    pub(super) async fn mysql_present(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        ids: &[String],
    ) -> Result<HashSet<String>, ConnectorError> {
        let mut names = vec![ID_COLUMN];
        names.extend(b.deleted_column.as_deref());
        let rows = self.mysql_by_ids(pool, b, ids, &names).await?;
        Ok(rows
            .into_iter()
            .filter(|(doc, _)| !b.marked_deleted(|c| doc.get(c)))
            .filter_map(|(doc, _)| doc.get(ID_COLUMN).and_then(id_text))
            .collect())
    }

    /// Runs `sql` (with an `IN (...)` list of `ids` at `{ids}`) for each
    /// chunk of `ids`, after the `before` values.
    async fn mysql_each_chunk(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        sql: &str,
        before: &[Value],
        ids: &[String],
    ) -> Result<(), ConnectorError> {
        for chunk in ids.chunks(MAX_PARAMS) {
            let sql = sql.replace("{ids}", &marks(chunk.len())) + &tenant_and(b, "", Dialect::Mysql);
            let mut q = sqlx::query(&sql);
            for v in before {
                q = bind(q, v, Class::Any);
            }
            for v in self.native_ids(b, chunk) {
                q = bind(q, &v, Class::Any);
            }
            q.execute(pool).await.map_err(self.query_error(&b.table))?;
        }
        Ok(())
    }

    pub(super) async fn mysql_delete(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        ids: &[String],
    ) -> Result<(), ConnectorError> {
        let sql = format!(
            "DELETE FROM {} WHERE {} IN ({{ids}})",
            table(&b.table),
            ident(ID_COLUMN)
        );
        self.mysql_each_chunk(pool, b, &sql, &[], ids).await
    }

    /// Marks rows archived: `column` set to true, or to `stamp` when it
    /// holds times; `updated_at` moves too.
    pub(super) async fn mysql_archive(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        ids: &[String],
        column: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectorError> {
        let stamp = mysql_time(now);
        let is_time = matches!(b.my_class(column), Class::Timestamp { .. } | Class::Date);
        let (value, before) = match is_time {
            true => ("?", vec![stamp.clone(), stamp]),
            false => ("TRUE", vec![stamp]),
        };
        let sql = format!(
            "UPDATE {} SET {} = {value}, {} = ? WHERE {} IN ({{ids}})",
            table(&b.table),
            ident(column),
            ident(UPDATED_AT_COLUMN),
            ident(ID_COLUMN)
        );
        self.mysql_each_chunk(pool, b, &sql, &before, ids).await
    }

    /// Ids of rows created with each of `keys`, by the key column.
    pub(super) async fn mysql_find_by_keys(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        key_column: &str,
        keys: &[String],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(MAX_PARAMS) {
            let sql = format!(
                "SELECT CAST({k} AS CHAR), CAST({id} AS CHAR) FROM {t} WHERE {k} IN ({}){}",
                marks(chunk.len()),
                tenant_and(b, "", Dialect::Mysql),
                k = ident(key_column),
                id = ident(ID_COLUMN),
                t = table(&b.table)
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&sql);
            for k in chunk {
                q = q.bind(k);
            }
            found.extend(q.fetch_all(pool).await.map_err(self.query_error(&b.table))?);
        }
        Ok(found)
    }

    /// Whether an index of `b`'s table begins with `key_col`, or with the
    /// tenant column and then `key_col` (a full-text index does not
    /// count): what `mysql_find_by_keys` needs not to read the whole table.
    pub(super) async fn mysql_key_indexed(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        key_col: &str,
    ) -> Result<bool, ConnectorError> {
        let (db, t) = db_and_table(&b.table);
        let tenant = b.tenant.as_ref().map(|(column, _)| column.as_str());
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.STATISTICS k \
             WHERE k.TABLE_SCHEMA = COALESCE(?, DATABASE()) AND k.TABLE_NAME = ? AND k.COLUMN_NAME = ? \
             AND k.INDEX_TYPE <> 'FULLTEXT' \
             AND (k.SEQ_IN_INDEX = 1 OR (k.SEQ_IN_INDEX = 2 AND EXISTS (\
                 SELECT 1 FROM information_schema.STATISTICS f \
                 WHERE f.TABLE_SCHEMA = k.TABLE_SCHEMA AND f.TABLE_NAME = k.TABLE_NAME \
                 AND f.INDEX_NAME = k.INDEX_NAME AND f.SEQ_IN_INDEX = 1 AND f.COLUMN_NAME = ?))))",
        )
        .bind(db)
        .bind(t)
        .bind(key_col)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .map(|found: i64| found != 0)
        .map_err(self.query_error(&b.table))
    }

    /// Inserts `rows` (native columns, every row the same ones) in
    /// multi-row statements.
    pub(super) async fn mysql_insert(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        rows: &[Fields],
    ) -> Result<(), sqlx::Error> {
        let columns: Vec<&str> = rows[0].keys().map(String::as_str).collect();
        let classes: Vec<Class> = columns.iter().map(|c| b.my_class(c)).collect();
        let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let row_marks = format!("({})", marks(columns.len()));
        for chunk in rows.chunks((MAX_PARAMS / columns.len()).max(1)) {
            let sql = format!(
                "INSERT INTO {} ({list}) VALUES {}",
                table(&b.table),
                vec![row_marks.as_str(); chunk.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for row in chunk {
                for (c, class) in columns.iter().zip(&classes) {
                    q = bind(q, row.get(*c).unwrap_or(&Value::Null), *class);
                }
            }
            q.execute(pool).await?;
        }
        Ok(())
    }

    /// Writes `rows` (each with its native `id`) over the rows with those
    /// ids: one `UPDATE ... JOIN` of the rows given as a derived table per
    /// chunk. Rows gone are left gone.
    pub(super) async fn mysql_update(
        &self,
        pool: &MySqlPool,
        b: &TableBinding,
        rows: &[Fields],
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let columns: Vec<&str> = rows[0].keys().map(String::as_str).collect();
        let classes: Vec<Class> = columns.iter().map(|c| b.my_class(c)).collect();
        let generated: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| b.column_types.get(*c).is_some_and(|t| t.ends_with(" generated")))
            .collect();
        let mut refused = Vec::new();
        let set = columns
            .iter()
            .filter(|c| **c != ID_COLUMN)
            .map(|c| format!("t.{0} = u.{0}", ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let first = columns
            .iter()
            .map(|c| format!("? AS {}", ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let rest = format!(" UNION ALL SELECT {}", marks(columns.len()));
        for chunk in rows.chunks((MAX_PARAMS / columns.len()).max(1)) {
            // `<statement> {t} AS t JOIN (<the rows>) AS u ON … <rest of it>`.
            let joined = |statement: &str, rest_of_it: &str| {
                format!(
                    "{statement} {} AS t JOIN (SELECT {first}{}) AS u ON t.{id} = u.{id}{} {rest_of_it}",
                    table(&b.table),
                    rest.repeat(chunk.len() - 1),
                    tenant_and(b, "t.", Dialect::Mysql),
                    id = ident(ID_COLUMN)
                )
            };
            let update = joined("UPDATE", &format!("SET {set}"));
            with_rows(sqlx::query(&update), chunk, &columns, &classes)
                .execute(pool)
                .await
                .map_err(self.query_error(&b.table))?;
            if generated.is_empty() {
                continue;
            }
            // Each row whose generated column does not hold what was
            // written: the write was not kept.
            let differs = generated
                .iter()
                .map(|c| format!("NOT (t.{0} <=> u.{0})", ident(c)))
                .collect::<Vec<_>>()
                .join(" OR ");
            let check = joined(
                &format!("SELECT CAST(t.{} AS CHAR) FROM", ident(ID_COLUMN)),
                &format!("WHERE {differs}"),
            );
            let kept: Vec<MySqlRow> = with_rows(sqlx::query(&check), chunk, &columns, &classes)
                .fetch_all(pool)
                .await
                .map_err(self.query_error(&b.table))?;
            for id in kept.iter().filter_map(|r| r.try_get::<String, _>(0).ok()) {
                refused.push((
                    id,
                    format!(
                        "column{} {} generated by the database, which ignores what is written to it: the value \
                         was not kept",
                        if generated.len() > 1 { "s" } else { "" },
                        generated.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                            + if generated.len() > 1 { " are" } else { " is" }
                    ),
                ));
            }
        }
        Ok(refused)
    }
}

/// A time as MySQL takes it: `YYYY-MM-DD HH:MM:SS.ffffff`, in UTC.
pub(super) fn mysql_time(t: DateTime<Utc>) -> Value {
    Value::String(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_column_holds_only_what_it_gives_back() {
        let ok = |t: &str, v: Value| holds(t, &v).map_err(|e| format!("{t} {v}: {e}")).unwrap();
        let no = |t: &str, v: Value| holds(t, &v).expect_err(&format!("{t} {v}"));
        let e = "enum('a','B','it''s')";
        for m in ["a", "B", "it's"] {
            ok(e, json!(m));
        }
        ok(e, Value::Null);
        for bad in ["2", "A", "b", "a ", "", "c"] {
            assert!(no(e, json!(bad)).contains("not one of the ENUM's values ('a', 'B', 'it's')"));
        }
        let set = "set('a','b','c')";
        for good in ["", "a", "a,c", "a,b,c"] {
            ok(set, json!(good));
        }
        for bad in ["b,a", "a,a", "a,d", "a,", "A"] {
            assert!(no(set, json!(bad)).contains("not a SET value"), "{bad}");
        }
        ok("year", json!(2024));
        ok("year(4)", json!("1901"));
        ok("year", json!("0000"));
        ok("year", json!(0));
        no("char", json!("ab"));
        for bad in [json!("99"), json!(5), json!("24"), json!(1900), json!("2156")] {
            assert!(no("year", bad).contains("four digits"));
        }
        ok("time", json!("12:34:56"));
        ok("time", json!("-838:59:59"));
        ok("time(6)", json!("12:34:56.5"));
        ok("time", json!("12:34:56.000"));
        assert!(
            no("time", json!("12:34:56.5")).contains("more digits of a second than the column keeps (0)")
        );
        assert!(no("time(2)", json!("01:02:03.125")).contains("keeps (2)"));
        for bad in [
            json!("839:00:00"),
            json!("12:60:00"),
            json!("1:02:03"),
            json!("noon"),
            json!(123456),
        ] {
            no("time", bad);
        }
        ok("binary(2)", json!("\\x0102"));
        assert!(no("binary(4)", json!("\\x0102")).contains("pad them with zeros"));
        ok("varbinary(4)", json!("\\x0102"));
        ok("float(7,4)", json!(1.2346));
        ok("double(10,2) unsigned", json!(3.5));
        assert!(no("float(7,4)", json!(1.23456)).contains("keeps (4)"));
        assert!(no("double(10,2)", json!(1.23456)).contains("round it"));
        ok("double", json!(1.23456));
        ok("varchar(8)", json!("anything"));
        ok("varchar(3)", json!("été"));
        assert!(
            no("varchar(3)", json!("ab  "))
                .contains("4 characters are more than the column (varchar(3)) holds (3)")
        );
        no("char(2)", json!("abc"));
        // The TEXT and BLOB types by the bytes their length prefix counts.
        ok("tinytext", json!("é".repeat(127)));
        assert!(
            no("tinytext", json!("é".repeat(128)))
                .contains("256 bytes of UTF-8 are more than the column (tinytext) holds (255 bytes)")
        );
        assert!(
            no(
                "tinytext",
                json!(format!("{}{}", "b".repeat(250), " ".repeat(10)))
            )
            .contains("260 bytes")
        );
        ok("text", json!("x".repeat(65_535)));
        no("text", json!("x".repeat(65_536)));
        ok("mediumtext", json!("x".repeat(65_536)));
        ok("longtext", json!("x".repeat(65_536)));
        ok("tinyblob", json!(format!("\\x{}", "ab".repeat(255))));
        assert!(no("tinyblob", json!(format!("\\x{}", "ab".repeat(256)))).contains("256 bytes are more"));
        no("varbinary(4)", json!("\\x0102030405"));
        ok("blob", json!(format!("\\x{}", "ab".repeat(300))));
    }

    #[test]
    fn identifiers_are_quoted_part_by_part() {
        assert_eq!(table("shop.customers"), "`shop`.`customers`");
        assert_eq!(table("odd`name"), "`odd``name`");
        assert_eq!(ident("a.b"), "`a.b`");
    }

    #[test]
    fn a_tenant_value_is_one_quoted_literal() {
        let b = TableBinding {
            tenant: Some(("tenant_id".into(), r"o'brien\".into())),
            ..TableBinding::accounts(BTreeMap::from([("tenant_id".to_owned(), "text".to_owned())]))
        };
        assert_eq!(
            tenant_and(&b, "t.", Dialect::Mysql),
            r" AND t.`tenant_id` = BINARY 'o''brien\\'"
        );
        assert_eq!(
            tenant_and(&b, "", Dialect::Postgres),
            r#" AND "tenant_id" = 'o''brien\' AND "tenant_id"::text COLLATE "C" = 'o''brien\'"#
        );
        assert_eq!(
            tenant_and(&b, "t.", Dialect::Sqlite),
            r#" AND t."tenant_id" = 'o''brien\' AND t."tenant_id" = 'o''brien\' COLLATE BINARY"#
        );
        // A uuid (or a number) compares as its type does: its text is
        // another than the value written (`ABCDEF00-…` reads lowercase).
        let by_uuid = TableBinding {
            tenant: Some(("tenant_id".into(), "ABCDEF00-0000-0000-0000-000000000000".into())),
            ..TableBinding::accounts(BTreeMap::from([("tenant_id".to_owned(), "uuid".to_owned())]))
        };
        assert_eq!(
            tenant_and(&by_uuid, "", Dialect::Postgres),
            r#" AND "tenant_id" = 'ABCDEF00-0000-0000-0000-000000000000'"#
        );
        let shared_by_none = TableBinding { tenant: None, ..b };
        assert_eq!(tenant_and(&shared_by_none, "", Dialect::Sqlite), "");
    }

    #[test]
    fn bytes_travel_as_hex() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
