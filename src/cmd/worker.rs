//! `syncd worker`: fires schedules and executes runs until SIGTERM or
//! SIGINT, then lets the page in flight commit and gives its lease back.

use super::{CmdResult, open_store, server_runtime};
use std::path::Path;
use std::time::Duration;
use syncd_engine::run::executor::Options;
use syncd_engine::worker::{Definition, Worker};

/// Loads every valid definition in `dir`; invalid ones are reported and
/// left out, so one broken file does not stop the others.
pub(super) fn definitions(dir: &Path) -> Result<Vec<Definition>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| {
            format!(
                "error: {}: {e}; name the folder of definitions with --workflows",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut loaded: Vec<(std::path::PathBuf, Definition)> = Vec::new();
    for file in files {
        match crate::cli::load(&file, None) {
            Ok((workflow, graph)) => loaded.push((file, Definition { workflow, graph })),
            Err(e) => eprintln!("{e}\n{}: left out", file.display()),
        }
    }
    // One definition an integration: a copy left beside its original would
    // otherwise be served in its place, or not at all, without a word. The
    // file named after the integration wins, else the first.
    let named_after = |f: &std::path::Path, name: &str| f.file_stem().is_some_and(|s| s == name);
    let mut out: Vec<(std::path::PathBuf, Definition)> = Vec::new();
    for (file, d) in loaded {
        let name = d.workflow.name.as_str().to_owned();
        match out.iter_mut().find(|(_, o)| o.workflow.name.as_str() == name) {
            None => out.push((file, d)),
            Some(kept) => {
                let takes_over = named_after(&file, &name) && !named_after(&kept.0, &name);
                let left = match takes_over {
                    true => std::mem::replace(kept, (file, d)).0,
                    false => file,
                };
                eprintln!(
                    "error: {}: integration `{name}` is already defined by {}: left out (give it a name of its own)",
                    left.display(),
                    kept.0.display()
                );
            }
        }
    }
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

/// Serves the definitions in `workflows`.
pub fn worker(
    workflows: &Path,
    poll_ms: u64,
    worker_id: Option<String>,
    metrics_bind: Option<&str>,
) -> CmdResult {
    let definitions = definitions(workflows)?;
    if definitions.is_empty() {
        return Err(format!(
            "error: no valid workflow definition in {}",
            workflows.display()
        ));
    }
    server_runtime()?.block_on(async {
        let store = open_store().await?;
        super::serve_metrics(metrics_bind, store.clone()).await?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let defaults = Options::default();
        let options = Options {
            lease_ttl: super::run::lease_ttl(defaults.lease_ttl)?,
            retry_for: super::run::retry_for(defaults.retry_for)?,
            worker_id: worker_id.unwrap_or(defaults.worker_id.clone()),
            shutdown: Some(shutdown.clone()),
            ..defaults
        };
        println!(
            "worker {} serving {} integration(s) from {}",
            options.worker_id,
            definitions.len(),
            workflows.display()
        );
        let worker = Worker {
            store,
            definitions,
            options,
            poll: Duration::from_millis(poll_ms),
            clock: std::sync::Arc::new(syncd_core::clock::SystemClock),
        };
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("shutting down: finishing the page in flight");
            let _ = stop.send(true);
        });
        worker.serve(shutdown).await.map_err(|e| format!("error: {e}"))?;
        println!("worker stopped");
        Ok(())
    })
}
