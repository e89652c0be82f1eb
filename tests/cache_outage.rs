//! Redis going away under a running store: lookups fall back to the
//! database, stay correct, and the cache is trusted again once it is back.

use syncd_test_support as support;

use chrono::Utc;
use std::sync::Arc;
use support::proxy::Proxy;
use support::{PgSchema, RedisPrefix};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::{IdMapping, MappingChange, MappingStatus};
use syncd_core::record::{Fields, Side};
use syncd_store::cache::MappingCache;
use syncd_store::{DEFAULT_MAX_SNAPSHOT_BYTES, MappingWrite, PageCommit, Store};
use tokio::net::TcpListener;
use uuid::Uuid;

/// A proxy to Redis (see `support::proxy`).
async fn redis_proxy(port: u16) -> Proxy {
    let upstream = support::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    Proxy::start(port, &upstream).await
}

fn scope() -> EntityScope {
    EntityScope::new("tenant-a", "crm-to-erp", "account")
}

async fn reserve(store: &Store, id: &str) -> IdMapping {
    let m = IdMapping::reserve(
        Uuid::new_v4(),
        scope(),
        Some(id.into()),
        None,
        format!("k-{id}"),
        Utc::now(),
    );
    store
        .commit_page(PageCommit {
            mappings: vec![MappingWrite::Insert(m)],
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0)
        .as_ref()
        .clone()
}

async fn transition(store: &Store, current: &IdMapping, change: MappingChange) -> IdMapping {
    store
        .commit_page(PageCommit {
            mappings: vec![MappingWrite::Transition {
                current: current.clone(),
                change,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0)
        .as_ref()
        .clone()
}

async fn status(store: &Store, id: &str) -> MappingStatus {
    store
        .lookup(&scope(), Side::Source, &[id.to_owned()])
        .await
        .unwrap()[id]
        .status
}

#[tokio::test]
async fn redis_stopped_mid_run_falls_back_and_recovers() {
    let Some(redis) = RedisPrefix::create().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let proxy = redis_proxy(0).await;
    // The reconnect back-off runs on a clock the test moves.
    let clock = Arc::new(syncd_core::clock::ManualClock::at(chrono::Utc::now()));
    let cache = MappingCache::redis(&format!("redis://127.0.0.1:{}", proxy.port), &redis.prefix)
        .unwrap()
        .with_clock(clock.clone());
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), cache, DEFAULT_MAX_SNAPSHOT_BYTES)
            .await
            .unwrap(),
    );

    let m = reserve(&store, "a-1").await;
    assert_eq!(status(&store, "a-1").await, MappingStatus::Pending);
    assert_eq!(status(&store, "a-1").await, MappingStatus::Pending);
    let before = store.cache().counts();
    assert!(before.hits >= 1, "warm cache answers: {before:?}");
    assert_eq!(before.fallbacks, 0);

    // Redis goes away; a transition commits to the database regardless.
    let port = proxy.stop().await;
    let m = transition(
        &store,
        &m,
        MappingChange::Confirm {
            source_id: "a-1".into(),
            target_id: "T-1".into(),
            base: Fields::new(),
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            status(&store, "a-1").await,
            MappingStatus::Mapped,
            "answered by the database"
        );
    }
    assert!(store.cache().counts().fallbacks >= 3);

    // Redis is back: the entry it still holds (pending) is older than the
    // database and must not be served.
    let proxy = redis_proxy(port).await;
    clock.advance(std::time::Duration::from_millis(1100)); // past the reconnect back-off
    assert_eq!(status(&store, "a-1").await, MappingStatus::Mapped);
    let hits = store.cache().counts().hits;
    assert_eq!(status(&store, "a-1").await, MappingStatus::Mapped);
    assert!(
        store.cache().counts().hits > hits,
        "served from Redis again once it is back"
    );
    transition(
        &store,
        &m,
        MappingChange::MarkStale {
            reason: "gone".into(),
        },
    )
    .await;
    assert_eq!(status(&store, "a-1").await, MappingStatus::Stale);

    proxy.stop().await;
    pg.drop().await;
    redis.drop().await;
}

#[tokio::test]
async fn redis_on_a_closed_port_from_the_start() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    // Bind and drop a listener to find a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = MappingCache::redis(&format!("redis://127.0.0.1:{port}"), "syncd-closed").unwrap();
    let store = Store::postgres(pg.pool.clone(), cache, DEFAULT_MAX_SNAPSHOT_BYTES)
        .await
        .unwrap();
    let m = reserve(&store, "a-1").await;
    assert_eq!(status(&store, "a-1").await, MappingStatus::Pending);
    transition(&store, &m, MappingChange::Fail { error: "422".into() }).await;
    assert_eq!(status(&store, "a-1").await, MappingStatus::Failed);
    let counts = store.cache().counts();
    assert!(counts.fallbacks >= 2 && counts.hits == 0, "{counts:?}");
    pg.drop().await;
}

/// Redis answers an empty `MGET` with an error: a lookup of no ids (a page
/// without references) must not send one and read as an outage, which
/// sent every lookup of the next second to the database.
#[tokio::test]
async fn a_lookup_of_no_ids_is_not_an_outage() {
    let Some(redis) = RedisPrefix::create().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let cache = MappingCache::redis(&support::redis_url(), &redis.prefix).unwrap();
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), cache, DEFAULT_MAX_SNAPSHOT_BYTES)
            .await
            .unwrap(),
    );
    reserve(&store, "a-1").await;
    assert!(
        store
            .lookup(&scope(), Side::Source, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(status(&store, "a-1").await, MappingStatus::Pending);
    assert_eq!(status(&store, "a-1").await, MappingStatus::Pending);
    let counts = store.cache().counts();
    assert_eq!(counts.fallbacks, 0, "{counts:?}");
    assert!(counts.hits >= 1, "{counts:?}");
    pg.drop().await;
    redis.drop().await;
}
