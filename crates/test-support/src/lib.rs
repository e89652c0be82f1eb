//! Real services for tests: a fresh PostgreSQL schema, a Redis key prefix,
//! or a SQLite file per test, removed again when the test ends.
//!
//! URLs come from `SYNCD_TEST_POSTGRES_URL` and `SYNCD_TEST_REDIS_URL`, with
//! loopback defaults. When a server is missing the test is skipped with a
//! note, except under `CI=true`, where it fails.
#![allow(dead_code)]

pub mod http;
pub mod json_server;
pub mod proxy;
pub mod saas;
pub mod systems;
pub mod tenants;
pub mod webdriver;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use uuid::Uuid;

/// The profile's directory cargo builds into (`target/debug`), found from
/// the test or bench that is running (`target/debug/deps/NAME-HASH`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test runs from the deps folder of its profile")
        .to_path_buf()
}

/// The `syncd` binary cargo built for the tests (and benches) of the
/// workspace's top package.
pub fn syncd_bin() -> PathBuf {
    build_dir().join("syncd")
}

pub fn postgres_url() -> String {
    std::env::var("SYNCD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("SYNCD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub fn redis_url() -> String {
    std::env::var("SYNCD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Called when a server is unreachable: fails under CI, else says why the
/// test does nothing and returns `None`.
pub fn missing<T>(what: &str, error: impl std::fmt::Display) -> Option<T> {
    if in_ci() {
        panic!("{what} is required under CI=true but unreachable: {error}");
    }
    eprintln!("skipping: {what} unreachable: {error}");
    None
}

/// A PostgreSQL schema of its own; `pool` has it as search path.
pub struct PgSchema {
    pub name: String,
    pub pool: PgPool,
    /// A URL that selects the schema too, for code that connects itself.
    pub url: String,
    admin: PgPool,
}

impl PgSchema {
    pub async fn create() -> Option<PgSchema> {
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .connect(&postgres_url())
            .await
        {
            Ok(p) => p,
            Err(e) => return missing("PostgreSQL", e),
        };
        let name = format!("syncd_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&admin)
            .await
            .expect("create schema");
        let options = PgConnectOptions::from_str(&postgres_url())
            .expect("postgres url")
            .options([("search_path", name.as_str()), syncd_store::CUSTOM_PLANS]);
        let base = postgres_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .expect("connect");
        Some(PgSchema {
            name,
            pool,
            url,
            admin,
        })
    }

    pub async fn drop(self) {
        self.pool.close().await;
        sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.name))
            .execute(&self.admin)
            .await
            .expect("drop schema");
    }
}

/// A MySQL/MariaDB database of its own (`CREATE DATABASE`), dropped again.
pub struct MyDatabase {
    pub name: String,
    pub pool: sqlx::MySqlPool,
    /// A URL that selects the database, for code that connects itself.
    pub url: String,
    admin: sqlx::MySqlPool,
}

impl MyDatabase {
    pub async fn create() -> Option<MyDatabase> {
        let admin = match sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&mysql_url())
            .await
        {
            Ok(p) => p,
            Err(e) => return missing("MariaDB/MySQL", e),
        };
        let name = format!("syncd_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .execute(&admin)
            .await
            .expect("create database");
        let base = mysql_url();
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => format!("{base}/{name}"),
        };
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect");
        Some(MyDatabase {
            name,
            pool,
            url,
            admin,
        })
    }

    pub async fn drop(self) {
        self.pool.close().await;
        sqlx::query(&format!("DROP DATABASE `{}`", self.name))
            .execute(&self.admin)
            .await
            .expect("drop database");
    }
}

/// A Redis key prefix of its own.
pub struct RedisPrefix {
    pub prefix: String,
}

impl RedisPrefix {
    pub async fn create() -> Option<RedisPrefix> {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let ping = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match ping.await {
            Ok(_) => Some(RedisPrefix {
                prefix: format!("syncd-test-{}", Uuid::new_v4().simple()),
            }),
            Err(e) => missing("Redis", e),
        }
    }

    /// Deletes every key under the prefix (a uuid, so no glob characters).
    pub async fn drop(self) {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut c = client.get_multiplexed_async_connection().await.expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut c)
            .await
            .expect("keys");
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut c)
                .await
                .expect("del");
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("syncd-{label}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}", self.0.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `syncd run WORKFLOW --tenant TENANT --page-size 500`, as an
/// operator would, on the state store at `database_url`, without Redis and
/// with a lease of 2 s (a restart after a kill waits seconds, not the
/// default half minute); `env` adds to its environment, and its output
/// goes to the files `out` and `err`.
pub fn spawn_syncd_run(
    workflow: &Path,
    tenant: &str,
    database_url: &str,
    env: &[(&str, &str)],
    out: &Path,
    err: &Path,
) -> Child {
    Command::new(syncd_bin())
        .arg("run")
        .arg(workflow)
        .args(["--tenant", tenant, "--page-size", "500"])
        .env("SYNCD_DATABASE_URL", database_url)
        .env("SYNCD_LEASE_TTL_SECS", "2")
        .envs(env.iter().copied())
        .env_remove("SYNCD_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .expect("the syncd binary starts")
}

/// Every record read by each sync step of run `run_id` has one outcome:
/// `read` equals the sum of created, updated, unchanged, parked, failed,
/// skipped and postponed. Called by the shared helpers that run syncs.
pub async fn assert_accounted(store: &syncd_store::Store, run_id: Uuid) {
    for step in store.load_steps(run_id).await.expect("the run's steps") {
        if step.direction == syncd_engine::run::StepDirection::Delete {
            continue;
        }
        let c = step.counters;
        assert_eq!(
            c.read,
            c.outcomes(),
            "run {run_id}, step {} {}: {} records read, but outcomes add up to {}: {c:?}",
            step.entity_type,
            step.direction.as_str(),
            c.read,
            c.outcomes()
        );
    }
}

/// [`assert_accounted`] on the step table `syncd run` printed: in each row
/// of a sync step, `read` equals the sum of the outcome columns.
pub fn assert_table_accounted(stdout: &str) {
    const OUTCOMES: [&str; 7] = [
        "created",
        "updated",
        "unchanged",
        "parked",
        "failed",
        "skipped",
        "postponed",
    ];
    let mut lines = stdout.lines().peekable();
    while let Some(line) = lines.next() {
        // The sync steps' table (the delete steps' has other columns).
        let header: Vec<&str> = line.split_whitespace().collect();
        if !header.starts_with(&["stage", "entity", "direction", "state", "read"]) {
            continue;
        }
        let at = |name: &str| header.iter().position(|h| *h == name);
        let read = at("read").expect("a read column");
        let outcomes: Vec<usize> = OUTCOMES
            .iter()
            .map(|o| at(o).unwrap_or_else(|| panic!("the step table shows {o}: {header:?}")))
            .collect();
        while let Some(row) = lines.next_if(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit())
        }) {
            let cells: Vec<&str> = row.split_whitespace().collect();
            let n = |i: usize| {
                cells[i]
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("a count in {row}"))
            };
            let sum: u64 = outcomes.iter().map(|&i| n(i)).sum();
            assert_eq!(
                n(read),
                sum,
                "records read and their outcomes differ in:\n{stdout}"
            );
        }
    }
}
