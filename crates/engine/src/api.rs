//! The HTTP API for operators and reviewers (`syncd serve`).
//!
//! Every request but `/healthz` carries a bearer token; a token speaks for
//! one tenant (or is an admin token), and every query is filtered by that
//! tenant, so another tenant's run or conflict answers 404 exactly like one
//! that does not exist. Every error is JSON with a 4xx status; a 5xx means
//! the store itself failed.

mod control;

use crate::run::RunEvent;
use crate::worker::Definition;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use syncd_core::conflict::decided_values;
use syncd_core::conflict::{ConflictStatus, ReviewDecision};
use syncd_core::ids::{EntityScope, TenantId};
use syncd_core::record::{Fields, Side};
use syncd_store::{ConflictFilter, Principal, RunFilter, Store, StoreError, TokenCheck};
use uuid::Uuid;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API error: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn not_found(what: &str) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::ConflictNotPending { .. }
            | StoreError::RunTransition { .. }
            | StoreError::RunChanged { .. }
            | StoreError::NotResumable { .. } => ApiError(StatusCode::CONFLICT, e.to_string()),
            StoreError::TooLarge { .. } => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            other => {
                tracing::error!(error = %other, "store error in the API");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the store failed; see the server log".into(),
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, r.body_text())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The server's shared state.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// The integrations runs may be started of (`POST /api/runs`).
    pub definitions: Arc<Vec<Definition>>,
}

/// The API's routes, without definitions: runs cannot be started.
pub fn router(store: Arc<Store>) -> Router {
    router_with(store, Vec::new())
}

/// The API's routes; runs of `definitions` may be started through it.
pub fn router_with(store: Arc<Store>, definitions: Vec<Definition>) -> Router {
    let state = AppState {
        store,
        definitions: Arc::new(definitions),
    };
    let api = Router::new()
        .route("/api/runs", get(list_runs).post(control::start_run))
        .route("/api/schedules", get(control::list_schedules))
        .route("/api/me", get(me))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/resume", post(resume_run))
        .route("/api/conflicts", get(list_conflicts))
        .route("/api/conflicts/{id}", get(show_conflict))
        .route("/api/conflicts/{id}/resolve", post(resolve_conflict))
        .route("/api/mappings", get(lookup_mapping))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/review", get(review_page))
        .route("/review.js", get(review_script))
        .route("/review.css", get(review_style))
        .merge(api)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The review page: static HTML whose script asks for a token and calls
/// this API, so the page itself holds no data.
async fn review_page() -> Response {
    review_file("text/html; charset=utf-8", include_str!("review.html"))
}

async fn review_script() -> Response {
    review_file("text/javascript; charset=utf-8", include_str!("review.js"))
}

async fn review_style() -> Response {
    review_file("text/css; charset=utf-8", include_str!("review.css"))
}

/// What the review page allows itself: its own script, style and API, no
/// inline code, no frames around it (a page that decides conflicts must
/// not be clickjacked), no referrer.
const REVIEW_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn review_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, REVIEW_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("unknown token")]
    Unknown,
    #[error("token `{prefix}…` was revoked at {at}")]
    Revoked {
        prefix: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[error("token `{prefix}…` expired at {at}")]
    Expired {
        prefix: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The [`Principal`] a token speaks for, checked against the stored
/// hashes; the API's middleware and the operator CLI's `--token` both ask
/// here.
pub async fn principal(store: &Store, token: &str) -> Result<Principal, TokenError> {
    Ok(principal_and_holder(store, token).await?.0)
}

/// The holder a token names (`tokens create --holder`), for the handlers:
/// a reviewer's decisions are recorded under it.
#[derive(Clone, Debug)]
pub struct Holder(pub Option<String>);

/// [`principal`], with the token's holder.
async fn principal_and_holder(store: &Store, token: &str) -> Result<(Principal, Option<String>), TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > 200 {
        return Err(TokenError::Unknown);
    }
    match store.check_token(token).await? {
        (TokenCheck::Valid(principal), holder) => Ok((principal, holder)),
        (TokenCheck::Unknown, _) => Err(TokenError::Unknown),
        (TokenCheck::Revoked { prefix, at }, _) => Err(TokenError::Revoked { prefix, at }),
        (TokenCheck::Expired { prefix, at }, _) => Err(TokenError::Expired { prefix, at }),
    }
}

/// Resolves the bearer token into a [`Principal`] for the handlers.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("")
        .to_owned();
    match principal_and_holder(&state.store, &token).await {
        Ok((principal, holder)) => {
            request.extensions_mut().insert(principal);
            request.extensions_mut().insert(Holder(holder));
            next.run(request).await
        }
        Err(TokenError::Store(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError(StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header's value; the
/// scheme's name is case-insensitive (RFC 7235 §2.1), so `bearer` is
/// Bearer too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found(what))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunQuery {
    state: Option<String>,
    integration: Option<String>,
    limit: Option<u32>,
}

async fn list_runs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<RunQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let state = q.state.map(|v| v.parse().map_err(ApiError::bad)).transpose()?;
    let runs = s
        .store
        .list_runs(&RunFilter {
            tenant: who.tenant().cloned(),
            integration: q.integration.map(Into::into),
            state,
            limit: q.limit.unwrap_or(50).min(1000),
            id_prefix: None,
        })
        .await?;
    Ok(Json(json!({ "runs": runs })))
}

async fn show_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id, "run")?;
    let run = s
        .store
        .load_run(who.tenant(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    let steps = s.store.load_steps(run.id).await?;
    let pending = s.store.pending_conflicts_of_run(&run.tenant_id, run.id).await?;
    Ok(Json(
        json!({ "run": run, "steps": steps, "pending_conflicts": pending }),
    ))
}

async fn cancel_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id, "run")?;
    let run = s
        .store
        .load_run(who.tenant(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    let run = s
        .store
        .transition_run(&run, RunEvent::Cancel, Some("cancelled through the API"))
        .await?;
    Ok(Json(json!({ "run": run })))
}

/// Hands a run to the workers (202): a suspended run whose conflicts are
/// all decided, or a planned or interrupted one that no worker holds. The
/// worker that claims it makes the transition and applies the resolutions.
async fn resume_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id, "run")?;
    let run = s
        .store
        .load_run(who.tenant(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    s.store.request_resume(&run).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": run, "message": "a worker resumes the run" })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictQuery {
    status: Option<String>,
    entity: Option<String>,
    run: Option<Uuid>,
    limit: Option<u32>,
}

async fn list_conflicts(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<ConflictQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let status = match q.status.as_deref() {
        None => Some(ConflictStatus::Pending),
        Some("all") => None,
        Some(v) => Some(v.parse().map_err(ApiError::bad)?),
    };
    let conflicts = s
        .store
        .list_conflicts(&ConflictFilter {
            tenant: who.tenant().cloned(),
            status,
            entity_type: q.entity,
            run_id: q.run,
            limit: q.limit.unwrap_or(100).min(1000),
            id_prefix: None,
        })
        .await?;
    let conflicts: Vec<Value> = conflicts.iter().map(|c| with_context(&s, c)).collect();
    Ok(Json(json!({ "conflicts": conflicts })))
}

/// A conflict as the API shows it: the record, and the names of the two
/// systems when this server has the integration's definition.
fn with_context(s: &AppState, c: &syncd_core::conflict::ConflictRecord) -> Value {
    let mut v = json!(c);
    if let Some(d) = s.definitions.iter().find(|d| d.workflow.name == c.integration_id) {
        v["systems"] = json!({ "source": d.workflow.source.name, "target": d.workflow.target.name });
    }
    v
}

/// `GET /api/me`: what the token speaks for, and who holds it.
async fn me(Extension(who): Extension<Principal>, Extension(Holder(holder)): Extension<Holder>) -> ApiResult {
    Ok(Json(json!({
        "tenant": who.tenant(),
        "admin": who.tenant().is_none(),
        "holder": holder,
    })))
}

async fn show_conflict(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id, "conflict")?;
    let c = s
        .store
        .load_conflict(who.tenant(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("conflict"))?;
    Ok(Json(json!({ "conflict": with_context(&s, &c) })))
}

/// A reviewer's decision: `take` a side, or give `values`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    take: Option<String>,
    values: Option<Fields>,
    /// The reviewer's user id; a token that names its holder says it.
    by: Option<String>,
}

async fn resolve_conflict(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Extension(Holder(holder)): Extension<Holder>,
    Path(id): Path<String>,
    body: Result<Json<Resolve>, JsonRejection>,
) -> ApiResult {
    let id = parse_id(&id, "conflict")?;
    let Json(body) = body?;
    let decision = match (body.take.as_deref(), body.values) {
        (Some("source"), None) => ReviewDecision::TakeSource,
        (Some("target"), None) => ReviewDecision::TakeTarget,
        (Some(side), None) => {
            let side: String = side.chars().take(40).collect();
            return Err(ApiError::bad(format!(
                "unknown side `{side}` in `take`: take `source` or `target`"
            )));
        }
        (None, Some(values)) => ReviewDecision::Values(values),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "give `take` (source or target) or `values`, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad("give `take` (source or target) or `values`"));
        }
    };
    let by = match (&holder, body.by.as_deref().map(str::trim)) {
        (Some(h), Some(by)) if by != h => {
            return Err(ApiError::bad(format!(
                "this token is `{h}`'s: its decisions are recorded under that name, not `{by}`"
            )));
        }
        (Some(h), _) => h.as_str(),
        (None, Some(by)) => by,
        (None, None) => "",
    };
    if by.is_empty() || by.len() > 200 {
        return Err(ApiError::bad(
            "`by` must be the reviewer's user id (or create the token with --holder)",
        ));
    }
    let c = s
        .store
        .load_conflict(who.tenant(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("conflict"))?;
    let values = decided_values(&c, &decision).map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let resolved = s.store.resolve_conflict(&c, &values, by).await?;
    Ok(Json(json!({ "conflict": resolved })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingQuery {
    tenant: Option<String>,
    integration: String,
    entity: String,
    source_id: Option<String>,
    target_id: Option<String>,
}

async fn lookup_mapping(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<MappingQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let tenant = match who.confine(q.tenant.map(TenantId)) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(ApiError::bad("admin tokens must name the `tenant`")),
        Err(_) => return Err(ApiError::not_found("mapping")),
    };
    let (side, id) = match (q.source_id, q.target_id) {
        (Some(id), None) => (Side::Source, id),
        (None, Some(id)) => (Side::Target, id),
        _ => return Err(ApiError::bad("give exactly one of `source_id` or `target_id`")),
    };
    let scope = EntityScope::new(tenant, q.integration, q.entity);
    let found = s.store.find_mapping(&scope, side, &id).await?;
    let m = found.ok_or_else(|| ApiError::not_found("mapping"))?;
    Ok(Json(json!({ "mapping": m })))
}

/// `/metrics` on the API: the whole process's metrics, so an admin
/// token's only (a tenant token gets 403); Prometheus scrapes the
/// `--metrics-bind` listener instead, which needs no token.
async fn metrics(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    if who.tenant().is_some() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "metrics cover every tenant: use an admin token, or the --metrics-bind listener".into(),
        ));
    }
    Ok(metrics_response(&s.store).await?)
}

/// Sets the gauges a scrape reads from the store (runs by state, counted
/// by the database; pending conflicts; each schedule's lag) and answers
/// every metric as Prometheus text.
pub async fn metrics_response(store: &Store) -> Result<Response, StoreError> {
    let m = syncd_metrics::metrics();
    let counted = store.runs_by_state(None).await?;
    for state in crate::run::RunState::ALL {
        let n = counted
            .iter()
            .find(|(s, _)| *s == state.to_string())
            .map_or(0, |(_, n)| *n);
        m.runs
            .get_or_create(&vec![("state", state.to_string())])
            .set(n as i64);
    }
    m.conflicts_pending
        .set(store.pending_conflicts(None).await? as i64);
    let now = chrono::Utc::now();
    for s in store.list_schedules(None).await? {
        let late = (now - s.next_fire_at).num_milliseconds().max(0) as f64 / 1000.0;
        m.schedule_lag
            .get_or_create(&vec![
                ("tenant", s.tenant_id.to_string()),
                ("integration", s.integration_id.to_string()),
            ])
            .set(late);
    }
    for ends in store.run_ends().await? {
        let labels = vec![
            ("tenant", ends.tenant.to_string()),
            ("integration", ends.integration.clone()),
        ];
        if let Some(at) = ends.succeeded {
            m.last_success
                .get_or_create(&labels)
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
        let failing = ends.failed.is_some_and(|f| ends.succeeded.is_none_or(|s| f > s));
        m.failing.get_or_create(&labels).set(i64::from(failing));
    }
    Ok((
        [(header::CONTENT_TYPE, syncd_metrics::CONTENT_TYPE)],
        syncd_metrics::text(),
    )
        .into_response())
}

/// A router with `/metrics` only, without tokens: for a listener of its
/// own (`--metrics-bind`), reachable by Prometheus and not by tenants.
pub fn metrics_router(store: Arc<Store>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let store = store.clone();
            async move { metrics_response(&store).await.map_err(ApiError::from) }
        }),
    )
}
