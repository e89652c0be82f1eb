//! The operator verbs of the CLI, one file a verb: each parses nothing
//! itself (clap did), opens what it needs, calls the library and prints.

pub mod conflicts;
pub mod demo;
pub mod mappings;
pub mod run;
pub mod runs;
pub mod serve;
pub mod worker;

use std::fmt::Write as _;
use std::sync::Arc;
use syncd_core::ids::TenantId;
use syncd_engine::api::TokenError;
use syncd_engine::run::{StepCheckpoint, StepDirection};
use syncd_store::cache::MappingCache;
use syncd_store::{Principal, Store, StoreConfig};

/// A CLI failure: the message to print.
pub type CmdResult = Result<(), String>;

/// Where a token comes from when `--token` is not given.
pub const TOKEN_VAR: &str = "SYNCD_TOKEN";

/// Whose objects an operator verb sees: `--tenant`, and the token of
/// `--token` (or [`TOKEN_VAR`]).
pub struct Access {
    tenant: Option<String>,
    token: Option<String>,
}

impl Access {
    /// `token` is `--token`; without it, [`TOKEN_VAR`] if set and not empty.
    pub fn new(tenant: Option<String>, token: Option<String>) -> Access {
        let token = token.or_else(|| std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty()));
        Access { tenant, token }
    }

    /// The tenant the verb is confined to (`None`: every tenant). A token is
    /// checked as the API checks a bearer token, and confines the verb to
    /// its tenant as the API does, so another tenant's object is "not
    /// found". Without a token the operator holds the database's
    /// credentials and sees what `--tenant` names, or every tenant.
    pub async fn confine(&self, store: &Store) -> Result<Option<TenantId>, String> {
        let principal = match &self.token {
            None => Principal::Admin,
            Some(token) => syncd_engine::api::principal(store, token).await.map_err(|e| match e {
                TokenError::Store(e) => format!("error: {e}"),
                TokenError::Missing => format!("error: --token or {TOKEN_VAR} is empty"),
                TokenError::Unknown => format!(
                    "error: --token or {TOKEN_VAR}: unknown token; tokens come from `syncd tokens create` on this store"
                ),
                e @ (TokenError::Revoked { .. } | TokenError::Expired { .. }) => {
                    format!("error: --token or {TOKEN_VAR}: {e}")
                }
            })?,
        };
        principal
            .confine(self.tenant.clone().map(TenantId::from))
            .map_err(|e| format!("error: --tenant: {e}"))
    }
}

/// The async runtime a one-shot verb runs on: one thread. A run executes
/// its steps a page at a time, so more worker threads would only hand its
/// tasks from thread to thread (`cargo bench --bench http`: syncd's CPU
/// beyond the HTTP calls 80 -> 50 µs a record).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("error: cannot start the async runtime: {e}"))
}

/// The runtime of the long-running verbs (`worker`, `serve`), whose API
/// answers many clients while runs execute: a thread per core.
pub fn server_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("error: cannot start the async runtime: {e}"))
}

/// The state store `--db` names, for this process.
static DB_FLAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Takes the state store's URL from `--db` (before any verb opens it).
pub fn set_db_flag(url: String) {
    let _ = DB_FLAG.set(url);
}

/// Where the state is, and how it was chosen: `--db`, else
/// `SYNCD_DATABASE_URL`, else `sqlite://syncd.db` in the current folder,
/// which is said on stderr (an operator in the wrong folder would
/// otherwise see "no runs" in a new, empty store).
pub fn state_config() -> StoreConfig {
    let mut config = StoreConfig::from_env();
    if let Some(url) = DB_FLAG.get() {
        config.database_url = url.clone();
    } else if std::env::var_os("SYNCD_DATABASE_URL").is_none() {
        let here = std::env::current_dir()
            .map(|d| d.join("syncd.db").display().to_string())
            .unwrap_or_else(|_| "syncd.db".into());
        eprintln!(
            "state: {} ({here}; --db and SYNCD_DATABASE_URL unset)",
            config.database_url
        );
    }
    config
}

/// Serves `/metrics` (no token: Prometheus's listener) on `bind`, in the
/// background, if given.
pub async fn serve_metrics(bind: Option<&str>, store: Arc<Store>) -> Result<(), String> {
    let Some(bind) = bind else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("error: cannot listen on {bind} for metrics: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, syncd_engine::api::metrics_router(store)).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

/// `text` as the start of a `what`'s id: at least 4 characters, each a hex
/// digit or a hyphen, as `runs list` and `conflicts list` print them.
fn id_prefix(text: &str, what: &str) -> Result<String, String> {
    match text.len() >= 4 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        true => Ok(text.to_ascii_lowercase()),
        false => Err(format!(
            "error: `{text}` is not a {what} id (give the whole id, or its first 4 or more characters)"
        )),
    }
}

/// The one id of `found` (the `what`s whose id starts with `text`).
fn the_one(text: &str, what: &str, found: &[uuid::Uuid]) -> Result<uuid::Uuid, String> {
    match found {
        [id] => Ok(*id),
        [] => Err(format!("error: no {what} id starts with `{text}`")),
        _ => Err(format!(
            "error: more than one {what} id starts with `{text}`: give more of it"
        )),
    }
}

/// The run an operator named by its whole id or by the start of it.
pub async fn find_run(store: &Store, tenant: Option<&TenantId>, text: &str) -> Result<uuid::Uuid, String> {
    if let Ok(id) = uuid::Uuid::parse_str(text) {
        return Ok(id);
    }
    let runs = store
        .list_runs(&syncd_store::RunFilter {
            tenant: tenant.cloned(),
            id_prefix: Some(id_prefix(text, "run")?),
            limit: 2,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("error: {e}"))?;
    the_one(text, "run", &runs.iter().map(|r| r.id).collect::<Vec<_>>())
}

/// The conflict a reviewer named by its whole id or by the start of it.
pub async fn find_conflict(
    store: &Store,
    tenant: Option<&TenantId>,
    text: &str,
) -> Result<uuid::Uuid, String> {
    if let Ok(id) = uuid::Uuid::parse_str(text) {
        return Ok(id);
    }
    let conflicts = store
        .list_conflicts(&syncd_store::ConflictFilter {
            tenant: tenant.cloned(),
            id_prefix: Some(id_prefix(text, "conflict")?),
            limit: 2,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("error: {e}"))?;
    the_one(
        text,
        "conflict",
        &conflicts.iter().map(|c| c.id).collect::<Vec<_>>(),
    )
}

/// The store named by `--db` or `SYNCD_DATABASE_URL` (default
/// `sqlite://syncd.db`, said on stderr), with the Redis cache of
/// `SYNCD_REDIS_URL` or the in-process one.
pub async fn open_store() -> Result<Arc<Store>, String> {
    let config = state_config();
    let cache = match std::env::var("SYNCD_REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let prefix = std::env::var("SYNCD_REDIS_PREFIX").unwrap_or_else(|_| "syncd".into());
            MappingCache::redis(&url, &prefix).map_err(|e| {
                format!(
                    "error: SYNCD_REDIS_URL `{}`: {}",
                    syncd_connect::redacted(&url),
                    e
                )
            })?
        }
        _ => MappingCache::local(),
    };
    Store::connect(&config, cache).await.map(Arc::new).map_err(|e| {
        format!(
            "error: store {}: {e}",
            syncd_connect::redacted(&config.database_url)
        )
    })
}

/// One line per step with its counters, under a header. The outcomes
/// (created through postponed) add up to `read`; `conflicts` and `deferred`
/// say more about some of the updated and created records.
pub fn steps_table(steps: &[StepCheckpoint]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<12} {:<9} {:<8} {:>7} {:>7} {:>7} {:>9} {:>6} {:>6} {:>7} {:>9} {:>9} {:>8}",
        "stage",
        "entity",
        "direction",
        "state",
        "read",
        "created",
        "updated",
        "unchanged",
        "parked",
        "failed",
        "skipped",
        "postponed",
        "conflicts",
        "deferred"
    );
    for s in steps.iter().filter(|s| s.direction != StepDirection::Delete) {
        let c = &s.counters;
        let _ = writeln!(
            out,
            "{:<5} {:<12} {:<9} {:<8} {:>7} {:>7} {:>7} {:>9} {:>6} {:>6} {:>7} {:>9} {:>9} {:>8}",
            s.stage,
            s.entity_type.as_str(),
            s.direction.as_str(),
            s.state.as_str(),
            c.read,
            c.created,
            c.updated,
            c.unchanged,
            c.parked,
            c.failed,
            c.skipped,
            c.postponed,
            c.conflicts,
            c.deferred
        );
    }
    // Delete steps count other things: what was found gone and done.
    let deletes: Vec<&StepCheckpoint> = steps
        .iter()
        .filter(|s| s.direction == StepDirection::Delete)
        .collect();
    if deletes.iter().any(|s| s.counters != Default::default()) {
        let _ = writeln!(
            out,
            "{:<5} {:<12} {:<9} {:<8} {:>7} {:>7} {:>8} {:>7} {:>9} {:>6} {:>7}",
            "stage",
            "entity",
            "deletes",
            "state",
            "checked",
            "deleted",
            "archived",
            "stale",
            "recreated",
            "failed",
            "skipped"
        );
        for s in deletes {
            let c = &s.counters;
            let _ = writeln!(
                out,
                "{:<5} {:<12} {:<9} {:<8} {:>7} {:>7} {:>8} {:>7} {:>9} {:>6} {:>7}",
                s.stage,
                s.entity_type.as_str(),
                "",
                s.state.as_str(),
                c.read,
                c.deleted,
                c.archived,
                c.stale,
                c.recreated,
                c.failed,
                c.skipped
            );
        }
    }
    out
}
