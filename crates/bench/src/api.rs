//! `syncd bench api`: latency of the HTTP API under concurrent clients, and
//! of the scheduler from a cron tick to the start of its run.
//!
//! The API part seeds a PostgreSQL store (a schema of its own) with three
//! tenants' runs, steps and conflicts, creates a token for one tenant,
//! serves the real router on a loopback port and drives one endpoint at a
//! time with concurrent clients, each on its own keep-alive connection.
//! Every response is checked (status, shape, the exact page or run
//! expected); a single failure fails the bench, since its latency would be
//! the latency of something else.
//!
//! The scheduler part runs a real [`Worker`] in-process against a second
//! schema, with a schedule that fires every second, and reads for each tick
//! when its run was created and when it started. The store keeps no start
//! time (the planned → running transition sets `updated_at`, which the end
//! of the run overwrites), so a trigger in the bench's schema copies that
//! `updated_at` as the transition writes it.

mod scheduler;
mod seed;
use scheduler::scheduler;
use seed::seed;

use super::{BenchError, BenchSchema};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncd_core::conflict::{ConflictRecord, ConflictStatus, Strategy};
use syncd_core::ids::TenantId;
use syncd_core::plan::{DependencyGraph, Plan};
use syncd_core::record::{Fields, Record};
use syncd_core::workflow::Workflow;
use syncd_engine::run::executor::{Options, RunError, create_run};
use syncd_engine::run::{RunEvent, RunState, StepCounters, StepState};
use syncd_engine::worker::{Definition, Worker};
use syncd_store::cache::MappingCache;
use syncd_store::{PageCommit, Principal, Store, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// The tenant whose token the clients use.
const TENANT: &str = "bench-a";

/// Tenants whose objects share the tables, so every query must filter.
const OTHER_TENANTS: [&str; 2] = ["bench-b", "bench-c"];

/// Per tenant: runs (the last one suspended on the pending conflicts, the
/// one before it failed, the others succeeded), pending conflicts, and
/// conflicts resolved by earlier runs.
const RUNS: usize = 12;
const PENDING: usize = 3_000;
const RESOLVED: usize = 2_000;

/// Conflicts written per page while seeding.
const SEED_PAGE: usize = 500;

/// The listing's default page size (`limit` absent), which the API answers.
const LISTING_PAGE: usize = 100;

/// Requests before the clock starts, per endpoint.
const WARM_UP: Duration = Duration::from_secs(1);

const INTEGRATION: &str = "crm-to-erp";

/// What `syncd bench api` runs.
#[derive(Clone, Debug)]
pub struct ApiBench {
    /// Concurrent clients, each with one keep-alive connection.
    pub clients: usize,
    /// How long each endpoint is measured, after [`WARM_UP`].
    pub window: Duration,
    /// Scheduler ticks (one a second) to measure; 0 skips the scheduler.
    pub ticks: usize,
    /// The worker's idle poll, as `syncd worker --poll-ms`.
    pub poll: Duration,
    pub postgres_url: String,
}

/// p50, p99 and max of a set of latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latencies {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    /// `None` when there is nothing to measure.
    pub fn of(mut samples: Vec<Duration>) -> Option<Latencies> {
        samples.sort_unstable();
        Some(Latencies {
            count: samples.len(),
            p50: percentile(&samples, 50)?,
            p99: percentile(&samples, 99)?,
            max: *samples.last()?,
        })
    }
}

/// The `p`-th percentile of `sorted` by nearest rank: the smallest sample
/// that at least `p` percent of the samples do not exceed.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The figures of one endpoint.
#[derive(Clone, Debug)]
pub struct EndpointFigure {
    pub what: String,
    /// From the end of the warm-up to the last measured response.
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl EndpointFigure {
    /// Measured requests per second.
    pub fn rate(&self) -> f64 {
        self.latencies.count as f64 / self.elapsed.as_secs_f64()
    }
}

/// The figures of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerFigure {
    pub cron: &'static str,
    pub poll: Duration,
    /// From the tick to `runs.created_at`.
    pub created: Latencies,
    /// From the tick to the planned → running transition.
    pub started: Latencies,
    /// From the start to `runs.finished_at`.
    pub ran: Latencies,
    /// Ticks that fired while the previous run was still active.
    pub skipped: usize,
    /// Ticks that never fired (the schedule moved past them).
    pub missed: usize,
}

/// What one `syncd bench api` printed.
#[derive(Clone, Debug)]
pub struct ApiReport {
    pub postgres_version: String,
    pub clients: usize,
    pub window: Duration,
    pub load_before: String,
    pub load_after: String,
    pub endpoints: Vec<EndpointFigure>,
    pub scheduler: Option<SchedulerFigure>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for ApiReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "PostgreSQL {}; load average {} at the start, {} at the end",
            self.postgres_version, self.load_before, self.load_after
        )?;
        writeln!(
            f,
            "data: {} tenants, each {RUNS} runs of 6 steps, {} pending and {} resolved conflicts; \
             token of tenant {TENANT}",
            1 + OTHER_TENANTS.len(),
            super::thousands(PENDING as f64),
            super::thousands(RESOLVED as f64),
        )?;
        writeln!(
            f,
            "API: {} clients, one keep-alive connection each, {} s warm-up then {} s per endpoint",
            self.clients,
            WARM_UP.as_secs(),
            self.window.as_secs()
        )?;
        writeln!(
            f,
            "{:<44} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "endpoint", "requests", "req/s", "p50 ms", "p99 ms", "max ms"
        )?;
        for e in &self.endpoints {
            let l = &e.latencies;
            writeln!(
                f,
                "{:<44} {:>9} {:>8.0} {:>8.1} {:>8.1} {:>8.1}",
                e.what,
                l.count,
                e.rate(),
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            )?;
        }
        write!(
            f,
            "latency: request written to body read, on the client; every response 200 with the expected body"
        )?;
        if let Some(s) = &self.scheduler {
            writeln!(f)?;
            writeln!(
                f,
                "scheduler: `{}`, {} ticks, in-process worker polling every {} ms",
                s.cron,
                s.started.count,
                s.poll.as_millis()
            )?;
            writeln!(
                f,
                "{:<44} {:>8} {:>8} {:>8}",
                "from the tick to", "p50 ms", "p99 ms", "max ms"
            )?;
            for (what, l) in [
                ("the run created (runs.created_at)", &s.created),
                ("the run started (planned -> running)", &s.started),
            ] {
                writeln!(
                    f,
                    "  {what:<42} {:>8.1} {:>8.1} {:>8.1}",
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.max)
                )?;
            }
            writeln!(
                f,
                "{:<44} {:>8.1} {:>8.1} {:>8.1}",
                "run time (started -> finished)",
                ms(s.ran.p50),
                ms(s.ran.p99),
                ms(s.ran.max)
            )?;
            write!(
                f,
                "ticks skipped (a run still active): {}; ticks missed: {}",
                s.skipped, s.missed
            )?;
        }
        Ok(())
    }
}

/// The 1-, 5- and 15-minute load averages (Linux).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the API and scheduler benches, each in a schema of its own that it
/// removes.
pub async fn run(bench: &ApiBench) -> Result<ApiReport, BenchError> {
    if bench.clients == 0 || bench.window.is_zero() {
        return Err(BenchError::Invalid("no clients or no time to measure".into()));
    }
    let load_before = load_average();
    let schema = BenchSchema::create(&bench.postgres_url).await?;
    let postgres_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&schema.pool)
        .await
        .unwrap_or_default();
    let endpoints = cleaned(api(bench, &schema).await, schema.drop().await)?;
    let scheduler = if bench.ticks == 0 {
        None
    } else {
        let schema = BenchSchema::create(&bench.postgres_url).await?;
        Some(cleaned(scheduler(bench, &schema).await, schema.drop().await)?)
    };
    Ok(ApiReport {
        postgres_version,
        clients: bench.clients,
        window: bench.window,
        load_before,
        load_after: load_average(),
        endpoints,
        scheduler,
    })
}

/// The result of a pass, unless removing its schema failed.
pub(super) fn cleaned<T>(
    result: Result<T, BenchError>,
    cleanup: Result<(), BenchError>,
) -> Result<T, BenchError> {
    match (result, cleanup) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), cleanup) => {
            if let Err(c) = cleanup {
                eprintln!("bench cleanup failed too: {c}");
            }
            Err(e)
        }
    }
}

/// `base` with its search path set to `schema`, as `SYNCD_DATABASE_URL`
/// would name it: the store opens its own pool from it, as `syncd serve`
/// and `syncd worker` do.
pub(super) fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// A bidirectional integration over accounts, contacts and orders (six
/// steps), between the tables of `syncd bench sync`.
fn workflow(source: &str, target: &str, tenants: &[&str], schedule: Option<&str>) -> String {
    let schedule = schedule
        .map(|s| format!("schedule = \"{s}\"\n"))
        .unwrap_or_default();
    let tenants: String = tenants.iter().map(|t| format!("[tenants.{t}]\n")).collect();
    format!(
        r#"name = "{INTEGRATION}"
direction = "bidirectional"
{schedule}source = "crm"
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
[entities.fields]
name = {{ source = "name", target = "customer_name" }}
[[entities]]
name = "contact"
source_table = "contacts"
target_table = "people"
[entities.fields]
name = {{ source = "name", target = "full_name" }}
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
[[entities]]
name = "order"
source_table = "orders"
target_table = "sales_orders"
[entities.fields]
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
contact_id = {{ references = "contact" }}
{tenants}"#
    )
}

/// A definition and the graph it plans with.
fn definition(toml: &str) -> Result<Definition, BenchError> {
    let workflow = Workflow::parse("bench-api.toml", toml).map_err(RunError::from)?;
    let graph = workflow
        .graph_within(&DependencyGraph::builtin_default())
        .map_err(RunError::from)?;
    Ok(Definition { workflow, graph })
}

// ---------------------------------------------------------------- the API

/// A run of [`TENANT`] as `GET /api/runs/{id}` must show it.
#[derive(Clone, Debug)]
struct ExpectedRun {
    id: Uuid,
    state: RunState,
    steps: usize,
    /// The sum of the steps' `read` counters.
    read: u64,
    pending: u64,
}

/// What the seeding wrote that the checks need.
struct Seeded {
    /// The ids of [`TENANT`]'s first page of pending conflicts, oldest first.
    first_page: Vec<Uuid>,
    runs: Vec<ExpectedRun>,
}

/// Makes conflict records with distinct records and ascending creation
/// times, one a second.
struct Conflicts {
    made: usize,
    since: DateTime<Utc>,
}

impl Conflicts {
    fn make(&mut self, tenant: &str, run_id: Uuid, status: ConflictStatus) -> ConflictRecord {
        let i = self.made;
        self.made += 1;
        let created_at = self.since + chrono::Duration::seconds(i as i64);
        let entity = ["account", "contact", "order"][i % 3];
        let fields = |side: &str| -> Fields {
            let mut f = Fields::new();
            f.insert("name".into(), format!("Customer {i}").into());
            f.insert("email".into(), format!("{side}{i}@example.com").into());
            f.insert("phone".into(), format!("+49 30 {:07}", i * 7 % 10_000_000).into());
            f.insert("city".into(), ["Berlin", "Hamburg", "Munich"][i % 3].into());
            f.insert("credit_limit".into(), (1_000 + i % 5_000).into());
            f
        };
        let record = |side: &str, id: String| Record {
            id,
            fields: fields(side),
            modified_at: created_at,
        };
        let mut base = fields("base");
        base.insert("email".into(), format!("old{i}@example.com").into());
        let (strategy, resolution, resolved_by, resolved_at) = match (status, i % 2) {
            (ConflictStatus::Pending, _) => (Strategy::Manual, None, None, None),
            (ConflictStatus::Resolved, 0) => (
                Strategy::LastWriteWins,
                Some(json!({"email": format!("source{i}@example.com")})),
                Some("system".to_owned()),
                Some(created_at),
            ),
            (ConflictStatus::Resolved, _) => (
                Strategy::Manual,
                Some(json!({"email": format!("target{i}@example.com")})),
                Some(format!("reviewer-{}", i % 7)),
                Some(created_at + chrono::Duration::minutes(30)),
            ),
        };
        ConflictRecord {
            id: Uuid::new_v4(),
            tenant_id: tenant.into(),
            integration_id: INTEGRATION.into(),
            entity_type: entity.into(),
            run_id: Some(run_id),
            source_record: record("source", format!("S{i:08}")),
            target_record: record("target", format!("T{i:08}")),
            base: Some(base),
            conflicting_fields: vec!["email".into()],
            strategy_applied: strategy,
            resolution: resolution.and_then(|r| r.as_object().cloned()),
            status,
            resolved_by,
            created_at,
            resolved_at,
            outcome: None,
        }
    }
}

/// One endpoint under load, and what every response of it must be.
enum Endpoint {
    /// `GET /api/conflicts?status=pending`: the first page, oldest first.
    PendingConflicts { first_page: Vec<Uuid> },
    /// `GET /api/runs/{id}`, cycling through the tenant's runs.
    RunStatus { runs: Vec<ExpectedRun> },
}

#[derive(Deserialize)]
struct ConflictPage {
    conflicts: Vec<ListedConflict>,
}

#[derive(Deserialize)]
struct ListedConflict {
    id: Uuid,
    tenant_id: String,
    status: ConflictStatus,
}

#[derive(Deserialize)]
struct RunStatusBody {
    run: ShownRun,
    steps: Vec<ShownStep>,
    pending_conflicts: u64,
}

#[derive(Deserialize)]
struct ShownRun {
    id: Uuid,
    tenant_id: String,
    state: RunState,
}

#[derive(Deserialize)]
struct ShownStep {
    counters: StepCounters,
}

impl Endpoint {
    fn what(&self) -> String {
        match self {
            Endpoint::PendingConflicts { .. } => {
                format!("GET /api/conflicts?status=pending ({LISTING_PAGE})")
            }
            Endpoint::RunStatus { runs } => format!("GET /api/runs/{{id}} ({} runs)", runs.len()),
        }
    }

    /// The path of the `n`-th request.
    fn path(&self, n: usize) -> String {
        match self {
            Endpoint::PendingConflicts { .. } => "/api/conflicts?status=pending".into(),
            Endpoint::RunStatus { runs } => format!("/api/runs/{}", runs[n % runs.len()].id),
        }
    }

    /// Whether `body` is what the `n`-th request must answer.
    fn check(&self, n: usize, body: &[u8]) -> Result<(), String> {
        match self {
            Endpoint::PendingConflicts { first_page } => {
                let page: ConflictPage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let foreign = page
                    .conflicts
                    .iter()
                    .find(|c| c.tenant_id != TENANT || c.status != ConflictStatus::Pending);
                if let Some(c) = foreign {
                    return Err(format!(
                        "listed {} of tenant {}, {:?}",
                        c.id, c.tenant_id, c.status
                    ));
                }
                if !page.conflicts.iter().map(|c| c.id).eq(first_page.iter().copied()) {
                    return Err(format!(
                        "not the oldest {} pending conflicts ({} listed)",
                        first_page.len(),
                        page.conflicts.len()
                    ));
                }
            }
            Endpoint::RunStatus { runs } => {
                let want = &runs[n % runs.len()];
                let got: RunStatusBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let read: u64 = got.steps.iter().map(|s| s.counters.read).sum();
                if got.run.id != want.id
                    || got.run.tenant_id != TENANT
                    || got.run.state != want.state
                    || got.steps.len() != want.steps
                    || read != want.read
                    || got.pending_conflicts != want.pending
                {
                    return Err(format!(
                        "run {} {} with {} steps ({read} read) and {} pending; expected run {} {} with {} \
                         steps ({} read) and {} pending",
                        got.run.id,
                        got.run.state,
                        got.steps.len(),
                        got.pending_conflicts,
                        want.id,
                        want.state,
                        want.steps,
                        want.read,
                        want.pending
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection, a request at a time. Responses are
/// read by `Content-Length`, which the API always sends.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Connection, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// Sends `GET path` and returns the status and the body.
    async fn get(&mut self, path: &str, token: &str) -> Result<(u16, &[u8]), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let (head, status, length) = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let (status, length) = parse_head(&self.buf[..end])?;
                break (end + 4, status, length);
            }
            self.read_more().await?;
        };
        while self.buf.len() < head + length {
            self.read_more().await?;
        }
        if self.buf.len() > head + length {
            return Err("more bytes than Content-Length".into());
        }
        Ok((status, &self.buf[head..]))
    }

    async fn read_more(&mut self) -> Result<(), String> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("connection closed by the server".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// The status and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> Result<(u16, usize), String> {
    let head = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| "response without Content-Length".to_owned())?;
    Ok((status, length))
}

/// What one client measured.
#[derive(Default)]
struct ClientRun {
    latencies: Vec<Duration>,
    last: Option<Instant>,
    error: Option<String>,
}

/// Drives `endpoint` with `clients` connections: [`WARM_UP`], then
/// `window` of requests whose latencies count.
async fn load(
    addr: SocketAddr,
    token: &Arc<str>,
    endpoint: Arc<Endpoint>,
    clients: usize,
    window: Duration,
) -> Result<EndpointFigure, BenchError> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Connection::open(addr).await?);
    }
    let from = Instant::now() + WARM_UP;
    let until = from + window;
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let (endpoint, token) = (endpoint.clone(), token.clone());
            tokio::spawn(async move {
                let mut run = ClientRun::default();
                for n in (c..).step_by(clients) {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let path = endpoint.path(n);
                    let checked = match conn.get(&path, &token).await {
                        Ok((200, body)) => {
                            let took = sent.elapsed();
                            endpoint.check(n, body).map(|()| took)
                        }
                        Ok((status, body)) => Err(format!(
                            "status {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        )),
                        Err(e) => Err(e),
                    };
                    match checked {
                        Ok(took) if sent >= from => {
                            run.latencies.push(took);
                            run.last = Some(sent + took);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            run.error = Some(format!("{path}: {e}"));
                            break;
                        }
                    }
                }
                run
            })
        })
        .collect();
    let (mut latencies, mut last, mut errors, mut first_error) = (Vec::new(), from, 0, None);
    for task in tasks {
        let run = task
            .await
            .map_err(|e| BenchError::Invalid(format!("a client panicked: {e}")))?;
        latencies.extend(run.latencies);
        last = last.max(run.last.unwrap_or(from));
        if let Some(e) = run.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let what = endpoint.what();
    if let Some(e) = first_error {
        return Err(BenchError::Invalid(format!(
            "{what}: {errors} of {clients} clients got a wrong response; the first: {e}"
        )));
    }
    let latencies = Latencies::of(latencies)
        .ok_or_else(|| BenchError::Invalid(format!("{what}: no request completed")))?;
    Ok(EndpointFigure {
        what,
        elapsed: last - from,
        latencies,
    })
}

/// Seeds `schema`, serves the API on a loopback port and loads each
/// endpoint in turn.
async fn api(bench: &ApiBench, schema: &BenchSchema) -> Result<Vec<EndpointFigure>, BenchError> {
    let url = schema_url(&bench.postgres_url, &schema.name);
    let store = Arc::new(Store::connect(&StoreConfig::new(url), MappingCache::local()).await?);
    let seeded = seed(&store).await?;
    // Steady state: fresh statistics, no autovacuum starting mid-window.
    sqlx::query("VACUUM ANALYZE conflicts, runs, steps, api_tokens")
        .execute(&schema.pool)
        .await?;
    let token: Arc<str> = store
        .create_token(&Principal::Tenant(TENANT.into()))
        .await?
        .into();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, syncd_engine::api::router(store))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let mut figures = Vec::new();
    let mut result = Ok(());
    for endpoint in [
        Endpoint::PendingConflicts {
            first_page: seeded.first_page,
        },
        Endpoint::RunStatus { runs: seeded.runs },
    ] {
        match load(addr, &token, Arc::new(endpoint), bench.clients, bench.window).await {
            Ok(figure) => figures.push(figure),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = stop.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result = result.and(Err(e.into())),
        Err(e) => result = result.and(Err(BenchError::Invalid(format!("the server panicked: {e}")))),
    }
    result.map(|()| figures)
}

// ---------------------------------------------------------- the scheduler

/// Fires every second.
const EVERY_SECOND: &str = "* * * * * *";

const SCHEDULED_TENANT: &str = "bench-scheduled";

/// Keeps the time of each run's planned → running transition, which the
/// runs table overwrites.
const START_TRIGGER: &str = "
CREATE TABLE bench_run_starts (run_id uuid PRIMARY KEY, started_at timestamptz NOT NULL);
CREATE FUNCTION bench_run_started() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_run_starts VALUES (NEW.id, NEW.updated_at) ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_run_started AFTER UPDATE OF state ON runs FOR EACH ROW
    WHEN (OLD.state = 'planned' AND NEW.state = 'running') EXECUTE FUNCTION bench_run_started();
";

/// One tick as stored, with its run's times.
type Fire = (
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let check = |samples: &[u64], p: usize, expected: u64| {
            let mut sorted = millis(samples);
            sorted.sort();
            assert_eq!(
                percentile(&sorted, p),
                Some(Duration::from_millis(expected)),
                "p{p} of {samples:?}"
            );
        };
        check(&[7], 50, 7);
        check(&[7], 99, 7);
        check(&[1, 2], 50, 1);
        check(&[1, 2, 3], 50, 2);
        check(&[1, 2, 3, 4], 50, 2);
        let hundred: Vec<u64> = (1..=100).collect();
        check(&hundred, 50, 50);
        check(&hundred, 99, 99);
        check(&hundred, 100, 100);
        // Under 100 samples, the 99th percentile is the largest.
        let twenty: Vec<u64> = (1..=20).collect();
        check(&twenty, 99, 20);
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn latencies_sort_their_samples() {
        let l = Latencies::of(millis(&[30, 10, 20, 50, 40])).unwrap();
        assert_eq!(
            (l.count, l.p50, l.p99, l.max),
            (
                5,
                Duration::from_millis(30),
                Duration::from_millis(50),
                Duration::from_millis(50)
            )
        );
        assert_eq!(Latencies::of(Vec::new()), None);
    }

    #[test]
    fn a_listing_must_be_the_tenants_oldest_page() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let endpoint = Endpoint::PendingConflicts {
            first_page: ids.clone(),
        };
        let body = |listed: &[(Uuid, &str, &str)]| {
            let conflicts: Vec<_> = listed
                .iter()
                .map(|(id, tenant, status)| json!({"id": id, "tenant_id": tenant, "status": status, "x": 1}))
                .collect();
            json!({ "conflicts": conflicts }).to_string()
        };
        let page: Vec<_> = ids.iter().map(|&id| (id, TENANT, "pending")).collect();
        assert_eq!(endpoint.check(0, body(&page).as_bytes()), Ok(()));
        let mut reordered = page.clone();
        reordered.swap(0, 1);
        assert!(endpoint.check(0, body(&reordered).as_bytes()).is_err());
        assert!(endpoint.check(0, body(&page[..2]).as_bytes()).is_err());
        let mut foreign = page.clone();
        foreign[2].1 = "bench-b";
        assert!(endpoint.check(0, body(&foreign).as_bytes()).is_err());
        let mut resolved = page.clone();
        resolved[0].2 = "resolved";
        assert!(endpoint.check(0, body(&resolved).as_bytes()).is_err());
        assert!(endpoint.check(0, b"{\"error\": \"x\"}").is_err());
    }

    #[test]
    fn a_run_status_must_be_the_run_asked_for() {
        let runs: Vec<ExpectedRun> = [RunState::Succeeded, RunState::Suspended]
            .into_iter()
            .map(|state| ExpectedRun {
                id: Uuid::new_v4(),
                state,
                steps: 2,
                read: 30,
                pending: if state == RunState::Suspended { 5 } else { 0 },
            })
            .collect();
        let endpoint = Endpoint::RunStatus { runs: runs.clone() };
        let body = |run: &ExpectedRun, tenant: &str, reads: &[u64], pending: u64| {
            let steps: Vec<_> = reads.iter().map(|r| json!({"counters": {"read": r}})).collect();
            json!({
                "run": {"id": run.id, "tenant_id": tenant, "state": run.state},
                "steps": steps,
                "pending_conflicts": pending,
            })
            .to_string()
        };
        assert_eq!(endpoint.path(3), format!("/api/runs/{}", runs[1].id));
        assert_eq!(
            endpoint.check(3, body(&runs[1], TENANT, &[10, 20], 5).as_bytes()),
            Ok(())
        );
        assert!(
            endpoint
                .check(2, body(&runs[1], TENANT, &[10, 20], 5).as_bytes())
                .is_err()
        );
        assert!(
            endpoint
                .check(3, body(&runs[1], "bench-b", &[10, 20], 5).as_bytes())
                .is_err()
        );
        assert!(
            endpoint
                .check(3, body(&runs[1], TENANT, &[10], 5).as_bytes())
                .is_err()
        );
        assert!(
            endpoint
                .check(3, body(&runs[1], TENANT, &[10, 21], 5).as_bytes())
                .is_err()
        );
        assert!(
            endpoint
                .check(3, body(&runs[1], TENANT, &[10, 20], 4).as_bytes())
                .is_err()
        );
    }

    #[test]
    fn a_response_head_gives_status_and_length() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 42"),
            Ok((200, 42))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0"),
            Ok((404, 0))
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked").is_err());
        assert!(parse_head(b"garbage").is_err());
    }
}
