//! Two real databases to sync in tests: a "CRM" source and an "ERP" target,
//! on SQLite files, PostgreSQL schemas or MariaDB databases, with accounts (self-referencing
//! parents), contacts and orders, and a workflow definition that connects
//! them.
#![allow(dead_code)]

use super::{MyDatabase, PgSchema, TempDir};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mariadb,
}

/// One system's database.
pub enum SystemDb {
    Sqlite { pool: SqlitePool, path: PathBuf },
    Postgres { schema: PgSchema },
    Mariadb { db: MyDatabase },
}

const SOURCE_MARIADB: &str = "
CREATE TABLE accounts (id VARCHAR(64) PRIMARY KEY, name TEXT, industry TEXT, parent_id VARCHAR(64),
                       updated_at DATETIME(6) NOT NULL, INDEX accounts_changes (updated_at, id));
CREATE TABLE contacts (id VARCHAR(64) PRIMARY KEY, name TEXT, email TEXT, account_id VARCHAR(64),
                       updated_at DATETIME(6) NOT NULL, INDEX contacts_changes (updated_at, id));
CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, account_id VARCHAR(64), contact_id VARCHAR(64), total DECIMAL(12,2),
                     status TEXT, updated_at DATETIME(6) NOT NULL, INDEX orders_changes (updated_at, id));
";

const TARGET_MARIADB: &str = "
CREATE TABLE customers (id VARCHAR(64) PRIMARY KEY, customer_name TEXT, industry TEXT, parent_id VARCHAR(64),
                        updated_at DATETIME(6) NOT NULL, INDEX customers_changes (updated_at, id),
                        FOREIGN KEY (parent_id) REFERENCES customers (id) ON DELETE RESTRICT);
CREATE TABLE people (id VARCHAR(64) PRIMARY KEY, full_name TEXT, email TEXT, customer_id VARCHAR(64),
                     updated_at DATETIME(6) NOT NULL, INDEX people_changes (updated_at, id),
                     FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE RESTRICT);
CREATE TABLE sales_orders (id VARCHAR(64) PRIMARY KEY, customer_id VARCHAR(64), contact_id VARCHAR(64),
                           total DECIMAL(12,2), status TEXT, updated_at DATETIME(6) NOT NULL,
                           INDEX sales_orders_changes (updated_at, id),
                           FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE RESTRICT,
                           FOREIGN KEY (contact_id) REFERENCES people (id) ON DELETE RESTRICT);
";

/// A value for a MariaDB parameter: RFC 3339 times as MariaDB writes them
/// (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC).
fn mariadb_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| {
                    t.with_timezone(&chrono::Utc)
                        .format("%Y-%m-%d %H:%M:%S%.6f")
                        .to_string()
                })
                .unwrap_or_else(|_| s.clone()),
        ),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.into()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

const SOURCE_SQLITE: &str = "
CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT, industry TEXT, parent_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT, email TEXT, account_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE orders (id TEXT PRIMARY KEY, account_id TEXT, contact_id TEXT, total REAL, status TEXT,
                     updated_at TEXT NOT NULL);
CREATE INDEX accounts_changes ON accounts (updated_at, id);
CREATE INDEX contacts_changes ON contacts (updated_at, id);
CREATE INDEX orders_changes ON orders (updated_at, id);
";

const TARGET_SQLITE: &str = "
CREATE TABLE customers (id TEXT PRIMARY KEY, customer_name TEXT, industry TEXT, parent_id TEXT,
                        updated_at TEXT NOT NULL);
CREATE TABLE people (id TEXT PRIMARY KEY, full_name TEXT, email TEXT, customer_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE sales_orders (id TEXT PRIMARY KEY, customer_id TEXT, contact_id TEXT, total REAL, status TEXT,
                           updated_at TEXT NOT NULL);
CREATE INDEX customers_changes ON customers (updated_at, id);
CREATE INDEX people_changes ON people (updated_at, id);
CREATE INDEX sales_orders_changes ON sales_orders (updated_at, id);
";

pub const SOURCE_PG: &str = "
CREATE TABLE accounts (id text PRIMARY KEY, name text, industry text, parent_id text, updated_at timestamptz NOT NULL);
CREATE TABLE contacts (id text PRIMARY KEY, name text, email text, account_id text, updated_at timestamptz NOT NULL);
CREATE TABLE orders (id text PRIMARY KEY, account_id text, contact_id text, total numeric(12,2), status text,
                     updated_at timestamptz NOT NULL);
CREATE INDEX accounts_changes ON accounts (updated_at, id);
CREATE INDEX contacts_changes ON contacts (updated_at, id);
CREATE INDEX orders_changes ON orders (updated_at, id);
";

pub const TARGET_PG: &str = "
CREATE TABLE customers (id text PRIMARY KEY, customer_name text, industry text,
                        parent_id text REFERENCES customers (id) ON DELETE RESTRICT,
                        updated_at timestamptz NOT NULL);
CREATE TABLE people (id text PRIMARY KEY, full_name text, email text,
                     customer_id text REFERENCES customers (id) ON DELETE RESTRICT, updated_at timestamptz NOT NULL);
CREATE TABLE sales_orders (id text PRIMARY KEY, customer_id text REFERENCES customers (id) ON DELETE RESTRICT,
                           contact_id text REFERENCES people (id) ON DELETE RESTRICT, total numeric(12,2),
                           status text, updated_at timestamptz NOT NULL);
CREATE INDEX customers_changes ON customers (updated_at, id);
CREATE INDEX people_changes ON people (updated_at, id);
CREATE INDEX sales_orders_changes ON sales_orders (updated_at, id);
";

impl SystemDb {
    /// An empty database of `kind` in `dir` (SQLite) or a fresh schema.
    pub async fn create(kind: Kind, dir: &TempDir, name: &str) -> Option<SystemDb> {
        match kind {
            Kind::Sqlite => {
                let path = dir.0.join(format!("{name}.db"));
                let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
                    .unwrap()
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await
                    .unwrap();
                Some(SystemDb::Sqlite { pool, path })
            }
            Kind::Postgres => Some(SystemDb::Postgres {
                schema: PgSchema::create().await?,
            }),
            Kind::Mariadb => Some(SystemDb::Mariadb {
                db: MyDatabase::create().await?,
            }),
        }
    }

    /// A source (CRM) or target (ERP) with the test tables.
    pub async fn with_tables(kind: Kind, dir: &TempDir, role: &str) -> Option<SystemDb> {
        let db = SystemDb::create(kind, dir, role).await?;
        let ddl = match (kind, role) {
            (Kind::Sqlite, "source") => SOURCE_SQLITE,
            (Kind::Sqlite, _) => TARGET_SQLITE,
            (Kind::Postgres, "source") => SOURCE_PG,
            (Kind::Postgres, _) => TARGET_PG,
            (Kind::Mariadb, "source") => SOURCE_MARIADB,
            (Kind::Mariadb, _) => TARGET_MARIADB,
        };
        db.exec(ddl).await;
        Some(db)
    }

    pub fn url(&self) -> String {
        match self {
            SystemDb::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            SystemDb::Postgres { schema } => schema.url.clone(),
            SystemDb::Mariadb { db } => db.url.clone(),
        }
    }

    /// Runs SQL with no parameters (DDL, fixed edits).
    pub async fn exec(&self, sql: &str) {
        match self {
            SystemDb::Sqlite { pool, .. } => {
                sqlx::raw_sql(sql)
                    .execute(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            SystemDb::Postgres { schema } => {
                sqlx::raw_sql(sql)
                    .execute(&schema.pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            SystemDb::Mariadb { db } => {
                for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    sqlx::raw_sql(statement)
                        .execute(&db.pool)
                        .await
                        .unwrap_or_else(|e| panic!("{statement}: {e}"));
                }
            }
        }
    }

    /// Inserts rows given as JSON objects (column -> value) into `table`.
    pub async fn insert(&self, table: &str, rows: &[Value]) {
        if rows.is_empty() {
            return;
        }
        match self {
            SystemDb::Sqlite { pool, .. } => {
                let mut tx = pool.begin().await.unwrap();
                for row in rows {
                    let obj = row.as_object().unwrap();
                    let cols: Vec<&String> = obj.keys().collect();
                    let sql = format!(
                        "INSERT INTO {table} ({}) VALUES ({})",
                        cols.iter()
                            .map(|c| format!("\"{c}\""))
                            .collect::<Vec<_>>()
                            .join(", "),
                        vec!["?"; cols.len()].join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for c in &cols {
                        q = match &obj[*c] {
                            Value::Null => q.bind(None::<String>),
                            Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
                            Value::Number(n) => q.bind(n.as_f64()),
                            Value::String(s) => q.bind(s.clone()),
                            other => q.bind(other.to_string()),
                        };
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            SystemDb::Postgres { schema } => {
                let cols: Vec<String> = rows[0]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|c| format!("\"{c}\""))
                    .collect();
                let list = cols.join(", ");
                let sql = format!(
                    "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{table}, $1)"
                );
                sqlx::query(&sql)
                    .bind(sqlx::types::Json(rows))
                    .execute(&schema.pool)
                    .await
                    .unwrap();
            }
            SystemDb::Mariadb { db } => {
                let cols: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
                for chunk in rows.chunks(500) {
                    let sql = format!(
                        "INSERT INTO {table} ({}) VALUES {}",
                        cols.iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        vec![format!("({})", vec!["?"; cols.len()].join(", ")); chunk.len()].join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for row in chunk {
                        for c in &cols {
                            q = q.bind(mariadb_value(&row[c.as_str()]));
                        }
                    }
                    q.execute(&db.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
            }
        }
    }

    /// Every row of `table` as JSON objects, ordered by id.
    pub async fn dump(&self, table: &str) -> Vec<Value> {
        match self {
            SystemDb::Sqlite { pool, .. } => {
                let cols: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
                    .bind(table)
                    .fetch_all(pool)
                    .await
                    .unwrap();
                let pairs: Vec<String> = cols.iter().map(|c| format!("'{c}', \"{c}\"")).collect();
                let sql = format!(
                    "SELECT json_object({}) FROM {table} ORDER BY id",
                    pairs.join(", ")
                );
                let docs: Vec<String> = sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap();
                docs.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
            }
            SystemDb::Postgres { schema } => {
                let docs: Vec<sqlx::types::Json<Value>> =
                    sqlx::query_scalar(&format!("SELECT to_jsonb(t.*) FROM {table} t ORDER BY id"))
                        .fetch_all(&schema.pool)
                        .await
                        .unwrap();
                docs.into_iter().map(|d| d.0).collect()
            }
            SystemDb::Mariadb { db } => {
                let cols: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                )
                .bind(table)
                .fetch_all(&db.pool)
                .await
                .unwrap();
                let pairs: Vec<String> = cols.iter().map(|c| format!("'{c}', `{c}`")).collect();
                let sql = format!(
                    "SELECT CAST(JSON_OBJECT({}) AS CHAR) FROM {table} ORDER BY id",
                    pairs.join(", ")
                );
                let docs: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&db.pool).await.unwrap();
                docs.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
            }
        }
    }

    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            SystemDb::Sqlite { pool, .. } => Some(pool),
            _ => None,
        }
    }

    pub fn pg_pool(&self) -> Option<&PgPool> {
        match self {
            SystemDb::Postgres { schema } => Some(&schema.pool),
            _ => None,
        }
    }

    pub async fn drop(self) {
        match self {
            SystemDb::Sqlite { pool, .. } => pool.close().await,
            SystemDb::Postgres { schema } => schema.drop().await,
            SystemDb::Mariadb { db } => db.drop().await,
        }
    }
}

/// A timestamp `ms` milliseconds after a fixed start, as the tables store it.
pub fn ts(ms: i64) -> String {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    syncd_connect::format_time(start + chrono::Duration::milliseconds(ms))
}

/// Rows for `n` accounts (every 5th with a parent, some parents later in
/// the table), `2n` contacts and `3n` orders, all in the source.
pub fn crm_rows(n: usize) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let accounts = (0..n)
        .map(|i| {
            let parent = (i % 5 == 1).then(|| format!("A-{:06}", (i * 3 + 7) % n));
            let industry = ["retail", "software", "food"][i % 3];
            json!({"id": format!("A-{i:06}"), "name": format!("Account {i}"), "industry": industry,
                   "parent_id": parent, "updated_at": ts(i as i64)})
        })
        .collect();
    let contacts = (0..2 * n)
        .map(|i| {
            json!({"id": format!("C-{i:06}"), "name": format!("Person {i}"), "email": format!("p{i}@example.com"),
                   "account_id": format!("A-{:06}", i % n), "updated_at": ts(i as i64)})
        })
        .collect();
    let orders = (0..3 * n)
        .map(|i| {
            json!({"id": format!("O-{i:06}"), "account_id": format!("A-{:06}", i % n),
                   "contact_id": format!("C-{:06}", i % (2 * n)), "total": (i % 1000) as f64 + 0.5,
                   "status": "open", "updated_at": ts(i as i64)})
        })
        .collect();
    (accounts, contacts, orders)
}

/// A workflow connecting `source` and `target` for tenant `t1`, with
/// `strategies` per entity (`account`, `contact`, `order`).
pub fn workflow_toml(
    name: &str,
    direction: &str,
    source: &str,
    target: &str,
    strategies: &[(&str, &str)],
) -> String {
    let strategy = |entity: &str| {
        strategies
            .iter()
            .find(|(e, _)| *e == entity)
            .map(|(_, s)| format!("strategy = \"{s}\"\n"))
            .unwrap_or_default()
    };
    format!(
        r#"name = "{name}"
direction = "{direction}"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"
url = "{source}"

[systems.erp]
connector = "sql"
url = "{target}"

[[entities]]
name = "account"
source_table = "accounts"
target_table = "customers"
{account}
[entities.fields]
name = {{ source = "name", target = "customer_name" }}
parent_id = {{ references = "account" }}

[[entities]]
name = "contact"
source_table = "contacts"
target_table = "people"
{contact}
[entities.fields]
name = {{ source = "name", target = "full_name" }}
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}

[[entities]]
name = "order"
source_table = "orders"
target_table = "sales_orders"
{order}
[entities.fields]
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
contact_id = {{ references = "contact" }}

[tenants.t1]
"#,
        account = strategy("account"),
        contact = strategy("contact"),
        order = strategy("order"),
    )
}

/// Runs the integration in `toml` once for tenant `t1`, in process.
pub async fn sync_once(
    store: std::sync::Arc<syncd_store::Store>,
    toml: &str,
    page_size: u32,
) -> Result<syncd_store::RunRow, syncd_engine::run::executor::RunError> {
    use syncd_engine::run::executor::{Job, Options};
    let wf = syncd_core::workflow::Workflow::parse("test.toml", toml).expect("valid test workflow");
    let graph = syncd_core::plan::DependencyGraph::builtin_default();
    let options = Options {
        page_size,
        ..Options::default()
    };
    let job = Job::prepare(store.clone(), wf, &graph, "t1".into(), options).await?;
    let run = job.start("test").await?;
    let done = job.execute(run, &mut |_| {}).await?;
    super::assert_accounted(&store, done.id).await;
    Ok(done)
}

/// Account `A-1` renamed on both sides after a first sync, under strategy
/// `manual` for accounts: the second run is suspended on its conflict.
pub struct ReviewScenario {
    pub source: SystemDb,
    pub target: SystemDb,
    /// The workflow (tenant `t1`), for a worker to resume the run with.
    pub toml: String,
    /// The suspended run.
    pub run: syncd_store::RunRow,
}

/// Builds a [`ReviewScenario`] on two SQLite systems in `dir`: the account
/// is "Acme S" in the source and "Acme T" in the target.
pub async fn suspended_on_review(store: std::sync::Arc<syncd_store::Store>, dir: &TempDir) -> ReviewScenario {
    suspended_on_reviews(store, dir, &[("Acme", "Acme S", "Acme T")]).await
}

/// Builds a [`ReviewScenario`] on two SQLite systems in `dir` with one
/// conflict (`manual`) per account of `accounts`: account `A-i` is synced
/// as its first name, then renamed to the second in the source and to the
/// third in the target.
pub async fn suspended_on_reviews(
    store: std::sync::Arc<syncd_store::Store>,
    dir: &TempDir,
    accounts: &[(&str, &str, &str)],
) -> ReviewScenario {
    let source = SystemDb::with_tables(Kind::Sqlite, dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, dir, "target").await.unwrap();
    let rows: Vec<Value> = accounts
        .iter()
        .enumerate()
        .map(|(i, (base, _, _))| {
            json!({"id": format!("A-{}", i + 1), "name": base, "industry": "retail", "updated_at": ts(0)})
        })
        .collect();
    source.insert("accounts", &rows).await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "manual")],
    );
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let now = syncd_connect::format_time(chrono::Utc::now());
    let targets = target.dump("customers").await;
    let quote = |v: &str| v.replace('\'', "''");
    for (i, (base, s, t)) in accounts.iter().enumerate() {
        source
            .exec(&format!(
                "UPDATE accounts SET name = '{}', updated_at = '{now}' WHERE id = 'A-{}'",
                quote(s),
                i + 1
            ))
            .await;
        let target_id = targets.iter().find(|r| r["customer_name"] == *base).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        target
            .exec(&format!(
                "UPDATE customers SET customer_name = '{}', updated_at = '{now}' WHERE id = '{target_id}'",
                quote(t)
            ))
            .await;
    }
    let run = sync_once(store, &toml, 100).await.unwrap();
    assert_eq!(run.state, syncd_engine::run::RunState::Suspended);
    ReviewScenario {
        source,
        target,
        toml,
        run,
    }
}
