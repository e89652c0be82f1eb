//! Deletes and staleness, end to end between two real databases: source
//! deletes reach the target (deleted, archived or left, by policy) in
//! reverse stage order, a target record deleted by hand is re-created once
//! or left stale, a mass deletion waits for an operator, and a record that
//! comes back is re-linked, never duplicated.

use syncd_test_support as support;

use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use support::systems::{Kind, SystemDb, crm_rows, sync_once, ts, workflow_toml};
use support::{PgSchema, TempDir};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::MappingStatus;
use syncd_core::record::Side;
use syncd_engine::run::{RunState, StepDirection};
use syncd_store::cache::MappingCache;
use syncd_store::{DEFAULT_MAX_SNAPSHOT_BYTES, RunRow, Store, StoreConfig};

/// A source and a target of `kind`, filled with `n` accounts (and `2n`
/// contacts, `3n` orders), and an embedded state store.
struct World {
    dir: TempDir,
    source: SystemDb,
    target: SystemDb,
    store: Arc<Store>,
    pg_state: Option<PgSchema>,
}

impl World {
    async fn new(kind: Kind, label: &str, n: usize) -> Option<World> {
        let dir = TempDir::new(label);
        let source = SystemDb::with_tables(kind, &dir, "source").await?;
        let target = SystemDb::with_tables(kind, &dir, "target").await?;
        let (accounts, contacts, orders) = crm_rows(n);
        source.insert("accounts", &accounts).await;
        source.insert("contacts", &contacts).await;
        source.insert("orders", &orders).await;
        let (store, pg_state) = match kind {
            Kind::Sqlite => (
                Store::connect(
                    &StoreConfig::new(dir.sqlite_url("state.db")),
                    MappingCache::local(),
                )
                .await
                .unwrap(),
                None,
            ),
            // MySQL is a system, never the state store.
            Kind::Postgres | Kind::Mariadb => {
                let pg = PgSchema::create().await?;
                let store =
                    Store::postgres(pg.pool.clone(), MappingCache::local(), DEFAULT_MAX_SNAPSHOT_BYTES)
                        .await
                        .unwrap();
                (store, Some(pg))
            }
        };
        Some(World {
            dir,
            source,
            target,
            store: Arc::new(store),
            pg_state,
        })
    }

    /// The test workflow with `policy` lines added to every entity type.
    fn toml(&self, policy: &str) -> String {
        let mut toml = workflow_toml("e2e", "one_way", &self.source.url(), &self.target.url(), &[]);
        for table in ["customers", "people", "sales_orders"] {
            let line = format!("target_table = \"{table}\"\n");
            toml = toml.replace(&line, &format!("{line}{policy}\n"));
        }
        toml
    }

    async fn sync(&self, toml: &str) -> RunRow {
        sync_once(self.store.clone(), toml, 500).await.expect("run")
    }

    async fn drop(self) {
        self.source.drop().await;
        self.target.drop().await;
        if let Some(pg) = self.pg_state {
            pg.drop().await;
        }
        drop(self.dir);
    }
}

fn ids(rows: &[Value]) -> HashSet<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn scope(entity: &str) -> EntityScope {
    EntityScope::new("t1", "e2e", entity)
}

/// The delete step counters of `entity` in `run`.
async fn delete_counters(store: &Store, run: &RunRow, entity: &str) -> syncd_engine::run::StepCounters {
    store
        .load_steps(run.id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.direction == StepDirection::Delete && s.entity_type.as_str() == entity)
        .map(|s| s.counters)
        .unwrap_or_default()
}

/// Executes an existing (suspended) run again, as a worker would.
async fn resume(world: &World, toml: &str, run: RunRow) -> RunRow {
    use syncd_engine::run::executor::{Job, Options};
    let wf = syncd_core::workflow::Workflow::parse("test.toml", toml).unwrap();
    let graph = syncd_core::plan::DependencyGraph::builtin_default();
    let job = Job::prepare(world.store.clone(), wf, &graph, "t1".into(), Options::default())
        .await
        .unwrap();
    let done = job.execute(run, &mut |_| {}).await.unwrap();
    support::assert_accounted(&world.store, done.id).await;
    done
}

async fn source_deletes_reach_the_target(kind: Kind) {
    // 1,667 accounts, 3,334 contacts, 5,001 orders: 10,002 records.
    let Some(world) = World::new(kind, "deletes-100", 1667).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"");
    assert_eq!(world.sync(&toml).await.state, RunState::Succeeded);
    let before = world.target.dump("sales_orders").await;
    assert_eq!(before.len(), 5001);

    // 100 orders deleted in the source, by hand, hard.
    world
        .source
        .exec("DELETE FROM orders WHERE id >= 'O-002000' AND id < 'O-002100'")
        .await;
    let deleted: Vec<String> = (2000..2100).map(|i| format!("O-{i:06}")).collect();
    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(delete_counters(&world.store, &run, "order").await.deleted, 100);

    // Exactly those 100 are gone from the target; their mappings are
    // tombstones keeping both ids.
    let mappings = world
        .store
        .lookup(&scope("order"), Side::Source, &deleted)
        .await
        .unwrap();
    assert_eq!(mappings.len(), 100);
    let gone: HashSet<String> = mappings.values().map(|m| m.target_id.clone().unwrap()).collect();
    for m in mappings.values() {
        assert_eq!(m.status, MappingStatus::Stale);
        assert_eq!(
            m.last_error.as_deref(),
            Some("source record deleted: target deleted")
        );
    }
    let after = world.target.dump("sales_orders").await;
    let expected: HashSet<String> = ids(&before).difference(&gone).cloned().collect();
    assert_eq!(ids(&after), expected);
    assert_eq!(world.target.dump("customers").await.len(), 1667);
    assert_eq!(world.target.dump("people").await.len(), 3334);

    // A second run writes nothing, to either side.
    let source_orders = world.source.dump("orders").await;
    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(world.target.dump("sales_orders").await, after);
    assert_eq!(world.source.dump("orders").await, source_orders);
    for step in world.store.load_steps(run.id).await.unwrap() {
        let c = step.counters;
        assert_eq!(
            (c.created, c.updated, c.deleted, c.archived, c.stale, c.recreated),
            (0, 0, 0, 0, 0, 0),
            "{} {:?}",
            step.entity_type,
            step.direction
        );
    }
    world.drop().await;
}

#[tokio::test]
async fn deleting_100_of_10_000_source_records_deletes_exactly_those_sqlite() {
    source_deletes_reach_the_target(Kind::Sqlite).await;
}

#[tokio::test]
async fn deleting_100_of_10_000_source_records_deletes_exactly_those_postgres() {
    source_deletes_reach_the_target(Kind::Postgres).await;
}

#[tokio::test]
async fn deleting_100_of_10_000_source_records_deletes_exactly_those_mariadb() {
    source_deletes_reach_the_target(Kind::Mariadb).await;
}

#[tokio::test]
async fn archive_keeps_the_target_record_and_marks_it() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-archive", 10).await else {
        return;
    };
    world
        .target
        .exec("ALTER TABLE sales_orders ADD COLUMN archived INTEGER")
        .await;
    let toml = world.toml("reconcile_every = \"0s\"").replace(
        "target_table = \"sales_orders\"\n",
        "target_table = \"sales_orders\"\non_source_delete = \"archive\"\narchive_column = \"archived\"\n",
    );
    assert_eq!(world.sync(&toml).await.state, RunState::Succeeded);
    world
        .source
        .exec("DELETE FROM orders WHERE id = 'O-000007'")
        .await;
    let run = world.sync(&toml).await;
    assert_eq!(delete_counters(&world.store, &run, "order").await.archived, 1);
    let m = &world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000007".into()])
        .await
        .unwrap()["O-000007"];
    let target_id = m.target_id.clone().unwrap();
    let orders = world.target.dump("sales_orders").await;
    assert_eq!(orders.len(), 30, "nothing deleted");
    let archived: Vec<&Value> = orders.iter().filter(|o| o["archived"] == 1).collect();
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0]["id"], target_id.as_str());
    assert_eq!(
        m.last_error.as_deref(),
        Some("source record deleted: target archived")
    );

    // The record comes back with the same id: re-linked to the kept target
    // record, not created twice.
    world
        .source
        .insert(
            "orders",
            &[
                serde_json::json!({"id": "O-000007", "account_id": "A-000007", "contact_id": "C-000007",
                                 "total": 99.5, "status": "back", "updated_at": ts(1_000_000)}),
            ],
        )
        .await;
    assert_eq!(world.sync(&toml).await.state, RunState::Succeeded);
    let m = &world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000007".into()])
        .await
        .unwrap()["O-000007"];
    assert_eq!(m.status, MappingStatus::Mapped);
    assert_eq!(m.target_id.as_deref(), Some(target_id.as_str()));
    let orders = world.target.dump("sales_orders").await;
    assert_eq!(orders.len(), 30);
    let back = orders.iter().find(|o| o["id"] == target_id.as_str()).unwrap();
    assert_eq!(back["status"], "back");
    world.drop().await;
}

#[tokio::test]
async fn a_deleted_source_record_that_comes_back_is_relinked_not_duplicated() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-relink", 10).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"");
    world.sync(&toml).await;
    let original = world.source.dump("orders").await;
    let row = original.iter().find(|o| o["id"] == "O-000003").unwrap().clone();
    world
        .source
        .exec("DELETE FROM orders WHERE id = 'O-000003'")
        .await;
    world.sync(&toml).await;
    assert_eq!(world.target.dump("sales_orders").await.len(), 29);

    let mut back = row.clone();
    back["updated_at"] = Value::String(ts(2_000_000));
    world.source.insert("orders", &[back]).await;
    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded);
    let m = &world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000003".into()])
        .await
        .unwrap()["O-000003"];
    assert_eq!(m.status, MappingStatus::Mapped, "{:?}", m.last_error);
    let orders = world.target.dump("sales_orders").await;
    assert_eq!(orders.len(), 30, "re-created once");
    let mine: Vec<&Value> = orders
        .iter()
        .filter(|o| o["id"] == m.target_id.as_deref().unwrap())
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["total"], row["total"]);
    // And once more: nothing.
    let run = world.sync(&toml).await;
    assert_eq!(world.target.dump("sales_orders").await, orders);
    let c = delete_counters(&world.store, &run, "order").await;
    assert_eq!((c.deleted, c.recreated, c.stale), (0, 0, 0));
    world.drop().await;
}

#[tokio::test]
async fn a_target_record_deleted_by_hand_is_recreated_once_under_recreate() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-recreate", 10).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"\non_target_delete = \"recreate\"");
    world.sync(&toml).await;
    let m = world
        .store
        .lookup(&scope("contact"), Side::Source, &["C-000004".into()])
        .await
        .unwrap()["C-000004"]
        .clone();
    let old = m.target_id.clone().unwrap();
    // Orders reference contacts only in the target's own ids; SQLite has no
    // foreign keys here, so the person can go.
    world
        .target
        .exec(&format!("DELETE FROM people WHERE id = '{old}'"))
        .await;

    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(delete_counters(&world.store, &run, "contact").await.recreated, 1);
    let m = world
        .store
        .lookup(&scope("contact"), Side::Source, &["C-000004".into()])
        .await
        .unwrap()["C-000004"]
        .clone();
    assert_eq!(m.status, MappingStatus::Mapped, "{:?}", m.last_error);
    let new = m.target_id.clone().unwrap();
    assert_ne!(new, old, "created anew under a new id");
    let people = world.target.dump("people").await;
    assert_eq!(people.len(), 20);
    let person = people
        .iter()
        .find(|p| p["id"] == new.as_str())
        .expect("re-created");
    assert_eq!(person["full_name"], "Person 4");

    // Exactly once: the next run leaves it alone.
    let run = world.sync(&toml).await;
    assert_eq!(world.target.dump("people").await, people);
    assert_eq!(delete_counters(&world.store, &run, "contact").await.recreated, 0);
    world.drop().await;
}

#[tokio::test]
async fn a_target_record_deleted_by_hand_stays_stale_and_listed_under_unlink() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-unlink", 10).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"\non_target_delete = \"unlink\"");
    world.sync(&toml).await;
    let m = world
        .store
        .lookup(&scope("contact"), Side::Source, &["C-000004".into()])
        .await
        .unwrap()["C-000004"]
        .clone();
    let old = m.target_id.clone().unwrap();
    world
        .target
        .exec(&format!("DELETE FROM people WHERE id = '{old}'"))
        .await;

    let run = world.sync(&toml).await;
    assert_eq!(delete_counters(&world.store, &run, "contact").await.stale, 1);
    let stale = world
        .store
        .mappings_with_status(&scope("contact"), MappingStatus::Stale, 100)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].source_id.as_deref(), Some("C-000004"));
    assert_eq!(stale[0].target_id.as_deref(), Some(old.as_str()));
    assert_eq!(
        stale[0].last_error.as_deref(),
        Some("target record gone: unlinked, kept for operators")
    );
    assert_eq!(world.target.dump("people").await.len(), 19, "not re-created");

    // An edit of the source record does not bring it back either.
    world
        .source
        .exec(&format!(
            "UPDATE contacts SET name = 'Renamed', updated_at = '{}' WHERE id = 'C-000004'",
            ts(9_000_000)
        ))
        .await;
    world.sync(&toml).await;
    assert_eq!(world.target.dump("people").await.len(), 19);
    world.drop().await;
}

#[tokio::test]
async fn deletes_go_children_first_against_restrict_foreign_keys() {
    let Some(world) = World::new(Kind::Postgres, "deletes-fk", 10).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"");
    assert_eq!(world.sync(&toml).await.state, RunState::Succeeded);
    // Account 3 is nobody's parent; it has contacts 3 and 13, and orders
    // 3, 13, 23 (and orders of its contacts).
    world
        .source
        .exec(
            "DELETE FROM orders WHERE account_id = 'A-000003' OR contact_id IN ('C-000003', 'C-000013');
             DELETE FROM contacts WHERE account_id = 'A-000003';
             DELETE FROM accounts WHERE id = 'A-000003';",
        )
        .await;
    let left_orders = world.source.dump("orders").await.len();
    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(world.target.dump("customers").await.len(), 9);
    assert_eq!(world.target.dump("people").await.len(), 18);
    assert_eq!(world.target.dump("sales_orders").await.len(), left_orders);
    let steps: Vec<String> = world
        .store
        .load_steps(run.id)
        .await
        .unwrap()
        .iter()
        .filter(|s| s.direction == StepDirection::Delete && s.counters.deleted > 0)
        .map(|s| s.entity_type.to_string())
        .collect();
    assert_eq!(steps.len(), 3);
    world.drop().await;
}

async fn emptied_source_table(confirm: bool) {
    let Some(world) = World::new(Kind::Sqlite, "deletes-brake", 10).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"");
    world.sync(&toml).await;
    let target_before = world.target.dump("sales_orders").await;
    world.source.exec("DELETE FROM orders").await;

    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Suspended);
    let holds = world.store.run_holds(None, run.id).await.unwrap();
    assert_eq!(holds.len(), 1);
    let reason = holds[0].reason();
    assert!(reason.contains("30 of 30 mapped `order` records"), "{reason}");
    assert!(reason.contains("syncd runs confirm-deletes"), "{reason}");
    assert_eq!(
        world.target.dump("sales_orders").await,
        target_before,
        "nothing deleted yet"
    );
    // A worker does not pick a held run up by itself.
    assert!(
        world
            .store
            .runs_to_execute(&["e2e"], 10)
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != run.id)
    );

    if confirm {
        let confirmed = world.store.confirm_deletes(None, run.id, "ops-1").await.unwrap();
        assert_eq!(confirmed.len(), 1);
        assert!(
            world
                .store
                .runs_to_execute(&["e2e"], 10)
                .await
                .unwrap()
                .iter()
                .any(|r| r.id == run.id)
        );
        let run = resume(&world, &toml, run).await;
        assert_eq!(run.state, RunState::Succeeded);
        assert!(world.target.dump("sales_orders").await.is_empty());
        assert_eq!(world.target.dump("people").await.len(), 20);
    } else {
        let run = world
            .store
            .transition_run(
                &run,
                syncd_engine::run::RunEvent::Cancel,
                Some("cancelled by an operator"),
            )
            .await
            .unwrap();
        assert_eq!(run.state, RunState::Cancelled);
        assert_eq!(world.target.dump("sales_orders").await, target_before);
        // Nor does the next run delete without asking again.
        let next = world.sync(&toml).await;
        assert_eq!(next.state, RunState::Suspended);
        assert_eq!(world.target.dump("sales_orders").await, target_before);
    }
    world.drop().await;
}

#[tokio::test]
async fn an_emptied_source_table_is_held_and_confirm_proceeds() {
    emptied_source_table(true).await;
}

#[tokio::test]
async fn an_emptied_source_table_is_held_and_cancel_changes_nothing() {
    emptied_source_table(false).await;
}

#[tokio::test]
async fn a_read_that_fails_deletes_nothing() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-failed-read", 10).await else {
        return;
    };
    let toml = world.toml("reconcile_every = \"0s\"");
    world.sync(&toml).await;
    let before = world.target.dump("sales_orders").await;
    world
        .source
        .exec("ALTER TABLE orders RENAME TO orders_gone")
        .await;
    let err = sync_once(world.store.clone(), &toml, 500).await.unwrap_err();
    assert!(err.to_string().contains("orders"), "{err}");
    assert_eq!(world.target.dump("sales_orders").await, before);
    world.drop().await;
}

#[tokio::test]
async fn soft_deleted_rows_are_deletes_seen_by_every_run() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-soft", 10).await else {
        return;
    };
    world
        .source
        .exec("ALTER TABLE orders ADD COLUMN deleted_at TEXT")
        .await;
    // Only the source has the column; no reconciliation at all.
    let toml = world.toml("reconcile_every = \"never\"").replace(
        "target_table = \"sales_orders\"\n",
        "target_table = \"sales_orders\"\ndeleted_column = { source = \"deleted_at\" }\n",
    );
    world.sync(&toml).await;
    assert_eq!(world.target.dump("sales_orders").await.len(), 30);
    world
        .source
        .exec(&format!(
            "UPDATE orders SET deleted_at = '{0}', updated_at = '{0}' WHERE id IN ('O-000001', 'O-000002')",
            ts(5_000_000)
        ))
        .await;
    let run = world.sync(&toml).await;
    assert_eq!(delete_counters(&world.store, &run, "order").await.deleted, 2);
    assert_eq!(world.target.dump("sales_orders").await.len(), 28);
    world.drop().await;
}

#[tokio::test]
async fn bidirectional_source_deletes_reach_the_target() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-bidi", 200).await else {
        return;
    };
    let toml = world
        .toml("reconcile_every = \"0s\"\ndelete_brake = { percent = 100, max = 1000000 }")
        .replace("direction = \"one_way\"", "direction = \"bidirectional\"");
    assert_eq!(world.sync(&toml).await.state, RunState::Succeeded);
    world
        .source
        .exec("DELETE FROM orders WHERE CAST(substr(id, 3) AS INTEGER) % 3 = 0")
        .await;
    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(delete_counters(&world.store, &run, "order").await.deleted, 200);
    assert_eq!(world.target.dump("sales_orders").await.len(), 400);
    world.drop().await;
}

#[tokio::test]
async fn records_not_verified_for_too_long_are_read_back_without_reconciling() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-verify", 10).await else {
        return;
    };
    // No reconciliation at all: only re-verification finds the hand delete.
    let toml = world.toml("reconcile_every = \"never\"\nverify_after = \"0s\"");
    world.sync(&toml).await;
    let before = world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000005".into()])
        .await
        .unwrap()["O-000005"]
        .clone();
    let gone = world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000006".into()])
        .await
        .unwrap()["O-000006"]
        .clone();
    world
        .target
        .exec(&format!(
            "DELETE FROM sales_orders WHERE id = '{}'",
            gone.target_id.as_deref().unwrap()
        ))
        .await;

    let run = world.sync(&toml).await;
    let c = delete_counters(&world.store, &run, "order").await;
    assert_eq!((c.read, c.stale), (30, 1));
    let after = world
        .store
        .lookup(
            &scope("order"),
            Side::Source,
            &["O-000005".into(), "O-000006".into()],
        )
        .await
        .unwrap();
    let verified = &after["O-000005"];
    assert_eq!(verified.status, MappingStatus::Mapped);
    assert!(verified.updated_at > before.updated_at, "verified again");
    assert_eq!(verified.base, before.base);
    assert_eq!(after["O-000006"].status, MappingStatus::Stale);

    // With the default (30 days), fresh mappings are not read back.
    let run = world.sync(&world.toml("reconcile_every = \"never\"")).await;
    assert_eq!(delete_counters(&world.store, &run, "order").await.read, 0);
    world.drop().await;
}

#[tokio::test]
async fn bidirectional_an_archived_target_edited_later_does_not_bring_its_source_back() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-bidi-archive", 10).await else {
        return;
    };
    world
        .target
        .exec("ALTER TABLE sales_orders ADD COLUMN archived INTEGER")
        .await;
    let toml = world
        .toml("reconcile_every = \"0s\"")
        .replace("direction = \"one_way\"", "direction = \"bidirectional\"")
        .replace(
            "target_table = \"sales_orders\"\n",
            "target_table = \"sales_orders\"\non_source_delete = \"archive\"\narchive_column = \"archived\"\n",
        );
    world.sync(&toml).await;
    world
        .source
        .exec("DELETE FROM orders WHERE id = 'O-000002'")
        .await;
    world.sync(&toml).await;
    let m = world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000002".into()])
        .await
        .unwrap()["O-000002"]
        .clone();
    assert_eq!(m.status, MappingStatus::Stale);
    // Someone edits the archived record in the target.
    world
        .target
        .exec(&format!(
            "UPDATE sales_orders SET status = 'closed', updated_at = '{}' WHERE id = '{}'",
            ts(9_000_000),
            m.target_id.as_deref().unwrap()
        ))
        .await;
    let run = world.sync(&toml).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(
        world.source.dump("orders").await.len(),
        29,
        "the deleted source record stays deleted"
    );
    let after = world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000002".into()])
        .await
        .unwrap()["O-000002"]
        .clone();
    assert_eq!(after.status, MappingStatus::Stale);
    world.drop().await;
}

#[tokio::test]
async fn bidirectional_propagate_deletes_the_source_of_a_target_deleted_by_hand() {
    let Some(world) = World::new(Kind::Sqlite, "deletes-propagate", 10).await else {
        return;
    };
    let toml = world
        .toml("reconcile_every = \"0s\"\non_target_delete = \"propagate\"")
        .replace("direction = \"one_way\"", "direction = \"bidirectional\"");
    world.sync(&toml).await;
    let m = world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000009".into()])
        .await
        .unwrap()["O-000009"]
        .clone();
    world
        .target
        .exec(&format!(
            "DELETE FROM sales_orders WHERE id = '{}'",
            m.target_id.as_deref().unwrap()
        ))
        .await;
    let run = world.sync(&toml).await;
    assert_eq!(delete_counters(&world.store, &run, "order").await.deleted, 1);
    let orders = world.source.dump("orders").await;
    assert_eq!(orders.len(), 29);
    assert!(orders.iter().all(|o| o["id"] != "O-000009"));
    let m = world
        .store
        .lookup(&scope("order"), Side::Source, &["O-000009".into()])
        .await
        .unwrap()["O-000009"]
        .clone();
    assert_eq!(
        m.last_error.as_deref(),
        Some("target record gone: source deleted too")
    );
    world.drop().await;
}

#[test]
fn propagate_needs_a_bidirectional_integration_and_archive_a_column() {
    let toml = support::systems::workflow_toml("e2e", "one_way", "sqlite://a.db", "sqlite://b.db", &[]).replace(
        "target_table = \"sales_orders\"\n",
        "target_table = \"sales_orders\"\non_target_delete = \"propagate\"\non_source_delete = \"archive\"\nreconcile_every = \"1w\"\n",
    );
    let errors = syncd_core::workflow::Workflow::parse("test.toml", &toml)
        .unwrap_err()
        .to_string();
    assert!(errors.contains("only a bidirectional integration"), "{errors}");
    assert!(
        errors.contains("needs the target column it sets (`archive_column`)"),
        "{errors}"
    );
    assert!(errors.contains("`1w` is not an interval"), "{errors}");
    assert!(errors.contains("entity `order`"), "{errors}");
}

/// `present_in_key_order` (the reconciliation pass's range scan) answers
/// exactly as `present` (one probe an id) whatever order the ids come in:
/// integer keys asked for in text order, ids in no order, a span far wider
/// than the ids, ids that never existed, rows marked deleted.
async fn present_in_key_order_answers_as_present(kind: Kind) {
    use syncd_connect::sql::SqlConnector;
    let dir = TempDir::new("present-in-key-order");
    let Some(db) = SystemDb::create(kind, &dir, "system").await else {
        return;
    };
    // Rows 1..=300 but every 7th, every 11th marked deleted.
    db.exec(match kind {
        Kind::Postgres => {
            "CREATE TABLE items (id bigint PRIMARY KEY, sync_key text, deleted boolean NOT NULL, \
                                 updated_at timestamptz NOT NULL);
             INSERT INTO items SELECT i, NULL, i % 11 = 0, now() FROM generate_series(1, 300) i WHERE i % 7 <> 0;
             CREATE TABLE notes (id text PRIMARY KEY, deleted boolean NOT NULL, updated_at timestamptz NOT NULL);
             INSERT INTO notes SELECT 'n-' || lpad(i::text, 3, '0'), i % 11 = 0, now()
                 FROM generate_series(1, 300) i WHERE i % 7 <> 0;"
        }
        Kind::Mariadb => {
            "CREATE TABLE items (id BIGINT PRIMARY KEY, sync_key VARCHAR(64), deleted BOOLEAN NOT NULL, \
                                 updated_at DATETIME(6) NOT NULL);
             INSERT INTO items SELECT seq, NULL, seq % 11 = 0, '2026-01-01 00:00:00' FROM seq_1_to_300
                 WHERE seq % 7 <> 0;
             CREATE TABLE notes (id VARCHAR(16) PRIMARY KEY, deleted BOOLEAN NOT NULL, updated_at DATETIME(6) NOT NULL);
             INSERT INTO notes SELECT CONCAT('n-', LPAD(seq, 3, '0')), seq % 11 = 0, '2026-01-01 00:00:00'
                 FROM seq_1_to_300 WHERE seq % 7 <> 0;"
        }
        Kind::Sqlite => {
            "CREATE TABLE items (id INTEGER PRIMARY KEY, sync_key TEXT, deleted INTEGER NOT NULL, \
                                 updated_at TEXT NOT NULL);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
             INSERT INTO items SELECT i, NULL, i % 11 = 0, '2026-01-01T00:00:00Z' FROM s WHERE i % 7 <> 0;
             CREATE TABLE notes (id TEXT PRIMARY KEY, deleted INTEGER NOT NULL, updated_at TEXT NOT NULL);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
             INSERT INTO notes SELECT 'n-' || substr('00' || i, -3, 3), i % 11 = 0, '2026-01-01T00:00:00Z'
                 FROM s WHERE i % 7 <> 0;"
        }
    })
    .await;
    let system = SqlConnector::connect("system", &db.url()).await.unwrap();
    for (table, key, id) in [
        (
            "items",
            Some("sync_key"),
            (|i| i.to_string()) as fn(u32) -> String,
        ),
        ("notes", None, |i| format!("n-{i:03}")),
    ] {
        let columns = system.columns(table).await.unwrap().unwrap();
        let b = system
            .binding(
                table,
                table,
                columns,
                Vec::new(),
                key.map(str::to_owned),
                Some("deleted".into()),
            )
            .unwrap();
        let expected = |ids: &[String]| -> HashSet<String> {
            (1..=300)
                .filter(|i| i % 7 != 0 && i % 11 != 0)
                .map(id)
                .filter(|i| ids.contains(i))
                .collect()
        };
        // 0 and 301..=320 never existed.
        let mut in_text_order: Vec<String> = (0..=320).map(id).collect();
        in_text_order.sort();
        // A stride that visits every id once, in no order at all.
        let scattered: Vec<String> = (0..321).map(|k| id((k * 97) % 321)).collect();
        let asks = in_text_order.chunks(40).map(<[String]>::to_vec).chain([
            scattered,
            vec![id(1), id(299)],
            vec![id(7), id(300)],
            Vec::new(),
        ]);
        for ids in asks {
            let got = system.present_in_key_order(&b, &ids).await.unwrap();
            assert_eq!(got, expected(&ids), "{table}: {ids:?}");
            assert_eq!(got, system.present(&b, &ids).await.unwrap(), "{table}: {ids:?}");
        }
    }
    drop(system);
    db.drop().await;
    drop(dir);
}

#[tokio::test]
async fn present_in_key_order_answers_as_present_sqlite() {
    present_in_key_order_answers_as_present(Kind::Sqlite).await;
}

#[tokio::test]
async fn present_in_key_order_answers_as_present_postgres() {
    present_in_key_order_answers_as_present(Kind::Postgres).await;
}

#[tokio::test]
async fn present_in_key_order_answers_as_present_mariadb() {
    present_in_key_order_answers_as_present(Kind::Mariadb).await;
}
