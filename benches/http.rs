//! `cargo bench --bench http`: how fast syncd syncs a SQL system with a REST
//! API, and what the engine itself costs per record.
//!
//! The fake SaaS of `syncd-test-support` (`crates/test-support/src/saas.rs`) serves on loopback in this
//! process, with no faults and no rate limit; a SQLite CRM holds `6n`
//! records (accounts, contacts, orders with references). The sync runs in
//! the release `syncd` binary, as `syncd run`, so its CPU time (user +
//! system, from `getrusage` of the child) is the engine's alone: the API's
//! work is in this process. A second run (nothing to write) shows the cost
//! of reading both sides. Set `BENCH_ACCOUNTS` (default 2,000 -> 12,000
//! records), `BENCH_CONCURRENCY` (default 8), `BENCH_STATE=postgres` for a
//! PostgreSQL state store (default: embedded SQLite, whose work is then
//! part of syncd's CPU), and `BENCH_PERF=FILE` to record the first run with
//! `perf record -g`.
//!
//! What the HTTP calls alone cost is measured next to it: a raw `reqwest`
//! client on a thread of its own (its thread CPU time) makes as many
//! creates with the same bodies and headers, and lists every record back in
//! pages, against a second server. syncd's CPU minus its requests priced at
//! the raw client's cost per request is what the engine adds per record.

use syncd_test_support as support;

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::TempDir;
use support::saas::{
    Collection, Faults, Pagination, SaasConfig, SaasServer, TOKEN, TOKEN_VAR, crm_api, crm_definition,
};
use support::systems::{Kind, SystemDb, crm_rows};

/// CPU time used by waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the struct it is given.
    let t = unsafe {
        let mut t = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU per create and per list page of a raw client: `creates` POSTs with
/// `concurrency` in flight, then the whole collection listed by cursor.
fn raw_client(url: String, creates: usize, concurrency: usize) -> (Duration, Duration, u64) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = reqwest::Client::new();
            let started = thread_cpu();
            let posts = futures_util::stream::iter(0..creates)
                .map(|i| {
                    let key = format!("fwd:{}", uuid::Uuid::new_v4());
                    let request = client
                        .post(format!("{url}/raw"))
                        .bearer_auth(TOKEN)
                        .header("idempotency-key", key.clone())
                        .json(&json!({
                            "customer_name": format!("Account {i}"), "industry": "retail",
                            "parent_id": null, "external_id": key,
                        }));
                    async move {
                        let body = request.send().await.unwrap().bytes().await.unwrap();
                        serde_json::from_slice::<Value>(&body).unwrap()["data"]["id"].clone()
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<Value>>()
                .await;
            assert_eq!(posts.len(), creates);
            let per_create = (thread_cpu() - started) / creates as u32;
            let started = thread_cpu();
            let (mut cursor, mut pages, mut seen) = (None::<String>, 0u64, 0);
            loop {
                let mut query = vec![("limit", "100".to_owned())];
                query.extend(cursor.map(|c| ("cursor", c)));
                let body = client
                    .get(format!("{url}/raw"))
                    .bearer_auth(TOKEN)
                    .query(&query)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let page: Value = serde_json::from_slice(&body).unwrap();
                pages += 1;
                seen += page["data"].as_array().unwrap().len();
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            assert_eq!(seen, creates);
            (per_create, (thread_cpu() - started) / pages as u32, pages)
        })
    })
    .join()
    .unwrap()
}

struct Figures {
    wall: Duration,
    cpu: Duration,
    requests: u64,
    by_kind: BTreeMap<String, u64>,
}

/// One `syncd run` of the definition at `workflow`.
fn run(workflow: &std::path::Path, database_url: &str, server: &SaasServer, profile: bool) -> Figures {
    let requests = server.requests();
    let by_kind = server.requests_by_kind();
    let cpu = children_cpu();
    let started = Instant::now();
    let mut command = match std::env::var("BENCH_PERF").ok().filter(|_| profile) {
        Some(out) => {
            let mut c = Command::new("perf");
            c.args([
                "record",
                "-F",
                "4000",
                "-g",
                "-o",
                &out,
                "--",
                env!("CARGO_BIN_EXE_syncd"),
            ]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_syncd")),
    };
    let output = command
        .arg("run")
        .arg(workflow)
        .args(["--tenant", "t1", "--page-size", "1000"])
        .env("SYNCD_DATABASE_URL", database_url)
        .env(TOKEN_VAR, TOKEN)
        .env_remove("SYNCD_REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("the syncd binary runs");
    let wall = started.elapsed();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("succeeded"),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Figures {
        wall,
        cpu: children_cpu() - cpu,
        requests: server.requests() - requests,
        by_kind: server
            .requests_by_kind()
            .into_iter()
            .map(|(k, n)| (k.clone(), n - by_kind.get(&k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let accounts: usize = std::env::var("BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let records = 6 * accounts;
    let dir = TempDir::new("bench-http");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let (a, c, o) = crm_rows(accounts);
    source.insert("accounts", &a).await;
    source.insert("contacts", &c).await;
    source.insert("orders", &o).await;
    let server = SaasServer::start(crm_api(Faults::default(), None)).await;
    let workflow = dir.0.join("bench.toml");
    // Reconciliation and re-verification read every record back by id;
    // they are measured apart from syncing, so off here.
    let definition = crm_definition(
        &source.url(),
        &server.url(),
        &format!("concurrency = {concurrency}"),
        "reconcile_every = \"never\"\nverify_after = \"never\"",
    );
    std::fs::write(&workflow, definition).unwrap();
    // The state store: embedded SQLite (in syncd's process, so its CPU
    // counts), or PostgreSQL with BENCH_STATE=postgres (its server's CPU
    // does not).
    let state_schema = match std::env::var("BENCH_STATE").as_deref() {
        Ok("postgres") => Some(
            support::PgSchema::create()
                .await
                .expect("PostgreSQL for the state store"),
        ),
        _ => None,
    };
    let database_url = state_schema
        .as_ref()
        .map_or_else(|| dir.sqlite_url("state.db"), |s| s.url.clone());

    println!(
        "syncd bench http: SQLite CRM -> fake SaaS on loopback (no faults, no rate limit), {records} records \
         ({accounts} accounts, {} contacts, {} orders), both ways, {concurrency} requests in flight",
        2 * accounts,
        3 * accounts
    );
    println!(
        "machine: {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let raw_server = SaasServer::start(SaasConfig {
        token: Some(TOKEN.into()),
        collections: vec![Collection::new("raw", Pagination::Cursor)],
        ..SaasConfig::default()
    })
    .await;
    let (per_create, per_page, pages) = raw_client(raw_server.url(), records, concurrency);
    raw_server.stop().await;
    println!(
        "state store: {}",
        if state_schema.is_some() {
            "PostgreSQL"
        } else {
            "embedded SQLite"
        }
    );
    println!(
        "raw reqwest client, {records} creates and {pages} list pages: {:.1} µs CPU a create, {:.1} µs a page of 100",
        per_create.as_secs_f64() * 1e6,
        per_page.as_secs_f64() * 1e6
    );
    println!(
        "{:<26} {:>7} {:>10} {:>9} {:>8} {:>10} {:>13} {:>11} {:>14}",
        "run",
        "wall s",
        "records/s",
        "requests",
        "req/s",
        "syncd CPU",
        "CPU/record",
        "HTTP calls",
        "engine/record"
    );
    for label in ["first run (creates all)", "second run (writes none)"] {
        let f = run(&workflow, &database_url, &server, label.starts_with("first"));
        let secs = f.wall.as_secs_f64();
        // The HTTP calls priced at the raw client's cost: a list page as a
        // page, any other request as a create.
        let pages = f.by_kind.get("GET list").copied().unwrap_or(0);
        let http = per_page * pages as u32 + per_create * (f.requests - pages) as u32;
        let engine = f.cpu.saturating_sub(http);
        println!(
            "{:<26} {:>7.2} {:>10.0} {:>9} {:>8.0} {:>9.2}s {:>10.1} µs {:>10.2}s {:>11.1} µs",
            label,
            secs,
            records as f64 / secs,
            f.requests,
            f.requests as f64 / secs,
            f.cpu.as_secs_f64(),
            f.cpu.as_secs_f64() * 1e6 / records as f64,
            http.as_secs_f64(),
            engine.as_secs_f64() * 1e6 / records as f64
        );
        println!("  requests: {:?}", f.by_kind);
    }
    assert_eq!(
        server.creates_performed() as usize,
        records,
        "every record created once"
    );
    server.stop().await;
    if let Some(schema) = state_schema {
        schema.drop().await;
    }
}
