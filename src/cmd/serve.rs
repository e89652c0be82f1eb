//! `syncd serve` and `syncd tokens`: the HTTP API and its tokens (create, list, revoke).

use super::{CmdResult, open_store, runtime, server_runtime};
use std::path::Path;
use syncd_store::Principal;

/// Serves the API on `bind` until SIGTERM or SIGINT; runs of the
/// definitions in `workflows` may be started through it.
pub fn serve(bind: &str, workflows: &Path, metrics_bind: Option<&str>) -> CmdResult {
    let definitions = match super::worker::definitions(workflows) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}: no run can be started through the API (POST /api/runs)");
            Vec::new()
        }
    };
    server_runtime()?.block_on(async {
        let store = open_store().await?;
        super::serve_metrics(metrics_bind, store.clone()).await?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| format!("error: cannot listen on {bind}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("syncd API on http://{addr}");
        axum::serve(listener, syncd_engine::api::router_with(store, definitions))
            .with_graceful_shutdown(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await
            .map_err(|e| format!("error: {e}"))
    })
}

/// Creates a token for `tenant`, or an admin token, valid for
/// `expires_in` when given, and prints it once. A tenant that no definition
/// in `workflows` names is a typo until `force` says otherwise.
pub fn create_token(
    tenant: Option<String>,
    admin: bool,
    expires_in: Option<&str>,
    workflows: &Path,
    force: bool,
    holder: Option<&str>,
) -> CmdResult {
    let holder = holder.map(str::trim);
    if holder.is_some_and(|h| h.is_empty() || h.len() > 200) {
        return Err("error: --holder: a name (a reviewer's user id), at most 200 characters".into());
    }
    let principal = match (tenant, admin) {
        (Some(t), false) if !t.trim().is_empty() => Principal::Tenant(t.into()),
        (None, true) => Principal::Admin,
        _ => return Err("error: give --tenant T or --admin".into()),
    };
    let expires_at = match expires_in {
        None => None,
        Some(s) => {
            let d =
                syncd_core::deletes::parse_interval(s).map_err(|e| format!("error: --expires-in: {e}"))?;
            if d.is_zero() {
                return Err(format!(
                    "error: --expires-in `{s}`: the token would be expired as it is created; give a \
                     positive interval (`12h`, `30d`), or none for a token valid until revoked"
                ));
            }
            let d = chrono::Duration::from_std(d).map_err(|e| format!("error: --expires-in: {e}"))?;
            Some(
                chrono::Utc::now()
                    .checked_add_signed(d)
                    .ok_or_else(|| format!("error: --expires-in `{s}` is too far"))?,
            )
        }
    };
    if let (Principal::Tenant(t), false) = (&principal, force) {
        let named = tenants_named(workflows)?;
        if !named.contains(t.as_str()) {
            return Err(format!(
                "error: no definition in {} names tenant `{t}` (tenants there: {}); check the name, or \
                 --force to create the token all the same",
                workflows.display(),
                if named.is_empty() {
                    "none".to_owned()
                } else {
                    named.into_iter().collect::<Vec<_>>().join(", ")
                }
            ));
        }
    }
    runtime()?.block_on(async {
        let store = open_store().await?;
        let (token, info) = store
            .create_token_for(&principal, expires_at, holder)
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!("{token}");
        match info.expires_at {
            Some(at) => eprintln!(
                "store it now: only its hash is kept; `{}` expires at {at}",
                info.prefix
            ),
            None => eprintln!(
                "store it now: only its hash is kept; `syncd tokens revoke {}` ends it",
                info.prefix
            ),
        }
        Ok(())
    })
}

/// The tenants the definitions in `dir` name.
fn tenants_named(dir: &Path) -> Result<std::collections::BTreeSet<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "error: {}: {e}; name the folder of definitions with --workflows, or --force",
            dir.display()
        )
    })?;
    let mut named = std::collections::BTreeSet::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_some_and(|x| x == "toml")
            && let Ok((workflow, _)) = crate::cli::load(&path, None)
        {
            named.extend(workflow.tenants.keys().map(|t| t.as_str().to_owned()));
        }
    }
    Ok(named)
}

/// Prints every token as stored: never the secret.
pub fn list_tokens() -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tokens = store.list_tokens().await.map_err(|e| format!("error: {e}"))?;
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or("-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        };
        println!(
            "{:<16} {:<16} {:<20} {:<20} {:<20} {:<20} {:<36} holder",
            "token", "tenant", "created", "last used", "expires", "revoked", "id"
        );
        for t in tokens {
            println!(
                "{:<16} {:<16} {:<20} {:<20} {:<20} {:<20} {:<36} {}",
                if t.prefix.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{}…", t.prefix)
                },
                if t.admin { "(admin)" } else { t.tenant.as_str() },
                time(Some(t.created_at)),
                time(t.last_used_at),
                time(t.expires_at),
                time(t.revoked_at),
                t.id,
                t.holder.as_deref().unwrap_or("-")
            );
        }
        Ok(())
    })
}

/// Revokes the token `name` (its prefix or id).
pub fn revoke_token(name: &str) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        match store.revoke_token(name.trim_end_matches('…')).await {
            Ok(Some(t)) => {
                println!(
                    "revoked `{}…` ({})",
                    t.prefix,
                    if t.admin { "admin" } else { &t.tenant }
                );
                Ok(())
            }
            Ok(None) => Err(format!("error: no token `{name}` (see `syncd tokens list`)")),
            Err(e) => Err(format!("error: {e}")),
        }
    })
}
