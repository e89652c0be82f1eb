//! The API bench's store: three tenants' runs, steps and conflicts.

use super::*;

/// Writes `conflicts` a page at a time.
pub(super) async fn insert(store: &Store, conflicts: Vec<ConflictRecord>) -> Result<(), BenchError> {
    let mut conflicts = conflicts.into_iter().peekable();
    while conflicts.peek().is_some() {
        let page: Vec<ConflictRecord> = conflicts.by_ref().take(SEED_PAGE).collect();
        store
            .commit_page(PageCommit {
                conflicts: page,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Creates a run the way the scheduler does, starts it and marks every
/// step done with counters; returns it running.
pub(super) async fn started_run(
    store: &Store,
    workflow: &Workflow,
    plan: &Plan,
    tenant: &str,
    n: usize,
) -> Result<(syncd_store::RunRow, usize, u64), BenchError> {
    let run = create_run(store, workflow, plan, &TenantId::from(tenant), "schedule").await?;
    let run = store.transition_run(&run, RunEvent::Start, None).await?;
    let steps = store.load_steps(run.id).await?;
    let (count, mut read) = (steps.len(), 0);
    for (s, mut step) in steps.into_iter().enumerate() {
        let r = 200 + (n * 31 + s * 17) as u64 % 800;
        step.state = StepState::Done;
        step.cursor = Some(json!({ "after": format!("2026-01-01T00:00:{:02}Z", s), "id": format!("X{r}") }));
        step.counters = StepCounters {
            read: r,
            created: r / 10,
            updated: r / 4,
            unchanged: r - r / 10 - r / 4 - r / 20,
            conflicts: r / 20,
            parked: r / 40,
            ..StepCounters::default()
        };
        read += r;
        store
            .commit_page(PageCommit {
                checkpoint: Some(step),
                ..Default::default()
            })
            .await?;
    }
    Ok((run, count, read))
}

/// Seeds every tenant with the same shape of data, interleaved in time:
/// runs round by round, resolved conflicts with the runs that found them,
/// pending ones page by page across tenants.
pub(super) async fn seed(store: &Store) -> Result<Seeded, BenchError> {
    let tenants: Vec<&str> = std::iter::once(TENANT).chain(OTHER_TENANTS).collect();
    let def = definition(&workflow(
        "sqlite://unused-source.db",
        "sqlite://unused-target.db",
        &tenants,
        None,
    ))?;
    let plan = def.graph.stages().map_err(RunError::from)?;
    let mut conflicts = Conflicts {
        made: 0,
        since: Utc::now() - chrono::Duration::days(30),
    };
    let succeeded = RUNS - 2;
    let mut runs = Vec::new();
    let mut suspended = Vec::new();
    for n in 0..RUNS {
        for &tenant in &tenants {
            let (run, steps, read) = started_run(store, &def.workflow, &plan, tenant, n).await?;
            let run = if n < succeeded {
                let resolved = (0..RESOLVED / succeeded)
                    .map(|_| conflicts.make(tenant, run.id, ConflictStatus::Resolved))
                    .collect();
                insert(store, resolved).await?;
                store.transition_run(&run, RunEvent::Succeed, None).await?
            } else if n == succeeded {
                store
                    .transition_run(
                        &run,
                        RunEvent::Fail,
                        Some("erp: connection refused (os error 111)"),
                    )
                    .await?
            } else {
                suspended.push(run.clone());
                run
            };
            if tenant == TENANT {
                runs.push(ExpectedRun {
                    id: run.id,
                    state: run.state,
                    steps,
                    read,
                    pending: 0,
                });
            }
        }
    }
    let mut first_page = Vec::new();
    for _ in (0..PENDING).step_by(SEED_PAGE) {
        for run in &suspended {
            let page: Vec<ConflictRecord> = (0..SEED_PAGE)
                .map(|_| conflicts.make(run.tenant_id.as_str(), run.id, ConflictStatus::Pending))
                .collect();
            if run.tenant_id.as_str() == TENANT && first_page.len() < LISTING_PAGE {
                first_page.extend(page.iter().take(LISTING_PAGE - first_page.len()).map(|c| c.id));
            }
            insert(store, page).await?;
        }
    }
    for run in &suspended {
        store.transition_run(run, RunEvent::Suspend, None).await?;
    }
    let last = runs.last_mut().expect("RUNS > 0");
    last.state = RunState::Suspended;
    last.pending = PENDING as u64;
    Ok(Seeded { first_page, runs })
}
