//! `syncd worker`: the long-running process that fires schedules and
//! executes runs.
//!
//! Any number of workers may share one store. They coordinate only through
//! it: a tick fires in the worker whose conditional update moves the
//! schedule on (and the tick's row in `schedule_fires` is unique), and a run
//! executes in the worker whose lease claim succeeds. A worker that dies
//! leaves a lease that expires; the next worker continues the run from its
//! last checkpoint. Shutdown stops claiming, lets the page in flight commit,
//! and gives the lease back.
//!
//! An idle worker polls the store every `poll`. On PostgreSQL it also
//! listens on [`RESUME_CHANNEL`], so a run whose last conflict a reviewer
//! just decided resumes at once rather than at the next poll; polling stays
//! the fallback when the listener's connection is lost, and the only way on
//! SQLite.

use crate::run::executor::{Job, Options, RunError, create_run};
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncd_core::clock::Clock;
use syncd_core::ids::TenantId;
use syncd_core::plan::DependencyGraph;
use syncd_core::schedule::{next_after, schedule_of};
use syncd_core::workflow::Workflow;
use syncd_store::{RESUME_CHANNEL, ResumeListener, ResumeSignal, Store, StoreError};
use tokio::sync::{Notify, watch};

/// First wait before listening again after the listener failed; it doubles
/// up to [`RELISTEN_MAX`] while the failures go on.
const RELISTEN_MIN: Duration = Duration::from_millis(500);
const RELISTEN_MAX: Duration = Duration::from_secs(30);

/// A definition a worker serves, with the graph it plans with.
pub struct Definition {
    pub workflow: Workflow,
    pub graph: DependencyGraph,
}

/// One worker.
pub struct Worker {
    pub store: Arc<Store>,
    pub definitions: Vec<Definition>,
    pub options: Options,
    /// How long to wait when there is nothing to do.
    pub poll: Duration,
    /// What schedules fire by ([`SystemClock`](syncd_core::clock::SystemClock)
    /// but in tests).
    pub clock: Arc<dyn Clock>,
}

impl Worker {
    fn definition(&self, integration: &str) -> Option<&Definition> {
        self.definitions
            .iter()
            .find(|d| d.workflow.name.as_str() == integration)
    }

    /// Stores the schedules of every definition and tenant.
    pub async fn register_schedules(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        for d in &self.definitions {
            for tenant in d.workflow.tenants.keys() {
                let Some(cron) = schedule_of(&d.workflow, tenant) else {
                    continue;
                };
                let Some(first) = next_after(cron, now) else {
                    continue;
                };
                self.store
                    .ensure_schedule(tenant, &d.workflow.name, &cron.expression, first)
                    .await?;
            }
        }
        Ok(())
    }

    /// Fires the schedules that are due; returns how many runs started.
    pub async fn fire_due(&self) -> Result<usize, RunError> {
        let now = self.clock.now();
        let mut started = 0;
        for due in self.store.due_schedules(now).await? {
            let Some(d) = self.definition(due.integration_id.as_str()) else {
                continue;
            };
            let Some(cron) = schedule_of(&d.workflow, &due.tenant_id) else {
                continue;
            };
            let Some(next) = next_after(cron, now) else {
                continue;
            };
            if !self.store.fire_schedule(&due, next).await? {
                continue; // another worker fired this tick
            }
            let plan = d.workflow.graph_within(&d.graph)?.stages()?;
            match create_run(&self.store, &d.workflow, &plan, &due.tenant_id, "schedule").await {
                Ok(run) => {
                    self.store.set_fire_run(&due, run.id).await?;
                    tracing::info!(run_id = %run.id, tenant = %due.tenant_id, integration = %due.integration_id,
                        tick = %due.next_fire_at, "schedule fired");
                    started += 1;
                }
                Err(RunError::Store(StoreError::ActiveRun { run_id, .. })) => {
                    // A suspended run holds up every later one of the
                    // integration: said at each tick, with what it waits for.
                    let suspended = matches!(
                        self.store.load_run(Some(&due.tenant_id), run_id).await,
                        Ok(Some(r)) if r.state == syncd_core::run::RunState::Suspended
                    );
                    if suspended {
                        tracing::warn!(%run_id, tenant = %due.tenant_id, integration = %due.integration_id,
                            "tick skipped: run {run_id} is suspended, waiting for conflict decisions or confirmed \
                             deletions (`syncd runs show {run_id}`); no run of the integration starts until it ends");
                    } else {
                        tracing::info!(%run_id, tenant = %due.tenant_id, integration = %due.integration_id,
                            "tick skipped: a run is still active");
                    }
                }
                // Refused for this integration (an entity renamed in its
                // definition): the others' ticks go on.
                Err(RunError::Refused(why)) => {
                    tracing::error!(tenant = %due.tenant_id, integration = %due.integration_id, "tick skipped: {why}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }

    /// Executes one run that is ready, if any; returns whether it did.
    pub async fn execute_one(&self) -> Result<bool, RunError> {
        // Only runs of integrations defined here: a run of another one
        // (a removed definition, or a worker serving another directory)
        // must not fill the page and starve the runs this worker can do.
        let served: Vec<&str> = self
            .definitions
            .iter()
            .map(|d| d.workflow.name.as_str())
            .collect();
        for run in self.store.runs_to_execute(&served, 10).await? {
            let Some(d) = self.definition(run.integration_id.as_str()) else {
                tracing::warn!(run_id = %run.id, integration = %run.integration_id,
                    "no definition for this run's integration here");
                continue;
            };
            let tenant = TenantId::from(run.tenant_id.as_str());
            let job = match Job::prepare(
                self.store.clone(),
                d.workflow.clone(),
                &d.graph,
                tenant,
                self.options.clone(),
            )
            .await
            {
                Ok(job) => job,
                // A system out of reach: the run waits, planned, with the
                // reason on it for operators, and is tried at the next poll,
                // for as long as a run rides out an outage (`retry_for`).
                // What no waiting mends (a table missing, a login or a
                // definition refused), and an outage past that, fails it:
                // the next tick starts another.
                Err(e) => {
                    let said = e.to_string();
                    let waited = (chrono::Utc::now() - run.created_at).to_std().unwrap_or_default();
                    if !e.is_transient() || waited >= self.options.retry_for {
                        tracing::error!(run_id = %run.id, tenant = %run.tenant_id, integration = %run.integration_id,
                            error = %e, "the run cannot start: it fails");
                        // (Another worker may have moved it first.)
                        if let Err(moved) = self
                            .store
                            .transition_run(&run, syncd_core::run::RunEvent::Fail, Some(&said))
                            .await
                        {
                            tracing::debug!(run_id = %run.id, error = %moved, "the run moved on meanwhile");
                        }
                        continue;
                    }
                    // Said when the reason changes, not at every poll.
                    if run.error.as_deref() != Some(said.as_str()) {
                        tracing::warn!(run_id = %run.id, tenant = %run.tenant_id,
                            integration = %run.integration_id, error = %e, "the run cannot start yet; it waits");
                    } else {
                        tracing::debug!(run_id = %run.id, error = %e, "the run still cannot start");
                    }
                    self.store.note_run_error(&run, &said).await?;
                    continue;
                }
            };
            match job.execute(run.clone(), &mut |_| {}).await {
                Ok(done) => {
                    tracing::info!(run_id = %done.id, state = %done.state, "run executed");
                    return Ok(true);
                }
                Err(RunError::Busy { .. }) => continue, // another worker claimed it first
                Err(RunError::Interrupted { .. }) => return Ok(true),
                // The executor logged a failure within the run's span; this
                // says the run did not finish, whatever stopped it.
                Err(e) => {
                    tracing::warn!(run_id = %run.id, error = %e, "run did not finish");
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Serves until `shutdown` turns true.
    pub async fn serve(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
        self.register_schedules().await?;
        let wake = Arc::new(Notify::new());
        let _listening = self.listen_for_resumes(wake.clone()).await;
        while !*shutdown.borrow() {
            if let Err(e) = self.fire_due().await {
                tracing::error!(error = %e, "scheduler");
            }
            let busy = match self.execute_one().await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::error!(error = %e, "executor");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        Ok(())
    }

    /// Starts the task that wakes the loop through `wake` on every
    /// announcement on [`RESUME_CHANNEL`]; `None` on SQLite. The first
    /// subscription is made before this returns, so nothing announced after
    /// the loop's first look for work is missed.
    async fn listen_for_resumes(&self, wake: Arc<Notify>) -> Option<Listening> {
        let name = format!("syncd worker {}", self.options.worker_id);
        let first = self.store.listen_for_resumes(&name).await?;
        let resubscribe = Resubscribe {
            store: self.store.clone(),
            name,
            wake,
        };
        Some(Listening(tokio::spawn(resubscribe.run(first))))
    }
}

/// The listener task of a worker; it ends with the worker.
struct Listening(tokio::task::JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a worker subscribed to [`RESUME_CHANNEL`]: a lost connection is
/// logged and subscribed again, with a growing pause while it keeps failing;
/// the worker polls meanwhile, and looks for work each time the
/// subscription is back, since announcements made without it are lost.
struct Resubscribe {
    store: Arc<Store>,
    name: String,
    wake: Arc<Notify>,
}

impl Resubscribe {
    async fn run(self, first: Result<ResumeListener, StoreError>) {
        let mut listener = self.report(first);
        let mut pause = RELISTEN_MIN;
        let mut last_reconnect: Option<Instant> = None;
        loop {
            let Some(l) = listener.as_mut() else {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RELISTEN_MAX);
                let Some(again) = self.store.listen_for_resumes(&self.name).await else {
                    return;
                };
                listener = self.report(again);
                if listener.is_some() {
                    tracing::info!(channel = RESUME_CHANNEL, "listening for resumed runs again");
                    self.wake.notify_one();
                }
                continue;
            };
            match l.recv().await {
                Ok(ResumeSignal::Run(run_id)) => {
                    tracing::debug!(%run_id, "run announced for resuming");
                    pause = RELISTEN_MIN;
                    self.wake.notify_one();
                }
                Ok(ResumeSignal::Reconnected) => {
                    tracing::warn!(
                        channel = RESUME_CHANNEL,
                        "listener connection lost and re-established"
                    );
                    self.wake.notify_one();
                    // A connection dropped again at once: do not spin.
                    if last_reconnect.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RELISTEN_MAX);
                    }
                    last_reconnect = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, channel = RESUME_CHANNEL,
                        "listener connection lost; polling until it is back");
                    listener = None;
                }
            }
        }
    }

    fn report(&self, subscribed: Result<ResumeListener, StoreError>) -> Option<ResumeListener> {
        subscribed
            .map_err(|e| {
                tracing::warn!(error = %e, channel = RESUME_CHANNEL,
                    "cannot listen for resumed runs; polling until it can")
            })
            .ok()
    }
}
