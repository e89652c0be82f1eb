//! `syncd run`: runs one integration for one tenant now, to its end or to
//! suspension, with progress on a terminal and a summary at the end.

use super::{CmdResult, open_store, runtime, steps_table};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use syncd_core::ids::{IntegrationId, TenantId};
use syncd_engine::run::RunState;
use syncd_engine::run::executor::{Job, Options, Progress, RunError};

/// Environment variable: how many seconds a worker's lease on a run lasts
/// without a heartbeat (default 30; a live worker renews it every third of
/// that). When a worker dies, its run waits this long before another
/// `syncd run` may continue it: shorter means a faster takeover after a
/// crash, at the price of more frequent heartbeats.
const LEASE_TTL_VAR: &str = "SYNCD_LEASE_TTL_SECS";

/// The lease TTL that [`LEASE_TTL_VAR`] sets, else `default`.
pub(super) fn lease_ttl(default: Duration) -> Result<Duration, String> {
    match std::env::var(LEASE_TTL_VAR) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(format!(
                "error: {LEASE_TTL_VAR} `{v}` is not a whole number of seconds above 0"
            )),
        },
    }
}

/// How long a run retries through transient faults: `SYNCD_RETRY_FOR`
/// (`90s`, `10m`, `0s` to fail at the first), else `default`.
pub(super) fn retry_for(default: Duration) -> Result<Duration, String> {
    match std::env::var("SYNCD_RETRY_FOR") {
        Err(_) => Ok(default),
        Ok(v) => syncd_core::deletes::parse_interval(&v).map_err(|e| format!("error: SYNCD_RETRY_FOR: {e}")),
    }
}

/// How often `syncd run` writes a progress line when stderr is not a
/// terminal: `SYNCD_PROGRESS_EVERY` (`10s` by default).
fn progress_every() -> Result<Duration, String> {
    match std::env::var("SYNCD_PROGRESS_EVERY") {
        Err(_) => Ok(Duration::from_secs(10)),
        Ok(v) => {
            syncd_core::deletes::parse_interval(&v).map_err(|e| format!("error: SYNCD_PROGRESS_EVERY: {e}"))
        }
    }
}

/// Runs `workflow` for `tenant`; `Ok` for a run that succeeded or suspended.
pub fn run(workflow: &Path, tenant: &str, page_size: u32, parallel: Option<usize>) -> CmdResult {
    let (wf, graph) = crate::cli::load(workflow, None).map_err(|e| e.to_string())?;
    let tenant = TenantId::from(tenant);
    if !wf.tenants.is_empty() && !wf.tenants.contains_key(&tenant) {
        let known: Vec<&str> = wf.tenants.keys().map(TenantId::as_str).collect();
        return Err(format!(
            "error: tenant `{tenant}` does not run integration `{}` (its tenants: {})",
            wf.name,
            known.join(", ")
        ));
    }
    runtime()?.block_on(async {
        let store = open_store().await?;
        if wf.tenants.is_empty() && !wf.tenants_kept_apart() {
            new_tenant_of_no_tenants(&store, &wf.name, &tenant).await?;
        }
        let defaults = Options::default();
        let options = Options {
            page_size,
            parallel: parallel.unwrap_or(defaults.parallel).max(1),
            lease_ttl: lease_ttl(defaults.lease_ttl)?,
            retry_for: retry_for(defaults.retry_for)?,
            ..defaults
        };
        let job = Job::prepare(store.clone(), wf, &graph, tenant, options)
            .await
            .map_err(|e| format!("error: {e}"))?;
        let state = execute(&job).await?;
        match state {
            RunState::Failed => Err("the run failed".into()),
            _ => Ok(()),
        }
    })
}

/// A definition that names no tenants syncs the same systems for any
/// tenant name: a name other than the one it has run for (a typo, say)
/// would take every record for new and copy it. Refused, naming the
/// tenants it ran for.
async fn new_tenant_of_no_tenants(
    store: &syncd_store::Store,
    integration: &IntegrationId,
    tenant: &TenantId,
) -> Result<(), String> {
    let filter = |tenant: Option<TenantId>, limit: u32| syncd_store::RunFilter {
        tenant,
        integration: Some(integration.clone()),
        limit,
        ..Default::default()
    };
    let error = |e: syncd_store::StoreError| format!("error: {e}");
    let own = store
        .list_runs(&filter(Some(tenant.clone()), 1))
        .await
        .map_err(error)?;
    if !own.is_empty() {
        return Ok(());
    }
    let others: std::collections::BTreeSet<String> = store
        .list_runs(&filter(None, 100))
        .await
        .map_err(error)?
        .into_iter()
        .map(|r| format!("`{}`", r.tenant_id))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(format!(
        "error: integration `{integration}` names no tenants and has run for {} only: tenant `{tenant}` would \
         sync the same systems again as a tenant of its own, taking every record for new and copying it \
         (a mistyped name?). Run it as that tenant, or name each tenant in `[tenants.NAME]` with its own \
         `urls` (or a `tenant_column` that keeps their rows apart)",
        others.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Starts (or continues) the job's run and prints its summary.
pub async fn execute(job: &Job) -> Result<RunState, String> {
    let run = job.start("manual").await.map_err(|e| format!("error: {e}"))?;
    let store: &Arc<syncd_store::Store> = job.store();
    println!(
        "run {} of `{}` for tenant `{}`",
        run.id, run.integration_id, run.tenant_id
    );
    if run.state == RunState::Suspended {
        // No new run: edits made since wait for the run after this one.
        eprintln!(
            "run {} is suspended (conflicts wait for review, or deletions for confirmation): no new run starts \
             until it ends; it goes on now with what has been decided (`syncd runs show {}`)",
            run.id, run.id
        );
    }
    let tty = std::io::stderr().is_terminal();
    let every = progress_every()?;
    // On a terminal, one line rewritten in place; else (a log file, a
    // pipe) a line when a step starts and at least every 10 s of a step.
    // By step: when it started and when its last line was logged (the
    // steps of one stage report in turns).
    let mut started: std::collections::HashMap<usize, std::time::Instant> = Default::default();
    let mut logged: std::collections::HashMap<usize, std::time::Instant> = Default::default();
    let mut report = |p: &Progress| {
        let now = std::time::Instant::now();
        let step_started = *started.entry(p.step).or_insert(now);
        let c = &p.counters;
        let secs = now.duration_since(step_started).as_secs_f64();
        // Off a terminal a step's first line comes as it starts: its
        // counts would all be zeros (the table at the end has the last).
        let first = !tty && !logged.contains_key(&p.step) && c.read == 0;
        let line = if first {
            format!(
                "[{}/{}] {} {}: started",
                p.step,
                p.steps,
                p.entity_type,
                p.direction.as_str()
            )
        } else {
            format!(
                "[{}/{}] {} {}: read {} created {} updated {} conflicts {} failed {} ({:.0} rec/s)",
                p.step,
                p.steps,
                p.entity_type,
                p.direction.as_str(),
                c.read,
                c.created,
                c.updated,
                c.conflicts + c.parked,
                c.failed,
                if secs > 0.0 { c.read as f64 / secs } else { 0.0 }
            )
        };
        if tty {
            eprint!("\r\x1b[K{line}");
            let _ = std::io::stderr().flush();
        } else if logged
            .get(&p.step)
            .is_none_or(|t| now.duration_since(*t) >= every)
        {
            // A log event (`syncd::progress`, shown at the default level):
            // text or JSON as the other logs are.
            tracing::info!(
                target: "syncd::progress",
                step = p.step,
                steps = p.steps,
                entity = %p.entity_type,
                direction = p.direction.as_str(),
                read = c.read,
                created = c.created,
                updated = c.updated,
                failed = c.failed,
                "{line}"
            );
            logged.insert(p.step, now);
        }
    };
    let result = job.execute(run.clone(), &mut report).await;
    if tty {
        eprintln!();
    }
    // Another process executes the run: its steps are that process's,
    // half done, and not this command's to print.
    if let Err(busy @ RunError::Busy { .. }) = &result {
        return Err(format!("error: {busy}"));
    }
    let steps = store
        .load_steps(run.id)
        .await
        .map_err(|e| format!("error: {e}"))?;
    print!("{}", steps_table(&steps));
    match result {
        Ok(done) => {
            println!("run {} {}", done.id, done.state);
            // Every record that failed, where an operator finds why.
            let failed: Vec<String> = steps
                .iter()
                .filter(|s| s.counters.failed > 0)
                .map(|s| {
                    format!(
                        "{} {} ({})",
                        s.counters.failed,
                        s.entity_type,
                        s.direction.as_str()
                    )
                })
                .collect();
            if !failed.is_empty() {
                // One command an entity, ready to paste.
                let mut entities: Vec<&str> = Vec::new();
                for s in steps.iter().filter(|s| s.counters.failed > 0) {
                    if !entities.contains(&s.entity_type.as_str()) {
                        entities.push(s.entity_type.as_str());
                    }
                }
                println!("records failed: {}; why:", failed.join(", "));
                for entity in entities {
                    println!(
                        "  syncd mappings list --tenant {} --integration {} --entity {entity} --status failed",
                        done.tenant_id, done.integration_id
                    );
                }
            }
            if done.state == RunState::Suspended {
                let holds = store
                    .run_holds(Some(&done.tenant_id), done.id)
                    .await
                    .map_err(|e| format!("error: {e}"))?;
                let pending = store
                    .pending_conflicts_of_run(&done.tenant_id, done.id)
                    .await
                    .map_err(|e| format!("error: {e}"))?;
                for hold in holds.iter().filter(|h| h.confirmed_at.is_none()) {
                    println!("held: {}", hold.reason());
                }
                if pending > 0 {
                    println!(
                        "{pending} conflicts wait for review: `syncd conflicts list --tenant {}`, then \
                         `syncd conflicts resolve ID --take source|target --by YOU` and `syncd runs resume {}`",
                        done.tenant_id, done.id
                    );
                }
            }
            Ok(done.state)
        }
        Err(e) => Err(format!("error: {e}")),
    }
}
