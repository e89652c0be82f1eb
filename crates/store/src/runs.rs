//! Runs and steps through the store: creation, transitions (conditional, as the core's state machines allow), leases, resumes and schedules.

use super::*;

impl Store {
    /// Every step checkpoint of a run, in plan order.
    pub async fn load_steps(&self, run_id: Uuid) -> Result<Vec<StepCheckpoint>, StoreError> {
        on_backend!(self, b => b.load_steps(run_id).await)
    }

    /// Marks a step of `run` as executing (`pending`, or after a crash
    /// `running`, becomes `running`), so that a failure of the run is
    /// recorded on it. Fenced by `lease` like a page's commit (a worker
    /// that lost the run writes nothing); refused when the step is done.
    pub async fn start_step(
        &self,
        run: &RunRow,
        step: &PlannedStep,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let event = StepEvent::Page;
        let before = step_states_before(event);
        let now = Utc::now();
        let state =
            on_backend!(self, b => b.set_step_state(run, step, lease, event.target(), &before, now).await?);
        match state {
            None => Ok(()),
            Some(state) => Err(step_changed(
                run.id,
                (&step.entity_type, step.direction),
                event.target(),
                Some(state),
            )),
        }
    }

    /// Inserts a `planned` run and its steps (as `pending`). Refused with
    /// [`StoreError::ActiveRun`] when the tenant already has an active run of
    /// the integration.
    pub async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
        match on_backend!(self, b => b.create_run(run, steps).await) {
            Err(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
                let active = self.active_run(&run.tenant_id, &run.integration_id).await?;
                Err(StoreError::ActiveRun {
                    tenant: run.tenant_id.to_string(),
                    integration: run.integration_id.to_string(),
                    run_id: active.map(|r| r.id).unwrap_or_default(),
                })
            }
            other => other,
        }
    }

    /// The planned, running or suspended run of `integration` for `tenant`.
    pub async fn active_run(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
    ) -> Result<Option<RunRow>, StoreError> {
        let filter = RunFilter {
            tenant: Some(tenant.clone()),
            integration: Some(integration.clone()),
            limit: 10,
            ..Default::default()
        };
        Ok(self
            .list_runs(&filter)
            .await?
            .into_iter()
            .find(|r| r.state.is_active()))
    }

    /// One run; `tenant` restricts the lookup to that tenant's runs.
    pub async fn load_run(&self, tenant: Option<&TenantId>, id: Uuid) -> Result<Option<RunRow>, StoreError> {
        on_backend!(self, b => b.load_run(tenant, id).await)
    }

    /// Runs matching `filter`, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        on_backend!(self, b => b.list_runs(filter).await)
    }

    /// Moves `run` (as read) by `event`: the core decides, the update is
    /// conditional on the state that was read.
    pub async fn transition_run(
        &self,
        run: &RunRow,
        event: RunEvent,
        error: Option<&str>,
    ) -> Result<RunRow, StoreError> {
        let (to, steps) = run
            .state
            .step(event)
            .map_err(|source| StoreError::RunTransition {
                run_id: run.id,
                source,
            })?;
        let now = Utc::now();
        let finished = (!to.is_active()).then_some(now);
        let change = RunChange {
            to,
            error,
            now,
            finished,
            steps,
        };
        let moved = on_backend!(self, b => b.set_run_state(run, &change).await?);
        if !moved {
            return Err(StoreError::RunChanged {
                run_id: run.id,
                expected: run.state,
            });
        }
        Ok(RunRow {
            state: to,
            error: error.map(str::to_owned).or_else(|| run.error.clone()),
            updated_at: now,
            finished_at: finished,
            ..run.clone()
        })
    }

    /// Claims `run` for `worker_id` for `ttl`, unless another worker holds
    /// an unexpired lease. Returns whether the lease is now ours.
    pub async fn claim_lease(
        &self,
        run: &RunRow,
        worker_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        on_backend!(self, b => b.claim_lease(run, worker_id, now, expires).await)
    }

    /// Extends a held lease; `false` means it was lost.
    pub async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        on_backend!(self, b => b.heartbeat(lease, now, expires).await)
    }

    /// Gives a lease up, so another worker may continue at once.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        on_backend!(self, b => b.release_lease(lease).await)
    }

    /// The worker holding an unexpired lease on `run_id`, and until when.
    pub async fn lease_holder(&self, run_id: Uuid) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.lease_holder(run_id, now).await)
    }

    /// Whether an operator may resume `run` now: the core decides
    /// ([`syncd_core::run::may_resume`]) from its pending conflicts and lease.
    pub async fn check_resume(&self, run: &RunRow) -> Result<(), StoreError> {
        let pending = self.pending_conflicts_of_run(&run.tenant_id, run.id).await?;
        let holder = self.lease_holder(run.id).await?;
        let newer = match run.state {
            RunState::Failed => self
                .list_runs(&RunFilter {
                    tenant: Some(run.tenant_id.clone()),
                    integration: Some(run.integration_id.clone()),
                    limit: 1,
                    ..Default::default()
                })
                .await?
                .into_iter()
                .next()
                .map(|latest| latest.id)
                .filter(|latest| *latest != run.id),
            _ => None,
        };
        let held = self
            .run_holds(Some(&run.tenant_id), run.id)
            .await?
            .iter()
            .any(|h| h.confirmed_at.is_none());
        syncd_core::run::may_resume(
            run.id,
            run.state,
            pending,
            holder.as_ref().map(|(w, _)| w.as_str()),
            held,
            newer,
        )
        .map_err(|source| StoreError::NotResumable {
            run_id: run.id,
            source,
        })
    }

    /// Records `error` on `run` without changing its state: why a run
    /// that waits (planned) could not start yet.
    pub async fn note_run_error(&self, run: &RunRow, error: &str) -> Result<(), StoreError> {
        let change = RunChange {
            to: run.state,
            error: Some(error),
            now: Utc::now(),
            finished: run.finished_at,
            steps: None,
        };
        on_backend!(self, b => b.set_run_state(run, &change).await)?;
        Ok(())
    }

    /// A failed run made active again (`running`, with its checkpoints), for
    /// a resume; any other run as it is.
    pub async fn reopen(&self, run: &RunRow) -> Result<RunRow, StoreError> {
        match run.state {
            RunState::Failed => self.transition_run(run, RunEvent::Resume, None).await,
            _ => Ok(run.clone()),
        }
    }

    /// An operator's resume, carried out by a worker: checks that `run` may
    /// be resumed, then wakes the workers listening on [`RESUME_CHANNEL`]
    /// (on SQLite workers find it when they next poll). The worker makes the
    /// transition when it claims the run.
    pub async fn request_resume(&self, run: &RunRow) -> Result<(), StoreError> {
        self.check_resume(run).await?;
        self.reopen(run).await?;
        if let Backend::Postgres(b) = &self.backend {
            b.notify_resume(run.id).await?;
        }
        Ok(())
    }

    /// Subscribes to [`RESUME_CHANNEL`] on a connection of its own, named
    /// `application_name`; `None` on SQLite, which has no notifications.
    pub async fn listen_for_resumes(
        &self,
        application_name: &str,
    ) -> Option<Result<ResumeListener, StoreError>> {
        match &self.backend {
            Backend::Postgres(b) => Some(
                b.listen_for_resumes(application_name)
                    .await
                    .map(|(listener, schema)| ResumeListener { listener, schema }),
            ),
            Backend::Sqlite(_) => None,
        }
    }

    /// Records `cron` as the schedule of `integration` for `tenant`. A new
    /// schedule, or one whose expression changed, next fires at `first`.
    pub async fn ensure_schedule(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
        cron: &str,
        first: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.ensure_schedule(tenant, integration, cron, first).await)
    }

    /// How many runs (of `tenant`, when given) are in each state, counted
    /// by the database (`GROUP BY`); states without runs are absent.
    pub async fn runs_by_state(&self, tenant: Option<&TenantId>) -> Result<Vec<(String, u64)>, StoreError> {
        on_backend!(self, b => b.runs_by_state(tenant).await)
    }

    /// When each integration of each tenant last ended a run that
    /// succeeded, and one that failed: for alerts on an integration that
    /// fails, or has not succeeded for a while.
    pub async fn run_ends(&self) -> Result<Vec<crate::RunEnds>, StoreError> {
        on_backend!(self, b => b.run_ends().await)
    }

    /// How many conflicts (of `tenant`, when given) wait for a reviewer.
    pub async fn pending_conflicts(&self, tenant: Option<&TenantId>) -> Result<u64, StoreError> {
        on_backend!(self, b => b.pending_conflicts(tenant).await)
    }

    /// Every schedule (of `tenant`, when given), soonest first: what the
    /// workers will fire next.
    pub async fn list_schedules(&self, tenant: Option<&TenantId>) -> Result<Vec<Schedule>, StoreError> {
        on_backend!(self, b => b.list_schedules(tenant).await)
    }

    /// Schedules whose next fire time is at or before `now`.
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, StoreError> {
        on_backend!(self, b => b.due_schedules(now).await)
    }

    /// Fires the tick `due` of a schedule and moves it on to `next`, unless
    /// another scheduler already did: `false` then. The tick is recorded in
    /// `schedule_fires`, whose key makes each tick fire at most once.
    pub async fn fire_schedule(&self, schedule: &Schedule, next: DateTime<Utc>) -> Result<bool, StoreError> {
        on_backend!(self, b => b.fire_schedule(schedule, next).await)
    }

    /// Links a fired tick to the run it started.
    pub async fn set_fire_run(&self, schedule: &Schedule, run_id: Uuid) -> Result<(), StoreError> {
        on_backend!(self, b => b.set_fire_run(schedule, run_id).await)
    }

    /// Runs of `integrations` a worker may execute now: planned or running
    /// runs that no live lease holds, and suspended runs whose conflicts are
    /// all decided and that no unconfirmed mass-deletion hold stops.
    pub async fn runs_to_execute(
        &self,
        integrations: &[&str],
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.runs_to_execute(integrations, now, limit).await)
    }
}

/// The event a checkpoint in `state` records.
pub(super) fn checkpoint_event(state: StepState) -> StepEvent {
    match state {
        StepState::Done => StepEvent::Finish,
        _ => StepEvent::Page,
    }
}

/// `'a', 'b'`: the names of the states `event` leads from, for an SQL
/// `IN (...)` that makes a step's write conditional on the core's rules.
pub(super) fn step_states_before(event: StepEvent) -> String {
    StepState::before(event)
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The refusal of a step write (a checkpoint, a start) the step's row no
/// longer allows: it is in `state` (or missing), which does not lead to `to`.
pub(super) fn step_changed(
    run_id: Uuid,
    step: (&syncd_core::ids::EntityType, StepDirection),
    to: StepState,
    state: Option<String>,
) -> StoreError {
    StoreError::StepChanged {
        run_id,
        entity_type: step.0.to_string(),
        direction: step.1.as_str().to_owned(),
        state: state.unwrap_or_else(|| "missing".into()),
        to,
    }
}
