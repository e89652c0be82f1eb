//! Run control through the API: starting a run (which a worker then
//! executes) and what the scheduler fires next, both confined to the
//! token's tenant like every other endpoint.

use super::{ApiError, ApiResult, AppState};
use crate::run::executor::{RunError, create_run};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::{Extension, extract::Query};
use serde::Deserialize;
use serde_json::{Value, json};
use syncd_core::ids::TenantId;
use syncd_store::{Principal, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRun {
    integration: String,
    /// The tenant to run for: a tenant token's own (which may be left
    /// out); an admin token must say.
    tenant: Option<String>,
}

/// `POST /api/runs`: plans a run of an integration for a tenant (201 with
/// the run); a worker serving the integration executes it. An integration
/// the tenant does not run answers 404, as one that does not exist; one
/// with an active run for the tenant answers 409 naming it.
pub(super) async fn start_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<StartRun>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let tenant = match (who.tenant(), body.tenant) {
        (Some(own), Some(asked)) if own.as_str() != asked => return Err(ApiError::not_found("integration")),
        (Some(own), _) => own.clone(),
        (None, Some(asked)) => TenantId::from(asked.as_str()),
        (None, None) => return Err(ApiError::bad("an admin token must say which `tenant` to run for")),
    };
    let definition = s
        .definitions
        .iter()
        .find(|d| d.workflow.name.as_str() == body.integration)
        // An integration that names no tenants is an operator's: a tenant
        // token could otherwise run it, under its own name, on systems
        // that are not its own.
        .filter(|d| match d.workflow.tenants.is_empty() {
            true => who.tenant().is_none(),
            false => d.workflow.tenants.contains_key(&tenant),
        })
        .ok_or_else(|| ApiError::not_found("integration"))?;
    let plan = definition
        .workflow
        .graph_within(&definition.graph)
        .map_err(|e| ApiError::bad(e.to_string()))?
        .stages()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    match create_run(&s.store, &definition.workflow, &plan, &tenant, "api").await {
        Ok(run) => Ok((StatusCode::CREATED, Json(json!({ "run": run })))),
        Err(RunError::Store(StoreError::ActiveRun { run_id, .. })) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("run {run_id} of this integration is still active for tenant `{tenant}`"),
        )),
        Err(RunError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::bad(e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleQuery {
    integration: Option<String>,
}

/// `GET /api/schedules`: each schedule the workers keep (of the token's
/// tenant), with its next tick and how late it is when overdue.
pub(super) async fn list_schedules(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    q: Result<Query<ScheduleQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let now = chrono::Utc::now();
    let schedules: Vec<Value> = s
        .store
        .list_schedules(who.tenant())
        .await?
        .into_iter()
        .filter(|sc| {
            q.integration
                .as_deref()
                .is_none_or(|i| sc.integration_id.as_str() == i)
        })
        .map(|sc| {
            let late = (now - sc.next_fire_at).num_milliseconds().max(0) as f64 / 1000.0;
            json!({
                "tenant": sc.tenant_id,
                "integration": sc.integration_id,
                "cron": sc.cron,
                "next_fire_at": sc.next_fire_at,
                "late_seconds": late,
            })
        })
        .collect();
    Ok(Json(json!({ "schedules": schedules })))
}
