//! The executor: performs a run's steps page by page, calling the core to
//! decide and the store to persist.
//!
//! Per page: look up mappings and references in batches, read counterparts,
//! let the conflict engine decide, reserve the creates' `pending` mappings
//! (one transaction, one reservation row: `Store::reserve`), write to the
//! systems (creates are safe to repeat: deterministic ids or idempotency
//! keys), then commit mapping transitions, conflict records, counters and
//! cursors in one transaction. A worker can die anywhere in between; the
//! next step of the scope turns the reservation into pending mappings,
//! re-reads the page from the last checkpoint and finds the records it
//! created.

use crate::run::{
    Phase, PhaseEvent, PlannedStep, RunEvent, RunState, StepCheckpoint, StepCounters, StepDirection,
    StepState,
};
use syncd_connect::{
    BadRow, Connector, ConnectorError, Cursor, FieldColumn, IdKind, NewRecord, TableBinding,
};
use syncd_core::decide::{self, Create, TargetUpdate, key_prefix};
use syncd_core::ids::{EntityScope, TenantId};
use syncd_core::mapping::{IdMapping, MappingChange, MappingStatus};
use syncd_core::plan::{DependencyGraph, Plan, PlanError};
use syncd_core::record::{Direction, Fields, Record, Side};
use syncd_core::references::{References, id_on};
use syncd_core::value::Kind;

mod bind;
use bind::bind_entity;
pub use bind::inspect;
mod deletes;
mod pages;
mod review;
mod seen;
mod writes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use syncd_core::workflow::{DefinitionErrors, EntityDef, Workflow};
use syncd_store::{Lease, MappingWrite, PageCommit, RunRow, Store, StoreError, SyncCursor};
use tracing::Instrument;
use uuid::Uuid;

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Definition(#[from] DefinitionErrors),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    #[error("{0}")]
    Store(#[source] StoreError),
    #[error("run {run_id} is being executed by worker `{worker}` (lease until {until}); try again later")]
    Busy {
        run_id: Uuid,
        worker: String,
        until: chrono::DateTime<Utc>,
    },
    #[error("run {run_id} was cancelled")]
    Cancelled { run_id: Uuid },
    #[error("run {run_id} was interrupted by shutdown; it continues from its last checkpoint")]
    Interrupted { run_id: Uuid },
    /// The mass-deletion brake stopped the run; it is suspended until an
    /// operator confirms or cancels.
    #[error("{}", hold.reason())]
    Held { hold: Box<syncd_store::RunHold> },
    /// No run is started: what it would do is not what the operator meant
    /// (an entity type renamed in the definition, say).
    #[error("{0}")]
    Refused(String),
}

/// A commit refused because the run was cancelled meanwhile is the run's
/// cancellation, not a fault of the store.
impl From<StoreError> for RunError {
    fn from(e: StoreError) -> RunError {
        match e {
            StoreError::RunEnded {
                run_id,
                state: RunState::Cancelled,
            } => RunError::Cancelled { run_id },
            e => RunError::Store(e),
        }
    }
}

impl RunError {
    /// Whether the error is a passing fault of a database or the network
    /// (a connection refused, reset or closed, a server shutting down or
    /// restarting, a pool that timed out, a serialization failure or a
    /// deadlock), which the same work done again can get past; not a fault
    /// of the definition, the data or the credentials. A lease that only
    /// expired (no other worker holds it) is one too.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Store(StoreError::Database(e)) => syncd_connect::transient_sql(e),
            RunError::Store(StoreError::LeaseLost { holder, .. }) => holder.is_none(),
            RunError::Connector(e) => e.is_outage(),
            _ => false,
        }
    }
}

/// How a job runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub page_size: u32,
    pub lease_ttl: Duration,
    /// How long a run keeps retrying through transient faults (an
    /// unreachable or restarting database) before it fails; 10 minutes by
    /// default, `SYNCD_RETRY_FOR` on the command line.
    pub retry_for: Duration,
    pub worker_id: String,
    /// When it turns true, the run stops after the page in flight, keeps
    /// its checkpoint and gives its lease up (graceful shutdown).
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    /// Entity types of one stage synced at once; the number of cores by
    /// default.
    pub parallel: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            page_size: 500,
            lease_ttl: Duration::from_secs(30),
            retry_for: Duration::from_secs(600),
            worker_id: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            shutdown: None,
            parallel: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What the executor reports after each page.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub entity_type: String,
    pub direction: StepDirection,
    pub counters: StepCounters,
}

/// The tables of one entity type in both systems.
struct EntityTables {
    def: EntityDef,
    source: TableBinding,
    target: TableBinding,
    /// Its reference fields.
    refs: References,
}

/// One integration for one tenant, connected and resolved against the real
/// tables, ready to run.
pub struct Job {
    store: Arc<Store>,
    workflow: Workflow,
    tenant: TenantId,
    plan: Plan,
    source: Connector,
    target: Connector,
    entities: BTreeMap<String, EntityTables>,
    options: Options,
}

/// Where a step is, kept in its checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct StepProgress {
    phase: Phase,
    /// Retry pass: the last unsettled mapping handled.
    retry_after: Option<Uuid>,
    /// Rows without a change time: the id of the last one read (as read:
    /// a number stays one, for the database to compare as it orders).
    #[serde(default)]
    untimed: Option<serde_json::Value>,
    /// Change scan: where the scan started and where it is.
    scan_start: Option<Cursor>,
    scan: Option<Cursor>,
    /// Patch pass over the scanned window, for deferred self-references.
    patch: Option<Cursor>,
    /// Patch pass: the window is done, the rows without a time are read
    /// again; the id of the last one read.
    #[serde(default)]
    patch_untimed: bool,
    #[serde(default)]
    patch_untimed_after: Option<serde_json::Value>,
    /// Refused records: the last mapping read again.
    #[serde(default)]
    refused_after: Option<Uuid>,
}

/// A step's fixed context.
struct StepCtx<'a> {
    run_id: Uuid,
    step: &'a PlannedStep,
    tables: &'a EntityTables,
    scope: EntityScope,
    /// The side the step reads changes from.
    read: Side,
    lease: Lease,
    /// Set by the heartbeat when the lease could not be renewed.
    lost: Arc<AtomicBool>,
    /// Set when another step of the stage failed.
    halt: Arc<AtomicBool>,
    /// The ids the step has decided, when its scope was empty as it
    /// began: a record whose id is not among them has no mapping, and is
    /// not looked up (see `Store::scope_is_empty`).
    seen: Option<std::sync::Mutex<seen::SeenIds>>,
    /// Whether every create into a table whose ids the system assigns is
    /// looked for by its key, not only one tried before: so in a SQL table
    /// (one query a page), which may hold rows an earlier attempt created
    /// that no mapping knows of; not in a step that began on an empty
    /// scope while that table held no key, nor in an API (a request a key).
    search_keys: bool,
    /// The records this step's retry pass decided, with the modification
    /// time each had then. Its scan, which reads again the stretch before
    /// the saved cursor (the system's lookback), skips one of them that
    /// has not changed since, rather than decide it twice.
    retried: std::sync::Mutex<HashMap<String, chrono::DateTime<Utc>>>,
    /// When the run began: a refused record whose mapping was written
    /// since was decided by this run, and is not read again by it.
    run_started: chrono::DateTime<Utc>,
}

impl StepCtx<'_> {
    fn write(&self) -> Side {
        self.read.other()
    }
}

fn side_of(direction: StepDirection) -> Side {
    match direction {
        StepDirection::Forward | StepDirection::Delete => Side::Source,
        StepDirection::Backward => Side::Target,
    }
}

/// An update as written to the target.
struct TargetWrite {
    id: String,
    fields: Fields,
    /// Self-references whose target is not mapped yet (also in `kept`).
    deferred: Vec<String>,
    /// References that kept the target's value.
    kept: Vec<String>,
    /// Why a reference to another entity's record cannot be written (it
    /// is not mapped): the update fails.
    missing: Option<String>,
}

/// A page read from the side a step reads (see `Job::read_page`).
struct ReadPage {
    records: Vec<Record>,
    bad: Vec<BadRow>,
    deleted: Vec<String>,
    /// The ids, on the side read, of all its rows.
    ids: HashSet<String>,
    /// Creates of the retry pass whose record is gone from the side read,
    /// settled by what the side written holds (`Job::settle_gone_creates`),
    /// and the deletions that follow from them.
    settled: (Vec<MappingWrite>, Vec<syncd_core::deletes::DeleteCandidate>),
    /// Where the change scan of the side read stands after it.
    sync_cursor: Option<SyncCursor>,
    /// The last page of the change scan.
    scan_done: bool,
    /// The phase it was read in.
    phase: Phase,
    /// The step's progress once it is done (for the last page of the scan,
    /// its phase is decided once the page is written).
    progress: StepProgress,
}

/// A page decided, with its own counters.
type Decided = (PageWrites, StepCounters);

/// A page decided and not yet written (see `Job::decide_page`).
struct PageWrites {
    now: chrono::DateTime<Utc>,
    /// What the page's final transaction commits, so far.
    commit: PageCommit,
    /// Pending mappings to reserve before any create.
    reserve: Vec<MappingWrite>,
    actions: Vec<Create>,
    updates_source: Vec<(String, Fields)>,
    updates_target: Vec<TargetUpdate>,
    /// Confirm transitions of the updated and unchanged records.
    confirms: Vec<MappingWrite>,
    /// Decided in the step's patch pass (see `Decision::patching`).
    patching: bool,
}

impl Job {
    /// Connects both systems of `workflow` for `tenant`, checks every table
    /// and column, and plans the run with `graph`.
    pub async fn prepare(
        store: Arc<Store>,
        workflow: Workflow,
        graph: &DependencyGraph,
        tenant: TenantId,
        options: Options,
    ) -> Result<Job, RunError> {
        let plan = workflow.graph_within(graph)?.stages()?;
        let env = |var: &str| std::env::var(var).ok();
        workflow.tenants_apart(Some(&tenant), env)?;
        let url = |system| {
            workflow
                .system_url(&tenant, system, env)
                .map_err(|e| RunError::Definition(DefinitionErrors(vec![e])))
        };
        let source = workflow.system_for(&tenant, &workflow.source);
        let target = workflow.system_for(&tenant, &workflow.target);
        let source = Connector::connect(&source, &url(&source)?).await?;
        let target = Connector::connect(&target, &url(&target)?).await?;
        let mut entities = BTreeMap::new();
        for def in &workflow.entities {
            let filters = [Side::Source, Side::Target].map(|side| workflow.tenant_filter(&tenant, def, side));
            let tables = bind_entity(def, &source, &target, filters).await?;
            entities.insert(def.name.to_string(), tables);
        }
        Ok(Job {
            store,
            workflow,
            tenant,
            plan,
            source,
            target,
            entities,
            options,
        })
    }

    /// The plan the job runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The store the job records its state in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn scope(&self, entity: &str) -> EntityScope {
        EntityScope::new(self.tenant.clone(), self.workflow.name.clone(), entity)
    }

    fn connector(&self, side: Side) -> &Connector {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn binding<'a>(&self, tables: &'a EntityTables, side: Side) -> &'a TableBinding {
        match side {
            Side::Source => &tables.source,
            Side::Target => &tables.target,
        }
    }

    /// The active run of this tenant and integration, or a new one.
    pub async fn start(&self, trigger: &str) -> Result<RunRow, RunError> {
        if let Some(run) = self.store.active_run(&self.tenant, &self.workflow.name).await? {
            return Ok(run);
        }
        match create_run(&self.store, &self.workflow, &self.plan, &self.tenant, trigger).await {
            // Another process created one first: continue that one.
            Err(RunError::Store(StoreError::ActiveRun { run_id, .. })) => Ok(self
                .store
                .load_run(Some(&self.tenant), run_id)
                .await?
                .ok_or(RunError::Cancelled { run_id })?),
            other => other,
        }
    }

    /// Executes `run` to its end or to suspension: claims its lease, runs
    /// every step not yet done, applies reviewed resolutions, and moves the
    /// run to `succeeded`, `suspended` or `failed`.
    pub async fn execute(
        &self,
        run: RunRow,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<RunRow, RunError> {
        // A transient fault pauses the run: it goes on from its last
        // checkpoint, as after a crash, until `retry_for` is spent on one
        // spell of faults (an attempt that got further ends the spell).
        // What this process cached of the ID map before this run, another
        // may have changed since.
        self.store.forget_local_cache();
        let mut run = run;
        let mut attempt: u32 = 0;
        let mut fault_since: Option<std::time::Instant> = None;
        let mut read_before = self.records_read(run.id).await;
        loop {
            // Boxed: an attempt's future nests every layer below it (steps,
            // pages, connectors, the store), deeper than the compiler lays
            // out by default in the crates that await a run.
            let error = match Box::pin(self.execute_once(run.clone(), progress)).await {
                Err(e) if e.is_transient() => e,
                done => return done,
            };
            let read_now = self.records_read(run.id).await;
            if read_now.is_some() {
                if read_now > read_before {
                    fault_since = None;
                    attempt = 0;
                }
                read_before = read_now;
            }
            let spent = fault_since.get_or_insert_with(std::time::Instant::now).elapsed();
            if spent >= self.options.retry_for {
                tracing::error!(error = %error, "transient faults for {spent:?}: the run fails");
                if let Ok(Some(current)) = self.store.load_run(None, run.id).await
                    && current.state == RunState::Running
                {
                    // A pool that timed out says nothing of why: each
                    // system is asked once, outside its pool.
                    let mut reasons = Vec::new();
                    if error.to_string().contains("pool timed out") {
                        for c in [&self.source, &self.target] {
                            if let Some(why) = c.why_unreachable().await {
                                reasons.push(format!("system `{}`: {why}", c.system()));
                            }
                        }
                    }
                    let cause = match reasons.is_empty() {
                        true => String::new(),
                        false => format!(" ({})", reasons.join("; ")),
                    };
                    let why = format!(
                        "{error}{cause} (still after retrying for {}s; once it is back, `syncd runs resume {}` \
                         goes on from the last checkpoint)",
                        spent.as_secs(),
                        run.id
                    );
                    let _ = self
                        .store
                        .transition_run(&current, RunEvent::Fail, Some(&why))
                        .await;
                }
                return Err(error);
            }
            // Capped exponential backoff, with jitter so that workers do not
            // come back all at once.
            let base = Duration::from_millis(250u64 << attempt.min(7)).min(Duration::from_secs(30));
            let jitter = Duration::from_millis(
                u64::from(Uuid::new_v4().as_bytes()[0]) * base.as_millis() as u64 / 512,
            );
            let wait = (base + jitter).min(self.options.retry_for.saturating_sub(spent));
            tracing::warn!(run_id = %run.id, error = %error, "transient fault; the run goes on from its last checkpoint in {wait:?}");
            match self.options.shutdown.clone() {
                Some(mut stop) => tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|stop| *stop) => return Err(RunError::Interrupted { run_id: run.id }),
                },
                None => tokio::time::sleep(wait).await,
            }
            attempt += 1;
            match self.store.load_run(None, run.id).await {
                Ok(Some(current)) if current.state.is_active() => run = current,
                Ok(Some(current)) if current.state == RunState::Cancelled => {
                    return Err(RunError::Cancelled { run_id: current.id });
                }
                Ok(Some(current)) => return Ok(current),
                Ok(None) => return Err(error),
                // Still out of reach: try again with what we had.
                Err(_) => {}
            }
        }
    }

    /// Records read by `run`'s steps so far, as checkpointed; `None` while
    /// the store cannot be asked.
    async fn records_read(&self, run_id: Uuid) -> Option<u64> {
        let steps = self.store.load_steps(run_id).await.ok()?;
        Some(steps.iter().map(|s| s.counters.read).sum())
    }

    /// One attempt at executing `run` under a lease of its own.
    async fn execute_once(
        &self,
        run: RunRow,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<RunRow, RunError> {
        let lease = Lease {
            run_id: run.id,
            worker_id: self.options.worker_id.clone(),
        };
        if !self
            .store
            .claim_lease(&run, &lease.worker_id, self.options.lease_ttl)
            .await?
        {
            let (worker, until) = self.store.lease_holder(run.id).await?.unwrap_or_default();
            return Err(RunError::Busy {
                run_id: run.id,
                worker,
                until,
            });
        }
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = HeartbeatTask({
            let (store, lease, lost, ttl) = (
                self.store.clone(),
                lease.clone(),
                lost.clone(),
                self.options.lease_ttl,
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if !matches!(store.heartbeat(&lease, ttl).await, Ok(true)) {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            })
        });
        let result = self.execute_leased(run, &lease, &lost, progress).await;
        drop(heartbeat);
        let _ = self.store.release_lease(&lease).await;
        result
    }

    async fn execute_leased(
        &self,
        run: RunRow,
        lease: &Lease,
        lost: &Arc<AtomicBool>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<RunRow, RunError> {
        let mut run = match run.state {
            RunState::Suspended => self.store.transition_run(&run, RunEvent::Resume, None).await?,
            _ => run,
        };
        if run.state != RunState::Running {
            run = self.store.transition_run(&run, RunEvent::Start, None).await?;
        }
        // At warn, as the default filter lets warnings through: a warning
        // or an error of the run carries its id, tenant and integration.
        let span = tracing::warn_span!("run", run_id = %run.id, tenant = %self.tenant, integration = %self.workflow.name);
        // (Instrumented, not entered: a guard held across an await would
        // tag other tasks' events on this thread with the run.)
        let started = std::time::Instant::now();
        async {
            tracing::info!(worker = %lease.worker_id, "run executing");
            // A resolution a system refuses fails the run like any step error,
            // rather than leave it `running` for a worker to retry at once.
            // Decisions its steps would otherwise meet as conflicts again
            // (those of an ended run) first; those given while it ran, after.
            let result = match self.apply_resolutions(&run, lease).await {
                Ok(()) => self.execute_steps(&run, lease, lost, progress).await,
                Err(e) => Err(e),
            };
            let result = match result {
                Ok(()) => self.apply_resolutions(&run, lease).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    let pending = self.store.pending_conflicts_of_run(&self.tenant, run.id).await?;
                    let event = if pending == 0 {
                        RunEvent::Succeed
                    } else {
                        RunEvent::Suspend
                    };
                    let ended = self.store.transition_run(&run, event, None).await?;
                    syncd_metrics::metrics()
                        .run_seconds
                        .get_or_create(&vec![
                            ("integration", self.workflow.name.to_string()),
                            ("state", ended.state.to_string()),
                        ])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::info!(state = %ended.state, pending_conflicts = pending, "run ended");
                    Ok(ended)
                }
                Err(e @ (RunError::Cancelled { .. } | RunError::Interrupted { .. })) => Err(e),
                Err(RunError::Held { hold }) => {
                    tracing::warn!(entity = %hold.entity_type, count = hold.count, "mass deletion held");
                    Ok(self.store.transition_run(&run, RunEvent::Suspend, None).await?)
                }
                Err(e @ RunError::Store(StoreError::LeaseLost { .. })) => Err(e),
                // Decided by the caller: retried, or failed once the budget is
                // spent.
                Err(e) if e.is_transient() => Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "run failed");
                    let current = self.store.load_run(None, run.id).await?.unwrap_or(run);
                    if current.state == RunState::Running {
                        self.store
                            .transition_run(&current, RunEvent::Fail, Some(&e.to_string()))
                            .await?;
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn execute_steps(
        &self,
        run: &RunRow,
        lease: &Lease,
        lost: &Arc<AtomicBool>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), RunError> {
        use futures_util::StreamExt;
        let checkpoints = self.store.load_steps(run.id).await?;
        let bidirectional = self.workflow.direction == Direction::Bidirectional;
        let steps = crate::run::steps_of(&self.plan, bidirectional);
        let progress = std::sync::Mutex::new(progress);
        // The entity types of one stage depend on none of each other: their
        // steps run side by side (at most `parallel` at once), each entity's
        // own steps in order (forward, then backward). Stages, and the
        // delete steps after them, stay in order.
        for group in lanes_of(&steps) {
            // The first lane to fail stops the others after their page in
            // flight (its commit lands); its error is the run's.
            let halt = Arc::new(AtomicBool::new(false));
            let failure: std::sync::Mutex<Option<RunError>> = std::sync::Mutex::new(None);
            let (progress, steps, checkpoints, halt, failure) =
                (&progress, &steps, &checkpoints, &halt, &failure);
            // Boxed, their type erased: a whole run's future is otherwise
            // deeper than the compiler's trait solver goes.
            type Lane<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
            let lane = |lane: Vec<usize>| -> Lane<'_> {
                Box::pin(async move {
                    for i in lane {
                        let step = &steps[i];
                        let checkpoint = checkpoints
                            .iter()
                            .find(|c| c.entity_type == step.entity_type && c.direction == step.direction);
                        if checkpoint.is_some_and(|c| c.state == StepState::Done) {
                            continue;
                        }
                        if halt.load(Ordering::Relaxed) {
                            return;
                        }
                        let at = (i, steps.len());
                        let stop = (lease, lost, halt);
                        if let Err(e) =
                            Box::pin(self.run_step(run, stop, step, at, checkpoint, progress)).await
                        {
                            if !halt.swap(true, Ordering::Relaxed) {
                                *failure.lock().expect("failure lock") = Some(e);
                            }
                            return;
                        }
                    }
                })
            };
            futures_util::stream::iter(group.into_iter().map(lane))
                .buffer_unordered(self.lanes())
                .collect::<Vec<()>>()
                .await;
            if let Some(e) = failure.lock().expect("failure lock").take() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// How many steps of a stage may run at once: one when the state store
    /// or a system is a SQLite file. SQLite takes one writer at a time, and
    /// a step whose read transaction must become a write after another
    /// step's commit is refused at once (`SQLITE_BUSY_SNAPSHOT`), not made
    /// to wait.
    fn lanes(&self) -> usize {
        let sqlite =
            self.store.backend_name() == "sqlite" || self.source.is_sqlite() || self.target.is_sqlite();
        if sqlite { 1 } else { self.options.parallel.max(1) }
    }

    /// Runs one step (`at`: its index and the number of steps), reporting
    /// each page to `progress` and to the metrics.
    async fn run_step(
        &self,
        run: &RunRow,
        (lease, lost, halt): (&Lease, &Arc<AtomicBool>, &Arc<AtomicBool>),
        step: &PlannedStep,
        (i, count): (usize, usize),
        checkpoint: Option<&StepCheckpoint>,
        progress: &std::sync::Mutex<&mut (dyn FnMut(&Progress) + Send)>,
    ) -> Result<(), RunError> {
        let tables = &self.entities[step.entity_type.as_str()];
        let scope = self.scope(step.entity_type.as_str());
        // Asked before the step settles leftover reservations: a scope with
        // any is not empty.
        let seen = match step.direction {
            StepDirection::Delete => None,
            _ => (self.store.scope_is_empty(&scope, run.id).await?)
                .then(|| std::sync::Mutex::new(seen::SeenIds::new())),
        };
        let read = side_of(step.direction);
        let writer = self.connector(read.other());
        let search_keys = match (&seen, self.binding(tables, read.other())) {
            // An API is searched a request a key: only for creates tried.
            _ if !writer.finds_keys_at_once() => false,
            (Some(_), b) if b.id_kind == IdKind::Assigned => writer.holds_keyed_rows(b).await?,
            _ => true,
        };
        let ctx = StepCtx {
            run_id: run.id,
            step,
            tables,
            scope,
            read,
            lease: lease.clone(),
            lost: lost.clone(),
            halt: halt.clone(),
            seen,
            search_keys,
            retried: Default::default(),
            run_started: run.created_at,
        };
        self.store.start_step(run, step, lease).await?;
        let span =
            tracing::warn_span!("step", entity = %step.entity_type, direction = step.direction.as_str());
        // The step's counters so far (a resumed step's, from its
        // checkpoint): the metrics count what each page adds.
        let mut last = checkpoint.map(|c| c.counters).unwrap_or_default();
        let labels = |outcome: &str| {
            vec![
                ("tenant", self.tenant.to_string()),
                ("integration", self.workflow.name.to_string()),
                ("entity", step.entity_type.to_string()),
                ("direction", step.direction.as_str().to_owned()),
                ("outcome", outcome.to_owned()),
            ]
        };
        let records = &syncd_metrics::metrics().records;
        let started = std::time::Instant::now();
        let mut report = |counters: &StepCounters| {
            for ((name, now), (_, before)) in counters.named().into_iter().zip(last.named()) {
                if now > before {
                    records.get_or_create(&labels(name)).inc_by(now - before);
                }
            }
            last = *counters;
            let mut progress = progress.lock().expect("progress");
            progress(&Progress {
                step: i + 1,
                steps: count,
                entity_type: step.entity_type.to_string(),
                direction: step.direction,
                counters: *counters,
            })
        };
        match step.direction {
            StepDirection::Delete => {
                Box::pin(
                    self.execute_delete_step(&ctx, checkpoint, &mut report)
                        .instrument(span.clone()),
                )
                .await?
            }
            _ => {
                Box::pin(
                    self.execute_step(&ctx, checkpoint, &mut report)
                        .instrument(span.clone()),
                )
                .await?
            }
        }
        syncd_metrics::metrics()
            .step_seconds
            .get_or_create(&vec![
                ("integration", self.workflow.name.to_string()),
                ("entity", step.entity_type.to_string()),
                ("direction", step.direction.as_str().to_owned()),
            ])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            parent: &span,
            read = last.read,
            created = last.created,
            updated = last.updated,
            failed = last.failed,
            conflicts = last.conflicts + last.parked,
            deleted = last.deleted,
            "step done"
        );
        Ok(())
    }

    /// Before each page: stop on shutdown, on a lost lease (another worker
    /// may own the run now: write nothing more) and on cancellation.
    async fn check_not_cancelled(&self, ctx: &StepCtx<'_>) -> Result<(), RunError> {
        let run_id = ctx.run_id;
        if self.options.shutdown.as_ref().is_some_and(|s| *s.borrow()) {
            return Err(RunError::Interrupted { run_id });
        }
        // Another step of the stage failed: this one stops here too, and
        // the run fails with that step's error.
        if ctx.halt.load(Ordering::Relaxed) {
            return Err(RunError::Interrupted { run_id });
        }
        if ctx.lost.load(Ordering::Relaxed) {
            let holder = self
                .store
                .lease_holder(run_id)
                .await?
                .map(|(worker, _)| worker)
                .filter(|worker| *worker != ctx.lease.worker_id);
            return Err(StoreError::LeaseLost {
                run_id,
                worker_id: ctx.lease.worker_id.clone(),
                holder,
            }
            .into());
        }
        match self.store.load_run(Some(&self.tenant), run_id).await? {
            Some(r) if r.state == RunState::Cancelled => Err(RunError::Cancelled { run_id }),
            _ => Ok(()),
        }
    }

    async fn execute_step(
        &self,
        ctx: &StepCtx<'_>,
        checkpoint: Option<&StepCheckpoint>,
        progress: &mut (dyn FnMut(&StepCounters) + Send),
    ) -> Result<(), RunError> {
        // Reservations of pages that never committed (a crash between a
        // page's creates and its commit) become pending mappings first, for
        // this step's lookups to see and its retry pass to finish.
        let leftover = self.store.settle_leftovers(&ctx.scope, &ctx.lease).await?;
        if leftover > 0 {
            tracing::info!(
                mappings = leftover,
                "reservations left by an earlier attempt are pending mappings now"
            );
        }
        let mut counters = checkpoint.map(|c| c.counters).unwrap_or_default();
        let mut state: StepProgress = checkpoint
            .and_then(|c| c.cursor.clone())
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        // The commit of the page before, still running while this page is
        // read and written (see `InFlight`).
        let mut in_flight: Option<InFlight> = None;
        let result = self
            .page_loop(ctx, &mut state, &mut counters, &mut in_flight, progress)
            .await;
        // The last commit lands even when this page failed: what it
        // records happened.
        let landed = land(&mut in_flight, progress).await;
        result.and(landed)
    }
}

/// A page's commit running in the background while the step reads and
/// writes the next page: the commit of page N overlaps the work of page
/// N + 1 on another connection. Commits still land in page order, and a page
/// that holds a record of the commit in flight (or of a step whose records
/// refer to each other, or outside the change scan) waits for it. A crash
/// with a commit in flight is a crash before it: both pages are done again
/// from the checkpoint before, their creates found by their pending
/// mappings. Dropped, it is aborted, like a crash.
struct InFlight {
    task: tokio::task::JoinHandle<Result<Vec<Arc<IdMapping>>, StoreError>>,
    /// The ids, on the side read, of the page's records.
    ids: HashSet<String>,
    counters: StepCounters,
    run_id: Uuid,
}

impl InFlight {
    fn start(
        store: &Arc<Store>,
        commit: PageCommit,
        ids: HashSet<String>,
        counters: StepCounters,
    ) -> InFlight {
        let store = store.clone();
        let run_id = commit.checkpoint.as_ref().map(|c| c.run_id).unwrap_or_default();
        InFlight {
            task: tokio::spawn(async move { store.commit_page(commit).await }),
            ids,
            counters,
            run_id,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The steps (by index) in groups that run one after the other: each
/// stage's sync steps, then each stage's delete steps; within a group, one
/// lane an entity type, its steps in order, the lanes side by side.
fn lanes_of(steps: &[PlannedStep]) -> Vec<Vec<Vec<usize>>> {
    /// (stage, delete steps) and the lanes of its steps.
    type Group = ((u32, bool), Vec<Vec<usize>>);
    let mut groups: Vec<Group> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let key = (step.stage, step.direction == StepDirection::Delete);
        if groups.last().is_none_or(|(k, _)| *k != key) {
            groups.push((key, Vec::new()));
        }
        let lanes = &mut groups.last_mut().expect("a group").1;
        match lanes
            .iter_mut()
            .find(|lane| steps[lane[0]].entity_type == step.entity_type)
        {
            Some(lane) => lane.push(i),
            None => lanes.push(vec![i]),
        }
    }
    groups.into_iter().map(|(_, lanes)| lanes).collect()
}

/// Waits for the commit in flight, if any, and reports its counters.
async fn land(
    in_flight: &mut Option<InFlight>,
    progress: &mut (dyn FnMut(&StepCounters) + Send),
) -> Result<(), RunError> {
    let Some(f) = in_flight.as_mut() else {
        return Ok(());
    };
    let result = (&mut f.task).await;
    let (counters, run_id) = (f.counters, f.run_id);
    *in_flight = None;
    match result {
        Ok(committed) => {
            committed?;
            progress(&counters);
            Ok(())
        }
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Aborted: only when the runtime shuts down.
        Err(_) => Err(RunError::Interrupted { run_id }),
    }
}

/// The lease heartbeat of one `execute`, stopped when it is dropped: also
/// when the `execute` future itself is dropped part-way (a cancelled or
/// timed-out attempt), which would otherwise leave the task renewing a lease
/// nobody uses, so that no other worker could ever continue the run.
struct HeartbeatTask(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records a new `planned` run of `workflow` for `tenant` with the steps of
/// `plan`. Refused with [`StoreError::ActiveRun`] while another is active.
pub async fn create_run(
    store: &Store,
    workflow: &Workflow,
    plan: &Plan,
    tenant: &TenantId,
    trigger: &str,
) -> Result<RunRow, RunError> {
    refuse_a_renamed_entity(store, workflow, tenant).await?;
    let bidirectional = workflow.direction == Direction::Bidirectional;
    let steps = crate::run::steps_of(plan, bidirectional);
    let now = Utc::now();
    let run = RunRow {
        id: Uuid::new_v4(),
        tenant_id: tenant.clone(),
        integration_id: workflow.name.clone(),
        state: RunState::Planned,
        plan: serde_json::json!({ "plan": plan, "steps": steps }),
        trigger: trigger.to_owned(),
        error: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
    };
    store.create_run(&run, &steps).await?;
    Ok(run)
}

/// Refuses a run in which an entity type of the definition has no mapping
/// yet while the store holds mappings of one the definition no longer
/// names: an entity renamed in the definition has a new scope, so its run
/// would take every record of its tables for new and copy each (in both
/// systems, in a bidirectional integration). An entity type dropped for
/// good is named in `retired_entities`.
async fn refuse_a_renamed_entity(
    store: &Store,
    workflow: &Workflow,
    tenant: &TenantId,
) -> Result<(), RunError> {
    let mapped = store.mapped_entity_types(tenant, &workflow.name).await?;
    let named = |e: &str| workflow.entities.iter().any(|d| d.name.as_str() == e);
    let gone: Vec<&String> = mapped
        .iter()
        .filter(|e| !named(e) && !workflow.retired_entities.contains(e))
        .collect();
    let new: Vec<&str> = workflow
        .entities
        .iter()
        .map(|d| d.name.as_str())
        .filter(|e| !mapped.iter().any(|m| m == e))
        .collect();
    if gone.is_empty() || new.is_empty() {
        return Ok(());
    }
    let list = |names: Vec<String>| names.join(", ");
    Err(RunError::Refused(format!(
        "no run started: the state store holds mappings of tenant `{tenant}`'s {} in integration `{}`, which {} \
         no longer names, and {} none yet. Renamed? Its run would take every record for new and copy it. Give \
         the entity its old name again; or, if {} is gone for good, add `retired_entities = [{}]` to the \
         definition",
        list(gone.iter().map(|e| format!("entity `{e}`")).collect()),
        workflow.name,
        workflow.file,
        list(new.iter().map(|e| format!("entity `{e}` has")).collect()),
        list(gone.iter().map(|e| format!("`{e}`")).collect()),
        list(gone.iter().map(|e| format!("\"{e}\"")).collect()),
    )))
}
