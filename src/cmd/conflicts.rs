//! `syncd conflicts list|show|resolve`: reviewers deciding manual
//! conflicts.

use super::{Access, CmdResult, find_conflict, open_store, runtime};
use serde_json::Value;
use syncd_core::conflict::{ConflictRecord, ConflictStatus, ReviewDecision, decided_values};
use syncd_store::ConflictFilter;

/// Prints conflicts, oldest first.
pub fn list(access: Access, status: Option<String>, entity: Option<String>, limit: u32) -> CmdResult {
    let status = match status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(
            s.parse::<ConflictStatus>()
                .map_err(|e| format!("error: --status: {e}"))?,
        ),
    };
    runtime()?.block_on(async {
        let store = open_store().await?;
        let list = store
            .list_conflicts(&ConflictFilter {
                tenant: access.confine(&store).await?,
                status,
                entity_type: entity,
                limit,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!(
            "{:<36} {:<10} {:<12} {:<14} {:<16} {:<9} fields",
            "conflict", "tenant", "entity", "source id", "strategy", "status"
        );
        for c in list {
            println!(
                "{:<36} {:<10} {:<12} {:<14} {:<16} {:<9} {}",
                c.id,
                c.tenant_id,
                c.entity_type,
                c.source_record.id,
                c.strategy_applied,
                c.status.as_str(),
                c.conflicting_fields.join(", ")
            );
        }
        Ok(())
    })
}

fn show_value(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The conflict side by side: base, source and target, with the conflicting
/// fields marked.
pub fn render(c: &ConflictRecord) -> String {
    let mut out = format!(
        "conflict {}\ntenant {}  integration {}  entity {}  status {}  strategy {}\n\
         source `{}` modified {}\ntarget `{}` modified {}\n",
        c.id,
        c.tenant_id,
        c.integration_id,
        c.entity_type,
        c.status.as_str(),
        c.strategy_applied,
        c.source_record.id,
        c.source_record.modified_at,
        c.target_record.id,
        c.target_record.modified_at,
    );
    let mut names: Vec<&String> = c
        .source_record
        .fields
        .keys()
        .chain(c.target_record.fields.keys())
        .collect();
    names.sort();
    names.dedup();
    out.push_str(&format!(
        "  {:<16} {:<24} {:<24} {:<24}\n",
        "field", "base", "source", "target"
    ));
    for name in names {
        let mark = if c.conflicting_fields.contains(name) {
            "*"
        } else {
            " "
        };
        out.push_str(&format!(
            "{mark} {:<16} {:<24} {:<24} {:<24}\n",
            name,
            show_value(c.base.as_ref().and_then(|b| b.get(name))),
            show_value(c.source_record.fields.get(name)),
            show_value(c.target_record.fields.get(name)),
        ));
    }
    if let Some(r) = &c.resolution {
        out.push_str(&format!(
            "resolution {} by {}\n",
            Value::Object(r.clone()),
            c.resolved_by.as_deref().unwrap_or("-")
        ));
        // A strategy's settlement is written as it is made; a reviewer's
        // is written by a run, which says what became of it.
        if c.resolved_by.as_deref() != Some("system") {
            out.push_str(&format!(
                "outcome {}\n",
                c.outcome.as_deref().unwrap_or("waiting for a run to apply it")
            ));
        }
    }
    out
}

/// Prints one conflict.
pub fn show(id: &str, access: Access) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let id = find_conflict(&store, tenant.as_ref(), id).await?;
        let c = store
            .load_conflict(tenant.as_ref(), id)
            .await
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: no conflict {id}"))?;
        print!("{}", render(&c));
        Ok(())
    })
}

/// Records a reviewer's decision. `take` is `source` or `target`; `values`
/// is a JSON object of field values.
pub fn resolve(id: &str, take: Option<&str>, values: Option<&str>, by: &str, access: Access) -> CmdResult {
    let decision = match (take, values) {
        (Some("source"), None) => ReviewDecision::TakeSource,
        (Some("target"), None) => ReviewDecision::TakeTarget,
        (None, Some(json)) => match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(map)) => ReviewDecision::Values(map),
            Ok(_) => return Err("error: --values must be a JSON object of field values".into()),
            Err(e) => return Err(format!("error: --values is not JSON: {e}")),
        },
        (Some(other), None) => return Err(format!("error: --take `{other}`: expected source or target")),
        _ => return Err("error: give exactly one of --take source|target or --values JSON".into()),
    };
    if by.trim().is_empty() {
        return Err("error: --by needs the reviewer's user id".into());
    }
    runtime()?.block_on(async {
        let store = open_store().await?;
        let tenant = access.confine(&store).await?;
        let id = find_conflict(&store, tenant.as_ref(), id).await?;
        let c = store
            .load_conflict(tenant.as_ref(), id)
            .await
            .map_err(|e| format!("error: {e}"))?
            .ok_or_else(|| format!("error: no conflict {id}"))?;
        let values = decided_values(&c, &decision).map_err(|e| format!("error: {e}"))?;
        let resolved = store
            .resolve_conflict(&c, &values, by)
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!(
            "conflict {} resolved by {by}: {}",
            resolved.id,
            Value::Object(values)
        );
        let run = match c.run_id {
            Some(run_id) => store
                .load_run(Some(&c.tenant_id), run_id)
                .await
                .map_err(|e| format!("error: {e}"))?,
            None => None,
        };
        match run {
            // Its run will not apply the decision: the next run does.
            Some(run) if !run.state.is_active() => println!(
                "run {} has ended ({}): the next run of `{}` for tenant `{}` applies this decision",
                run.id,
                run.state.as_str(),
                c.integration_id,
                c.tenant_id
            ),
            Some(run) => {
                let left = store
                    .pending_conflicts_of_run(&c.tenant_id, run.id)
                    .await
                    .map_err(|e| format!("error: {e}"))?;
                if left == 0 {
                    println!(
                        "run {0} has no pending conflicts left: a running `syncd worker` resumes it, \
                         or `syncd runs resume {0}` does here",
                        run.id
                    );
                }
            }
            None => println!(
                "the next run of `{}` for tenant `{}` applies this decision",
                c.integration_id, c.tenant_id
            ),
        }
        Ok(())
    })
}
