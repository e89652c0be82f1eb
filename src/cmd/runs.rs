//! `syncd runs list|show|resume|cancel`: operators watching and steering
//! runs.

use super::{Access, CmdResult, find_run, open_store, runtime, steps_table};
use std::path::{Path, PathBuf};
use syncd_engine::run::executor::{Job, Options};
use syncd_engine::run::{RunEvent, RunState};
use syncd_store::RunFilter;

/// Prints runs, newest first.
pub fn list(access: Access, state: Option<String>, limit: u32) -> CmdResult {
    let state = state
        .map(|s| s.parse::<RunState>().map_err(|e| format!("error: --state: {e}")))
        .transpose()?;
    runtime()?.block_on(async {
        let store = open_store().await?;
        let runs = store
            .list_runs(&RunFilter {
                tenant: access.confine(&store).await?,
                state,
                limit,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!(
            "{:<36} {:<12} {:<20} {:<10} {:<8} created",
            "run", "tenant", "integration", "state", "trigger"
        );
        for r in runs {
            println!(
                "{:<36} {:<12} {:<20} {:<10} {:<8} {}",
                r.id,
                r.tenant_id,
                r.integration_id,
                r.state,
                r.trigger,
                r.created_at.format("%Y-%m-%d %H:%M:%S")
            );
        }
        Ok(())
    })
}

/// Prints the schedules the workers keep, soonest first: the next tick,
/// and how late it is when overdue (no worker firing it).
pub fn schedules(access: Access) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let schedules = store
            .list_schedules(tenant.as_ref())
            .await
            .map_err(|e| format!("error: {e}"))?;
        let now = chrono::Utc::now();
        println!(
            "{:<12} {:<20} {:<16} {:<20} late",
            "tenant", "integration", "cron", "next fire (UTC)"
        );
        for s in schedules {
            let late = (now - s.next_fire_at).num_seconds();
            println!(
                "{:<12} {:<20} {:<16} {:<20} {}",
                s.tenant_id,
                s.integration_id,
                s.cron,
                s.next_fire_at.format("%Y-%m-%d %H:%M:%S"),
                if late > 0 { format!("{late}s") } else { "-".into() }
            );
        }
        Ok(())
    })
}

/// Prints one run with its steps and pending conflicts.
pub fn show(id: &str, access: Access) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let id = find_run(&store, tenant.as_ref(), id).await?;
        let run = store
            .load_run(tenant.as_ref(), id)
            .await
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: no run {id}"))?;
        println!("run         {}", run.id);
        println!("tenant      {}", run.tenant_id);
        println!("integration {}", run.integration_id);
        println!("state       {}", run.state);
        println!("trigger     {}", run.trigger);
        println!("created     {}", run.created_at);
        if let Some(f) = run.finished_at {
            println!("finished    {f}");
        }
        if let Some(e) = &run.error {
            println!("error       {e}");
        }
        match store
            .lease_holder(run.id)
            .await
            .map_err(|e| format!("error: {e}"))?
        {
            Some((worker, until)) => println!("lease       {worker} until {until}"),
            // Its process is gone (killed, or its machine): nothing moves
            // it on until someone does.
            None if run.state == RunState::Running => println!(
                "lease       none: no process is executing it; a worker serving its definition continues it, \
                 or `syncd runs resume {} --workflows DIR` does here",
                run.id
            ),
            None => {}
        }
        let steps = store
            .load_steps(run.id)
            .await
            .map_err(|e| format!("error: {e}"))?;
        print!("{}", steps_table(&steps));
        let pending = store
            .pending_conflicts_of_run(&run.tenant_id, run.id)
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!("pending conflicts: {pending}");
        for hold in store
            .run_holds(tenant.as_ref(), run.id)
            .await
            .map_err(|e| format!("error: {e}"))?
        {
            match (&hold.confirmed_by, hold.confirmed_at) {
                (Some(by), Some(at)) => println!(
                    "deletes confirmed: {} `{}` records, by {by} at {at}",
                    hold.count, hold.entity_type
                ),
                _ => println!("held: {}", hold.reason()),
            }
        }
        Ok(())
    })
}

/// Confirms the deletions a held run counted.
pub fn confirm_deletes(id: &str, access: Access, by: &str) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let id = find_run(&store, tenant.as_ref(), id).await?;
        let run = store
            .load_run(tenant.as_ref(), id)
            .await
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: no run {id}"))?;
        let confirmed = store
            .confirm_deletes(tenant.as_ref(), run.id, by)
            .await
            .map_err(|e| format!("error: {e}"))?;
        if confirmed.is_empty() {
            return Err(format!(
                "error: run {} is {} and not held by the mass-deletion brake; nothing to confirm",
                run.id, run.state
            ));
        }
        for h in confirmed {
            println!(
                "confirmed: run {} may delete or mark stale {} `{}` records; it resumes with the next worker poll \
                 (or `syncd runs resume {}`)",
                run.id, h.count, h.entity_type, run.id
            );
        }
        Ok(())
    })
}

/// Finds the definition of integration `name` among `dir/*.toml`.
pub fn find_workflow(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "error: {}: {e}; name the folder of definitions with --workflows",
            dir.display()
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Ok(wf) = syncd_core::workflow::Workflow::parse(&file.display().to_string(), &text)
            && wf.name.as_str() == name
        {
            return Ok(file);
        }
    }
    Err(format!(
        "error: no definition of integration `{name}` in {}",
        dir.display()
    ))
}

/// Resumes a suspended run whose conflicts are all decided (or continues
/// an interrupted one) here and now: applies reviewed resolutions and
/// finishes it. Refused like the API's resume.
pub fn resume(id: &str, workflows: &Path, access: Access) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let id = find_run(&store, tenant.as_ref(), id).await?;
        let run = store
            .load_run(tenant.as_ref(), id)
            .await
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: no run {id}"))?;
        store
            .check_resume(&run)
            .await
            .map_err(|e| format!("error: {e}"))?;
        let file = find_workflow(workflows, run.integration_id.as_str())?;
        let (wf, graph) = crate::cli::load(&file, None).map_err(|e| e.to_string())?;
        let defaults = Options::default();
        let options = Options {
            lease_ttl: super::run::lease_ttl(defaults.lease_ttl)?,
            retry_for: super::run::retry_for(defaults.retry_for)?,
            ..defaults
        };
        let job = Job::prepare(store.clone(), wf, &graph, run.tenant_id.clone(), options)
            .await
            .map_err(|e| format!("error: {e}"))?;
        // Reopened only once it can go on: a definition that no longer
        // loads leaves a failed run failed.
        store.reopen(&run).await.map_err(|e| format!("error: {e}"))?;
        match super::run::execute(&job).await? {
            RunState::Failed => Err("the run failed".into()),
            _ => Ok(()),
        }
    })
}

/// Cancels an active run.
pub fn cancel(id: &str, access: Access) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let id = find_run(&store, tenant.as_ref(), id).await?;
        let run = store
            .load_run(tenant.as_ref(), id)
            .await
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: no run {id}"))?;
        if !run.state.is_active() {
            return Err(format!(
                "error: run {id} has ended ({}): there is nothing to cancel",
                run.state
            ));
        }
        let run = store
            .transition_run(&run, RunEvent::Cancel, Some("cancelled by an operator"))
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!("run {} {}", run.id, run.state);
        Ok(())
    })
}
