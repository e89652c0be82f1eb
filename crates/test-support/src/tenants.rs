//! Two tenants holding the same kinds of objects, for tests of tenant
//! isolation: for each of `a` and `b`, a suspended run of `crm-to-erp`
//! with one pending conflict on an order, and that order's mapping
//! (`{tenant}-O-1` ⇄ `{tenant}-T-1`).
#![allow(dead_code)]

use chrono::Utc;
use serde_json::{Value, json};
use syncd_core::conflict::{ConflictRecord, ConflictStatus, Strategy};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::IdMapping;
use syncd_core::record::{Fields, Record};
use syncd_engine::run::RunState;
use syncd_store::{MappingWrite, PageCommit, RunRow, Store};
use uuid::Uuid;

fn fields(v: Value) -> Fields {
    v.as_object().unwrap().clone()
}

/// A random id whose text starts with `prefix` (4 hex digits).
fn id_starting(prefix: u16) -> Uuid {
    Uuid::from_u128(u128::from(prefix) << 112 | Uuid::new_v4().as_u128() & ((1 << 112) - 1))
}

/// Seeds tenants `a` and `b`; returns (run id, conflict id) of each. The
/// two runs' ids start with `5eed`, the two conflicts' with `c0f1`.
pub async fn seed(store: &Store) -> [(Uuid, Uuid); 2] {
    let mut ids = Vec::new();
    for tenant in ["a", "b"] {
        let run = RunRow {
            id: id_starting(0x5eed),
            tenant_id: tenant.into(),
            integration_id: "crm-to-erp".into(),
            state: RunState::Suspended,
            plan: json!({}),
            trigger: "manual".into(),
            error: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
        };
        store.create_run(&run, &[]).await.unwrap();
        let conflict = ConflictRecord {
            id: id_starting(0xc0f1),
            tenant_id: tenant.into(),
            integration_id: "crm-to-erp".into(),
            entity_type: "order".into(),
            run_id: Some(run.id),
            source_record: Record {
                id: format!("{tenant}-O-1"),
                fields: fields(json!({"status": "cancelled", "total": 10})),
                modified_at: Utc::now(),
            },
            target_record: Record {
                id: format!("{tenant}-T-1"),
                fields: fields(json!({"status": "invoiced", "total": 10})),
                modified_at: Utc::now(),
            },
            base: Some(fields(json!({"status": "open", "total": 10}))),
            conflicting_fields: vec!["status".into()],
            strategy_applied: Strategy::Manual,
            resolution: None,
            status: ConflictStatus::Pending,
            resolved_by: None,
            created_at: Utc::now(),
            resolved_at: None,
            outcome: None,
        };
        let mapping = IdMapping::reserve(
            Uuid::new_v4(),
            EntityScope::new(tenant, "crm-to-erp", "order"),
            Some(format!("{tenant}-O-1")),
            Some(format!("{tenant}-T-1")),
            "k".into(),
            Utc::now(),
        );
        store
            .commit_page(PageCommit {
                mappings: vec![MappingWrite::Insert(mapping)],
                conflicts: vec![conflict.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push((run.id, conflict.id));
    }
    [ids[0], ids[1]]
}
