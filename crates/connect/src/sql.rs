//! The SQL table connector: PostgreSQL, MySQL/MariaDB and SQLite tables as
//! systems.
//!
//! Conventions, so that any existing table can be synced: a primary-key
//! column `id` (text or integer), a modification-time column `updated_at`
//! (RFC 3339 text or a timestamp type), and every other column a field.
//! Changes are found by keyset on (`updated_at`, `id`), so rows sharing a
//! timestamp are never skipped between pages.
//!
//! Table and column names come from the definition and cannot be bound as
//! parameters; they are always quoted as identifiers. Every value is bound.

mod mysql;
mod read;
mod write;
use read::sqlite_json_select;
use write::{bind_sqlite, text_of};

use super::{BadRow, ChangePage, ConnectorError, Cursor, FieldColumn, IdKind, NewRecord, TableBinding};
use super::{ByIds, format_time, id_text, parse_time};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::mysql::MySqlPool;
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
    Mysql { system: String, pool: MySqlPool },
    Sqlite { system: String, pool: SqlitePool },
}

impl SqlConnector {
    /// See [`Connector::why_unreachable`](crate::Connector::why_unreachable).
    pub async fn why_unreachable(&self) -> Option<String> {
        use sqlx::Connection;
        let wait = Duration::from_secs(10);
        let failed = match self {
            SqlConnector::Postgres { pool, .. } => {
                let options = pool.connect_options();
                tokio::time::timeout(wait, sqlx::PgConnection::connect_with(&options))
                    .await
                    .map(|r| r.err())
            }
            SqlConnector::Mysql { pool, .. } => {
                let options = pool.connect_options();
                tokio::time::timeout(wait, sqlx::MySqlConnection::connect_with(&options))
                    .await
                    .map(|r| r.err())
            }
            SqlConnector::Sqlite { .. } => return None,
        };
        match failed {
            Ok(None) => None,
            Ok(Some(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no connection within {}s", wait.as_secs())),
        }
    }
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

/// The rows of `b` that have a place in a scan by (`updated_at`, `id`),
/// or (`untimed`) those that have none and are read by id on every run
/// instead (`read_untimed`): NULL, and what no keyset can pass, which is
/// PostgreSQL's `infinity` and `-infinity` in a time or date column and a
/// year past 9999 or before 1 (syncd reads neither as a time), a MariaDB
/// zero date (`0000-00-00`, which its default mode accepts and orders
/// before every real time), a SQLite BLOB, and SQLite text that does not
/// start with a digit (`now`, which orders after every time). Each condition is the other's complement. `prefix`
/// qualifies the column (`t.`).
fn time_condition(b: &TableBinding, dialect: Dialect, prefix: &str, untimed: bool) -> String {
    let column_type = b
        .column_types
        .get(UPDATED_AT_COLUMN)
        .map(|t| t.to_ascii_lowercase());
    let dated = |kinds: &[&str]| {
        column_type
            .as_deref()
            .is_some_and(|t| kinds.iter().any(|k| t.starts_with(k)))
    };
    let (upd, beyond) = match dialect {
        Dialect::Postgres => {
            let upd = format!("{prefix}{}", ident(UPDATED_AT_COLUMN));
            let dated = column_type
                .as_deref()
                .is_some_and(|t| t.starts_with("timestamp") || t == "date");
            // Years past 9999 and before 1 (and the infinities) are beyond
            // what syncd reads as a time: a cursor there would stay past
            // every later row.
            let beyond = if dated {
                Some((
                    format!("{upd} >= '0001-01-01' AND {upd} < '10000-01-01'"),
                    format!("{upd} < '0001-01-01' OR {upd} >= '10000-01-01'"),
                ))
            } else {
                // (A text column is scanned whole: a condition on its
                // text had the planner sort the table for every page. A
                // cursor left on text that is no time starts the next
                // scan over: `left_behind`, in the engine's pages.)
                None
            };
            (upd, beyond)
        }
        Dialect::Mysql => {
            let upd = format!("{prefix}{}", mysql::ident(UPDATED_AT_COLUMN));
            let beyond = dated(&["datetime", "timestamp", "date"])
                .then(|| (format!("{upd} >= '0001-01-01'"), format!("{upd} < '0001-01-01'")));
            (upd, beyond)
        }
        // SQLite.
        _ => {
            let upd = format!("{prefix}{}", ident(UPDATED_AT_COLUMN));
            // A number, or text that starts with a digit (not a BLOB, nor
            // text such as `now`, which orders after every time). SQLite
            // orders every number before any text and text before any
            // BLOB, and compares text by its bytes: one range of the
            // column's index, and a test of the type below it.
            // (The second is the first's complement for a value that is
            // not NULL, written as ranges the index serves.)
            let beyond = Some((
                format!("({upd} < ':' AND NOT ({upd} < '0' AND typeof({upd}) = 'text'))"),
                format!("{upd} >= ':' OR ({upd} < '0' AND typeof({upd}) = 'text')"),
            ));
            (upd, beyond)
        }
    };
    match (beyond, untimed) {
        // PostgreSQL's range excludes NULL by itself.
        (Some((timed, _)), false) if dialect == Dialect::Postgres => timed,
        (Some((timed, _)), false) => format!("{upd} IS NOT NULL AND {timed}"),
        (Some((_, beyond)), true) => format!("({upd} IS NULL OR {beyond})"),
        (None, false) => format!("{upd} IS NOT NULL"),
        (None, true) => format!("{upd} IS NULL"),
    }
}

/// ` AND <prefix><column> = '<value>'`: a statement's rows restricted to
/// the tenant's, on a table tenants share (empty otherwise). The value
/// comes from the definition; it is written as a quoted literal, quotes
/// doubled (and, for MySQL, backslashes).
fn tenant_and(b: &TableBinding, prefix: &str, dialect: Dialect) -> String {
    let Some((column, value)) = &b.tenant else {
        return String::new();
    };
    let value = value.replace('\'', "''");
    // Byte for byte: the column's collation (MySQL's `_ci`, a SQLite
    // `NOCASE`, a PostgreSQL nondeterministic collation or `citext`) may
    // fold case, accents or trailing spaces, and tenants differing so
    // would see each other's rows. (PostgreSQL and SQLite keep the plain
    // comparison beside it, which an index on the column serves.)
    match dialect {
        Dialect::Mysql => format!(
            " AND {prefix}{} = BINARY '{}'",
            mysql::ident(column),
            value.replace('\\', "\\\\")
        ),
        // (Only a column of text: the output of another type, a `uuid`
        // or a number, is another text than the value it equals.)
        Dialect::Postgres => {
            let c = format!("{prefix}{}", ident(column));
            let text = b
                .column_types
                .get(column)
                .is_some_and(|t| matches!(Class::postgres(t), Class::Text | Class::PaddedText));
            match text {
                true => format!(" AND {c} = '{value}' AND {c}::text COLLATE \"C\" = '{value}'"),
                false => format!(" AND {c} = '{value}'"),
            }
        }
        Dialect::Sqlite | Dialect::Json => {
            let c = format!("{prefix}{}", ident(column));
            format!(" AND {c} = '{value}' AND {c} = '{value}' COLLATE BINARY")
        }
    }
}

/// A table's name as SQL reads it: `schema.table` names a table of another
/// schema (PostgreSQL) or attached database (SQLite), each part quoted on
/// its own.
fn table_ident(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", ident(schema), ident(table)),
        None => ident(name),
    }
}

impl SqlConnector {
    /// Connects to the database of `system` at `url`.
    pub async fn connect(system: &str, url: &str) -> Result<SqlConnector, ConnectorError> {
        Self::connect_in(system, url, None).await
    }

    /// Connects to the database of `system` at `url`, where tables not
    /// qualified by a schema are looked for in `schema` (PostgreSQL's
    /// search path, MySQL's default database).
    pub async fn connect_in(
        system: &str,
        url: &str,
        schema: Option<&str>,
    ) -> Result<SqlConnector, ConnectorError> {
        let err = |source| ConnectorError::Connect {
            system: system.to_owned(),
            url: url.to_owned(),
            source,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Floats as the shortest text that reads back as the same
            // float, whatever the server's default.
            let mut options = PgConnectOptions::from_str(url).map_err(err)?.options([
                syncd_core::sql::CUSTOM_PLANS,
                ("extra_float_digits", "1"),
                ("intervalstyle", "postgres"),
            ]);
            if let Some(schema) = schema {
                options = options.options([("search_path", ident(schema))]);
            }
            // Named in `pg_stat_activity` (a statement waiting on a lock, a
            // slow one), unless the URL names the connections itself.
            if !url.contains("application_name=") {
                options = options.application_name(&format!("syncd: system {system}"));
            }
            let pool = match PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await
            {
                // The pool tried until its timeout and kept no reason: one
                // connection of its own says why (refused, no such host, a
                // password).
                Err(sqlx::Error::PoolTimedOut) => {
                    use sqlx::Connection;
                    let once = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        sqlx::PgConnection::connect_with(&options),
                    );
                    Err(once
                        .await
                        .ok()
                        .and_then(Result::err)
                        .unwrap_or(sqlx::Error::PoolTimedOut))
                }
                other => other,
            }
            .map_err(err)?;
            Ok(SqlConnector::Postgres {
                system: system.to_owned(),
                pool,
            })
        } else if mysql::is_mysql_url(url) {
            Ok(SqlConnector::Mysql {
                system: system.to_owned(),
                pool: mysql::connect(url, schema).await.map_err(err)?,
            })
        } else if url.starts_with("sqlite:") {
            if let Some(schema) = schema {
                return Err(ConnectorError::Config {
                    system: system.to_owned(),
                    reason: format!(
                        "`schema = \"{schema}\"` is for PostgreSQL and MySQL: a SQLite file has no schemas"
                    ),
                });
            }
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
            SqlConnector::Postgres { system, .. }
            | SqlConnector::Mysql { system, .. }
            | SqlConnector::Sqlite { system, .. } => system,
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
                // A domain's column by the domain's base type (and a
                // domain over a domain by the last): what its values are.
                "WITH RECURSIVE c(name, t, m) AS ( \
                   SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_attribute a \
                   WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                   UNION ALL \
                   SELECT c.name, d.typbasetype, d.typtypmod FROM c JOIN pg_type d ON d.oid = c.t AND d.typtype = 'd') \
                 SELECT c.name, format_type(c.t, c.m) FROM c JOIN pg_type y ON y.oid = c.t AND y.typtype <> 'd'",
            )
            .bind(table_ident(table))
            .fetch_all(pool)
            .await
            .map_err(self.query_error(table))?,
            SqlConnector::Sqlite { pool, .. } => {
                let (schema, name) = table.split_once('.').unwrap_or(("main", table));
                sqlx::query_as("SELECT name, upper(type) FROM pragma_table_info(?1, ?2)")
                    .bind(name)
                    .bind(schema)
                    .fetch_all(pool)
                    .await
                    .map_err(self.query_error(table))?
            }
            SqlConnector::Mysql { pool, .. } => return self.mysql_columns(pool, table).await,
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
        // A SQLite column without a type (or declared BLOB) keeps `9` and
        // `'9'` as two values: a row whose id is the number is never found
        // by its id's text, and the delete step would take it for gone.
        if matches!(self, SqlConnector::Sqlite { .. }) {
            let declared = id_type.trim().to_ascii_uppercase();
            // SQLite's affinity rules: INT first, then text, then BLOB (or
            // none); a STRICT table's `ANY` keeps values as given too.
            let texty = ["CHAR", "CLOB", "TEXT"].iter().any(|t| declared.contains(t));
            let blob =
                declared.is_empty() || (declared.contains("BLOB") && !declared.contains("INT") && !texty);
            if blob || declared == "ANY" {
                return Err(ConnectorError::Config {
                    system: self.system().to_owned(),
                    reason: format!(
                        "table `{table}`: its `{ID_COLUMN}` column has {} type, so SQLite keeps the number 9 and \
                         the text '9' as different ids and syncd cannot find its rows by id; declare it TEXT \
                         (or INTEGER) (entity `{entity}`)",
                        if declared.is_empty() {
                            "no".to_owned()
                        } else {
                            format!("the {declared}")
                        }
                    ),
                });
            }
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
            tenant: None,
            stamp_like: None,
            mixed_layouts: false,
        })
    }

    fn dialect(&self) -> Dialect {
        match self {
            SqlConnector::Postgres { .. } => Dialect::Postgres,
            SqlConnector::Sqlite { .. } => Dialect::Sqlite,
            SqlConnector::Mysql { .. } => Dialect::Mysql,
        }
    }

    /// CDM fields to native columns, each converted into what its column
    /// holds; `Err` names the first field its column cannot hold exactly.
    pub(crate) fn native_fields(&self, b: &TableBinding, fields: &Fields) -> Result<Fields, String> {
        let dialect = self.dialect();
        b.fields
            .iter()
            .map(|f| {
                let v = fields.get(&f.cdm).unwrap_or(&Value::Null);
                let native = value::write(f.kind, f.class, dialect, v)
                    .and_then(|native| match (self, b.column_types.get(&f.column)) {
                        (SqlConnector::Mysql { .. }, Some(t)) => mysql::holds(t, &native).map(|()| native),
                        (SqlConnector::Postgres { .. }, Some(t)) => {
                            pg_holds(t, &native).and_then(|()| pg_elements_hold(t, &native)).map(|()| native)
                        }
                        _ => Ok(native),
                    })
                    .map_err(|why| {
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
}

/// Whether a PostgreSQL column of `column_type` (as `format_type` names
/// it, a domain by its base type) holds `v` as it is, where its input
/// function would change it without a word or without naming the column:
/// text longer than `varchar(n)`/`char(n)` (refused unnamed; spaces past
/// `n` cut off), a `name` past 63 bytes and a `"char"` past one (cut off),
/// more digits of a second than `time(p)` keeps (rounded); an `interval`
/// limited by fields or digits (rounded, or parts dropped) and `money`
/// (rounded to the locale's cents) are not written at all.
fn pg_holds(column_type: &str, v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    if column_type == "money" {
        return Err(
            "a `money` column rounds to its locale's currency digits, and reads back as formatted \
                    text: syncd does not write one; use `numeric`"
                .into(),
        );
    }
    if column_type.starts_with("interval") && column_type != "interval" {
        return Err(format!(
            "the column ({column_type}) rounds an interval or drops parts of it, which syncd cannot check; \
             use a plain `interval` column"
        ));
    }
    let text;
    let s = match v {
        Value::String(s) => s,
        // A number goes in by its text (`42` into a `"char"` is `'4'`).
        Value::Number(n) => {
            text = n.to_string();
            &text
        }
        _ => return Ok(()),
    };
    let bytes = match column_type {
        "name" => Some(63),
        "\"char\"" => Some(1),
        _ => None,
    };
    if let Some(n) = bytes.filter(|n| s.len() > *n) {
        return Err(format!(
            "{} bytes are more than the column ({column_type}) holds ({n}); it would cut the rest off",
            s.len()
        ));
    }
    // A time of day without a zone reads `10:00:00+05` as ten o'clock.
    if (column_type.starts_with("time ") || column_type.starts_with("time("))
        && column_type.ends_with("without time zone")
    {
        let clock = s.trim();
        // An offset, or a zone's name or abbreviation after the time
        // (`PST`, `Europe/Paris`); `AM` and `PM` are the clock's own.
        let last = clock.rsplit(char::is_whitespace).next().unwrap_or("");
        let named = clock.contains(char::is_whitespace)
            && last.starts_with(|c: char| c.is_ascii_alphabetic())
            && !last.eq_ignore_ascii_case("am")
            && !last.eq_ignore_ascii_case("pm");
        let zoned = clock.contains('+')
            || clock.get(1..).is_some_and(|rest| rest.contains('-'))
            || clock.ends_with(['Z', 'z'])
            || named;
        if zoned {
            return Err(format!(
                "{s} is a time of day with a UTC offset; the column ({column_type}) would drop the offset"
            ));
        }
    }
    if column_type == "interval" {
        return interval_exact(s).map_err(|why| format!("{s}: {why}; the column (interval) would round it"));
    }
    // A time keeps microseconds, or its `p` digits.
    let kept = match column_type {
        "time without time zone" | "time with time zone" => Some(6),
        _ => column_type
            .strip_prefix("time(")
            .and_then(|rest| rest.split_once(')'))
            .and_then(|(p, _)| p.parse::<usize>().ok()),
    };
    if let Some(p) = kept {
        // `10:00:00.70+02`: the digits after the point, before any offset.
        let digits = s
            .split_once('.')
            .map(|(_, f)| f.chars().take_while(char::is_ascii_digit).collect::<String>())
            .unwrap_or_default();
        let digits = digits.trim_end_matches('0').len();
        if digits > p {
            return Err(format!(
                "{s} has {digits} digits of a second; the column ({column_type}) keeps {p}"
            ));
        }
    }
    let limit = ["character varying(", "character("]
        .iter()
        .find_map(|p| column_type.strip_prefix(p))
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|n| n.parse::<usize>().ok());
    match limit {
        Some(n) if s.chars().count() > n => Err(format!(
            "{} characters are more than the column ({column_type}) holds ({n})",
            s.chars().count()
        )),
        _ => Ok(()),
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Whether PostgreSQL's `interval` input keeps every part of `s` (its
/// verbose form `1.5 hours 3 days`, a clock `01:02:03.5`, or ISO 8601's
/// `P1.5DT2H`): a fraction of a unit is carried down to microseconds
/// (`1.5 months` is `1 mon 15 days`) and what falls below one is rounded
/// (`0.5 microseconds` is zero), and a fraction of a year is carried down
/// to whole months only (`0.1 years` is `1 mon`).
fn interval_exact(s: &str) -> Result<(), String> {
    const MICROS: [(&[&str], u128); 8] = [
        (
            &[
                "microsecond",
                "microseconds",
                "us",
                "usec",
                "usecs",
                "usecond",
                "useconds",
            ],
            1,
        ),
        (
            &[
                "millisecond",
                "milliseconds",
                "ms",
                "msec",
                "msecs",
                "msecond",
                "mseconds",
            ],
            1_000,
        ),
        (&["second", "seconds", "s", "sec", "secs"], 1_000_000),
        (&["minute", "minutes", "m", "min", "mins"], 60_000_000),
        (&["hour", "hours", "h", "hr", "hrs"], 3_600_000_000),
        (&["day", "days", "d"], 86_400_000_000),
        (&["week", "weeks", "w"], 604_800_000_000),
        (&["month", "months", "mon", "mons"], 2_592_000_000_000),
    ];
    const MONTHS: [(&[&str], u128); 4] = [
        (&["year", "years", "y", "yr", "yrs"], 12),
        (&["decade", "decades", "dec", "decs"], 120),
        (&["century", "centuries", "c", "cent"], 1_200),
        (&["millennium", "millennia", "millenniums", "mil", "mils"], 12_000),
    ];
    // `number` (digits, a point, digits) times `factor` is whole.
    let whole = |number: &str, factor: u128| -> bool {
        let fraction = number
            .split_once('.')
            .map_or("", |(_, f)| f)
            .trim_end_matches('0');
        if fraction.is_empty() {
            return true;
        }
        match (fraction.len() <= 24, fraction.parse::<u128>()) {
            (true, Ok(n)) => (n * factor).is_multiple_of(10u128.pow(fraction.len() as u32)),
            _ => false,
        }
    };
    let part = |number: &str, unit: &str| -> Result<(), String> {
        let unit = unit.to_ascii_lowercase();
        if let Some((_, f)) = MONTHS.iter().find(|(names, _)| names.contains(&unit.as_str())) {
            return match whole(number, *f) {
                true => Ok(()),
                false => Err(format!("{number} {unit} is not a whole number of months")),
            };
        }
        match MICROS.iter().find(|(names, _)| names.contains(&unit.as_str())) {
            Some((_, f)) if !whole(number, *f) => {
                Err(format!("{number} {unit} is not a whole number of microseconds"))
            }
            _ => Ok(()),
        }
    };
    let number_end = |t: &str| {
        t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(t.len())
    };
    if let Some(iso) = s.trim().strip_prefix('P') {
        let mut time = false;
        let mut rest = iso;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('T') {
                time = true;
                rest = after;
                continue;
            }
            let end = number_end(rest);
            let (number, after) = rest.split_at(end);
            let Some(designator) = after.chars().next() else {
                break;
            };
            let unit = match (designator, time) {
                ('M', false) => "months",
                ('M', true) => "minutes",
                ('Y', _) => "years",
                ('W', _) => "weeks",
                ('D', _) => "days",
                ('H', _) => "hours",
                ('S', _) => "seconds",
                _ => return Ok(()),
            };
            part(number, unit)?;
            rest = &after[designator.len_utf8()..];
        }
        return Ok(());
    }
    let tokens: Vec<&str> = s.split_whitespace().filter(|t| *t != "@").collect();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        i += 1;
        if token.contains(':') {
            // A clock: its seconds keep six digits.
            let seconds = token.rsplit(':').next().unwrap_or("");
            if !whole(seconds, 1_000_000) {
                return Err(format!("{token} has more digits of a second than a microsecond"));
            }
            continue;
        }
        let end = number_end(token);
        if end == 0 {
            continue;
        }
        let (number, attached) = token.split_at(end);
        let unit = match attached {
            "" => match tokens.get(i) {
                Some(next) if next.chars().all(|c| c.is_ascii_alphabetic()) && *next != "ago" => {
                    i += 1;
                    *next
                }
                _ => "seconds",
            },
            unit => unit,
        };
        part(number, unit)?;
    }
    Ok(())
}

/// Whether each element of a PostgreSQL array column (`numeric(10,2)[]`,
/// `varchar(3)[]`, `timestamp(0)[]`, …) is held as it is: the element
/// type's input function rounds or cuts an element as it would a value of
/// a column of that type, without a word. Each is checked as such a value;
/// an element of a document type (`jsonb[]`) is taken as it is.
fn pg_elements_hold(column_type: &str, v: &Value) -> Result<(), String> {
    let Some(element) = column_type.strip_suffix("[]") else {
        return Ok(());
    };
    let element = element.trim_end_matches("[]");
    let class = Class::postgres(element);
    if class == Class::Json {
        return Ok(());
    }
    fn each(element: &str, class: Class, v: &Value, at: &mut Vec<usize>) -> Result<(), String> {
        match v {
            Value::Null => Ok(()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    at.push(i + 1);
                    each(element, class, item, at)?;
                    at.pop();
                }
                Ok(())
            }
            one => value::write(value::Kind::Any, class, Dialect::Postgres, one)
                .and_then(|native| pg_holds(element, &native))
                .map_err(|why| {
                    let index: String = at.iter().map(|i| format!("[{i}]")).collect();
                    format!("element {index} of the array ({element}): {why}")
                }),
        }
    }
    each(element, class, v, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::{pg_elements_hold, pg_holds};
    use serde_json::json;

    /// What PostgreSQL's input functions would change without a word is
    /// refused with the column's type; what they keep passes.
    #[test]
    fn pg_holds_refuses_what_a_column_would_change_quietly() {
        let refused = [
            ("interval(3)", json!("1 day 02:03:04.1234"), "rounds an interval"),
            ("interval second(0)", json!("00:00:01"), "rounds an interval"),
            ("money", json!(7.5), "money"),
            ("\"char\"", json!(42), "2 bytes"),
            ("\"char\"", json!("hé"), "3 bytes"),
            ("name", json!("x".repeat(64)), "64 bytes"),
            (
                "time(0) with time zone",
                json!("10:00:00.5+02"),
                "1 digits of a second",
            ),
            ("time without time zone", json!("10:00:00.1234567"), "7 digits"),
            ("interval", json!("00:00:01.1234567"), "more digits of a second"),
            (
                "interval",
                json!("0.5 microseconds"),
                "not a whole number of microseconds",
            ),
            ("interval", json!("1.5 us"), "not a whole number of microseconds"),
            (
                "interval",
                json!("0.0015 ms"),
                "not a whole number of microseconds",
            ),
            ("interval", json!("0.1 years"), "not a whole number of months"),
            ("interval", json!("@ 1 day 0.0000001 seconds ago"), "microseconds"),
            ("interval", json!("P0.1Y"), "not a whole number of months"),
            ("interval", json!("PT0.0000001S"), "microseconds"),
            ("interval", json!("0.5 useconds"), "microseconds"),
            ("interval", json!("0.0015 mseconds"), "microseconds"),
            ("character(3)", json!("abcd"), "holds (3)"),
            ("character varying(3)", json!(1234), "holds (3)"),
        ];
        for (column, v, why) in refused {
            let got = pg_holds(column, &v);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{column} {v}: {got:?}"
            );
        }
        for zoned in [
            "10:00:00+05",
            "10:00:00-03:30",
            "10:00:00Z",
            "10:00:00 UTC",
            "10:00:00 PST",
            "10:00 Europe/Paris",
        ] {
            let got = pg_holds("time without time zone", &json!(zoned));
            assert!(
                got.as_ref().is_err_and(|e| e.contains("would drop the offset")),
                "{zoned}: {got:?}"
            );
        }
        let kept = [
            ("time with time zone", json!("10:00:00+05")),
            ("time(0) without time zone", json!("10:00:00 PM")),
            ("interval", json!("1 day 02:03:04.123456")),
            ("interval", json!("1.5 months")),
            ("interval", json!("1.333 days 1.5 years")),
            ("interval", json!("0.0000001 hours")),
            ("interval", json!("1.1234567 months")),
            ("interval", json!("1.5ms 3h")),
            ("interval", json!("P1.5Y2.5MT0.5S")),
            ("interval", json!("-1 day +02:03:04.5")),
            ("\"char\"", json!("h")),
            ("name", json!("x".repeat(63))),
            ("time(3) without time zone", json!("10:00:00.120")),
            ("time without time zone", json!("10:00:00")),
            ("character varying(3)", json!("abc")),
            ("money", json!(null)),
            ("text", json!(12.5)),
        ];
        for (column, v) in kept {
            assert_eq!(pg_holds(column, &v), Ok(()), "{column} {v}");
        }
    }

    /// An array's elements are held as values of its element type are:
    /// PostgreSQL's element input rounds `numeric(10,2)` and `timestamp(0)`
    /// elements and cuts spaces past a `varchar(3)` element's length.
    #[test]
    fn an_array_column_refuses_an_element_its_element_type_would_change() {
        let refused = [
            (
                "numeric(10,2)[]",
                json!([1.005, 2]),
                "element [1] of the array (numeric(10,2))",
            ),
            (
                "character varying(3)[]",
                json!(["ab", "ab    "]),
                "element [2] of the array",
            ),
            (
                "timestamp(0) without time zone[]",
                json!([["2024-01-01 10:00:00"], ["2024-01-01 10:00:00.7"]]),
                "element [2][1] of the array",
            ),
            (
                "time without time zone[]",
                json!(["10:00:00+05"]),
                "would drop the offset",
            ),
            ("real[]", json!([0.1, 0.123456789]), "element [2]"),
        ];
        for (column, v, why) in refused {
            let got = pg_elements_hold(column, &v);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{column} {v}: {got:?}"
            );
        }
        let kept = [
            ("numeric(10,2)[]", json!([1.25, null, 2])),
            ("character varying(3)[]", json!(["abc", "é"])),
            ("timestamp(0) without time zone[]", json!(["2024-01-01 10:00:00"])),
            ("integer[]", json!([[1, 2], [3, 4]])),
            ("jsonb[]", json!([{"a": 1.005}])),
            ("text[]", json!(["anything", 1.005])),
            ("numeric(10,2)", json!(1.005)),
        ];
        for (column, v) in kept {
            assert_eq!(pg_elements_hold(column, &v), Ok(()), "{column} {v}");
        }
    }
}
