//! A restart is a pause, not a failure: a target database that goes away
//! mid-run (every connection dropped, new ones refused) for a few seconds
//! and comes back (a `support::proxy` stands for the server). The run
//! waits, goes on from its last checkpoint, and ends `succeeded` with every
//! record once and no mapping `failed`.

use syncd_test_support as support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use support::proxy::Proxy;
use support::systems::{Kind, SystemDb, crm_rows, sync_once, workflow_toml};
use support::{PgSchema, TempDir};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::MappingStatus;
use syncd_engine::run::RunState;
use syncd_store::Store;
use syncd_store::cache::MappingCache;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_database_that_goes_away_mid_run_is_waited_for() {
    let dir = TempDir::new("transient");
    let Some(source) = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await else {
        return;
    };
    let Some(target) = SystemDb::with_tables(Kind::Postgres, &dir, "target").await else {
        return;
    };
    let Some(state) = PgSchema::create().await else {
        return;
    };
    let (accounts, contacts, orders) = crm_rows(1500);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    // The target's URL, through a proxy to the server.
    let server = sqlx::postgres::PgConnectOptions::from_str(&support::postgres_url()).unwrap();
    let upstream = format!("{}:{}", server.get_host(), server.get_port());
    let proxy = Proxy::start(0, &upstream).await;
    let through = target
        .url()
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(through, target.url(), "the target's URL names {upstream}");
    let toml = workflow_toml("e2e", "one_way", &source.url(), &through, &[]);
    let store = Arc::new(
        Store::postgres(state.pool.clone(), MappingCache::local(), 1 << 24)
            .await
            .unwrap(),
    );
    let running = tokio::spawn({
        let (store, toml) = (store.clone(), toml.clone());
        async move { sync_once(store, &toml, 100).await }
    });
    // Mid-run, the target goes away for a few seconds.
    let mut active = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let runs = store
            .list_runs(&syncd_store::RunFilter {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(run) = runs.first()
            && run.state == RunState::Running
            && store
                .load_steps(run.id)
                .await
                .unwrap()
                .iter()
                .any(|s| s.counters.created > 0)
        {
            active = true;
            break;
        }
    }
    assert!(active, "the run was under way when the target went away");
    let port = proxy.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let proxy = Proxy::start(port, &upstream).await;

    let run = running
        .await
        .unwrap()
        .expect("the run waits for the target instead of failing");
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    for (entity, table, rows) in [
        ("account", "customers", &accounts),
        ("contact", "people", &contacts),
        ("order", "sales_orders", &orders),
    ] {
        assert_eq!(
            target.dump(table).await.len(),
            rows.len(),
            "{table}: every record once"
        );
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let found = store
            .lookup(
                &EntityScope::new("t1", "e2e", entity),
                syncd_core::record::Side::Source,
                &ids,
            )
            .await
            .unwrap();
        assert_eq!(found.len(), ids.len());
        assert!(
            found.values().all(|m| m.status == MappingStatus::Mapped),
            "{entity}: no record failed for the outage: {:?}",
            found.values().find(|m| m.status != MappingStatus::Mapped)
        );
    }
    let again = sync_once(store.clone(), &toml, 100).await.unwrap();
    let written: u64 = store
        .load_steps(again.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.counters.created + s.counters.updated)
        .sum();
    assert_eq!(written, 0, "a further run writes nothing");
    proxy.stop().await;
    state.drop().await;
    target.drop().await;
}
