//! `cargo bench --bench http`: how fast syncd syncs a SQL system with a REST
//! API, and what the engine itself costs per record.
//!
//! The fake SaaS of `tests/support/saas.rs` serves on loopback in this
//! process, with no faults and no rate limit; a SQLite CRM holds `6n`
//! records (accounts, contacts, orders with references). The sync runs in
//! the release `syncd` binary, as `syncd run`, so its CPU time (user +
//! system, from `getrusage` of the child) is the engine's alone: the API's
//! work is in this process. A second run (nothing to write) shows the cost
//! of reading both sides. Set `BENCH_ACCOUNTS` (default 2,000 -> 12,000
//! records) and `BENCH_CONCURRENCY` (default 8).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::TempDir;
use support::saas::{Faults, SaasServer, TOKEN, TOKEN_VAR, crm_api, crm_definition};
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

struct Figures {
    wall: Duration,
    cpu: Duration,
    requests: u64,
}

/// One `syncd run` of the definition at `workflow`.
fn run(workflow: &std::path::Path, database_url: &str, server: &SaasServer) -> Figures {
    let requests = server.requests();
    let cpu = children_cpu();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_syncd"))
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
    let database_url = dir.sqlite_url("state.db");

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
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "run", "wall s", "records/s", "requests", "req/s", "syncd CPU s", "CPU µs/record"
    );
    for label in ["first run (creates all)", "second run (writes none)"] {
        let f = run(&workflow, &database_url, &server);
        let secs = f.wall.as_secs_f64();
        println!(
            "{:<28} {:>9.2} {:>10.0} {:>10} {:>10.0} {:>12.2} {:>14.1}",
            label,
            secs,
            records as f64 / secs,
            f.requests,
            f.requests as f64 / secs,
            f.cpu.as_secs_f64(),
            f.cpu.as_secs_f64() * 1e6 / records as f64
        );
    }
    assert_eq!(
        server.creates_performed() as usize,
        records,
        "every record created once"
    );
    server.stop().await;
}
