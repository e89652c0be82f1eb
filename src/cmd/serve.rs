//! `syncd serve` and `syncd tokens create`: the HTTP API and its tokens.

use super::{CmdResult, open_store, runtime, server_runtime};
use crate::store::Principal;

/// Serves the API on `bind` until SIGTERM or SIGINT.
pub fn serve(bind: &str) -> CmdResult {
    server_runtime()?.block_on(async {
        let store = open_store().await?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| format!("error: cannot listen on {bind}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("syncd API on http://{addr}");
        axum::serve(listener, crate::api::router(store))
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

/// Creates a token for `tenant`, or an admin token, and prints it once.
pub fn create_token(tenant: Option<String>, admin: bool) -> CmdResult {
    let principal = match (tenant, admin) {
        (Some(t), false) if !t.trim().is_empty() => Principal::Tenant(t.into()),
        (None, true) => Principal::Admin,
        _ => return Err("error: give --tenant T or --admin".into()),
    };
    runtime()?.block_on(async {
        let store = open_store().await?;
        let token = store
            .create_token(&principal)
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!("{token}");
        eprintln!("store it now: only its hash is kept");
        Ok(())
    })
}
