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

use crate::run::{PlannedStep, RunEvent, RunState, StepCheckpoint, StepCounters, StepDirection, StepState};
use syncd_connect::{
    BadRow, Connector, ConnectorError, Cursor, FieldColumn, IdKind, NewRecord, TableBinding,
};
use syncd_core::conflict::{self, ConflictRecord, ReviewDecision};
use syncd_core::decide::{self, Create, TargetUpdate, key_prefix};
use syncd_core::ids::{EntityScope, TenantId};
use syncd_core::mapping::{IdMapping, MappingChange, MappingStatus};
use syncd_core::plan::{DependencyGraph, Plan, PlanError};
use syncd_core::record::{Direction, Fields, Record, Side};
use syncd_core::references::{References, id_on};
use syncd_core::value::Kind;

mod deletes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use syncd_core::workflow::{DefinitionErrors, EntityDef, Workflow};
use syncd_store::{Lease, MappingWrite, PageCommit, RunRow, Store, StoreError, SyncCursor};
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
    Store(#[from] StoreError),
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
}

impl Default for Options {
    fn default() -> Options {
        Options {
            page_size: 500,
            lease_ttl: Duration::from_secs(30),
            retry_for: Duration::from_secs(600),
            worker_id: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            shutdown: None,
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
    /// Change scan: where the scan started and where it is.
    scan_start: Option<Cursor>,
    scan: Option<Cursor>,
    /// Patch pass over the scanned window, for deferred self-references.
    patch: Option<Cursor>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    #[default]
    Retry,
    Scan,
    Patch,
    Done,
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
    /// Self-references written empty until their target exists.
    deferred: Vec<String>,
    /// References that kept the target's value.
    kept: Vec<String>,
}

/// A page read from the side a step reads (see `Job::read_page`).
struct ReadPage {
    records: Vec<Record>,
    bad: Vec<BadRow>,
    deleted: Vec<String>,
    /// The ids, on the side read, of all its rows.
    ids: HashSet<String>,
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
            let tables = bind_entity(def, &source, &target).await?;
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
        let mut run = run;
        let mut attempt: u32 = 0;
        let mut fault_since: Option<std::time::Instant> = None;
        let mut read_before = self.records_read(run.id).await;
        loop {
            let error = match self.execute_once(run.clone(), progress).await {
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
                    let why = format!("{error} (still after retrying for {}s)", spent.as_secs());
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
        let span = tracing::info_span!("run", run_id = %run.id, tenant = %self.tenant, integration = %self.workflow.name);
        let _enter = span.enter();
        // A resolution a system refuses fails the run like any step error,
        // rather than leave it `running` for a worker to retry at once.
        let result = match self.execute_steps(&run, lease, lost, progress).await {
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
                Ok(self.store.transition_run(&run, event, None).await?)
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

    async fn execute_steps(
        &self,
        run: &RunRow,
        lease: &Lease,
        lost: &Arc<AtomicBool>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), RunError> {
        let checkpoints = self.store.load_steps(run.id).await?;
        let bidirectional = self.workflow.direction == Direction::Bidirectional;
        let steps = crate::run::steps_of(&self.plan, bidirectional);
        for (i, step) in steps.iter().enumerate() {
            let checkpoint = checkpoints
                .iter()
                .find(|c| c.entity_type == step.entity_type && c.direction == step.direction);
            if checkpoint.is_some_and(|c| c.state == StepState::Done) {
                continue;
            }
            let tables = &self.entities[step.entity_type.as_str()];
            let ctx = StepCtx {
                run_id: run.id,
                step,
                tables,
                scope: self.scope(step.entity_type.as_str()),
                read: side_of(step.direction),
                lease: lease.clone(),
                lost: lost.clone(),
            };
            let span =
                tracing::info_span!("step", entity = %step.entity_type, direction = step.direction.as_str());
            let _enter = span.enter();
            if step.direction == StepDirection::Delete {
                let mut report = |counters: &StepCounters| {
                    progress(&Progress {
                        step: i + 1,
                        steps: steps.len(),
                        entity_type: step.entity_type.to_string(),
                        direction: step.direction,
                        counters: *counters,
                    })
                };
                self.execute_delete_step(&ctx, checkpoint, &mut report).await?;
                continue;
            }
            self.execute_step(&ctx, checkpoint, &mut |counters| {
                progress(&Progress {
                    step: i + 1,
                    steps: steps.len(),
                    entity_type: step.entity_type.to_string(),
                    direction: step.direction,
                    counters: *counters,
                })
            })
            .await?;
        }
        Ok(())
    }

    /// Before each page: stop on shutdown, on a lost lease (another worker
    /// may own the run now: write nothing more) and on cancellation.
    async fn check_not_cancelled(&self, ctx: &StepCtx<'_>) -> Result<(), RunError> {
        let run_id = ctx.run_id;
        if self.options.shutdown.as_ref().is_some_and(|s| *s.borrow()) {
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

    /// The pages of a step, each read, decided, written and committed in
    /// turn. In the change scan three pages overlap: while page N is
    /// written, page N + 1 is read and decided, and the commit of page
    /// N - 1 runs (see `InFlight`). A page that holds a record of a page
    /// before it still being written or committed waits for those first,
    /// so that it finds the mapping as that page leaves it; so do the
    /// retry and patch passes and a step whose records refer to each other.
    async fn page_loop(
        &self,
        ctx: &StepCtx<'_>,
        state: &mut StepProgress,
        counters: &mut StepCounters,
        in_flight: &mut Option<InFlight>,
        progress: &mut (dyn FnMut(&StepCounters) + Send),
    ) -> Result<(), RunError> {
        let sequential = ctx.tables.refs.refer_to_itself();
        // The next page, read (and decided, unless it had to wait) while the
        // page before was written.
        let mut next: Option<(ReadPage, Option<Decided>)> = None;
        loop {
            let (mut page, decided) = match next.take() {
                // Read while the page before was written: the stop check
                // (shutdown, lost lease, cancellation) comes before its
                // writes, as for any page.
                Some(n) => {
                    self.check_not_cancelled(ctx).await?;
                    n
                }
                None => {
                    if state.phase != Phase::Scan || sequential {
                        land(in_flight, progress).await?;
                    }
                    self.check_not_cancelled(ctx).await?;
                    match self.read_page(ctx, state).await? {
                        Some(page) => (page, None),
                        None => return Ok(()),
                    }
                }
            };
            let (writes, mut delta) = match decided {
                Some(d) => d,
                None => {
                    if in_flight.as_ref().is_some_and(|f| !f.ids.is_disjoint(&page.ids)) {
                        land(in_flight, progress).await?;
                    }
                    self.decide(ctx, &mut page).await?
                }
            };
            let overlap = page.phase == Phase::Scan && !page.scan_done && !sequential;
            let (written, read_next) = if overlap {
                let write = self.write_page(ctx, writes, &mut delta);
                let ahead = async {
                    let Some(mut after) = self.read_page(ctx, state).await? else {
                        return Ok(None);
                    };
                    let busy = |ids: &HashSet<String>| !ids.is_disjoint(&after.ids);
                    if busy(&page.ids) || in_flight.as_ref().is_some_and(|f| busy(&f.ids)) {
                        return Ok(Some((after, None)));
                    }
                    let decided = self.decide(ctx, &mut after).await?;
                    Ok::<_, RunError>(Some((after, Some(decided))))
                };
                tokio::join!(write, ahead)
            } else {
                (self.write_page(ctx, writes, &mut delta).await, Ok(None))
            };
            // A page whose writes are done is committed even when reading
            // the next one failed.
            let mut commit = written?;
            *counters += delta;
            let mut after = page.progress;
            // Decided once the last page is written: it may defer too.
            if page.scan_done {
                after.phase = if counters.deferred > 0 || counters.postponed > 0 {
                    Phase::Patch
                } else {
                    Phase::Done
                };
                state.phase = after.phase;
            }
            let done = after.phase == Phase::Done;
            commit.checkpoint = Some(StepCheckpoint {
                run_id: ctx.run_id,
                tenant_id: self.tenant.clone(),
                stage: ctx.step.stage,
                entity_type: ctx.step.entity_type.clone(),
                direction: ctx.step.direction,
                state: if done { StepState::Done } else { StepState::Running },
                cursor: Some(serde_json::to_value(&after).expect("progress serializes")),
                counters: *counters,
                error: None,
            });
            commit.sync_cursor = page.sync_cursor;
            commit.lease = Some(ctx.lease.clone());
            land(in_flight, progress).await?;
            *in_flight = Some(InFlight::start(&self.store, commit, page.ids, *counters));
            next = read_next?;
            if done {
                return Ok(());
            }
        }
    }

    /// Decides a page read by `read_page`, with counters of its own.
    async fn decide(&self, ctx: &StepCtx<'_>, page: &mut ReadPage) -> Result<Decided, RunError> {
        let mut delta = StepCounters::default();
        let (records, bad, deleted) = (
            std::mem::take(&mut page.records),
            std::mem::take(&mut page.bad),
            std::mem::take(&mut page.deleted),
        );
        // The last look a record gets in this run: the patch pass of the
        // step after which no other reads its entity (in a bidirectional
        // integration the backward step reads what the forward step
        // could not compare).
        let last_pass = page.phase == Phase::Patch
            && (ctx.step.direction == StepDirection::Backward
                || self.workflow.direction == Direction::OneWay);
        let writes = self
            .decide_page(ctx, records, bad, deleted, last_pass, &mut delta)
            .await?;
        Ok((writes, delta))
    }

    /// Reads the step's next page (`None` once the step is done) and moves
    /// `state` past it.
    async fn read_page(
        &self,
        ctx: &StepCtx<'_>,
        state: &mut StepProgress,
    ) -> Result<Option<ReadPage>, RunError> {
        let read_binding = self.binding(ctx.tables, ctx.read);
        let reader = self.connector(ctx.read);
        let page_size = self.options.page_size;
        let phase = state.phase;
        let mut sync_cursor = None;
        let mut scan_done = false;
        let (records, bad, deleted) = match state.phase {
            Phase::Retry => {
                let unsettled = self
                    .store
                    .unsettled_mappings(&ctx.scope, state.retry_after, page_size)
                    .await?;
                state.retry_after = unsettled.last().map(|m| m.id);
                if unsettled.len() < page_size as usize {
                    state.phase = Phase::Scan;
                }
                let prefix = key_prefix(ctx.step.direction);
                let ids: Vec<String> = unsettled
                    .iter()
                    .filter(|m| {
                        m.idempotency_key
                            .as_deref()
                            .is_some_and(|k| k.starts_with(prefix))
                    })
                    .filter_map(|m| id_on(m, ctx.read).map(str::to_owned))
                    .collect();
                let found = reader.read_by_ids(read_binding, &ids).await?;
                (found.records, found.bad, Vec::new())
            }
            Phase::Scan => {
                if state.scan.is_none() && state.scan_start.is_none() {
                    let saved = self.store.load_sync_cursor(&ctx.scope, ctx.read).await?;
                    state.scan = saved.and_then(|c| serde_json::from_value(c).ok());
                    state.scan_start = state.scan.clone();
                }
                let page = reader
                    .read_changes(read_binding, state.scan.as_ref(), page_size)
                    .await?;
                if let Some(next) = &page.next {
                    state.scan = Some(next.clone());
                    sync_cursor = Some(SyncCursor {
                        scope: ctx.scope.clone(),
                        side: ctx.read,
                        cursor: serde_json::to_value(next).expect("cursors serialize"),
                    });
                }
                scan_done = page.done;
                (page.records, page.bad, page.deleted)
            }
            Phase::Patch => {
                let from = state.patch.clone().or_else(|| state.scan_start.clone());
                let page = reader
                    .read_changes(read_binding, from.as_ref(), page_size)
                    .await?;
                if page.next.is_some() {
                    state.patch = page.next.clone();
                }
                if page.done {
                    state.phase = Phase::Done;
                }
                (page.records, page.bad, Vec::new())
            }
            Phase::Done => return Ok(None),
        };
        let ids: HashSet<String> = records
            .iter()
            .map(|r| &r.id)
            .chain(bad.iter().map(|b| &b.id))
            .chain(&deleted)
            .cloned()
            .collect();
        Ok(Some(ReadPage {
            records,
            bad,
            deleted,
            ids,
            sync_cursor,
            scan_done,
            phase,
            progress: state.clone(),
        }))
    }

    /// The ids on `to` of the records of `entity` whose ids on `from` are
    /// `ids`, for mapped records only; plus every mapping found, by id.
    async fn translate(
        &self,
        entity: &str,
        from: Side,
        ids: Vec<String>,
    ) -> Result<HashMap<String, IdMapping>, RunError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self.store.lookup(&self.scope(entity), from, &ids).await?)
    }

    /// Translation tables for reference values of `records`, from `from`.
    async fn reference_maps(
        &self,
        tables: &EntityTables,
        from: Side,
        records: &[&Fields],
    ) -> Result<HashMap<String, HashMap<String, IdMapping>>, RunError> {
        // One lookup per referenced entity type, all at once.
        let lookups = tables
            .refs
            .values(records)
            .into_iter()
            .map(|(entity, ids)| async move {
                let found = self.translate(&entity, from, ids).await?;
                Ok::<_, RunError>((entity, found))
            });
        Ok(futures_util::future::try_join_all(lookups)
            .await?
            .into_iter()
            .collect())
    }

    /// Processes one page of records read from `ctx.read`; performs the
    /// writes and returns what the page's final transaction must commit.
    async fn process_page(
        &self,
        ctx: &StepCtx<'_>,
        records: Vec<Record>,
        bad: Vec<BadRow>,
        deleted: Vec<String>,
        counters: &mut StepCounters,
    ) -> Result<PageCommit, RunError> {
        let writes = self
            .decide_page(ctx, records, bad, deleted, false, counters)
            .await?;
        self.write_page(ctx, writes, counters).await
    }

    /// The first half of a page: reads what the records' decisions need
    /// (mappings, open conflicts, references, counterparts) and decides
    /// them. Writes nothing, so it can run while the page before is written.
    /// In the step's `last_pass` a record still waiting for a reference
    /// fails with the reason instead of waiting on.
    async fn decide_page(
        &self,
        ctx: &StepCtx<'_>,
        records: Vec<Record>,
        bad: Vec<BadRow>,
        deleted: Vec<String>,
        last_pass: bool,
        counters: &mut StepCounters,
    ) -> Result<PageWrites, RunError> {
        let now = Utc::now();
        let read = ctx.read;
        let write = ctx.write();
        let tables = ctx.tables;
        for b in &bad {
            tracing::warn!(id = %b.id, reason = %b.reason, "bad row");
        }
        // Open conflicts, mappings, the mappings of rows marked deleted and
        // the translation of the records' references are independent
        // reads: they go together.
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let mut all_ids = ids.clone();
        all_ids.extend(bad.iter().map(|b| b.id.clone()));
        let read_fields: Vec<&Fields> = records.iter().map(|r| &r.fields).collect();
        let (open, mappings, deleted_mappings, read_maps) = tokio::try_join!(
            async { Ok::<_, RunError>(self.store.open_conflicts(&ctx.scope, read, &ids).await?) },
            async { Ok::<_, RunError>(self.store.lookup(&ctx.scope, read, &all_ids).await?) },
            async {
                Ok::<_, RunError>(match deleted.is_empty() {
                    true => HashMap::new(),
                    false => self.store.lookup(&ctx.scope, read, &deleted).await?,
                })
            },
            self.reference_maps(tables, read, &read_fields),
        )?;

        // Counterparts of mapped records (records waiting for a reviewer
        // aside), by their id on the write side.
        let waiting: Vec<Record>;
        let deciding = match open.is_empty() {
            true => &records,
            false => {
                waiting = records
                    .iter()
                    .filter(|r| !open.contains(&r.id))
                    .cloned()
                    .collect();
                &waiting
            }
        };
        let counterpart_ids = decide::counterpart_ids(deciding, &mappings, write);
        let found = self
            .connector(write)
            .read_by_ids(self.binding(tables, write), &counterpart_ids)
            .await?;
        let counterparts: HashMap<String, Record> =
            found.records.into_iter().map(|r| (r.id.clone(), r)).collect();
        // Counterparts that exist but cannot be read: not gone, unreadable.
        let unreadable: HashMap<String, String> = found.bad.into_iter().map(|b| (b.id, b.reason)).collect();
        // Target records' references into source ids (the space records
        // are compared and based in).
        let target_maps = match read {
            Side::Target => read_maps.clone(),
            Side::Source => {
                let target_records: Vec<&Fields> = counterparts.values().map(|r| &r.fields).collect();
                self.reference_maps(tables, Side::Target, &target_records).await?
            }
        };

        let page = decide::Page {
            records,
            bad,
            deleted,
            deleted_mappings,
            open: open.into_iter().collect(),
            mappings,
            read_maps,
            target_maps,
            counterparts,
            unreadable,
            last_pass,
            now,
        };
        let keepable = |what: &dyn Fn() -> String, fields: &Fields| self.store.unkeepable(what, fields);
        let d = decide::decide_page(&self.decision_step(ctx), page, &keepable, &mut Uuid::now_v7);
        *counters += d.counters;
        Ok(PageWrites {
            now,
            commit: PageCommit {
                mappings: d.mappings,
                conflicts: d.conflicts,
                candidates: d.candidates,
                ..PageCommit::default()
            },
            reserve: d.reserve,
            actions: d.creates,
            updates_source: d.updates_source,
            updates_target: d.updates_target,
            confirms: d.confirms,
        })
    }

    /// The step `ctx` as the page decisions see it.
    fn decision_step<'a>(&'a self, ctx: &'a StepCtx<'_>) -> decide::Step<'a> {
        decide::Step {
            integration: self.workflow.name.as_str(),
            tenant: &self.tenant,
            run_id: ctx.run_id,
            scope: &ctx.scope,
            direction: ctx.step.direction,
            read: ctx.read,
            def: &ctx.tables.def,
            refs: &ctx.tables.refs,
            strategy: self
                .workflow
                .strategy_for(&self.tenant, ctx.step.entity_type.as_str()),
            sync: self.workflow.direction,
            write_text_ids: self.binding(ctx.tables, ctx.write()).id_kind == IdKind::Text,
        }
    }

    /// The second half of a page: reserves the pending mappings of its
    /// creates, then creates and updates records in both systems, and
    /// returns what the page's final transaction must commit.
    async fn write_page(
        &self,
        ctx: &StepCtx<'_>,
        writes: PageWrites,
        counters: &mut StepCounters,
    ) -> Result<PageCommit, RunError> {
        let PageWrites {
            now,
            mut commit,
            reserve,
            actions,
            updates_source,
            updates_target,
            mut confirms,
        } = writes;
        let (read, write, tables) = (ctx.read, ctx.write(), ctx.tables);
        // Reserve pending mappings before writing anything. New ones are
        // held by the reservation (`held`), not in the ID map yet.
        let mut reserved: HashMap<String, (IdMapping, bool)> = HashMap::with_capacity(reserve.len());
        if !reserve.is_empty() {
            let (reservation, stored) = self.store.reserve(&ctx.scope, reserve, &ctx.lease).await?;
            let held = reservation.map(|r| {
                commit.settles = Some(r.id);
                r.held
            });
            for (m, held) in held
                .into_iter()
                .flatten()
                .map(|m| (m, true))
                .chain(stored.into_iter().map(|m| (m, false)))
            {
                if let Some(id) = id_on(&m, read) {
                    reserved.insert(id.to_owned(), (m, held));
                }
            }
        }

        // Creates: text ids are deterministic (a repeat upserts); integer-id
        // tables are searched for the key of an earlier attempt first.
        let write_binding = self.binding(tables, write);
        let mut creates: Vec<((IdMapping, bool), Record, Fields, bool)> = Vec::with_capacity(actions.len());
        let mut news: Vec<NewRecord> = Vec::with_capacity(actions.len());
        for action in actions {
            let Create {
                record,
                fields,
                base,
                mapping,
                key,
                id: uuid,
            } = action;
            let tried = mapping.is_some();
            let current = reserved
                .remove(&record.id)
                .or(mapping.map(|m| (m, false)))
                .expect("a create has a pending mapping");
            creates.push((current, record, base, tried));
            news.push(NewRecord {
                id: (write_binding.id_kind == IdKind::Text).then(|| uuid.to_string()),
                key,
                fields,
                tried,
            });
        }
        // Only a create tried before (its mapping was pending, failed or
        // stale already) can have happened: look for those.
        let existing = if write_binding.id_kind == IdKind::Assigned {
            let keys: Vec<String> = creates
                .iter()
                .zip(&news)
                .filter(|((_, _, _, tried), _)| *tried)
                .map(|(_, n)| n.key.clone())
                .collect();
            self.connector(write).find_by_keys(write_binding, &keys).await?
        } else {
            HashMap::new()
        };
        // The id of each create, in order.
        let no_id = || Err(format!("{} returned no id for the create", write.as_str()));
        let results: Vec<Result<String, String>> = if existing.is_empty() {
            let mut created = self.connector(write).create(write_binding, &news, now).await?;
            created.resize_with(news.len(), no_id);
            created
        } else {
            let to_create: Vec<NewRecord> = news
                .iter()
                .filter(|n| !existing.contains_key(&n.key))
                .cloned()
                .collect();
            let mut created = self
                .connector(write)
                .create(write_binding, &to_create, now)
                .await?
                .into_iter();
            news.iter()
                .map(|n| match existing.get(&n.key) {
                    Some(id) => Ok(id.clone()),
                    None => created.next().unwrap_or_else(no_id),
                })
                .collect()
        };
        for (((mapping, held), record, base, _), result) in creates.into_iter().zip(results) {
            let change = match result {
                Ok(new_id) => {
                    counters.created += 1;
                    let (source_id, target_id) = match read {
                        Side::Source => (record.id.clone(), new_id),
                        Side::Target => (new_id, record.id.clone()),
                    };
                    MappingChange::Confirm {
                        source_id,
                        target_id,
                        base,
                    }
                }
                Err(error) => {
                    counters.failed += 1;
                    MappingChange::Fail { error }
                }
            };
            confirms.push(if held {
                MappingWrite::Settle {
                    held: mapping,
                    change,
                }
            } else {
                MappingWrite::Transition {
                    current: mapping,
                    change,
                }
            });
        }

        let written = self.to_target_ids(tables, &updates_target).await?;
        // The base records what the target really holds: an empty deferred
        // self-reference (patched by the step's patch pass), or the kept
        // value of a reference that could not be translated.
        for (update, w) in updates_target.iter().zip(&written) {
            let Some(MappingWrite::Transition {
                change: MappingChange::Confirm { base, .. },
                ..
            }) = update.confirm.and_then(|i| confirms.get_mut(i))
            else {
                continue;
            };
            for field in &w.deferred {
                base.insert(field.clone(), Value::Null);
            }
            for field in &w.kept {
                let kept = update
                    .current_in_source_ids
                    .get(field)
                    .cloned()
                    .unwrap_or(Value::Null);
                base.insert(field.clone(), kept);
            }
            if !w.deferred.is_empty() {
                counters.deferred += 1;
            }
        }
        let target_updates: Vec<(String, Fields)> = written.into_iter().map(|w| (w.id, w.fields)).collect();
        let refused_target = self.target.update(&tables.target, &target_updates, now).await?;
        let refused_source = self.source.update(&tables.source, &updates_source, now).await?;
        if !(refused_target.is_empty() && refused_source.is_empty()) {
            // A record the system refused keeps its mapping and its old
            // base, so the difference is written again with its next change;
            // the mapping's `last_error` says why.
            for (id, reason) in refused_target.iter().chain(&refused_source) {
                tracing::warn!(record = %id, %reason, "update refused");
            }
            let reasons: HashMap<(Side, &str), &str> = refused_target
                .iter()
                .map(|(id, why)| ((Side::Target, id.as_str()), why.as_str()))
                .chain(
                    refused_source
                        .iter()
                        .map(|(id, why)| ((Side::Source, id.as_str()), why.as_str())),
                )
                .collect();
            let mut dropped = 0;
            for w in confirms.iter_mut() {
                let MappingWrite::Transition {
                    change:
                        MappingChange::Confirm {
                            source_id, target_id, ..
                        },
                    current,
                } = w
                else {
                    continue;
                };
                let why = reasons
                    .get(&(Side::Target, target_id.as_str()))
                    .map(|why| format!("{} refused the update: {why}", self.target.system()))
                    .or_else(|| {
                        reasons
                            .get(&(Side::Source, source_id.as_str()))
                            .map(|why| format!("{} refused the update: {why}", self.source.system()))
                    });
                if let Some(error) = why {
                    *w = MappingWrite::Transition {
                        current: current.clone(),
                        change: MappingChange::Refuse { error },
                    };
                    dropped += 1;
                }
            }
            counters.updated = counters.updated.saturating_sub(dropped);
            counters.failed += dropped;
        }
        commit.mappings.extend(confirms);
        Ok(commit)
    }

    /// Rewrites updates bound for the target from source ids to target ids.
    /// A self-reference whose target is not mapped yet is written empty; any
    /// other reference that cannot be translated keeps the target's current
    /// value rather than point nowhere. Both are reported per update.
    async fn to_target_ids(
        &self,
        tables: &EntityTables,
        updates: &[TargetUpdate],
    ) -> Result<Vec<TargetWrite>, RunError> {
        let fields: Vec<&Fields> = updates.iter().map(|u| &u.fields).collect();
        let maps = self.reference_maps(tables, Side::Source, &fields).await?;
        Ok(updates
            .iter()
            .map(|u| {
                let mut rewritten = tables.refs.rewrite(&maps, Side::Source, &u.fields);
                let mut kept = Vec::new();
                for (field, reason) in rewritten.missing {
                    tracing::warn!(target_id = %u.id, %reason, "reference kept as it is in the target");
                    let current = u.current.get(&field).cloned().unwrap_or(Value::Null);
                    rewritten.fields.insert(field.clone(), current);
                    kept.push(field);
                }
                tables
                    .refs
                    .ids_typed_for(Side::Target, &mut rewritten.fields, &u.current);
                TargetWrite {
                    id: u.id.clone(),
                    fields: rewritten.fields,
                    deferred: rewritten.deferred,
                    kept,
                }
            })
            .collect())
    }

    /// Writes the resolutions reviewers gave to conflicts of `run` to both
    /// systems, and records the new base.
    async fn apply_resolutions(&self, run: &RunRow, lease: &Lease) -> Result<(), RunError> {
        let resolved = self.store.unapplied_resolutions(run.id).await?;
        for c in resolved {
            let Some(tables) = self.entities.get(c.entity_type.as_str()) else {
                continue;
            };
            let scope = self.scope(c.entity_type.as_str());
            let mapping = self
                .store
                .lookup(&scope, Side::Source, std::slice::from_ref(&c.source_record.id))
                .await?
                .remove(&c.source_record.id);
            let mut commit = PageCommit {
                applied_conflicts: vec![c.id],
                lease: Some(lease.clone()),
                ..Default::default()
            };
            if let Some(m) = mapping.filter(|m| m.status == MappingStatus::Mapped) {
                let source = self
                    .source
                    .read_by_ids(&tables.source, std::slice::from_ref(&c.source_record.id))
                    .await?;
                let target = self
                    .target
                    .read_by_ids(&tables.target, std::slice::from_ref(&c.target_record.id))
                    .await?;
                // A record that exists but cannot be read (a value its
                // side cannot hold) stops the run with the reason; the
                // decision stays, to be applied once the record is fixed.
                if let Some((connector, bad)) = source
                    .bad
                    .first()
                    .map(|b| (&self.source, b))
                    .or(target.bad.first().map(|b| (&self.target, b)))
                {
                    return Err(ConnectorError::Config {
                        system: connector.system().to_owned(),
                        reason: format!(
                            "the decision of conflict {} cannot be applied: {} (fix the record, then resume the run)",
                            c.id, bad.reason
                        ),
                    }
                    .into());
                }
                if let (Some(source), Some(target)) = (source.records.first(), target.records.first()) {
                    let maps = self
                        .reference_maps(tables, Side::Target, &[&target.fields])
                        .await?;
                    let target_in_source_space = tables.refs.record_ids_as_text(Record {
                        fields: tables.refs.rewrite(&maps, Side::Target, &target.fields).fields,
                        ..target.clone()
                    });
                    let source_record = source;
                    let source = &tables.refs.record_ids_as_text(source_record.clone());
                    let decision = ReviewDecision::Values(c.resolution.clone().unwrap_or_default());
                    let base_as_text = c.base.as_ref().and_then(|b| tables.refs.ids_as_text(b));
                    let base = base_as_text.as_ref().or(c.base.as_ref());
                    let writes = match conflict::apply_review(
                        base,
                        source,
                        &target_in_source_space,
                        self.workflow.direction,
                        &decision,
                    ) {
                        Ok(writes) => writes,
                        Err(e) => {
                            // The record changed after it was parked and now
                            // conflicts in a field the reviewer did not
                            // decide: park it again, with the current records.
                            tracing::info!(conflict = %c.id, reason = %e, "record changed since review; parked again");
                            let changes =
                                conflict::detect(base, &source.fields, &target_in_source_space.fields);
                            commit.conflicts.push(ConflictRecord {
                                id: Uuid::new_v4(),
                                source_record: source.clone(),
                                target_record: target_in_source_space.clone(),
                                conflicting_fields: changes.conflicting,
                                strategy_applied: conflict::Strategy::Manual,
                                resolution: None,
                                status: conflict::ConflictStatus::Pending,
                                resolved_by: None,
                                created_at: Utc::now(),
                                resolved_at: None,
                                ..c.clone()
                            });
                            self.store.commit_page(commit).await?;
                            continue;
                        }
                    };
                    let now = Utc::now();
                    if !writes.to_target.is_empty() {
                        let mut fields = target_in_source_space.fields.clone();
                        fields.extend(writes.to_target.clone());
                        let update = TargetUpdate {
                            id: target.id.clone(),
                            fields,
                            current: target.fields.clone(),
                            current_in_source_ids: target_in_source_space.fields.clone(),
                            confirm: None,
                        };
                        let written = self.to_target_ids(tables, std::slice::from_ref(&update)).await?;
                        let updates: Vec<(String, Fields)> =
                            written.into_iter().map(|w| (w.id, w.fields)).collect();
                        let refused = self.target.update(&tables.target, &updates, now).await?;
                        refused_resolution(&self.target, c.entity_type.as_str(), refused)?;
                    }
                    if !writes.to_source.is_empty() {
                        let mut fields = source.fields.clone();
                        fields.extend(writes.to_source.clone());
                        tables
                            .refs
                            .ids_typed_for(Side::Source, &mut fields, &source_record.fields);
                        let refused = self
                            .source
                            .update(&tables.source, &[(source.id.clone(), fields)], now)
                            .await?;
                        refused_resolution(&self.source, c.entity_type.as_str(), refused)?;
                    }
                    commit.mappings.push(MappingWrite::Transition {
                        change: MappingChange::Confirm {
                            source_id: source.id.clone(),
                            target_id: target.id.clone(),
                            base: writes.base,
                        },
                        current: m,
                    });
                }
            }
            self.store.commit_page(commit).await?;
        }
        Ok(())
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
    task: tokio::task::JoinHandle<Result<Vec<IdMapping>, StoreError>>,
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

/// Resolves the fields of an entity on both systems: the field map renames,
/// every other column is a field of the same name, and only fields both
/// systems have are synced.
async fn bind_entity(
    def: &EntityDef,
    source: &Connector,
    target: &Connector,
) -> Result<EntityTables, RunError> {
    let entity = def.name.as_str();
    let mut sides = Vec::new();
    for (connector, pick) in [(source, Side::Source), (target, Side::Target)] {
        let table = def.table(pick);
        let columns = connector
            .columns(def, pick)
            .await?
            .ok_or_else(|| ConnectorError::MissingTable {
                system: connector.system().to_owned(),
                table: table.to_owned(),
                entity: entity.to_owned(),
            })?;
        if let Some(archive) = def
            .deletes
            .archive_column
            .as_ref()
            .filter(|_| pick == Side::Target)
            && !columns.contains_key(archive)
        {
            return Err(ConnectorError::MissingColumn {
                system: connector.system().to_owned(),
                table: table.to_owned(),
                column: archive.clone(),
                entity: entity.to_owned(),
                field: ", archive_column".into(),
            }
            .into());
        }
        let mut cdm_to_column: BTreeMap<String, String> = BTreeMap::new();
        for f in &def.fields {
            let column = f.native(pick);
            if !columns.contains_key(column) {
                return Err(ConnectorError::MissingColumn {
                    system: connector.system().to_owned(),
                    table: table.to_owned(),
                    column: column.to_owned(),
                    entity: entity.to_owned(),
                    field: format!(", field `{}`", f.cdm),
                }
                .into());
            }
            cdm_to_column.insert(f.cdm.clone(), column.to_owned());
        }
        let used: HashSet<String> = cdm_to_column.values().cloned().collect();
        let reserved = [
            syncd_connect::sql::ID_COLUMN,
            syncd_connect::sql::UPDATED_AT_COLUMN,
            def.idempotency_column.as_deref().unwrap_or(""),
            def.deletes.deleted_column(pick).unwrap_or(""),
            def.deletes.archive_column.as_deref().unwrap_or(""),
        ];
        for column in columns.keys() {
            if !used.contains(column) && !reserved.contains(&column.as_str()) {
                cdm_to_column
                    .entry(column.clone())
                    .or_insert_with(|| column.clone());
            }
        }
        sides.push((connector, columns, cdm_to_column, pick));
    }
    let shared: Vec<String> = sides[0]
        .2
        .keys()
        .filter(|k| sides[1].2.contains_key(*k))
        .cloned()
        .collect();
    // What each column holds, and the kind each field agrees on for both.
    let class = |i: usize, cdm: &str| {
        let (connector, columns, map, _) = &sides[i];
        connector.class_of(&columns[&map[cdm]])
    };
    let referenced = |cdm: &str| {
        def.fields
            .iter()
            .find(|f| f.cdm == cdm)
            .and_then(|f| f.references.as_ref())
            .map(|r| r.to_string())
    };
    // A reference holds ids: typed by the system it is in (below), not
    // agreed between the two sides.
    let kinds: HashMap<&str, Kind> = shared
        .iter()
        .map(|cdm| match referenced(cdm) {
            Some(_) => (cdm.as_str(), Kind::Any),
            None => (cdm.as_str(), Kind::agree(class(0, cdm), class(1, cdm))),
        })
        .collect();
    let mut numeric_references = HashMap::new();
    for cdm in &shared {
        let Some(entity) = referenced(cdm) else { continue };
        for (i, side) in [(0, Side::Source), (1, Side::Target)] {
            if let Some(numeric) = sides[i].0.numeric_ids(&entity, class(i, cdm)) {
                numeric_references.insert((cdm.clone(), side), numeric);
            }
        }
    }
    let mut bindings = Vec::new();
    for (connector, columns, map, pick) in &sides {
        let fields = shared
            .iter()
            .map(|cdm| FieldColumn {
                cdm: cdm.clone(),
                column: map[cdm].clone(),
                class: connector.class_of(&columns[&map[cdm]]),
                kind: kinds[cdm.as_str()],
            })
            .collect();
        bindings.push(connector.binding(def, *pick, columns.clone(), fields)?);
    }
    let target = bindings.pop().expect("two sides");
    let source = bindings.pop().expect("two sides");
    let references = def
        .fields
        .iter()
        .filter(|f| shared.contains(&f.cdm))
        .filter_map(|f| f.references.as_ref().map(|r| (f.cdm.clone(), r.to_string())))
        .collect();
    Ok(EntityTables {
        def: def.clone(),
        source,
        target,
        refs: References {
            entity: def.name.to_string(),
            fields: references,
            numeric: numeric_references,
        },
    })
}

/// A reviewer's resolution the system refused to store: the run stops with
/// the system's reason (the conflict stays resolved and is applied again).
fn refused_resolution(
    connector: &Connector,
    entity: &str,
    refused: Vec<(String, String)>,
) -> Result<(), RunError> {
    match refused.into_iter().next() {
        None => Ok(()),
        Some((id, reason)) => Err(ConnectorError::Http {
            system: connector.system().to_owned(),
            request: format!("update of {entity} `{id}`"),
            detail: format!("the resolution was refused: {reason}"),
        }
        .into()),
    }
}
