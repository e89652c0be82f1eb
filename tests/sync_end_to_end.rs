//! Whole runs between two real databases: every record arrives once with its
//! references translated, a second run writes nothing, and bad input fails
//! clearly without touching what is synced.

use syncd_test_support as support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use support::systems::{
    Kind, ReviewScenario, SystemDb, crm_rows, suspended_on_review, sync_once, ts, workflow_toml,
};
use support::{PgSchema, RedisPrefix, TempDir};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::MappingStatus;
use syncd_core::record::Side;
use syncd_engine::run::RunState;
use syncd_store::cache::MappingCache;
use syncd_store::{DEFAULT_MAX_SNAPSHOT_BYTES, Store, StoreConfig};

/// The state store of a test: embedded (SQLite + in-process cache) or
/// PostgreSQL + Redis.
struct StateStore {
    store: Arc<Store>,
    pg: Option<PgSchema>,
    redis: Option<RedisPrefix>,
}

impl StateStore {
    async fn embedded(dir: &TempDir) -> StateStore {
        let store = Store::connect(
            &StoreConfig::new(dir.sqlite_url("state.db")),
            MappingCache::local(),
        )
        .await
        .unwrap();
        StateStore {
            store: Arc::new(store),
            pg: None,
            redis: None,
        }
    }

    async fn postgres_redis() -> Option<StateStore> {
        let pg = PgSchema::create().await?;
        let redis = RedisPrefix::create().await?;
        let cache = MappingCache::redis(&support::redis_url(), &redis.prefix).unwrap();
        let store = Store::postgres(pg.pool.clone(), cache, DEFAULT_MAX_SNAPSHOT_BYTES)
            .await
            .unwrap();
        Some(StateStore {
            store: Arc::new(store),
            pg: Some(pg),
            redis: Some(redis),
        })
    }

    async fn drop(self) {
        if let Some(pg) = self.pg {
            pg.drop().await;
        }
        if let Some(r) = self.redis {
            r.drop().await;
        }
    }
}

/// Id in the target of each source id, for one entity type.
async fn target_ids(store: &Store, entity: &str, source_ids: &[String]) -> HashMap<String, String> {
    let scope = EntityScope::new("t1", "e2e", entity);
    store
        .lookup(&scope, Side::Source, source_ids)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, m)| {
            assert_eq!(
                m.status,
                MappingStatus::Mapped,
                "{entity} {k}: {:?}",
                m.last_error
            );
            (k, m.target_id.unwrap())
        })
        .collect()
}

fn by_id(rows: &[Value]) -> HashMap<String, &Value> {
    rows.iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn writes_of(store: &Store, run: &syncd_store::RunRow) -> u64 {
    store
        .load_steps(run.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.counters.created + s.counters.updated)
        .sum()
}

async fn end_to_end(source_kind: Kind, target_kind: Kind, state: StateStore, dir: TempDir) {
    let Some(source) = SystemDb::with_tables(source_kind, &dir, "source").await else {
        return;
    };
    let Some(target) = SystemDb::with_tables(target_kind, &dir, "target").await else {
        return;
    };
    let (accounts, contacts, orders) = crm_rows(150);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[]);
    let store = state.store.clone();

    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);

    // Every source record exists once in the target, references translated.
    let customers = target.dump("customers").await;
    let people = target.dump("people").await;
    let sales = target.dump("sales_orders").await;
    assert_eq!((customers.len(), people.len(), sales.len()), (150, 300, 450));
    let account_map = target_ids(&store, "account", &ids(&accounts)).await;
    let contact_map = target_ids(&store, "contact", &ids(&contacts)).await;
    let order_map = target_ids(&store, "order", &ids(&orders)).await;
    let (customers_by_id, people_by_id, sales_by_id) = (by_id(&customers), by_id(&people), by_id(&sales));
    for a in &accounts {
        let t = customers_by_id[&account_map[a["id"].as_str().unwrap()]];
        assert_eq!(t["customer_name"], a["name"]);
        assert_eq!(t["industry"], a["industry"]);
        let parent = a["parent_id"]
            .as_str()
            .map(|p| Value::String(account_map[p].clone()));
        assert_eq!(
            t["parent_id"],
            parent.unwrap_or(Value::Null),
            "parent of {}",
            a["id"]
        );
    }
    for c in &contacts {
        let t = people_by_id[&contact_map[c["id"].as_str().unwrap()]];
        assert_eq!(t["full_name"], c["name"]);
        assert_eq!(
            t["customer_id"],
            json!(account_map[c["account_id"].as_str().unwrap()])
        );
    }
    for o in &orders {
        let t = sales_by_id[&order_map[o["id"].as_str().unwrap()]];
        assert_eq!(
            t["customer_id"],
            json!(account_map[o["account_id"].as_str().unwrap()])
        );
        assert_eq!(
            t["contact_id"],
            json!(contact_map[o["contact_id"].as_str().unwrap()])
        );
        assert_eq!(t["total"].as_f64(), o["total"].as_f64());
    }
    let counts = store.mapping_counts(&"t1".into(), &"e2e".into()).await.unwrap();
    assert!(
        counts
            .iter()
            .all(|(_, status, _)| *status == MappingStatus::Mapped),
        "{counts:?}"
    );
    assert_eq!(counts.iter().map(|(_, _, n)| n).sum::<u64>(), 900);

    // A second run writes nothing, to either side.
    let before = (
        source.dump("accounts").await,
        source.dump("contacts").await,
        source.dump("orders").await,
        customers,
        people,
        sales,
    );
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(again.state, RunState::Succeeded);
    assert_eq!(writes_of(&store, &again).await, 0);
    let after = (
        source.dump("accounts").await,
        source.dump("contacts").await,
        source.dump("orders").await,
        target.dump("customers").await,
        target.dump("people").await,
        target.dump("sales_orders").await,
    );
    assert_eq!(
        serde_json::to_string(&before).unwrap(),
        serde_json::to_string(&after).unwrap()
    );

    source.drop().await;
    target.drop().await;
    state.drop().await;
}

#[tokio::test]
async fn sqlite_to_sqlite_on_the_embedded_store() {
    let dir = TempDir::new("e2e");
    let state = StateStore::embedded(&dir).await;
    end_to_end(Kind::Sqlite, Kind::Sqlite, state, dir).await;
}

#[tokio::test]
async fn postgres_to_postgres_on_postgres_and_redis() {
    let dir = TempDir::new("e2e");
    let Some(state) = StateStore::postgres_redis().await else {
        return;
    };
    end_to_end(Kind::Postgres, Kind::Postgres, state, dir).await;
}

#[tokio::test]
async fn mariadb_to_postgres_on_postgres_and_redis() {
    let Some(state) = StateStore::postgres_redis().await else {
        return;
    };
    let dir = TempDir::new("e2e-my-pg");
    end_to_end(Kind::Mariadb, Kind::Postgres, state, dir).await;
}

#[tokio::test]
async fn sqlite_to_mariadb_with_foreign_keys_on_the_embedded_store() {
    let dir = TempDir::new("e2e-sqlite-my");
    let state = StateStore::embedded(&dir).await;
    end_to_end(Kind::Sqlite, Kind::Mariadb, state, dir).await;
}

/// Both systems in one PostgreSQL database, in two schemas: the source's
/// tables named `schema.table`, the target's found through the system's
/// `schema`; a hard delete is reconciled there too.
#[tokio::test]
async fn postgres_tables_in_two_schemas_of_one_database() {
    let dir = TempDir::new("e2e-schemas");
    let Some(source) = SystemDb::with_tables(Kind::Postgres, &dir, "source").await else {
        return;
    };
    let Some(target) = SystemDb::with_tables(Kind::Postgres, &dir, "target").await else {
        return;
    };
    let schema = |db: &SystemDb| match db {
        SystemDb::Postgres { schema } => schema.name.clone(),
        _ => unreachable!(),
    };
    let (crm, erp) = (schema(&source), schema(&target));
    let (accounts, contacts, orders) = crm_rows(30);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    // One URL for both, without a search path.
    let url = support::postgres_url();
    let mut toml = workflow_toml("e2e", "bidirectional", &url, &url, &[]);
    for table in ["accounts", "contacts", "orders"] {
        toml = toml.replace(
            &format!("source_table = \"{table}\"\n"),
            &format!("source_table = \"{crm}.{table}\"\nreconcile_every = \"0s\"\n"),
        );
    }
    toml = toml.replace("[systems.erp]\n", &format!("[systems.erp]\nschema = \"{erp}\"\n"));
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(target.dump("customers").await.len(), 30);
    assert_eq!(target.dump("people").await.len(), 60);
    assert_eq!(target.dump("sales_orders").await.len(), 90);
    let order_map = target_ids(&store, "order", &ids(&orders)).await;

    source.exec("DELETE FROM orders WHERE id = 'O-000007'").await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(writes_of(&store, &run).await, 0);
    let sales = target.dump("sales_orders").await;
    assert_eq!(sales.len(), 89);
    assert!(!sales.iter().any(|o| o["id"] == order_map["O-000007"]));
    source.drop().await;
    target.drop().await;
    state.drop().await;
}

#[tokio::test]
async fn sqlite_to_postgres_with_foreign_keys_on_the_embedded_store() {
    let dir = TempDir::new("e2e");
    let state = StateStore::embedded(&dir).await;
    end_to_end(Kind::Sqlite, Kind::Postgres, state, dir).await;
}

/// One account edited on both sides under `strategy`; returns the final
/// (source name, target name) and the conflict record.
async fn edit_both_sides(
    (source_kind, target_kind): (Kind, Kind),
    strategy: &str,
    target_later: bool,
) -> Option<(Value, Value, Value, Value)> {
    let dir = TempDir::new("strategy");
    let source = SystemDb::with_tables(source_kind, &dir, "source").await?;
    let target = SystemDb::with_tables(target_kind, &dir, "target").await?;
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": ts(0)})],
        )
        .await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", strategy)],
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let t_id = target_ids(&store, "account", &["A-1".into()]).await["A-1"].clone();

    // Both sides change the name; the source also changes the industry, the
    // target nothing else. Times decide last_write_wins.
    let now = chrono::Utc::now();
    let (s_at, t_at) = if target_later {
        (now, now + chrono::Duration::seconds(1))
    } else {
        (now + chrono::Duration::seconds(1), now)
    };
    // A time as each database takes it in SQL (MariaDB: no `T`, no zone).
    let fmt = |kind: Kind, t: chrono::DateTime<chrono::Utc>| match kind {
        Kind::Mariadb => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        _ => syncd_connect::format_time(t),
    };
    source
        .exec(&format!(
            "UPDATE accounts SET name = 'Acme Source', industry = 'food', updated_at = '{}' WHERE id = 'A-1'",
            fmt(source_kind, s_at)
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE customers SET customer_name = 'Acme Target', updated_at = '{}' WHERE id = '{t_id}'",
            fmt(target_kind, t_at)
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    let conflicts = store
        .list_conflicts(&syncd_store::ConflictFilter {
            tenant: Some("t1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(conflicts.len(), 1, "{strategy}");
    let c = &conflicts[0];
    assert_eq!(c.conflicting_fields, ["name"]);
    assert_eq!(c.strategy_applied.as_str(), strategy);

    if strategy == "manual" {
        assert_eq!(run.state, RunState::Suspended);
        // Untouched while parked.
        assert_eq!(source.dump("accounts").await[0]["name"], "Acme Source");
        assert_eq!(target.dump("customers").await[0]["customer_name"], "Acme Target");
        assert!(c.resolution.is_none() && c.resolved_by.is_none());
        // A later run is impossible while this one is active; the reviewer
        // decides, and resuming applies the decision to both systems.
        let values = json!({"name": "Acme Reviewed"}).as_object().unwrap().clone();
        store.resolve_conflict(c, &values, "reviewer-7").await.unwrap();
        let resumed = sync_once(store.clone(), &toml, 100).await.unwrap();
        assert_eq!(resumed.id, run.id);
        assert_eq!(resumed.state, RunState::Succeeded);
    } else {
        assert_eq!(run.state, RunState::Succeeded);
        assert_eq!(c.resolved_by.as_deref(), Some("system"));
    }
    let conflict = serde_json::to_value(
        store
            .load_conflict(Some(&"t1".into()), c.id)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let s = source.dump("accounts").await[0].clone();
    let t = target.dump("customers").await[0].clone();
    // Nothing further to write once settled.
    let after = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(
        writes_of(&store, &after).await,
        0,
        "{strategy}: settled values stay put"
    );
    let result = (
        s["name"].clone(),
        t["customer_name"].clone(),
        json!([s["industry"], t["industry"]]),
        conflict,
    );
    source.drop().await;
    target.drop().await;
    state.drop().await;
    Some(result)
}

#[tokio::test]
async fn each_strategy_end_to_end() {
    each_strategy((Kind::Sqlite, Kind::Sqlite)).await;
}

#[tokio::test]
async fn each_strategy_end_to_end_mariadb_to_postgres() {
    each_strategy((Kind::Mariadb, Kind::Postgres)).await;
}

#[tokio::test]
async fn each_strategy_end_to_end_postgres_to_mariadb() {
    each_strategy((Kind::Postgres, Kind::Mariadb)).await;
}

async fn each_strategy(kinds: (Kind, Kind)) {
    // (strategy, target edited later, expected name on both sides)
    let cases = [
        ("source_wins", true, "Acme Source"),
        ("target_wins", false, "Acme Target"),
        ("last_write_wins", true, "Acme Target"),
        ("last_write_wins", false, "Acme Source"),
        ("merge", true, "Acme Target"),
        ("manual", true, "Acme Reviewed"),
    ];
    for (strategy, target_later, expected) in cases {
        let Some((s, t, industries, conflict)) = edit_both_sides(kinds, strategy, target_later).await else {
            return;
        };
        assert_eq!(
            (s.as_str(), t.as_str()),
            (Some(expected), Some(expected)),
            "{strategy}"
        );
        // The industry changed only in the source: kept by every strategy.
        assert_eq!(industries, json!(["food", "food"]), "{strategy}");
        assert_eq!(conflict["resolution"]["name"], expected, "{strategy}");
        assert_eq!(conflict["status"], "resolved");
        let by = if strategy == "manual" {
            "reviewer-7"
        } else {
            "system"
        };
        assert_eq!(conflict["resolved_by"], by);
        assert!(conflict["resolved_at"].is_string());
    }
}

#[tokio::test]
async fn a_record_with_a_missing_parent_fails_then_maps_once_the_parent_exists() {
    let dir = TempDir::new("parent");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "contacts",
            &[json!({"id": "C-1", "name": "Orphan", "email": "o@example.com", "account_id": "A-late", "updated_at": ts(1)})],
        )
        .await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let scope = EntityScope::new("t1", "e2e", "contact");
    let m = store
        .lookup(&scope, Side::Source, &["C-1".into()])
        .await
        .unwrap()
        .remove("C-1")
        .unwrap();
    assert_eq!(m.status, MappingStatus::Failed);
    assert_eq!(
        m.last_error.as_deref(),
        Some("missing parent: account_id references account `A-late`, which has not been synced")
    );
    assert!(
        target.dump("people").await.is_empty(),
        "never written with a dangling reference"
    );

    source
        .insert(
            "accounts",
            &[json!({"id": "A-late", "name": "Late", "industry": "x", "updated_at": ts(2)})],
        )
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let account = target_ids(&store, "account", &["A-late".into()]).await;
    let contact = target_ids(&store, "contact", &["C-1".into()]).await;
    let people = target.dump("people").await;
    assert_eq!(people.len(), 1);
    assert_eq!(people[0]["id"], json!(contact["C-1"]));
    assert_eq!(people[0]["customer_id"], json!(account["A-late"]));
    state.drop().await;
}

#[tokio::test]
async fn bad_definitions_name_what_and_where() {
    let dir = TempDir::new("bad");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let state = StateStore::embedded(&dir).await;
    let good = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let cases = [
        (
            good.replace("target_table = \"people\"", "target_table = \"persons\""),
            "system `erp`: table `persons` does not exist (entity `contact`)",
        ),
        (
            good.replace("target = \"full_name\"", "target = \"fullname\""),
            "system `erp`: table `people` has no column `fullname` (entity `contact`, field `name`)",
        ),
        (
            good.replace(&target.url(), "postgres://nobody@127.0.0.1:1/none"),
            "system `erp`: cannot connect to postgres://nobody@127.0.0.1:1/none",
        ),
    ];
    for (toml, expected) in cases {
        let err = sync_once(state.store.clone(), &toml, 100)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(expected), "{err}");
    }
    state.drop().await;
}

#[tokio::test]
async fn bad_rows_fail_alone_and_awkward_ids_sync() {
    let dir = TempDir::new("rows");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let awkward = "O'Brien \"東京\" 🚀; DROP TABLE customers";
    source
        .insert(
            "accounts",
            &[
                json!({"id": awkward, "name": "Quotes & unicode", "industry": "x", "updated_at": ts(1)}),
                json!({"id": "A-ok", "name": "Fine", "industry": "x", "updated_at": ts(2)}),
                json!({"id": "A-blob", "name": "Blob", "industry": "x", "updated_at": ts(3)}),
            ],
        )
        .await;
    source
        .exec("UPDATE accounts SET industry = x'00ff' WHERE id = 'A-blob'")
        .await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let mapped = target_ids(&store, "account", &[awkward.to_owned(), "A-ok".to_owned()]).await;
    assert_eq!(mapped.len(), 2);
    let scope = EntityScope::new("t1", "e2e", "account");
    let blob = store
        .lookup(&scope, Side::Source, &["A-blob".into()])
        .await
        .unwrap()
        .remove("A-blob")
        .unwrap();
    assert_eq!(blob.status, MappingStatus::Failed);
    let reason = blob.last_error.unwrap();
    assert!(
        reason.contains("field `industry` (column `industry`): it holds a BLOB value")
            && reason.contains("row `A-blob`"),
        "{reason}"
    );
    let before = target.dump("customers").await;
    assert_eq!(before.len(), 2);
    // Fixing the row lets it through; the others are not written again.
    source
        .exec(&format!(
            "UPDATE accounts SET industry = 'fixed', updated_at = '{}' WHERE id = 'A-blob'",
            ts(10)
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &run).await, 1);
    assert_eq!(target.dump("customers").await.len(), 3);
    state.drop().await;
}

#[tokio::test]
async fn a_record_moved_under_a_parent_created_in_the_same_page_keeps_its_parent() {
    let dir = TempDir::new("reparent");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "X", "name": "Child", "industry": "x", "updated_at": ts(0)})],
        )
        .await;
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();

    // One page: a new parent Y, and X moved under it.
    let now = chrono::Utc::now();
    let fmt = syncd_connect::format_time;
    source
        .insert(
            "accounts",
            &[json!({"id": "Y", "name": "Parent", "industry": "x", "updated_at": fmt(now)})],
        )
        .await;
    source
        .exec(&format!(
            "UPDATE accounts SET parent_id = 'Y', updated_at = '{}' WHERE id = 'X'",
            fmt(now + chrono::Duration::milliseconds(1))
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let ids = target_ids(&store, "account", &["X".into(), "Y".into()]).await;
    let customers = target.dump("customers").await;
    let x = customers.iter().find(|c| c["id"] == json!(ids["X"])).unwrap();
    assert_eq!(x["parent_id"], json!(ids["Y"]), "the target's X is under Y");
    let accounts = source.dump("accounts").await;
    let x = accounts.iter().find(|a| a["id"] == "X").unwrap();
    assert_eq!(x["parent_id"], "Y", "the user's edit survives in the source");
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &again).await, 0);
    state.drop().await;
}

/// Records failed by the run's forward step of `account`. (Its backward
/// step reads the same record again when the target's copy changed, or
/// is within the lookback, and fails it too.)
async fn failed_of(store: &Store, run: &syncd_store::RunRow) -> u64 {
    store
        .load_steps(run.id)
        .await
        .unwrap()
        .iter()
        .filter(|s| {
            s.entity_type.as_str() == "account" && s.direction == syncd_engine::run::StepDirection::Forward
        })
        .map(|s| s.counters.failed)
        .sum()
}

/// A self-reference to a record that exists nowhere (a dangling parent in
/// the source) cannot be written: the record is created without it, then
/// fails with the reason in its last pass, instead of being written with
/// an empty parent on every run while the run says all is well.
#[tokio::test]
async fn a_self_reference_to_a_record_that_exists_nowhere_fails_its_record() {
    let dir = TempDir::new("dangling");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[
                json!({"id": "A-1", "name": "Orphan", "industry": "x", "parent_id": "A-gone", "updated_at": ts(0)}),
                json!({"id": "A-2", "name": "Child", "industry": "x", "parent_id": "A-1", "updated_at": ts(1)}),
            ],
        )
        .await;
    // Without a lookback: no later scan reads a record again unless it
    // changed.
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[])
        .replace(CONNECTOR, NO_LOOKBACK);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let scope = EntityScope::new("t1", "e2e", "account");
    let reason = "missing parent: parent_id references account `A-gone`, which has not been synced";
    let last_error = || async {
        let m = store.lookup(&scope, Side::Source, &["A-1".into()]).await.unwrap();
        m["A-1"].last_error.clone()
    };
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(failed_of(&store, &run).await, 1);
    assert_eq!(last_error().await.as_deref(), Some(reason));
    let ids = target_ids(&store, "account", &["A-1".into(), "A-2".into()]).await;
    let customer = async |id: &str| {
        let all = target.dump("customers").await;
        all.into_iter().find(|c| c["id"] == json!(ids[id])).unwrap()
    };
    assert_eq!(customer("A-2").await["parent_id"], json!(ids["A-1"]));
    assert_eq!(customer("A-1").await["parent_id"], Value::Null);
    let a1 = source
        .dump("accounts")
        .await
        .into_iter()
        .find(|a| a["id"] == "A-1")
        .unwrap();
    assert_eq!(a1["parent_id"], "A-gone", "the source keeps its value");

    // Nothing changed: nothing is written again.
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &again).await, 0);
    let stamp = customer("A-1").await["updated_at"].clone();
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &again).await, 0);
    assert_eq!(customer("A-1").await["updated_at"], stamp, "not rewritten");

    // Its other changes still arrive; the parent still fails it, loudly.
    source
        .exec(&format!(
            "UPDATE accounts SET name = 'Orphan 2', updated_at = '{}' WHERE id = 'A-1'",
            syncd_connect::format_time(chrono::Utc::now())
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(customer("A-1").await["customer_name"], "Orphan 2");
    assert_eq!(customer("A-1").await["parent_id"], Value::Null);
    assert_eq!(failed_of(&store, &run).await, 1);
    assert_eq!(last_error().await.as_deref(), Some(reason));

    // The parent appears; the record, unchanged since, is not forgotten:
    // read again after the scan that creates its parent, it is written.
    let now = syncd_connect::format_time(chrono::Utc::now());
    source
        .insert(
            "accounts",
            &[json!({"id": "A-gone", "name": "Parent", "industry": "x", "updated_at": now})],
        )
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let ids = target_ids(&store, "account", &["A-gone".into()]).await;
    assert_eq!(customer("A-1").await["parent_id"], json!(ids["A-gone"]));
    assert_eq!(last_error().await, None);
    assert_eq!(failed_of(&store, &run).await, 0);
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &again).await, 0);
    assert_eq!(failed_of(&store, &again).await, 0);
    state.drop().await;
}

#[tokio::test]
async fn a_record_changed_after_review_is_parked_again_not_failed() {
    let dir = TempDir::new("repark");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": ts(0)})],
        )
        .await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "manual")],
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let fmt = syncd_connect::format_time;
    let edit = |sql: String| sql.replace("NOW", &fmt(chrono::Utc::now()));
    source
        .exec(&edit(
            "UPDATE accounts SET name = 'Acme S', updated_at = 'NOW'".into(),
        ))
        .await;
    target
        .exec(&edit(
            "UPDATE customers SET customer_name = 'Acme T', updated_at = 'NOW'".into(),
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Suspended);
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&filter).await.unwrap().remove(0);
    // Before the review is applied, both sides change another field.
    source
        .exec(&edit(
            "UPDATE accounts SET industry = 'food', updated_at = 'NOW'".into(),
        ))
        .await;
    target
        .exec(&edit(
            "UPDATE customers SET industry = 'defence', updated_at = 'NOW'".into(),
        ))
        .await;
    let values = json!({"name": "Acme R"}).as_object().unwrap().clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let resumed = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(resumed.id, run.id);
    assert_eq!(resumed.state, RunState::Suspended, "parked again, not failed");
    let again = store.list_conflicts(&filter).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].conflicting_fields, ["industry", "name"]);
    assert_eq!(again[0].source_record.fields["industry"], "food");
    assert_eq!(
        source.dump("accounts").await[0]["name"],
        "Acme S",
        "nothing written while parked"
    );
    state.drop().await;
}

/// The source edits the field a conflict waits on, after it was parked:
/// the reviewer's "take the source" chose the value it held then. Applied,
/// it wrote that older value back over the source's later edit, and the
/// run said succeeded; the conflict goes back to the reviewer instead,
/// with the values both systems hold now.
#[tokio::test]
async fn a_decided_field_edited_since_it_was_parked_goes_back_to_the_reviewer() {
    let dir = TempDir::new("repark-decided");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": ts(0)})],
        )
        .await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "manual")],
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let edit = |sql: &str| sql.replace("NOW", &syncd_connect::format_time(chrono::Utc::now()));
    source
        .exec(&edit("UPDATE accounts SET name = 'Acme S', updated_at = 'NOW'"))
        .await;
    target
        .exec(&edit(
            "UPDATE customers SET customer_name = 'Acme T', updated_at = 'NOW'",
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Suspended);
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&filter).await.unwrap().remove(0);
    source
        .exec(&edit("UPDATE accounts SET name = 'Acme S2', updated_at = 'NOW'"))
        .await;
    // What `conflicts resolve --take source` decides: the parked value.
    let values = json!({"name": "Acme S"}).as_object().unwrap().clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let resumed = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(resumed.state, RunState::Suspended, "back to the reviewer");
    let again = store.list_conflicts(&filter).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].conflicting_fields, ["name"]);
    // The reviewer is told what became of the decision, and where it went.
    let first = store
        .load_conflicts(&"t1".into(), &[parked.id])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        first.outcome.as_deref(),
        Some(
            format!(
                "not applied: a decided field changed on a side since the conflict was parked; parked again as \
                 conflict {}",
                again[0].id
            )
            .as_str()
        )
    );
    assert_eq!(again[0].source_record.fields["name"], "Acme S2");
    assert_eq!(again[0].target_record.fields["name"], "Acme T");
    assert_eq!(
        source.dump("accounts").await[0]["name"],
        "Acme S2",
        "the later edit is kept"
    );
    assert_eq!(target.dump("customers").await[0]["customer_name"], "Acme T");
    state.drop().await;
}

/// An operator cancels a run that waits for a review. Its conflict stays
/// to be decided (its record waits for it, and is skipped by the runs in
/// between, whose cursor passes the record's later edit); once decided,
/// the next run of the integration applies the decision, with the edit
/// made since: nothing is stranded, nothing lost.
#[tokio::test]
async fn a_decision_on_a_cancelled_runs_conflict_is_applied_by_the_next_run() {
    let dir = TempDir::new("cancelled-review");
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let ReviewScenario {
        source,
        target,
        toml,
        run,
    } = suspended_on_review(store.clone(), &dir).await;
    store
        .transition_run(
            &run,
            syncd_engine::run::RunEvent::Cancel,
            Some("cancelled by an operator"),
        )
        .await
        .unwrap();
    let now = syncd_connect::format_time(chrono::Utc::now());
    source
        .exec(&format!(
            "UPDATE accounts SET industry = 'food', updated_at = '{now}'"
        ))
        .await;
    let between = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(between.state, RunState::Succeeded);
    assert_eq!(
        writes_of(&store, &between).await,
        0,
        "the record waits for its review"
    );
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&filter).await.unwrap().remove(0);
    assert_eq!(parked.run_id, Some(run.id));
    let values = json!({"name": "Acme S"}).as_object().unwrap().clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let next = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_ne!(next.id, run.id);
    assert_eq!(
        next.state,
        RunState::Succeeded,
        "{:?}",
        store.list_conflicts(&filter).await.unwrap()
    );
    let customer = &target.dump("customers").await[0];
    assert_eq!(
        (&customer["customer_name"], &customer["industry"]),
        (&json!("Acme S"), &json!("food")),
        "the decision and the edit since"
    );
    let account = &source.dump("accounts").await[0];
    assert_eq!(
        (&account["name"], &account["industry"]),
        (&json!("Acme S"), &json!("food"))
    );
    let applied = store
        .list_conflicts(&syncd_store::ConflictFilter {
            tenant: Some("t1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        applied
            .iter()
            .all(|c| c.status != syncd_core::conflict::ConflictStatus::Pending)
    );
    assert_eq!(
        applied.iter().map(|c| c.outcome.as_deref()).collect::<Vec<_>>(),
        [Some("applied")],
        "the reviewer's decision, said applied"
    );
    assert_eq!(
        writes_of(&store, &sync_once(store.clone(), &toml, 100).await.unwrap()).await,
        0
    );
    state.drop().await;
}

/// A record deleted in the source while its conflict waits for a reviewer
/// (its run cancelled) waits with it: the target copy is not deleted under
/// the pending conflict. Once the conflict is decided (moot: the source is
/// gone), the run that would apply the decision removes it instead, with
/// no reconciliation due.
#[tokio::test]
async fn a_record_deleted_while_its_conflict_waits_is_removed_after_the_review() {
    let dir = TempDir::new("delete-under-review");
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let ReviewScenario {
        source,
        target,
        toml,
        run,
    } = suspended_on_review(store.clone(), &dir).await;
    store
        .transition_run(&run, syncd_engine::run::RunEvent::Cancel, Some("cancelled"))
        .await
        .unwrap();
    source.exec("DELETE FROM accounts WHERE id = 'A-1'").await;
    // Without a lookback, so that no scan reads the target copy again.
    let toml = toml.replace(CONNECTOR, NO_LOOKBACK);
    let reconciling = toml.replacen(
        "[entities.fields]",
        "reconcile_every = \"0s\"\ndelete_brake = { percent = 100, max = 500 }\n[entities.fields]",
        1,
    );
    let toml = toml.replacen(
        "[entities.fields]",
        "reconcile_every = \"never\"\ndelete_brake = { percent = 100, max = 500 }\n[entities.fields]",
        1,
    );
    let between = sync_once(store.clone(), &reconciling, 100).await.unwrap();
    assert_eq!(between.state, RunState::Succeeded);
    assert_eq!(target.dump("customers").await.len(), 1, "waits for the review");
    // Counted in the delete step's table, as skipped.
    let steps = store.load_steps(between.id).await.unwrap();
    let delete = steps
        .iter()
        .find(|s| s.entity_type.as_str() == "account" && s.direction.as_str() == "delete")
        .unwrap();
    assert_eq!(
        (delete.counters.skipped, delete.counters.deleted),
        (1, 0),
        "{:?}",
        delete.counters
    );
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&filter).await.unwrap().remove(0);
    let values = json!({"name": "Acme T"}).as_object().unwrap().clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let next = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(next.state, RunState::Succeeded);
    assert!(store.list_conflicts(&filter).await.unwrap().is_empty());
    assert!(
        target.dump("customers").await.is_empty(),
        "removed after the review"
    );
    state.drop().await;
}

/// The same on the usual path: the run suspended on the conflict is
/// resumed once it is decided, its delete steps done long before. The
/// next run removes the record (its mapping names why), with no
/// reconciliation due, instead of it staying until one is.
#[tokio::test]
async fn a_record_deleted_while_its_run_waits_for_review_is_removed_by_the_next_run() {
    let dir = TempDir::new("delete-under-review-resumed");
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": now_text()})],
        )
        .await;
    // No lookback (no scan reads the target copy again) and no
    // reconciliation.
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "manual")],
    )
    .replace(CONNECTOR, NO_LOOKBACK)
    .replacen(
        "[entities.fields]",
        "reconcile_every = \"never\"\ndelete_brake = { percent = 100, max = 500 }\n[entities.fields]",
        1,
    );
    sync_once(store.clone(), &toml, 100).await.unwrap();
    source
        .exec(&format!(
            "UPDATE accounts SET name = 'Acme S', updated_at = '{}'",
            now_text()
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE customers SET customer_name = 'Acme T', updated_at = '{}'",
            now_text()
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Suspended);
    source.exec("DELETE FROM accounts WHERE id = 'A-1'").await;
    let parked = all_conflicts(&store).await.remove(0);
    let values = json!({"name": "Acme S"}).as_object().unwrap().clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let resumed = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!((resumed.id, resumed.state), (run.id, RunState::Succeeded));
    let next = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_ne!(next.id, run.id);
    assert!(
        target.dump("customers").await.is_empty(),
        "removed by the next run"
    );
    let m = store
        .lookup(
            &EntityScope::new("t1", "e2e", "account"),
            Side::Source,
            &["A-1".into()],
        )
        .await
        .unwrap();
    assert_eq!(m["A-1"].status, MappingStatus::Stale);
    state.drop().await;
}

/// A decision on a cancelled run's conflict that a system refuses (a
/// trigger here; a constraint in life) waits to be applied, with a warning,
/// and does not fail the next run, which would fail every run after it:
/// the other records keep syncing.
#[tokio::test]
async fn an_ended_runs_decision_a_system_refuses_does_not_stop_later_runs() {
    let dir = TempDir::new("refused-ended-review");
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let ReviewScenario {
        source,
        target,
        toml,
        run,
    } = suspended_on_review(store.clone(), &dir).await;
    store
        .transition_run(&run, syncd_engine::run::RunEvent::Cancel, None)
        .await
        .unwrap();
    target
        .exec(
            "CREATE TRIGGER no_long_names BEFORE UPDATE ON customers WHEN length(NEW.customer_name) > 20 \
             BEGIN SELECT RAISE(ABORT, 'name too long'); END",
        )
        .await;
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&filter).await.unwrap().remove(0);
    let values = json!({"name": "An exceedingly long account name"})
        .as_object()
        .unwrap()
        .clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-2", "name": "Newco", "industry": "retail",
                "updated_at": syncd_connect::format_time(chrono::Utc::now())})],
        )
        .await;
    let next = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_ne!(next.state, RunState::Failed, "{:?}", next.error);
    let names: Vec<Value> = target
        .dump("customers")
        .await
        .iter()
        .map(|r| r["customer_name"].clone())
        .collect();
    assert!(names.contains(&json!("Newco")), "{names:?}");
    assert!(
        !names.contains(&json!("An exceedingly long account name")),
        "{names:?}"
    );
    state.drop().await;
}

/// A reviewer's decision one system cannot hold (a decimal a SQLite
/// `NUMERIC` column would round) while the other could: neither is
/// written, and the conflict goes back to review, rather than the decision
/// landing on one side and failing the run on the other (which every
/// resume then wrote again).
#[tokio::test]
async fn a_decision_one_side_cannot_hold_is_written_to_neither_and_parked_again() {
    let dir = TempDir::new("unwritable-decision");
    let source = SystemDb::create(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::create(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .exec("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, price NUMERIC, updated_at TEXT NOT NULL)")
        .await;
    target
        .exec("CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, price TEXT, updated_at TEXT NOT NULL)")
        .await;
    source
        .exec(&format!(
            "INSERT INTO items VALUES ('I-1', 'Lamp', 10.5, '{}')",
            ts(0)
        ))
        .await;
    let toml = format!(
        "name = \"e2e\"\nsource = \"a\"\ntarget = \"b\"\ndirection = \"bidirectional\"\n\
         strategy = \"manual\"\n[systems.a]\nconnector = \"sql\"\nurl = \"{}\"\n[systems.b]\n\
         connector = \"sql\"\nurl = \"{}\"\n[[entities]]\nname = \"product\"\ntable = \"items\"\n\
         [tenants.t1]\n",
        source.url(),
        target.url()
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let now = syncd_connect::format_time(chrono::Utc::now());
    source
        .exec(&format!("UPDATE items SET name = 'Lamp S', updated_at = '{now}'"))
        .await;
    target
        .exec(&format!("UPDATE items SET name = 'Lamp T', updated_at = '{now}'"))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Suspended);
    let pending = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&pending).await.unwrap().remove(0);
    let exact: Value = serde_json::from_str("0.30000000000000000001").unwrap();
    let values = json!({"name": "Lamp R", "price": exact})
        .as_object()
        .unwrap()
        .clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let before = (source.dump("items").await, target.dump("items").await);
    let resumed = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(
        (resumed.id, resumed.state),
        (run.id, RunState::Suspended),
        "{:?}",
        resumed.error
    );
    assert_eq!(
        (source.dump("items").await, target.dump("items").await),
        before,
        "written to neither"
    );
    let again = store.list_conflicts(&pending).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, parked.id);
    assert_eq!(again[0].resolution, None);
    // A decision both can hold is then written to both.
    let values = json!({"name": "Lamp R", "price": 12.25})
        .as_object()
        .unwrap()
        .clone();
    store
        .resolve_conflict(&again[0], &values, "reviewer")
        .await
        .unwrap();
    let done = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded, "{:?}", done.error);
    assert_eq!(source.dump("items").await[0]["name"], json!("Lamp R"));
    assert_eq!(target.dump("items").await[0]["price"], json!("12.25"));
    state.drop().await;
}

/// A SQLite application that stamps its rows as SQLite does
/// (`datetime('now')`: `2026-12-07 09:25:10`, with a space) edits a row
/// syncd created (stamped in RFC 3339, with a `T`). Compared as text, a
/// space orders before a `T`: the edit sorted before the cursor and was
/// missed while runs said succeeded. The next run finds it, and syncd's own
/// writes into that table take its layout from then on.
#[tokio::test]
async fn an_edit_stamped_as_sqlite_stamps_it_is_not_missed() {
    let dir = TempDir::new("sqlite-stamps");
    let source = SystemDb::create(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::create(Kind::Sqlite, &dir, "target").await.unwrap();
    for db in [&source, &target] {
        db.exec("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT, updated_at TEXT NOT NULL)")
            .await;
    }
    source
        .exec("INSERT INTO notes VALUES ('n1', 'one', datetime('now', '-1 minute')), ('n2', 'two', datetime('now', '-1 minute'))")
        .await;
    // More rows of the day than a page holds: the scan's order must be one
    // the cursor can move through, or it reads the same page again.
    for i in 0..30 {
        source
            .exec(&format!(
                "INSERT INTO notes VALUES ('m{i:02}', 'more', datetime('now', '-1 minute'))"
            ))
            .await;
    }
    let toml = format!(
        "name = \"e2e\"\nsource = \"a\"\ntarget = \"b\"\ndirection = \"bidirectional\"\n[systems.a]\n\
         connector = \"sql\"\nurl = \"{}\"\n[systems.b]\nconnector = \"sql\"\nurl = \"{}\"\n[[entities]]\n\
         name = \"product\"\ntable = \"notes\"\n[tenants.t1]\n",
        source.url(),
        target.url()
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 7).await.unwrap();
    let stamped = target.dump("notes").await;
    assert!(
        stamped
            .iter()
            .all(|r| r["updated_at"].as_str().unwrap().contains('T')),
        "{stamped:?}"
    );
    target
        .exec(
            "UPDATE notes SET body = 'edited in the target', updated_at = datetime('now') WHERE body = 'one'",
        )
        .await;
    let run = sync_once(store.clone(), &toml, 7).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let rows = source.dump("notes").await;
    let body = |id: &str| rows.iter().find(|r| r["id"] == id).map(|r| r["body"].clone());
    assert_eq!(
        (body("n1"), body("n2")),
        (Some(json!("edited in the target")), Some(json!("two")))
    );
    assert_eq!(rows.len(), 32);
    // The source's own writes now take its table's layout.
    let n1 = rows.iter().find(|r| r["id"] == "n1").unwrap().clone();
    assert_eq!(n1["updated_at"].as_str().unwrap().as_bytes()[10], b' ', "{n1}");
    assert_eq!(
        writes_of(&store, &sync_once(store.clone(), &toml, 7).await.unwrap()).await,
        0
    );
    state.drop().await;
}

/// Orders edited again and again while the run reads them: an edited order
/// comes back in a later page of the same scan, often the very next one,
/// which the executor works on while the commit of the page before is still
/// in flight. The run succeeds, and after one more run every order has its
/// last values in the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_edited_while_their_step_reads_them_sync_their_last_values() {
    // PostgreSQL everywhere: its page commits take long enough for the
    // next page to be read while one is in flight.
    let dir = TempDir::new("edited-mid-scan");
    let Some(state) = StateStore::postgres_redis().await else {
        return;
    };
    let Some(source) = SystemDb::with_tables(Kind::Postgres, &dir, "source").await else {
        return;
    };
    let Some(target) = SystemDb::with_tables(Kind::Postgres, &dir, "target").await else {
        return;
    };
    let (accounts, contacts, orders) = crm_rows(300);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let store = state.store.clone();

    // Twenty hot orders, edited one after another with ever later times
    // until the run is over: the scan keeps finding them at its end.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor = {
        let done = done.clone();
        let url = source.url();
        tokio::spawn(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let mut edits = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && edits < 3_000 {
                sqlx::query("UPDATE orders SET total = $1, updated_at = $2::timestamptz WHERE id = $3")
                    .bind(f64::from(edits) + 0.25)
                    .bind(ts(10_000_000 + i64::from(edits)))
                    .bind(format!("O-{:06}", edits % 20))
                    .execute(&pool)
                    .await
                    .unwrap();
                edits += 1;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            edits
        })
    };
    let run = sync_once(store.clone(), &toml, 100).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let edits = editor.await.unwrap();
    let run = run.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert!(edits > 20, "the editor made {edits} edits during the run");

    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(again.state, RunState::Succeeded);
    let orders = source.dump("orders").await;
    let order_map = target_ids(&store, "order", &ids(&orders)).await;
    let sales = target.dump("sales_orders").await;
    assert_eq!(sales.len(), orders.len());
    let sales_by_id = by_id(&sales);
    for o in &orders {
        let t = sales_by_id[&order_map[o["id"].as_str().unwrap()]];
        assert_eq!(t["total"].as_f64(), o["total"].as_f64(), "order {}", o["id"]);
    }
    let counts = store.mapping_counts(&"t1".into(), &"e2e".into()).await.unwrap();
    assert!(
        counts
            .iter()
            .all(|(_, status, _)| *status == MappingStatus::Mapped),
        "{counts:?}"
    );

    source.drop().await;
    target.drop().await;
    state.drop().await;
}

/// Rows the change scan cannot read move it on like any other: a page
/// that ends on one is not read again (each is counted and failed once), and
/// a page that holds nothing else does not stop the scan where it is.
#[tokio::test]
async fn pages_of_unreadable_rows_move_the_scan_on() {
    let dir = TempDir::new("bad-pages");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    // In scan order, pages of two: [A-1, B-1], [B-2, B-3], [B-4, A-2].
    let rows: Vec<Value> = ["A-1", "B-1", "B-2", "B-3", "B-4", "A-2"]
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "name": id, "industry": "x", "updated_at": ts(i as i64)}))
        .collect();
    source.insert("accounts", &rows).await;
    source
        .exec("UPDATE accounts SET industry = x'00ff' WHERE id LIKE 'B-%'")
        .await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sync_once(store.clone(), &toml, 2),
    )
    .await
    .expect("the scan ends")
    .unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let accounts = store
        .load_steps(run.id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.entity_type.as_str() == "account")
        .unwrap();
    assert_eq!((accounts.counters.read, accounts.counters.failed), (6, 4));
    assert_eq!(accounts.counters.created, 2);
    let scope = EntityScope::new("t1", "e2e", "account");
    let ids: Vec<String> = ["B-1", "B-2", "B-3", "B-4"].map(String::from).to_vec();
    let failed = store.lookup(&scope, Side::Source, &ids).await.unwrap();
    for id in &ids {
        let m = &failed[id];
        assert_eq!(m.status, MappingStatus::Failed, "{id}");
        let why = m.last_error.as_deref().unwrap_or_default();
        assert!(
            why.contains(&format!("row `{id}`")) && why.contains("BLOB"),
            "{why}"
        );
    }
    assert_eq!(target.dump("customers").await.len(), 2);
    state.drop().await;
}

/// A page of creates into a text-id table that repeats a create (after a
/// crash) is an upsert, whether its records say they were tried before or
/// the plain insert (a `COPY` into PostgreSQL) meets an id already there: the existing record takes
/// the page's values, the others are created, and nothing is there twice.
/// A conflict on another unique column is still an error that names the
/// table.
async fn a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing(kind: Kind) {
    use syncd_connect::sql::SqlConnector;
    use syncd_connect::{FieldColumn, NewRecord};
    let dir = TempDir::new("create-again");
    let Some(db) = SystemDb::create(kind, &dir, "system").await else {
        return;
    };
    db.exec(match kind {
        // (MySQL keys need a length; its repeat must not be an upsert on
        // every unique key, which would overwrite the row of another slug.)
        Kind::Mariadb => {
            "CREATE TABLE notes (id VARCHAR(64) PRIMARY KEY, body TEXT, slug VARCHAR(64) UNIQUE, \
             updated_at DATETIME(6) NOT NULL)"
        }
        _ => {
            "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT, slug TEXT UNIQUE, updated_at TEXT NOT NULL)"
        }
    })
    .await;
    let system = SqlConnector::connect("system", &db.url()).await.unwrap();
    let columns = system.columns("notes").await.unwrap().unwrap();
    let fields = ["body", "slug"].map(|f| FieldColumn::untyped(f, f)).to_vec();
    let b = system
        .binding("notes", "notes", columns, fields, None, None)
        .unwrap();
    let note = |id: &str, body: &str, tried: bool| NewRecord {
        id: Some(id.into()),
        key: format!("fwd:{id}"),
        fields: json!({ "body": body, "slug": id }).as_object().unwrap().clone(),
        tried,
    };
    let now = chrono::Utc::now();
    let first = system
        .create(
            &b,
            &[note("n-1", "first", false), note("n-2", "first", false)],
            now,
        )
        .await
        .unwrap();
    assert_eq!(first, vec![Ok("n-1".to_owned()), Ok("n-2".to_owned())]);
    // The crash: n-2 was created, its mapping never confirmed; the page
    // is done again (n-2 known as tried) with a record more.
    let again = system
        .create(
            &b,
            &[note("n-2", "again", true), note("n-3", "again", false)],
            now,
        )
        .await
        .unwrap();
    assert_eq!(again, vec![Ok("n-2".to_owned()), Ok("n-3".to_owned())]);
    // A page that does not know it repeats meets an id already there.
    let third = system
        .create(&b, &[note("n-3", "third", false)], now)
        .await
        .unwrap();
    assert_eq!(third, vec![Ok("n-3".to_owned())]);
    let rows: Vec<(String, String)> = db
        .dump("notes")
        .await
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["body"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [("n-1", "first"), ("n-2", "again"), ("n-3", "third")];
    assert_eq!(rows, expected.map(|(i, b)| (i.to_owned(), b.to_owned())).to_vec());
    let clash = NewRecord {
        fields: json!({ "body": "x", "slug": "n-1" }).as_object().unwrap().clone(),
        ..note("n-4", "x", true)
    };
    let err = system.create(&b, &[clash], now).await.unwrap_err().to_string();
    assert!(err.contains("notes"), "{err}");
    assert_eq!(
        db.dump("notes").await.len(),
        3,
        "nothing written by the refused page"
    );
    drop(system);
    db.drop().await;
}

#[tokio::test]
async fn a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing_mariadb() {
    a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing(Kind::Mariadb).await;
}

#[tokio::test]
async fn a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing_sqlite() {
    a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing(Kind::Sqlite).await;
}

#[tokio::test]
async fn a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing_postgres() {
    a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing(Kind::Postgres).await;
}

/// A page of first creates into PostgreSQL goes in by COPY only where COPY
/// writes what an INSERT would: a table with a rule (which COPY ignores),
/// a `json` column (the insert checks documents as `jsonb`) and a domain
/// keep the JSON insert, so the rule fires for every row and the values
/// are those the insert gives.
#[tokio::test]
async fn creates_into_a_table_copy_cannot_write_as_an_insert_would_are_inserted() {
    use syncd_connect::sql::SqlConnector;
    use syncd_connect::{FieldColumn, NewRecord};
    let dir = TempDir::new("copy-or-insert");
    let Some(db) = SystemDb::create(Kind::Postgres, &dir, "system").await else {
        return;
    };
    db.exec(
        "CREATE DOMAIN label AS text CHECK (VALUE <> '');
         CREATE TABLE notes (id text PRIMARY KEY, body text, updated_at text NOT NULL);
         CREATE TABLE audit (id text);
         CREATE RULE audited AS ON INSERT TO notes DO ALSO INSERT INTO audit VALUES (NEW.id);
         CREATE TABLE docs (id text PRIMARY KEY, doc json, updated_at text NOT NULL);
         CREATE TABLE tags (id text PRIMARY KEY, tag label, updated_at text NOT NULL);
         CREATE TABLE plain (id text PRIMARY KEY, body text, updated_at text NOT NULL);",
    )
    .await;
    let system = SqlConnector::connect("system", &db.url()).await.unwrap();
    let now = chrono::Utc::now();
    for (table, field, value) in [
        ("notes", "body", json!("hello")),
        ("docs", "doc", json!({"b": 1, "a": [true, null]})),
        ("tags", "tag", json!("red")),
        ("plain", "body", json!("tab\there")),
    ] {
        let columns = system.columns(table).await.unwrap().unwrap();
        let b = system
            .binding(
                table,
                table,
                columns,
                vec![FieldColumn::untyped(field, field)],
                None,
                None,
            )
            .unwrap();
        let records: Vec<NewRecord> = (0..3)
            .map(|i| NewRecord {
                id: Some(format!("{table}-{i}")),
                key: format!("fwd:{table}-{i}"),
                fields: json!({ field: value }).as_object().unwrap().clone(),
                tried: false,
            })
            .collect();
        let created = system.create(&b, &records, now).await.unwrap();
        assert!(created.iter().all(Result::is_ok), "{table}: {created:?}");
        let rows = db.dump(table).await;
        assert_eq!(rows.len(), 3, "{table}");
        assert!(rows.iter().all(|r| r[field] == value), "{table}: {rows:?}");
    }
    assert_eq!(db.dump("audit").await.len(), 3, "the rule fired for every row");
    drop(system);
    db.drop().await;
}

/// A record the target refuses in a page of creates (a trigger here) fails
/// alone: the page's reservation is settled by its commit with that
/// mapping `failed` and the reason, the others `mapped`, and no reservation
/// is left. The next run, once the target accepts it, creates it once.
#[tokio::test]
async fn a_create_refused_in_a_reserved_page_fails_alone_and_the_next_run_maps_it() {
    let dir = TempDir::new("refused-create");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    // Pages of two, in scan order: [A-1, A-2], [A-3, A-4], [A-5, A-6].
    let names = ["A-1", "A-2", "A-3", "A-4", "A-5", "A-6"];
    let rows: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "name": id, "industry": "x", "updated_at": ts(i as i64)}))
        .collect();
    source.insert("accounts", &rows).await;
    target
        .exec(
            "CREATE TRIGGER refuse BEFORE INSERT ON customers WHEN NEW.customer_name = 'A-4' \
             BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
        )
        .await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let scope = EntityScope::new("t1", "e2e", "account");
    let all: Vec<String> = names.map(String::from).to_vec();
    let state_db = sqlx::SqlitePool::connect(&dir.sqlite_url("state.db"))
        .await
        .unwrap();
    let reservations = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations")
            .fetch_one(&state_db)
            .await
            .unwrap()
    };
    let names_in = |rows: Vec<Value>| -> Vec<String> {
        let mut n: Vec<String> = rows
            .iter()
            .map(|r| r["customer_name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };

    let run = sync_once(store.clone(), &toml, 2).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    let mapped = store.lookup(&scope, Side::Source, &all).await.unwrap();
    assert_eq!(mapped.len(), 6, "every record has its mapping: {mapped:?}");
    let refused = &mapped["A-4"];
    assert_eq!(refused.status, MappingStatus::Failed);
    let why = refused.last_error.as_deref().unwrap_or_default();
    assert!(why.contains("refused by a trigger"), "{why}");
    assert!(
        all.iter()
            .filter(|id| *id != "A-4")
            .all(|id| mapped[id].status == MappingStatus::Mapped),
        "{mapped:?}"
    );
    let mut expected = all.clone();
    expected.retain(|n| n != "A-4");
    assert_eq!(names_in(target.dump("customers").await), expected);
    assert_eq!(reservations().await, 0, "each page settled its reservation");

    target.exec("DROP TRIGGER refuse").await;
    let run = sync_once(store.clone(), &toml, 2).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(names_in(target.dump("customers").await), all);
    let mapped = store.lookup(&scope, Side::Source, &all).await.unwrap();
    assert!(
        mapped.values().all(|m| m.status == MappingStatus::Mapped),
        "{mapped:?}"
    );
    assert_eq!(reservations().await, 0);
    state_db.close().await;
    state.drop().await;
}

/// A target record whose reference points at a record that is not synced
/// (one added in the target only) cannot be compared: the record waited
/// for a patch pass that never came, its source edits were never written,
/// and the run succeeded without a word. Now, at its last pass, it fails
/// with the reason.
#[tokio::test]
async fn a_record_whose_target_references_an_unsynced_record_fails_with_the_reason() {
    let dir = TempDir::new("unsynced-ref");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "x", "updated_at": ts(0)})],
        )
        .await;
    source
        .insert(
            "contacts",
            &[json!({"id": "C-1", "name": "Ada", "email": "ada@example.com", "account_id": "A-1", "updated_at": ts(1)})],
        )
        .await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    target
        .exec(&format!(
            "INSERT INTO customers VALUES ('T-9', 'Local', 'x', NULL, '{}'); UPDATE people SET customer_id = 'T-9';",
            ts(5)
        ))
        .await;
    source
        .exec(&format!(
            "UPDATE contacts SET name = 'Ada L', updated_at = '{}'",
            ts(10)
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let steps = store.load_steps(run.id).await.unwrap();
    let contact = steps
        .iter()
        .find(|s| s.entity_type.as_str() == "contact" && s.direction.as_str() == "forward")
        .unwrap();
    assert_eq!(contact.counters.failed, 1, "{:?}", contact.counters);
    let m = store
        .lookup(
            &EntityScope::new("t1", "e2e", "contact"),
            Side::Source,
            &["C-1".into()],
        )
        .await
        .unwrap()
        .remove("C-1")
        .unwrap();
    let error = m.last_error.unwrap_or_default();
    assert!(
        error.contains("references account `T-9`, which has not been synced"),
        "{error}"
    );
    state.drop().await;
}

/// Created plus updated, summed over the sync steps of the table `syncd
/// run` printed.
fn writes_printed(stdout: &str) -> u64 {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("stage"));
    let header: Vec<&str> = lines.next().expect("a step table").split_whitespace().collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (created, updated) = (at("created"), at("updated"));
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .take_while(|cells| {
            cells
                .first()
                .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|cells| cells[created].parse::<u64>().unwrap() + cells[updated].parse::<u64>().unwrap())
        .sum()
}

/// Rows of the target's customers, people and sales orders.
async fn target_counts(db: &SystemDb) -> (usize, usize, usize) {
    (
        db.dump("customers").await.len(),
        db.dump("people").await.len(),
        db.dump("sales_orders").await.len(),
    )
}

/// The three-stage bidirectional sync through `syncd run`, as an operator
/// runs it, between `source_kind` and `target_kind`: every record arrives
/// once, a hard delete is reconciled, and a run without changes writes
/// nothing.
async fn through_syncd_run(source_kind: Kind, target_kind: Kind, label: &str) {
    let dir = TempDir::new(label);
    let Some(source) = SystemDb::with_tables(source_kind, &dir, "source").await else {
        return;
    };
    let Some(target) = SystemDb::with_tables(target_kind, &dir, "target").await else {
        return;
    };
    let (accounts, contacts, orders) = crm_rows(100);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[])
        .replace("[entities.fields]", "reconcile_every = \"0s\"\n[entities.fields]");
    let file = dir.0.join("e2e.toml");
    std::fs::write(&file, toml).unwrap();
    let state = dir.sqlite_url("state.db");
    let mut runs = 0;
    let mut run = || {
        runs += 1;
        let (out, err) = (
            dir.0.join(format!("{runs}.out")),
            dir.0.join(format!("{runs}.err")),
        );
        let status = support::spawn_syncd_run(&file, "t1", &state, &[], &out, &err)
            .wait()
            .unwrap();
        let stdout = std::fs::read_to_string(&out).unwrap();
        assert!(
            status.success() && stdout.contains("succeeded"),
            "{stdout}\n{}",
            std::fs::read_to_string(&err).unwrap()
        );
        support::assert_table_accounted(&stdout);
        stdout
    };
    run();
    assert_eq!(target_counts(&target).await, (100, 200, 300));
    source.exec("DELETE FROM orders WHERE id = 'O-000042'").await;
    run();
    assert_eq!(target_counts(&target).await, (100, 200, 299));
    assert_eq!(source.dump("accounts").await.len(), 100, "nothing came back");
    let printed = run();
    assert_eq!(writes_printed(&printed), 0, "{printed}");
    source.drop().await;
    target.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_sqlite_through_syncd_run() {
    through_syncd_run(Kind::Mariadb, Kind::Sqlite, "run-my-sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mariadb_through_syncd_run() {
    through_syncd_run(Kind::Postgres, Kind::Mariadb, "run-pg-my").await;
}

/// `n` source accounts `A-000`, `A-001`, ...
fn account_rows(n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("A-{i:03}"), "name": format!("Account {i}"), "industry": "x", "updated_at": ts(i)}))
        .collect()
}

/// `n` products `P-000`, `P-001`, ...
fn product_rows(n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("P-{i:03}"), "title": format!("Product {i}"), "updated_at": ts(i)}))
        .collect()
}

/// Accounts and products, one stage of two entity types, from `source` to
/// `target` (tenant `t1`).
fn accounts_and_products(direction: &str, source: &SystemDb, target: &SystemDb) -> String {
    format!(
        r#"name = "e2e"
direction = "{direction}"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"
url = "{}"

[systems.erp]
connector = "sql"
url = "{}"

[[entities]]
name = "account"
source_table = "accounts"
target_table = "customers"
[entities.fields]
name = {{ source = "name", target = "customer_name" }}

[[entities]]
name = "product"
table = "products"

[tenants.t1]
"#,
        source.url(),
        target.url()
    )
}

/// Entity types of one stage depend on none of each other: their steps run
/// side by side (`Options::parallel`), pages of one interleaved with the
/// other's, and every record arrives as it does one step at a time. With a
/// SQLite system or store (one writer at a time) they go one after the
/// other whatever `parallel` says.
async fn the_entity_types_of_one_stage(kind: Kind) {
    use syncd_engine::run::executor::{Job, Options};
    let dir = TempDir::new("parallel-stage");
    let Some(source) = SystemDb::with_tables(kind, &dir, "source").await else {
        return;
    };
    let target = SystemDb::with_tables(kind, &dir, "target").await.unwrap();
    for db in [&source, &target] {
        db.exec("CREATE TABLE products (id TEXT PRIMARY KEY, title TEXT, updated_at TEXT NOT NULL)")
            .await;
    }
    source.insert("accounts", &account_rows(30)).await;
    source.insert("products", &product_rows(30)).await;
    let toml = accounts_and_products("bidirectional", &source, &target);
    let state = match kind {
        Kind::Sqlite => StateStore::embedded(&dir).await,
        _ => StateStore::postgres_redis().await.unwrap(),
    };
    let store = state.store.clone();
    for parallel in [2, 1] {
        let wf = syncd_core::workflow::Workflow::parse("test.toml", &toml).unwrap();
        let graph = syncd_core::plan::DependencyGraph::builtin_default();
        let options = Options {
            page_size: 3,
            parallel,
            ..Options::default()
        };
        let job = Job::prepare(store.clone(), wf, &graph, "t1".into(), options)
            .await
            .unwrap();
        let run = job.start("test").await.unwrap();
        let mut pages: Vec<String> = Vec::new();
        let done = job
            .execute(run, &mut |p| {
                pages.push(format!("{} {}", p.entity_type, p.direction.as_str()))
            })
            .await
            .unwrap();
        assert_eq!(done.state, RunState::Succeeded);
        support::assert_accounted(&store, done.id).await;
        if parallel == 2 {
            // Pages of the two forward steps alternate at least once each way.
            let forward: Vec<&String> = pages.iter().filter(|p| p.ends_with("forward")).collect();
            let switches = forward.windows(2).filter(|w| w[0] != w[1]).count();
            match kind {
                Kind::Sqlite => assert_eq!(switches, 1, "SQLite: one step, then the other: {pages:?}"),
                _ => assert!(switches >= 2, "the two steps ran one after the other: {pages:?}"),
            }
            assert_eq!(target.dump("customers").await.len(), 30);
            assert_eq!(target.dump("products").await.len(), 30);
        } else {
            // Nothing left to write, one step at a time.
            assert_eq!(writes_of(&store, &done).await, 0);
        }
    }
    let titles: Vec<Value> = target
        .dump("products")
        .await
        .iter()
        .map(|r| r["title"].clone())
        .collect();
    assert_eq!(titles.len(), 30);
    assert!(titles.contains(&json!("Product 29")));
    state.drop().await;
    source.drop().await;
    target.drop().await;
}

#[tokio::test]
async fn the_entity_types_of_one_stage_sync_side_by_side() {
    the_entity_types_of_one_stage(Kind::Postgres).await;
}

#[tokio::test]
async fn the_entity_types_of_one_stage_sync_one_after_the_other_on_sqlite() {
    the_entity_types_of_one_stage(Kind::Sqlite).await;
}

/// A step of a stage that fails stops the steps beside it after their page
/// in flight: the run fails with that step's error (not the others'
/// interruption), and every record the other step wrote has its mapping.
#[tokio::test]
async fn a_failing_step_stops_the_steps_beside_it_after_their_page() {
    use syncd_engine::run::executor::{Job, Options};
    let dir = TempDir::new("parallel-failure");
    let Some(source) = SystemDb::with_tables(Kind::Postgres, &dir, "source").await else {
        return;
    };
    let target = SystemDb::with_tables(Kind::Postgres, &dir, "target")
        .await
        .unwrap();
    // The source's products cannot be read: every row divides by zero.
    source
        .exec(
            "CREATE TABLE product_rows (id text PRIMARY KEY, title text, updated_at text NOT NULL);
             CREATE VIEW products AS SELECT id, title || (1 / (length(id) - length(id)))::text AS title, \
             updated_at FROM product_rows;",
        )
        .await;
    target
        .exec("CREATE TABLE products (id text PRIMARY KEY, title text, updated_at text NOT NULL)")
        .await;
    source.insert("accounts", &account_rows(60)).await;
    source.insert("product_rows", &product_rows(6)).await;
    let toml = accounts_and_products("one_way", &source, &target);
    let state = StateStore::postgres_redis().await.unwrap();
    let store = state.store.clone();
    let wf = syncd_core::workflow::Workflow::parse("test.toml", &toml).unwrap();
    let graph = syncd_core::plan::DependencyGraph::builtin_default();
    let options = Options {
        page_size: 3,
        parallel: 2,
        retry_for: std::time::Duration::ZERO,
        ..Options::default()
    };
    let job = Job::prepare(store.clone(), wf, &graph, "t1".into(), options)
        .await
        .unwrap();
    let run = job.start("test").await.unwrap();
    let result = job.execute(run.clone(), &mut |_| {}).await;
    let ended = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(ended.state, RunState::Failed, "{result:?}");
    let error = ended.error.unwrap_or_default();
    assert!(error.contains("products"), "the product step's error: {error}");
    assert!(!error.contains("interrupted"), "{error}");
    // The account step stopped early, and what it wrote is mapped.
    let scope = EntityScope::new("t1", "e2e", "account");
    let mapped = store.count_mapped(&scope).await.unwrap();
    let written = target.dump("customers").await.len() as u64;
    assert_eq!(written, mapped, "every account written has its mapping");
    assert!(
        written < 60,
        "the account step went on to the end ({written} written)"
    );
    state.drop().await;
    source.drop().await;
    target.drop().await;
}

/// Bytes reach a PostgreSQL target exactly through the first load's COPY
/// (whose text format escapes the backslash of `bytea`'s hex form): NUL,
/// tab, newline, backslash and 0xff each survive, and a second run writes
/// nothing.
#[tokio::test]
async fn bytes_arrive_exactly_through_copy() {
    let dir = TempDir::new("copy-bytes");
    let Some(source) = SystemDb::create(Kind::Postgres, &dir, "source").await else {
        return;
    };
    let target = SystemDb::create(Kind::Postgres, &dir, "target").await.unwrap();
    for db in [&source, &target] {
        db.exec("CREATE TABLE blobs (id text PRIMARY KEY, data bytea, updated_at timestamptz NOT NULL)")
            .await;
    }
    source
        .exec(
            "INSERT INTO blobs VALUES ('B-1', decode('00095c0a0dff', 'hex'), now()), \
             ('B-2', decode('5c78', 'hex'), now()), ('B-3', '', now()), ('B-4', NULL, now())",
        )
        .await;
    let toml = format!(
        "name = \"e2e\"\nsource = \"a\"\ntarget = \"b\"\n[systems.a]\nconnector = \"sql\"\nurl = \"{}\"\n\
         [systems.b]\nconnector = \"sql\"\nurl = \"{}\"\n[[entities]]\nname = \"product\"\ntable = \"blobs\"\n\
         [tenants.t1]\n",
        source.url(),
        target.url()
    );
    let state = StateStore::embedded(&dir).await;
    let run = sync_once(state.store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let hex = |db: &SystemDb| {
        let pool = match db {
            SystemDb::Postgres { schema } => schema.pool.clone(),
            _ => unreachable!(),
        };
        async move {
            sqlx::query_as::<_, (Option<String>,)>(
                "SELECT encode(data, 'hex') FROM blobs ORDER BY data NULLS LAST",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let expected = [Some(""), Some("00095c0a0dff"), Some("5c78"), None].map(|h| (h.map(str::to_owned),));
    assert_eq!(hex(&target).await, expected.to_vec());
    let again = sync_once(state.store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&state.store, &again).await, 0);
    state.drop().await;
    source.drop().await;
    target.drop().await;
}

/// Text is not bytes: a `bytea` column given `hello` would store its five
/// bytes and give back `\x68656c6c6f`, and a bidirectional run would then
/// write that text back over the source's. Such a record fails alone,
/// naming the field; text that is bytes in their own form (`\x41`)
/// arrives as those bytes, and the source keeps its text either way.
#[tokio::test]
async fn text_that_is_not_bytes_fails_alone_in_a_bytes_column() {
    let dir = TempDir::new("text-bytes");
    let Some(source) = SystemDb::create(Kind::Postgres, &dir, "source").await else {
        return;
    };
    let target = SystemDb::create(Kind::Postgres, &dir, "target").await.unwrap();
    source
        .exec("CREATE TABLE notes (id text PRIMARY KEY, data text, updated_at timestamptz NOT NULL)")
        .await;
    target
        .exec("CREATE TABLE notes (id text PRIMARY KEY, data bytea, updated_at timestamptz NOT NULL)")
        .await;
    source
        .exec(
            "INSERT INTO notes VALUES ('N-1', 'hello', now()), ('N-2', '\\x41', now()), ('N-3', NULL, now())",
        )
        .await;
    let toml = format!(
        "name = \"e2e\"\nsource = \"a\"\ntarget = \"b\"\ndirection = \"bidirectional\"\n[systems.a]\n\
         connector = \"sql\"\nurl = \"{}\"\n[systems.b]\nconnector = \"sql\"\nurl = \"{}\"\n[[entities]]\n\
         name = \"product\"\ntable = \"notes\"\n[tenants.t1]\n",
        source.url(),
        target.url()
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    for _ in 0..2 {
        sync_once(store.clone(), &toml, 100).await.unwrap();
    }
    let scope = EntityScope::new("t1", "e2e", "product");
    let refused = store
        .lookup(&scope, Side::Source, &["N-1".into()])
        .await
        .unwrap()
        .remove("N-1")
        .unwrap();
    assert_eq!(refused.status, MappingStatus::Failed);
    let why = refused.last_error.unwrap_or_default();
    assert!(
        why.contains("field `data`") && why.contains("\"hello\" is not bytes"),
        "{why}"
    );
    let rows = |db: &SystemDb, sql: &'static str| {
        let pool = match db {
            SystemDb::Postgres { schema } => schema.pool.clone(),
            _ => unreachable!(),
        };
        async move {
            sqlx::query_as::<_, (String, Option<String>)>(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let text = |id: &str, v: Option<&str>| (id.to_owned(), v.map(str::to_owned));
    assert_eq!(
        rows(&source, "SELECT id, data FROM notes ORDER BY id").await,
        vec![
            text("N-1", Some("hello")),
            text("N-2", Some("\\x41")),
            text("N-3", None)
        ],
        "the source keeps its text"
    );
    assert_eq!(
        rows(
            &target,
            "SELECT id, encode(data, 'hex') FROM notes ORDER BY data NULLS LAST"
        )
        .await
        .len(),
        2
    );
    let bytes = rows(
        &target,
        "SELECT encode(data, 'hex'), NULL FROM notes WHERE data IS NOT NULL",
    )
    .await;
    assert_eq!(bytes, vec![text("41", None)]);
    state.drop().await;
    source.drop().await;
    target.drop().await;
}

/// A row is stamped when its transaction starts (`DEFAULT now()`) and
/// seen when it commits. A run that reads while such a transaction is open
/// reads the rows committed after it began, and its cursor passes the
/// hidden row's time; the next run must still read that row once it is
/// committed. With `lookback = "0s"` it never would: the run says
/// succeeded and the row stays behind.
#[tokio::test]
async fn a_row_committed_after_a_run_read_past_its_time_arrives_with_the_next_run() {
    for (lookback, arrives) in [("", true), ("lookback = \"0s\"\n", false)] {
        let dir = TempDir::new("late-commit");
        let Some(source) = SystemDb::create(Kind::Postgres, &dir, "source").await else {
            return;
        };
        let target = SystemDb::create(Kind::Postgres, &dir, "target").await.unwrap();
        for db in [&source, &target] {
            db.exec("CREATE TABLE notes (id text PRIMARY KEY, body text, updated_at timestamptz NOT NULL DEFAULT now())")
                .await;
        }
        let SystemDb::Postgres { schema } = &source else {
            unreachable!()
        };
        let mut slow = schema.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO notes (id, body) VALUES ('slow', 'committed late')")
            .execute(&mut *slow)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        source
            .exec("INSERT INTO notes (id, body) VALUES ('fast', 'committed at once')")
            .await;
        let toml = format!(
            "name = \"e2e\"\nsource = \"a\"\ntarget = \"b\"\n[systems.a]\nconnector = \"sql\"\nurl = \"{}\"\n\
             {lookback}[systems.b]\nconnector = \"sql\"\nurl = \"{}\"\n[[entities]]\nname = \"product\"\n\
             table = \"notes\"\n[tenants.t1]\n",
            source.url(),
            target.url()
        );
        let state = StateStore::embedded(&dir).await;
        let store = state.store.clone();
        let first = sync_once(store.clone(), &toml, 100).await.unwrap();
        assert_eq!(writes_of(&store, &first).await, 1, "only `fast` is visible yet");
        slow.commit().await.unwrap();
        let next = sync_once(store.clone(), &toml, 100).await.unwrap();
        assert_eq!(next.state, RunState::Succeeded);
        let bodies: Vec<String> = target
            .dump("notes")
            .await
            .iter()
            .map(|r| r["body"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            bodies.contains(&"committed late".to_owned()),
            arrives,
            "{lookback}: {bodies:?}"
        );
        // Read again within the lookback, `fast` is unchanged: nothing is
        // written twice.
        let again = sync_once(store.clone(), &toml, 100).await.unwrap();
        assert_eq!(writes_of(&store, &again).await, 0);
        state.drop().await;
        source.drop().await;
        target.drop().await;
    }
}

/// The state store restored from a backup taken before a first load (or
/// failed over to a replica that lacks its last commits) knows nothing of
/// what that load created. The next run creates every record again, and
/// must meet the rows already there under the same ids, as upserts: the
/// target ends with each record once, under the id it had, and the new
/// ID map says so. (Ids that were not derived from the record, such as
/// time-ordered ones, would duplicate the whole load.)
#[tokio::test]
async fn a_state_store_restored_to_before_a_first_load_duplicates_nothing() {
    let dir = TempDir::new("restored-state");
    let Some(source) = SystemDb::with_tables(Kind::Postgres, &dir, "source").await else {
        return;
    };
    let target = SystemDb::with_tables(Kind::Postgres, &dir, "target")
        .await
        .unwrap();
    for db in [&source, &target] {
        db.exec("CREATE TABLE products (id TEXT PRIMARY KEY, title TEXT, updated_at TEXT NOT NULL)")
            .await;
    }
    source.insert("accounts", &account_rows(30)).await;
    source.insert("products", &product_rows(30)).await;
    let toml = accounts_and_products("one_way", &source, &target);
    let load = |state: Arc<Store>| {
        let toml = toml.clone();
        async move {
            let done = sync_once(state, &toml, 7).await.unwrap();
            assert_eq!(done.state, RunState::Succeeded);
        }
    };
    let account_ids = ids(&account_rows(30));
    let product_ids = ids(&product_rows(30));
    let first = StateStore::postgres_redis().await.unwrap();
    load(first.store.clone()).await;
    let customers_before = ids(&target.dump("customers").await);
    let products_before = ids(&target.dump("products").await);
    assert_eq!((customers_before.len(), products_before.len()), (30, 30));
    let mapped_before = (
        target_ids(&first.store, "account", &account_ids).await,
        target_ids(&first.store, "product", &product_ids).await,
    );
    // The backup was taken before the load: a state store with none of it.
    let restored = StateStore::postgres_redis().await.unwrap();
    load(restored.store.clone()).await;
    assert_eq!(
        ids(&target.dump("customers").await),
        customers_before,
        "each account once, under the id it had"
    );
    assert_eq!(ids(&target.dump("products").await), products_before);
    let mapped_after = (
        target_ids(&restored.store, "account", &account_ids).await,
        target_ids(&restored.store, "product", &product_ids).await,
    );
    assert_eq!(mapped_after, mapped_before, "the new ID map links the same rows");
    assert_eq!(mapped_after.0.len(), 30);
    first.drop().await;
    restored.drop().await;
    source.drop().await;
    target.drop().await;
}

/// A first load asks the ID map only about the records its step has met
/// before (its scope was empty when it began). A record met twice in one
/// scan, as one edited while the scan runs is, is created the first time
/// and updated with its later values the second: not created again, and
/// its page's commit does not fail on the mapping already there. The
/// source is a view that shows account `A-001` twice, the second time
/// renamed and later, so the scan meets it twice, one record a page.
#[tokio::test]
async fn a_record_met_twice_in_a_first_load_is_created_then_updated() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let dir = TempDir::new("met-twice");
        let Some(source) = SystemDb::with_tables(kind, &dir, "source").await else {
            return;
        };
        let target = SystemDb::with_tables(kind, &dir, "target").await.unwrap();
        let state = match kind {
            Kind::Postgres => StateStore::postgres_redis().await.unwrap(),
            _ => StateStore::embedded(&dir).await,
        };
        source.insert("accounts", &account_rows(5)).await;
        let later = match kind {
            Kind::Postgres => format!("'{}'::timestamptz", ts(1_000)),
            _ => format!("'{}'", ts(1_000)),
        };
        source
            .exec(&format!(
                "ALTER TABLE accounts RENAME TO account_rows;
                 CREATE VIEW accounts AS
                     SELECT id, name, industry, parent_id, updated_at FROM account_rows
                     UNION ALL
                     SELECT id, 'Account 1, renamed', industry, parent_id, {later} FROM account_rows
                     WHERE id = 'A-001'"
            ))
            .await;
        let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
        let run = sync_once(state.store.clone(), &toml, 1).await.unwrap();
        assert_eq!(run.state, RunState::Succeeded, "{kind:?}: {:?}", run.error);
        let steps = state.store.load_steps(run.id).await.unwrap();
        let account = steps
            .iter()
            .find(|s| s.entity_type.as_str() == "account")
            .unwrap();
        assert_eq!(
            (
                account.counters.read,
                account.counters.created,
                account.counters.updated
            ),
            (6, 5, 1),
            "{kind:?}"
        );
        let customers = target.dump("customers").await;
        assert_eq!(customers.len(), 5, "{kind:?}: {customers:?}");
        let mapped = target_ids(&state.store, "account", &ids(&account_rows(5))).await;
        let renamed = by_id(&customers)[&mapped["A-001"]];
        assert_eq!(renamed["customer_name"], "Account 1, renamed", "{kind:?}");
        source.drop().await;
        target.drop().await;
        state.drop().await;
    }
}

/// An operator cancels a run while its worker is in the middle of the
/// accounts: from the moment the cancel returns, nothing more of that run
/// is committed (not even the page its worker had in flight), the run ends
/// as cancelled, and the next run finishes the load with every account
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_mid_step_commits_nothing_after_the_cancel() {
    use syncd_engine::run::RunEvent;
    use syncd_engine::run::executor::{Job, Options, RunError};
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let dir = TempDir::new("cancel-mid-step");
        let Some(source) = SystemDb::with_tables(kind, &dir, "source").await else {
            return;
        };
        let target = SystemDb::with_tables(kind, &dir, "target").await.unwrap();
        let state = match kind {
            Kind::Postgres => StateStore::postgres_redis().await.unwrap(),
            _ => StateStore::embedded(&dir).await,
        };
        let accounts = account_rows(60);
        source.insert("accounts", &accounts).await;
        let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
        let wf = syncd_core::workflow::Workflow::parse("test.toml", &toml).unwrap();
        let graph = syncd_core::plan::DependencyGraph::builtin_default();
        let options = Options {
            page_size: 1,
            ..Options::default()
        };
        let job = Job::prepare(state.store.clone(), wf, &graph, "t1".into(), options)
            .await
            .unwrap();
        let run = job.start("test").await.unwrap();
        // Once five accounts are committed, another task cancels the run
        // and counts the mappings there are when the cancel has returned.
        let (go, cancel) = tokio::sync::oneshot::channel::<()>();
        let canceller = tokio::spawn({
            let (store, run, ids) = (state.store.clone(), run.clone(), ids(&accounts));
            async move {
                cancel.await.unwrap();
                let current = store.load_run(None, run.id).await.unwrap().unwrap();
                store
                    .transition_run(&current, RunEvent::Cancel, Some("cancelled by an operator"))
                    .await
                    .unwrap();
                target_ids(&store, "account", &ids).await.len()
            }
        });
        let mut go = Some(go);
        let ended = job
            .execute(run.clone(), &mut |p| {
                if p.entity_type == "account"
                    && p.counters.read >= 5
                    && let Some(go) = go.take()
                {
                    let _ = go.send(());
                }
            })
            .await;
        assert!(
            matches!(ended, Err(RunError::Cancelled { run_id }) if run_id == run.id),
            "{kind:?}: {ended:?}"
        );
        let at_cancel = canceller.await.unwrap();
        let now = target_ids(&state.store, "account", &ids(&accounts)).await.len();
        assert_eq!(now, at_cancel, "{kind:?}: mappings committed after the cancel");
        assert!(
            at_cancel < accounts.len(),
            "{kind:?}: the run was over before the cancel"
        );
        let stored = state.store.load_run(None, run.id).await.unwrap().unwrap();
        assert_eq!(stored.state, RunState::Cancelled, "{kind:?}");

        let next = sync_once(state.store.clone(), &toml, 7).await.unwrap();
        assert_eq!(next.state, RunState::Succeeded, "{kind:?}: {:?}", next.error);
        let customers = target.dump("customers").await;
        assert_eq!(customers.len(), accounts.len(), "{kind:?}: {customers:?}");
        let mapped = target_ids(&state.store, "account", &ids(&accounts)).await;
        assert_eq!(mapped.len(), accounts.len(), "{kind:?}");
        let rows = by_id(&customers);
        for a in &accounts {
            let id = a["id"].as_str().unwrap();
            assert_eq!(rows[&mapped[id]]["customer_name"], a["name"], "{kind:?}: {id}");
        }
        source.drop().await;
        target.drop().await;
        state.drop().await;
    }
}

/// A target table whose ids the database assigns (an integer key) keeps
/// each create's key in its `idempotency_column`. A state store restored
/// from a backup taken before a first load knows nothing of what that load
/// created: the next run must find those rows by their keys and map them,
/// not insert every record a second time under new ids. On the three
/// databases a system can be.
#[tokio::test]
async fn an_integer_id_target_after_a_state_store_restore_duplicates_nothing() {
    for kind in [Kind::Sqlite, Kind::Postgres, Kind::Mariadb] {
        let dir = TempDir::new("restored-integer-ids");
        let Some(source) = SystemDb::create(kind, &dir, "source").await else {
            return;
        };
        let target = SystemDb::create(kind, &dir, "target").await.unwrap();
        let (text, id) = match kind {
            Kind::Sqlite => ("TEXT", "INTEGER PRIMARY KEY"),
            Kind::Postgres => ("text", "bigserial PRIMARY KEY"),
            Kind::Mariadb => ("VARCHAR(120)", "BIGINT AUTO_INCREMENT PRIMARY KEY"),
        };
        source
            .exec(&format!(
                "CREATE TABLE products (id {text} PRIMARY KEY, title {text}, updated_at {text} NOT NULL)"
            ))
            .await;
        target
            .exec(&format!(
                "CREATE TABLE products (id {id}, title {text} CHECK (title <> 'refused'), sync_key {text}, \
                                        updated_at {text} NOT NULL)"
            ))
            .await;
        let products = product_rows(30);
        source.insert("products", &products).await;
        let toml = keyed_products("one_way", &source, &target);
        let load = |store: Arc<Store>| {
            let toml = toml.clone();
            async move {
                let done = sync_once(store, &toml, 7).await.unwrap();
                assert_eq!(done.state, RunState::Succeeded, "{kind:?}: {:?}", done.error);
            }
        };
        let first = StateStore::embedded(&dir).await;
        load(first.store.clone()).await;
        let rows_before = integer_ids(&target.dump("products").await);
        assert_eq!(rows_before.len(), 30, "{kind:?}");
        let mapped_before = target_ids(&first.store, "product", &ids(&products)).await;
        assert_eq!(mapped_before.len(), 30, "{kind:?}");

        // The backup was taken before the load; two records changed since,
        // one to a title the target refuses.
        source
            .exec(&format!(
                "UPDATE products SET title = 'Product 3, renamed', updated_at = '{0}' WHERE id = 'P-003';
                 UPDATE products SET title = 'refused', updated_at = '{0}' WHERE id = 'P-004'",
                ts(1_000)
            ))
            .await;
        let restored = StateStore::postgres_redis().await.unwrap();
        load(restored.store.clone()).await;
        let rows = target.dump("products").await;
        assert_eq!(
            integer_ids(&rows),
            rows_before,
            "{kind:?}: each product once, under the id it had"
        );
        // The refused record fails alone, with the reason, and is not
        // created again.
        let scope = EntityScope::new("t1", "e2e", "product");
        let p4 = restored
            .store
            .lookup(&scope, Side::Source, &["P-004".to_owned()])
            .await
            .unwrap()
            .remove("P-004")
            .unwrap();
        assert_eq!(p4.status, MappingStatus::Failed, "{kind:?}");
        let why = p4.last_error.unwrap_or_default();
        assert!(
            why.contains(&format!(
                "refused the update of record {}, which an earlier attempt created",
                mapped_before["P-004"]
            )),
            "{kind:?}: {why}"
        );
        let others: Vec<String> = ids(&products).into_iter().filter(|id| id != "P-004").collect();
        let mapped_after = target_ids(&restored.store, "product", &others).await;
        let mut expected = mapped_before.clone();
        expected.remove("P-004");
        assert_eq!(
            mapped_after, expected,
            "{kind:?}: the new ID map links the same rows"
        );
        let renamed = rows
            .iter()
            .find(|r| r["id"].as_i64() == mapped_after["P-003"].parse().ok())
            .unwrap();
        assert_eq!(renamed["title"], "Product 3, renamed", "{kind:?}");
        first.drop().await;
        restored.drop().await;
        source.drop().await;
        target.drop().await;
    }
}

/// Products from `source` to `target` (tenant `t1`), each create's key
/// kept in `sync_key`: for tables whose ids the database assigns.
fn keyed_products(direction: &str, source: &SystemDb, target: &SystemDb) -> String {
    format!(
        r#"name = "e2e"
direction = "{direction}"
source = "crm"
target = "erp"
[systems.crm]
connector = "sql"
url = "{}"
[systems.erp]
connector = "sql"
url = "{}"
[[entities]]
name = "product"
table = "products"
idempotency_column = "sync_key"
[tenants.t1]
"#,
        source.url(),
        target.url()
    )
}

/// The ids of `rows` whose ids are integers, as text.
fn integer_ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_i64().expect("an integer id").to_string())
        .collect()
}

/// What `syncd check --connect` asks of an integer-id table's idempotency
/// column, which every page of creates searches: whether that search can
/// go through an index (asked of the planner on SQLite, of the catalog on
/// PostgreSQL and MariaDB). An index that begins with the key serves it,
/// whole or partial on `key IS NOT NULL`, and so does one that begins with
/// the tenant column when the table has the tenant's filter; one where the
/// key comes after another column does not, nor does one on the tenant
/// column alone, nor a full-text one. And
/// whether the table holds any key of the tenant's, which a first load asks
/// before it decides to skip those searches.
#[tokio::test]
async fn an_idempotency_column_is_searchable_only_through_an_index_that_serves_it() {
    use syncd_connect::sql::SqlConnector;
    for kind in [Kind::Sqlite, Kind::Postgres, Kind::Mariadb] {
        let dir = TempDir::new("key-index");
        let Some(db) = SystemDb::create(kind, &dir, "system").await else {
            return;
        };
        let text = if kind == Kind::Mariadb {
            "VARCHAR(80)"
        } else {
            "TEXT"
        };
        let mut ddl: Vec<String> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| {
                format!(
                    "CREATE TABLE {t} (id INTEGER PRIMARY KEY, sync_key {text}, other {text}, \
                     tenant {text}, updated_at {text})"
                )
            })
            .collect();
        ddl.extend([
            "CREATE INDEX a_other ON a (other, sync_key)".to_owned(),
            "CREATE UNIQUE INDEX b_key ON b (sync_key)".to_owned(),
            "CREATE INDEX c_key ON c (sync_key, other)".to_owned(),
            match kind {
                Kind::Mariadb => "CREATE FULLTEXT INDEX d_key ON d (sync_key)".to_owned(),
                _ => "CREATE INDEX d_key ON d (sync_key) WHERE sync_key IS NOT NULL".to_owned(),
            },
            "CREATE INDEX e_key ON e (tenant, sync_key)".to_owned(),
            "CREATE INDEX f_tenant ON f (tenant)".to_owned(),
        ]);
        for statement in ddl {
            db.exec(&statement).await;
        }
        let system = SqlConnector::connect("system", &db.url()).await.unwrap();
        let mut found = Vec::new();
        for (table, tenant) in [
            ("a", false),
            ("b", false),
            ("c", false),
            ("d", false),
            ("e", false),
            ("e", true),
            ("f", true),
        ] {
            let columns = system.columns(table).await.unwrap().unwrap();
            let mut b = system
                .binding(table, table, columns, Vec::new(), Some("sync_key".into()), None)
                .unwrap();
            if tenant {
                b.tenant = Some(("tenant".into(), "acme".into()));
            }
            found.push((table, tenant, system.key_search_uses_an_index(&b).await.unwrap()));
        }
        if kind == Kind::Postgres {
            db.exec(
                "CREATE TABLE g (id INTEGER PRIMARY KEY, sync_key TEXT, updated_at TEXT);
                 CREATE INDEX g_key ON g USING hash (sync_key)",
            )
            .await;
            let columns = system.columns("g").await.unwrap().unwrap();
            let g = system
                .binding("g", "g", columns, Vec::new(), Some("sync_key".into()), None)
                .unwrap();
            assert!(system.key_search_uses_an_index(&g).await.unwrap(), "a hash index");
        }
        // Before a first load, whether the table holds a key at all.
        let columns = system.columns("e").await.unwrap().unwrap();
        let mut e = system
            .binding("e", "e", columns, Vec::new(), Some("sync_key".into()), None)
            .unwrap();
        e.tenant = Some(("tenant".into(), "acme".into()));
        assert!(!system.holds_keyed_rows(&e).await.unwrap(), "{kind:?}");
        db.exec("INSERT INTO e (id, tenant, updated_at) VALUES (1, 'acme', 'x')")
            .await;
        db.exec("INSERT INTO e (id, sync_key, tenant, updated_at) VALUES (2, 'fwd:1', 'globex', 'x')")
            .await;
        assert!(
            !system.holds_keyed_rows(&e).await.unwrap(),
            "{kind:?}: another tenant's key"
        );
        db.exec("INSERT INTO e (id, sync_key, tenant, updated_at) VALUES (3, 'fwd:2', 'acme', 'x')")
            .await;
        assert!(system.holds_keyed_rows(&e).await.unwrap(), "{kind:?}");
        let partial = kind != Kind::Mariadb;
        assert_eq!(
            found,
            [
                ("a", false, false),
                ("b", false, true),
                ("c", false, true),
                ("d", false, partial),
                ("e", false, false),
                ("e", true, true),
                ("f", true, false)
            ],
            "{kind:?}"
        );
        drop(system);
        db.drop().await;
    }
}

/// The same restore under a bidirectional integration, integer ids on both
/// sides, two records native to each. The forward step finds the rows it
/// created by their keys. The rows the backward step created in the source
/// carry that step's keys, which the forward step does not know for its
/// own: it reads them as new records and creates copies (a limit the README
/// states). The backward step then finds its rows by key already mapped to
/// those copies: each of those records fails alone, naming the copy, and
/// the run goes on instead of failing on the ID map's unique key.
#[tokio::test]
async fn a_bidirectional_restore_reports_the_copies_it_cannot_tell_apart() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let dir = TempDir::new("restored-bidirectional");
        let Some(source) = SystemDb::create(kind, &dir, "source").await else {
            return;
        };
        let target = SystemDb::create(kind, &dir, "target").await.unwrap();
        let id = match kind {
            Kind::Postgres => "bigserial PRIMARY KEY",
            _ => "INTEGER PRIMARY KEY",
        };
        for db in [&source, &target] {
            db.exec(&format!(
                "CREATE TABLE products (id {id}, title TEXT, sync_key TEXT, updated_at TEXT NOT NULL)"
            ))
            .await;
        }
        source
            .exec(&format!(
                "INSERT INTO products (title, updated_at) VALUES ('from source 1', '{0}'), ('from source 2', '{0}')",
                ts(1)
            ))
            .await;
        target
            .exec(&format!(
                "INSERT INTO products (title, updated_at) VALUES ('from target 1', '{0}'), ('from target 2', '{0}')",
                ts(2)
            ))
            .await;
        let toml = keyed_products("bidirectional", &source, &target);
        let first = StateStore::embedded(&dir).await;
        let done = sync_once(first.store.clone(), &toml, 7).await.unwrap();
        assert_eq!(done.state, RunState::Succeeded, "{kind:?}: {:?}", done.error);
        assert_eq!(source.dump("products").await.len(), 4, "{kind:?}");
        assert_eq!(target.dump("products").await.len(), 4, "{kind:?}");

        let restored = StateStore::postgres_redis().await.unwrap();
        let done = sync_once(restored.store.clone(), &toml, 7).await.unwrap();
        assert_eq!(done.state, RunState::Succeeded, "{kind:?}: {:?}", done.error);
        let steps = restored.store.load_steps(done.id).await.unwrap();
        let backward = steps
            .iter()
            .find(|s| s.direction == syncd_engine::run::StepDirection::Backward)
            .unwrap();
        assert_eq!(backward.counters.failed, 2, "{kind:?}: {steps:?}");
        let target_rows = target.dump("products").await;
        // The source's own two records were found, not created again; the
        // two that came from the target were copied (the stated limit).
        for title in ["from source 1", "from source 2", "from target 1", "from target 2"] {
            let n = target_rows.iter().filter(|r| r["title"] == title).count();
            let expected = if title.starts_with("from source") { 1 } else { 2 };
            assert_eq!(n, expected, "{kind:?}: {title} in {target_rows:?}");
        }
        let scope = EntityScope::new("t1", "e2e", "product");
        let originals: Vec<String> = target_rows
            .iter()
            .filter(|r| r["title"].as_str().is_some_and(|t| t.starts_with("from target")))
            .filter(|r| r["sync_key"].is_null())
            .map(|r| r["id"].as_i64().unwrap().to_string())
            .collect();
        assert_eq!(originals.len(), 2, "{kind:?}");
        let failed = restored
            .store
            .lookup(&scope, Side::Target, &originals)
            .await
            .unwrap();
        assert_eq!(failed.len(), 2, "{kind:?}");
        for m in failed.values() {
            assert_eq!(m.status, MappingStatus::Failed, "{kind:?}");
            let why = m.last_error.as_deref().unwrap_or_default();
            assert!(
                why.contains("holds this record's create key, but is already mapped to target record"),
                "{kind:?}: {why}"
            );
        }
        first.drop().await;
        restored.drop().await;
        source.drop().await;
        target.drop().await;
    }
}

/// `syncd check --connect` asks about the idempotency column of every table
/// records are created in: only the target's in a one-way integration, the
/// source's too in a bidirectional one. The message names the tenant
/// column an index may begin with.
#[tokio::test]
async fn the_key_index_check_covers_the_sides_records_are_created_in() {
    use syncd_engine::run::executor::inspect;
    let dir = TempDir::new("key-index-sides");
    let source = SystemDb::create(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::create(Kind::Sqlite, &dir, "target").await.unwrap();
    for db in [&source, &target] {
        db.exec(
            "CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT, sync_key TEXT, \
             tenant TEXT, updated_at TEXT NOT NULL)",
        )
        .await;
    }
    target
        .exec("CREATE INDEX products_key ON products (tenant, sync_key)")
        .await;
    for (direction, expected) in [("one_way", 0), ("bidirectional", 1)] {
        let toml = keyed_products(direction, &source, &target)
            .replace("[tenants.t1]", "tenant_column = \"tenant\"\n[tenants.t1]");
        let wf = syncd_core::workflow::Workflow::parse("test.toml", &toml).unwrap();
        let problems = inspect(&wf, &"t1".into()).await;
        let about_keys: Vec<&String> = problems
            .iter()
            .filter(|p| p.contains("idempotency column"))
            .collect();
        assert_eq!(about_keys.len(), expected, "{direction}: {problems:?}");
        if let Some(problem) = about_keys.first() {
            assert!(
                problem.contains("system `crm`: table `products`")
                    && problem.contains(
                        "add an index that begins with `sync_key`, or with `tenant` and then `sync_key`"
                    ),
                "{problem}"
            );
        }
    }
    source.drop().await;
    target.drop().await;
}

/// A synced record whose only change is a parent that exists nowhere, in a
/// bidirectional run: the target keeps its parent and the record fails
/// naming the new one, in the forward step's own patch pass (the backward
/// step never reads a target record nothing was written to).
#[tokio::test]
async fn a_parent_only_change_to_a_record_that_exists_nowhere_fails_the_record() {
    let dir = TempDir::new("dangling-move");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[
                json!({"id": "A-1", "name": "Parent", "industry": "x", "updated_at": ts(0)}),
                json!({"id": "A-2", "name": "Child", "industry": "x", "parent_id": "A-1", "updated_at": ts(1)}),
            ],
        )
        .await;
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[]);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(failed_of(&store, &run).await, 0);
    let ids = target_ids(&store, "account", &["A-1".into(), "A-2".into()]).await;
    source
        .exec(&format!(
            "UPDATE accounts SET parent_id = 'A-gone', updated_at = '{}' WHERE id = 'A-2'",
            syncd_connect::format_time(chrono::Utc::now())
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(failed_of(&store, &run).await, 1);
    let scope = EntityScope::new("t1", "e2e", "account");
    let m = store.lookup(&scope, Side::Source, &["A-2".into()]).await.unwrap();
    assert_eq!(
        m["A-2"].last_error.as_deref(),
        Some("missing parent: parent_id references account `A-gone`, which has not been synced")
    );
    let customers = target.dump("customers").await;
    let a2 = customers.iter().find(|c| c["id"] == json!(ids["A-2"])).unwrap();
    assert_eq!(a2["parent_id"], json!(ids["A-1"]), "the target keeps its parent");
    state.drop().await;
}

/// A record moved to a parent whose create failed: the update fails too,
/// naming the parent, instead of being written with its old parent and
/// recorded as in step (it was then never written again, while every run
/// said succeeded). Once the parent is created, the next run writes it.
#[tokio::test]
async fn a_record_moved_to_a_parent_that_failed_is_written_once_the_parent_is() {
    let dir = TempDir::new("moved-to-failed");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "x", "updated_at": now_text()})],
        )
        .await;
    source
        .insert(
            "contacts",
            &[json!({"id": "C-1", "name": "Ann", "email": "a@x", "account_id": "A-1", "updated_at": now_text()})],
        )
        .await;
    let toml =
        workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]).replace(CONNECTOR, NO_LOOKBACK);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let person = async || target.dump("people").await.into_iter().next().unwrap();
    let ids = target_ids(&store, "account", &["A-1".into()]).await;
    assert_eq!(person().await["customer_id"], json!(ids["A-1"]));

    // The ERP refuses the new account; the contact moves to it.
    refuse_long_customer_names(&target, "INSERT").await;
    source
        .insert(
            "accounts",
            &[json!({"id": "A-3", "name": "Gamma Corporation", "industry": "x", "updated_at": now_text()})],
        )
        .await;
    source
        .exec(&format!(
            "UPDATE contacts SET account_id = 'A-3', updated_at = '{}' WHERE id = 'C-1'",
            now_text()
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let contacts = EntityScope::new("t1", "e2e", "contact");
    let error = async || {
        let m = store
            .lookup(&contacts, Side::Source, &["C-1".into()])
            .await
            .unwrap();
        m["C-1"].last_error.clone()
    };
    let failed = |run: &syncd_store::RunRow| {
        let store = store.clone();
        let id = run.id;
        async move {
            store
                .load_steps(id)
                .await
                .unwrap()
                .iter()
                .filter(|s| s.entity_type.as_str() == "contact")
                .fold((0, 0), |(f, u), s| {
                    (f + s.counters.failed, u + s.counters.updated)
                })
        }
    };
    let why = error().await.expect("the contact fails");
    assert!(
        why.starts_with("missing parent: account_id references account `A-3`, which is failed"),
        "{why}"
    );
    assert_eq!(failed(&run).await, (1, 0));
    assert_eq!(person().await["customer_id"], json!(ids["A-1"]), "not moved yet");

    // Again with nothing changed: still failed, and counted.
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(failed(&run).await, (1, 0));

    // The ERP takes it now: the account is created, then the contact moved.
    target.exec("DROP TRIGGER short_names").await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let ids = target_ids(&store, "account", &["A-3".into()]).await;
    assert_eq!(person().await["customer_id"], json!(ids["A-3"]));
    assert_eq!(error().await, None);
    assert_eq!(failed(&run).await, (0, 1));
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &again).await, 0);
    assert_eq!(failed(&again).await, (0, 0));
    state.drop().await;
}

/// A conflict a strategy settles for a record whose write is then refused
/// was not applied: it is not recorded. (Each run's refused pass settles it
/// again; a conflict row was added, as resolved, by every run.) Once the
/// target takes the write, it is recorded once.
#[tokio::test]
async fn a_settled_conflict_whose_write_is_refused_is_recorded_once_it_is_written() {
    let dir = TempDir::new("refused-conflict");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "x", "updated_at": now_text()})],
        )
        .await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "last_write_wins")],
    )
    .replace(CONNECTOR, NO_LOOKBACK);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    refuse_long_customer_names(&target, "UPDATE").await;
    target
        .exec(&format!(
            "UPDATE customers SET customer_name = 'Acme T', updated_at = '{}'",
            now_text()
        ))
        .await;
    source
        .exec(&format!(
            "UPDATE accounts SET name = 'Acme Source Ltd', updated_at = '{}'",
            now_text()
        ))
        .await;
    let conflicts = async || all_conflicts(&store).await;
    for _ in 0..3 {
        let run = sync_once(store.clone(), &toml, 100).await.unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        assert!(failed_of(&store, &run).await >= 1);
        assert_eq!(conflicts().await.len(), 0, "not applied: not recorded");
        assert_eq!(target.dump("customers").await[0]["customer_name"], "Acme T");
    }
    target.exec("DROP TRIGGER short_names").await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(failed_of(&store, &run).await, 0);
    assert_eq!(
        target.dump("customers").await[0]["customer_name"],
        "Acme Source Ltd"
    );
    assert_eq!(source.dump("accounts").await[0]["name"], "Acme Source Ltd");
    let recorded = conflicts().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        recorded[0].resolution.as_ref().unwrap()["name"],
        "Acme Source Ltd"
    );
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(writes_of(&store, &again).await, 0);
    assert_eq!(conflicts().await.len(), 1);
    state.drop().await;
}

/// A reviewer decides a reference to a record the target does not hold
/// (its create failed): the decision cannot be written as decided. It was
/// written with the target's old reference under a base that recorded the
/// new one, and the next run wrote the old one back into the source. It
/// goes back to the reviewer, with nothing written.
#[tokio::test]
async fn a_decided_reference_to_a_record_not_synced_goes_back_to_the_reviewer() {
    let dir = TempDir::new("review-missing-ref");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[
                json!({"id": "A-1", "name": "Acme", "industry": "x", "updated_at": now_text()}),
                json!({"id": "A-2", "name": "Beta", "industry": "x", "updated_at": now_text()}),
            ],
        )
        .await;
    source
        .insert(
            "contacts",
            &[json!({"id": "C-1", "name": "Ann", "email": "a@x", "account_id": "A-1", "updated_at": now_text()})],
        )
        .await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("contact", "manual")],
    )
    .replace(CONNECTOR, NO_LOOKBACK);
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let ids = target_ids(&store, "account", &["A-1".into(), "A-2".into()]).await;
    // The source moves the contact to a new account the ERP refuses; the
    // ERP moves it to A-2.
    refuse_long_customer_names(&target, "INSERT").await;
    source
        .insert(
            "accounts",
            &[json!({"id": "A-3", "name": "Gamma Corporation", "industry": "x", "updated_at": now_text()})],
        )
        .await;
    target
        .exec(&format!(
            "UPDATE people SET customer_id = '{}', updated_at = '{}'",
            ids["A-2"],
            now_text()
        ))
        .await;
    source
        .exec(&format!(
            "UPDATE contacts SET account_id = 'A-3', updated_at = '{}'",
            now_text()
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Suspended);
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        status: Some(syncd_core::conflict::ConflictStatus::Pending),
        limit: 10,
        ..Default::default()
    };
    let parked = store.list_conflicts(&filter).await.unwrap().remove(0);
    assert_eq!(parked.conflicting_fields, ["account_id"]);
    let values = json!({"account_id": "A-3"}).as_object().unwrap().clone();
    store
        .resolve_conflict(&parked, &values, "reviewer")
        .await
        .unwrap();
    let resumed = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(resumed.state, RunState::Suspended, "back to the reviewer");
    let again = store.list_conflicts(&filter).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(source.dump("contacts").await[0]["account_id"], "A-3");
    assert_eq!(target.dump("people").await[0]["customer_id"], json!(ids["A-2"]));
    state.drop().await;
}

/// A conflict a merge settles with a write to each side, one of which the
/// target refuses: the source holds the settled values, so the conflict is
/// recorded (it was, in part, applied), and only once.
#[tokio::test]
async fn a_settled_conflict_written_to_one_side_only_is_recorded() {
    let dir = TempDir::new("half-written-conflict");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "x", "updated_at": now_text()})],
        )
        .await;
    // Names from the source, industries from the newer side (the target).
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "merge")],
    )
    .replace(CONNECTOR, NO_LOOKBACK)
    .replacen(
        "parent_id = { references = \"account\" }\n",
        "parent_id = { references = \"account\" }\n[entities.merge]\nname = \"source\"\n",
        1,
    );
    let state = StateStore::embedded(&dir).await;
    let store = state.store.clone();
    sync_once(store.clone(), &toml, 100).await.unwrap();
    refuse_long_customer_names(&target, "UPDATE").await;
    source
        .exec(&format!(
            "UPDATE accounts SET name = 'Acme Source Ltd', industry = 'food', updated_at = '{}'",
            now_text()
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE customers SET customer_name = 'Acme T', industry = 'defence', updated_at = '{}'",
            now_text()
        ))
        .await;
    let conflicts = async || all_conflicts(&store).await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert!(failed_of(&store, &run).await >= 1);
    assert_eq!(
        source.dump("accounts").await[0]["industry"],
        "defence",
        "written to the source"
    );
    assert_eq!(
        target.dump("customers").await[0]["customer_name"],
        "Acme T",
        "refused by the target"
    );
    let recorded = conflicts().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].resolution.as_ref().unwrap()["industry"], "defence");
    // Read again by the refused pass: the name still fails; no new record
    // of a conflict nothing more of was applied.
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert!(failed_of(&store, &again).await >= 1);
    assert_eq!(conflicts().await.len(), 1);
    state.drop().await;
}

/// A definition's systems without a lookback: `.replace(CONNECTOR,
/// NO_LOOKBACK)`, so that no scan reads a record again unless it changed.
const CONNECTOR: &str = "connector = \"sql\"\n";
const NO_LOOKBACK: &str = "connector = \"sql\"\nlookback = \"0s\"\n";

/// Now, as the test tables stamp `updated_at`.
fn now_text() -> String {
    syncd_connect::format_time(chrono::Utc::now())
}

/// Every conflict of tenant `t1`.
async fn all_conflicts(store: &Store) -> Vec<syncd_core::conflict::ConflictRecord> {
    let filter = syncd_store::ConflictFilter {
        tenant: Some("t1".into()),
        limit: 100,
        ..Default::default()
    };
    store.list_conflicts(&filter).await.unwrap()
}

/// The target refuses a customer name of 10 characters or more on `event`
/// (`INSERT` or `UPDATE`), as a constraint would; `DROP TRIGGER
/// short_names` mends it.
async fn refuse_long_customer_names(target: &SystemDb, event: &str) {
    target
        .exec(&format!(
            "CREATE TRIGGER short_names BEFORE {event} ON customers WHEN length(NEW.customer_name) >= 10 \
             BEGIN SELECT RAISE(ABORT, 'customer_name too long'); END"
        ))
        .await;
}
