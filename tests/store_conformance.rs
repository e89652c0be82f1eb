//! One set of store tests, run against SQLite and PostgreSQL, each with no
//! cache, the in-process cache and Redis.

use syncd_test_support as support;

use chrono::Utc;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use support::{PgSchema, RedisPrefix, TempDir};
use syncd_core::conflict::{ConflictRecord, ConflictStatus, Strategy};
use syncd_core::ids::{EntityScope, IntegrationId, TenantId};
use syncd_core::mapping::{IdMapping, MappingChange, MappingStatus};
use syncd_core::record::{Fields, Record, Side};
use syncd_engine::run::{RunState, StepCheckpoint, StepCounters, StepDirection, StepState};
use syncd_store::cache::MappingCache;
use syncd_store::{
    ConflictFilter, DEFAULT_MAX_SNAPSHOT_BYTES, Lease, MappingWrite, PageCommit, Reservation, RunFilter,
    RunRow, Store, StoreConfig, StoreError,
};
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug)]
enum Cache {
    None,
    Local,
    Redis,
}

/// What a test needs to clean up after itself.
struct Services {
    pg: Option<PgSchema>,
    redis: Option<RedisPrefix>,
    _dir: TempDir,
}

async fn open(db: Db, cache: Cache, max_snapshot_bytes: usize) -> Option<(Store, Services)> {
    let dir = TempDir::new("store");
    let redis = match cache {
        Cache::Redis => Some(RedisPrefix::create().await?),
        _ => None,
    };
    let cache = match (cache, &redis) {
        (Cache::None, _) => MappingCache::disabled(),
        (Cache::Local, _) => MappingCache::local(),
        (Cache::Redis, Some(r)) => MappingCache::redis(&support::redis_url(), &r.prefix).unwrap(),
        (Cache::Redis, None) => unreachable!(),
    };
    let (store, pg) = match db {
        Db::Sqlite => {
            let config = StoreConfig {
                database_url: dir.sqlite_url("state.db"),
                max_snapshot_bytes,
            };
            (Store::connect(&config, cache).await.expect("open sqlite"), None)
        }
        Db::Postgres => {
            let schema = PgSchema::create().await?;
            let store = Store::postgres(schema.pool.clone(), cache, max_snapshot_bytes)
                .await
                .expect("open postgres");
            (store, Some(schema))
        }
    };
    Some((store, Services { pg, redis, _dir: dir }))
}

/// Runs `test` against a fresh store and cleans up, also when it panics.
async fn run<F, Fut>(db: Db, cache: Cache, test: F)
where
    F: FnOnce(Arc<Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some((store, services)) = open(db, cache, DEFAULT_MAX_SNAPSHOT_BYTES).await else {
        return;
    };
    let result = tokio::spawn(test(Arc::new(store))).await;
    if let Some(pg) = services.pg {
        pg.drop().await;
    }
    if let Some(r) = services.redis {
        r.drop().await;
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Generates one test per backend and cache for each conformance case.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use super::*;
            #[tokio::test]
            async fn sqlite_no_cache() { run(Db::Sqlite, Cache::None, super::$case).await }
            #[tokio::test]
            async fn sqlite_local_cache() { run(Db::Sqlite, Cache::Local, super::$case).await }
            #[tokio::test]
            async fn sqlite_redis() { run(Db::Sqlite, Cache::Redis, super::$case).await }
            #[tokio::test]
            async fn postgres_no_cache() { run(Db::Postgres, Cache::None, super::$case).await }
            #[tokio::test]
            async fn postgres_local_cache() { run(Db::Postgres, Cache::Local, super::$case).await }
            #[tokio::test]
            async fn postgres_redis() { run(Db::Postgres, Cache::Redis, super::$case).await }
        }
    )*};
}

conformance!(
    batch_insert_and_lookup_both_ways,
    racing_transitions_have_one_winner,
    refused_transition_leaves_page_unwritten,
    lost_race_mid_page_rolls_back_the_page,
    cache_follows_every_committed_transition,
    awkward_names_round_trip,
    five_megabyte_snapshot_round_trips,
    conflicts_are_stored_per_tenant,
    a_decided_conflict_stays_open_until_its_decision_is_applied,
    a_succeeded_run_keeps_no_reason_it_waited_for,
    ready_runs_are_those_of_the_served_integrations,
    reservations_settle_with_their_page_or_become_pending,
    tokens_are_refused_once_revoked_or_expired,
    ready_runs_are_exactly_those_the_core_calls_ready,
    a_held_run_is_resumed_only_once_its_deletions_are_confirmed,
    a_scope_is_empty_until_it_holds_a_mapping_a_reservation_or_a_conflict,
    links_read_without_bases_never_stand_in_for_mappings,
    a_cancelled_run_commits_nothing_more,
    runs_and_conflicts_are_listed_by_the_start_of_their_id,
    the_entity_types_holding_mappings_are_found_per_tenant_and_integration,
);

async fn tokens_are_refused_once_revoked_or_expired(store: Arc<Store>) {
    use syncd_store::{Principal, TokenCheck};
    let tenant = Principal::Tenant("tenant-a".into());
    let (kept, _) = store.create_token_until(&tenant, None).await.unwrap();
    let (doomed, doomed_info) = store.create_token_until(&tenant, None).await.unwrap();
    let past = Utc::now() - chrono::Duration::seconds(1);
    let (expired, _) = store
        .create_token_until(&Principal::Admin, Some(past))
        .await
        .unwrap();
    assert_eq!(
        store.authenticate(&kept).await.unwrap(),
        TokenCheck::Valid(tenant.clone())
    );
    assert_eq!(
        store.authenticate("syncd_nope").await.unwrap(),
        TokenCheck::Unknown
    );
    assert!(matches!(
        store.authenticate(&expired).await.unwrap(),
        TokenCheck::Expired { .. }
    ));
    let revoked = store.revoke_token(&doomed_info.prefix).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        store.authenticate(&doomed).await.unwrap(),
        TokenCheck::Revoked { ref prefix, .. } if *prefix == doomed[..14]
    ));
    assert!(store.revoke_token("syncd_00000000").await.unwrap().is_none());
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    let kept_info = listed.iter().find(|t| kept.starts_with(&t.prefix)).unwrap();
    assert!(kept_info.last_used_at.is_some(), "its use is noted");
    assert_eq!(kept_info.tenant, "tenant-a");
}

fn scope(entity: &str) -> EntityScope {
    EntityScope::new("tenant-a", "crm-to-erp", entity)
}

fn pending(scope: &EntityScope, source_id: &str) -> IdMapping {
    IdMapping::reserve(
        Uuid::new_v4(),
        scope.clone(),
        Some(source_id.into()),
        None,
        format!("key-{source_id}"),
        Utc::now(),
    )
}

fn fields(v: serde_json::Value) -> Fields {
    v.as_object().expect("object").clone()
}

fn confirm(current: &IdMapping, target_id: &str, base: Fields) -> MappingWrite {
    MappingWrite::Transition {
        current: current.clone(),
        change: MappingChange::Confirm {
            source_id: current.source_id.clone().unwrap(),
            target_id: target_id.into(),
            base,
        },
    }
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn insert(store: &Store, mappings: Vec<IdMapping>) -> Vec<IdMapping> {
    store
        .commit_page(PageCommit {
            mappings: mappings.into_iter().map(MappingWrite::Insert).collect(),
            ..Default::default()
        })
        .await
        .expect("insert mappings")
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect()
}

async fn status_of(store: &Store, scope: &EntityScope, source_id: &str) -> Option<MappingStatus> {
    store
        .lookup(scope, Side::Source, &ids(&[source_id]))
        .await
        .unwrap()
        .get(source_id)
        .map(|m| m.status)
}

fn checkpoint(run_id: Uuid, cursor: serde_json::Value, read: u64) -> StepCheckpoint {
    StepCheckpoint {
        run_id,
        tenant_id: "tenant-a".into(),
        stage: 1,
        entity_type: "account".into(),
        direction: StepDirection::Forward,
        state: StepState::Running,
        cursor: Some(cursor),
        counters: StepCounters {
            read,
            ..Default::default()
        },
        error: None,
    }
}

async fn new_run(store: &Store) -> Uuid {
    new_run_of(store, &format!("integration-{}", Uuid::new_v4()))
        .await
        .id
}

/// A planned run of tenant-a's `integration`.
async fn new_run_of(store: &Store, integration: &str) -> RunRow {
    let run = RunRow {
        id: Uuid::new_v4(),
        tenant_id: "tenant-a".into(),
        integration_id: integration.into(),
        state: RunState::Planned,
        plan: json!({"stages": []}),
        trigger: "manual".into(),
        error: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
    };
    store.create_run(&run, &[]).await.unwrap();
    run
}

/// A run that waited to start (its reason noted on it) and then
/// succeeded says no error: it kept the old reason, and an operator read
/// a succeeded run as one that had failed.
async fn a_succeeded_run_keeps_no_reason_it_waited_for(store: Arc<Store>) {
    let run = new_run_of(&store, "crm-to-erp").await;
    store
        .note_run_error(&run, "cannot connect to the source")
        .await
        .unwrap();
    let waited = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(waited.error.as_deref(), Some("cannot connect to the source"));
    let running = store
        .transition_run(&waited, syncd_core::run::RunEvent::Start, None)
        .await
        .unwrap();
    let done = store
        .transition_run(&running, syncd_core::run::RunEvent::Succeed, None)
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(store.load_run(None, run.id).await.unwrap().unwrap().error, None);
    // When the integration last succeeded, for the metrics' alerts (a
    // failure since would say `failing`).
    let ends = store.run_ends().await.unwrap();
    let ours: Vec<_> = ends.iter().filter(|e| e.integration == "crm-to-erp").collect();
    assert_eq!(ours.len(), 1, "{ends:?}");
    assert_eq!(ours[0].tenant.as_str(), "tenant-a");
    let succeeded = ours[0].succeeded.expect("the run's end");
    assert!(
        (succeeded - done.finished_at.unwrap()).num_milliseconds().abs() <= 1,
        "{ours:?}"
    );
    assert_eq!(ours[0].failed, None);
}

/// A worker asks only for runs of the integrations it has definitions for:
/// older runs of other integrations (a removed definition, another
/// worker's directory) must not fill its page and starve its own.
async fn ready_runs_are_those_of_the_served_integrations(store: Arc<Store>) {
    let others: Vec<Uuid> = new_runs(&store, 12).await;
    let mine = new_run(&store).await;
    let integration = store.load_run(None, mine).await.unwrap().unwrap().integration_id;
    let ready = store.runs_to_execute(&[integration.as_str()], 10).await.unwrap();
    assert_eq!(ready.iter().map(|r| r.id).collect::<Vec<_>>(), vec![mine]);
    let all = store.runs_to_execute(&[], 10).await.unwrap();
    assert!(all.is_empty(), "no integration served, no run: {all:?}");
    assert_eq!(others.len(), 12);
}

/// A page reserves the mappings of its creates in one reservation, which
/// lookups do not see; the page's commit inserts them as they end. The
/// reservation of a page that never committed becomes pending mappings when
/// a step of its scope starts, except where an id has a mapping by then
/// (the page was done again), and that page can no longer commit.
async fn reservations_settle_with_their_page_or_become_pending(store: Arc<Store>) {
    let s = scope("account");
    let run_id = new_run(&store).await;
    let run = store.load_run(None, run_id).await.unwrap().unwrap();
    let ttl = std::time::Duration::from_secs(60);
    assert!(store.claim_lease(&run, "worker-1", ttl).await.unwrap());
    let lease = Lease {
        run_id,
        worker_id: "worker-1".into(),
    };
    let new = |list: &[&str]| -> Vec<MappingWrite> {
        list.iter()
            .map(|id| MappingWrite::Insert(pending(&s, id)))
            .collect()
    };
    // The commit of the page that made `r`: each held mapping confirmed.
    let settling = |r: &Reservation| PageCommit {
        mappings: r
            .held
            .iter()
            .map(|held| MappingWrite::Settle {
                held: held.clone(),
                change: MappingChange::Confirm {
                    source_id: held.source_id.clone().unwrap(),
                    target_id: format!("t-{}", held.source_id.as_deref().unwrap()),
                    base: fields(json!({"name": "Acme"})),
                },
            })
            .collect(),
        settles: Some(r.id),
        lease: Some(lease.clone()),
        ..Default::default()
    };

    // A worker without the lease reserves nothing.
    let stranger = Lease {
        run_id,
        worker_id: "worker-2".into(),
    };
    let refused = store.reserve(&s, new(&["a-9"]), &stranger).await.unwrap_err();
    // The message tells a takeover from an expiry.
    assert!(
        matches!(&refused, StoreError::LeaseLost { holder: Some(w), .. } if w == "worker-1"),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("worker `worker-1` took the run over"),
        "{refused}"
    );
    let other_run = store
        .load_run(None, new_run(&store).await)
        .await
        .unwrap()
        .unwrap();
    let nobody = Lease {
        run_id: other_run.id,
        worker_id: "worker-2".into(),
    };
    let expired = store.reserve(&s, new(&["a-9"]), &nobody).await.unwrap_err();
    assert!(
        matches!(&expired, StoreError::LeaseLost { holder: None, .. }),
        "{expired}"
    );
    assert!(expired.to_string().contains("let its lease expire"), "{expired}");

    let (reservation, stored) = store.reserve(&s, new(&["a-0", "a-1"]), &lease).await.unwrap();
    assert!(stored.is_empty(), "new mappings are held, not stored: {stored:?}");
    let reservation = reservation.expect("a reservation holds the new mappings");
    assert_eq!(reservation.held.len(), 2);
    let seen = store
        .lookup(&s, Side::Source, &ids(&["a-0", "a-1"]))
        .await
        .unwrap();
    assert!(
        seen.is_empty(),
        "held mappings are not in the ID map yet: {seen:?}"
    );

    let committed = store.commit_page(settling(&reservation)).await.unwrap();
    assert_eq!(committed.len(), 2);
    let by_target = store
        .lookup(&s, Side::Target, &ids(&["t-a-0", "t-a-1"]))
        .await
        .unwrap();
    assert_eq!(by_target.len(), 2);
    for m in by_target.values() {
        assert_eq!(m.status, MappingStatus::Mapped);
        assert_eq!(m.base, Some(fields(json!({"name": "Acme"}))));
    }
    assert_eq!(
        store.settle_leftovers(&s, &lease).await.unwrap(),
        0,
        "nothing is left over"
    );

    // A page that reserved and never committed; then the same records done
    // again: a-3 is mapped by the second attempt, a-2's failed.
    let (left, _) = store.reserve(&s, new(&["a-2", "a-3"]), &lease).await.unwrap();
    let left = left.unwrap();
    let listed = store
        .mappings_with_status(&s, MappingStatus::Pending, 10)
        .await
        .unwrap();
    let mut listed: Vec<&str> = listed.iter().filter_map(|m| m.source_id.as_deref()).collect();
    listed.sort();
    assert_eq!(
        listed,
        ["a-2", "a-3"],
        "operators see what a reservation holds as pending"
    );
    let one = store
        .find_mapping(&s, Side::Source, "a-2")
        .await
        .unwrap()
        .expect("held");
    assert_eq!((one.status, one.id), (MappingStatus::Pending, left.held[0].id));
    let mapped = store
        .find_mapping(&s, Side::Target, "t-a-0")
        .await
        .unwrap()
        .expect("mapped");
    assert_eq!(mapped.status, MappingStatus::Mapped);
    assert_eq!(store.find_mapping(&s, Side::Source, "a-9").await.unwrap(), None);
    let (again, _) = store.reserve(&s, new(&["a-3"]), &lease).await.unwrap();
    let again = again.unwrap();
    store.commit_page(settling(&again)).await.unwrap();

    assert_eq!(store.settle_leftovers(&s, &lease).await.unwrap(), 1);
    let found = store
        .lookup(&s, Side::Source, &ids(&["a-2", "a-3"]))
        .await
        .unwrap();
    let a2 = &found["a-2"];
    let held = left
        .held
        .iter()
        .find(|m| m.source_id.as_deref() == Some("a-2"))
        .unwrap();
    assert_eq!(a2.status, MappingStatus::Pending);
    assert_eq!((a2.id, &a2.idempotency_key), (held.id, &held.idempotency_key));
    assert_eq!(
        found["a-3"].status,
        MappingStatus::Mapped,
        "the later attempt's mapping stays"
    );
    assert_eq!(found["a-3"].id, again.held[0].id);
    assert_eq!(store.settle_leftovers(&s, &lease).await.unwrap(), 0);

    // The page that left it cannot commit now; a-2 stays pending.
    let late = store.commit_page(settling(&left)).await.unwrap_err();
    assert!(
        matches!(late, StoreError::ReservationGone { id } if id == left.id),
        "{late}"
    );
    assert_eq!(status_of(&store, &s, "a-2").await, Some(MappingStatus::Pending));
}

/// Cancelling a run ends its worker's writes even while the worker still
/// holds the lease: a reservation, a page's commit and a step's start are
/// each refused as the run's end, and none of them writes anything. (The
/// commit reads the run's state under the same lock as its lease, so a
/// cancel waits for a commit in flight instead of landing in its middle.)
async fn a_cancelled_run_commits_nothing_more(store: Arc<Store>) {
    use syncd_core::run::{PlannedStep, RunEvent};
    let s = scope("account");
    let run = new_run_of(&store, "crm-to-erp").await;
    let ttl = std::time::Duration::from_secs(60);
    assert!(store.claim_lease(&run, "worker-1", ttl).await.unwrap());
    let lease = Lease {
        run_id: run.id,
        worker_id: "worker-1".into(),
    };
    let run = store.transition_run(&run, RunEvent::Start, None).await.unwrap();
    let step = PlannedStep {
        stage: 0,
        entity_type: "account".into(),
        direction: StepDirection::Forward,
    };
    store.start_step(&run, &step, &lease).await.unwrap();
    let page = |source_id: &str, read: u64| PageCommit {
        mappings: vec![MappingWrite::Insert(pending(&s, source_id))],
        checkpoint: Some(checkpoint(run.id, json!({"after": source_id}), read)),
        lease: Some(lease.clone()),
        ..Default::default()
    };
    store.commit_page(page("a-1", 1)).await.unwrap();
    let (before_cancel, _) = store
        .reserve(&s, vec![MappingWrite::Insert(pending(&s, "a-2"))], &lease)
        .await
        .unwrap();

    store
        .transition_run(&run, RunEvent::Cancel, Some("cancelled by an operator"))
        .await
        .unwrap();
    let ended = |e: &StoreError| matches!(e, StoreError::RunEnded { run_id, state: RunState::Cancelled } if *run_id == run.id);
    let refused = store.commit_page(page("a-3", 3)).await.unwrap_err();
    assert!(ended(&refused), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("is cancelled: this worker commits nothing more of it"),
        "{refused}"
    );
    let refused = store
        .reserve(&s, vec![MappingWrite::Insert(pending(&s, "a-4"))], &lease)
        .await
        .unwrap_err();
    assert!(ended(&refused), "{refused}");
    let other = PlannedStep {
        entity_type: "contact".into(),
        ..step.clone()
    };
    let refused = store.start_step(&run, &other, &lease).await.unwrap_err();
    assert!(ended(&refused), "{refused}");

    assert_eq!(status_of(&store, &s, "a-1").await, Some(MappingStatus::Pending));
    for id in ["a-3", "a-4"] {
        assert_eq!(
            status_of(&store, &s, id).await,
            None,
            "{id} was written after the cancel"
        );
    }
    let cp = store
        .load_checkpoint(run.id, "account", StepDirection::Forward)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.cursor, Some(json!({"after": "a-1"})));
    assert_eq!(cp.counters.read, 1);
    assert!(
        store
            .load_checkpoint(run.id, "contact", StepDirection::Forward)
            .await
            .unwrap()
            .is_none(),
        "no step started after the cancel"
    );
    // Nor does the page reserved before the cancel settle its reservation:
    // the reservation stays for the next run of the scope to settle.
    let reservation = before_cancel.expect("a-2 was reserved");
    let settling = PageCommit {
        settles: Some(reservation.id),
        lease: Some(lease.clone()),
        ..Default::default()
    };
    let refused = store.commit_page(settling).await.unwrap_err();
    assert!(ended(&refused), "{refused}");
    let next = new_run_of(&store, "crm-to-erp").await;
    assert!(store.claim_lease(&next, "worker-2", ttl).await.unwrap());
    let next_lease = Lease {
        run_id: next.id,
        worker_id: "worker-2".into(),
    };
    assert_eq!(store.settle_leftovers(&s, &next_lease).await.unwrap(), 1);
    assert_eq!(status_of(&store, &s, "a-2").await, Some(MappingStatus::Pending));
}

async fn new_runs(store: &Store, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(new_run(store).await);
    }
    ids
}

async fn batch_insert_and_lookup_both_ways(store: Arc<Store>) {
    let s = scope("account");
    let stored = insert(&store, (0..50).map(|i| pending(&s, &format!("a-{i}"))).collect()).await;
    assert!(
        stored
            .iter()
            .all(|m| m.status == MappingStatus::Pending && m.version == 1)
    );

    let page: Vec<MappingWrite> = stored
        .iter()
        .take(10)
        .map(|m| {
            confirm(
                m,
                &format!("T-{}", m.source_id.as_ref().unwrap()),
                fields(json!({"n": 1})),
            )
        })
        .collect();
    store
        .commit_page(PageCommit {
            mappings: page,
            ..Default::default()
        })
        .await
        .unwrap();

    // A synced record whose next change was refused: listed for operators.
    let a1 = store.lookup(&s, Side::Source, &ids(&["a-1"])).await.unwrap()["a-1"].clone();
    store
        .commit_page(PageCommit {
            mappings: vec![MappingWrite::Transition {
                current: a1,
                change: MappingChange::Refuse {
                    error: "field `n`: 1.5 does not fit".into(),
                },
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = store.refused_mappings(&s, 10).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].source_id.as_deref(), Some("a-1"));
    assert_eq!(refused[0].status, MappingStatus::Mapped);
    assert_eq!(
        store
            .mappings_with_status(&s, MappingStatus::Mapped, 100)
            .await
            .unwrap()
            .len(),
        10,
        "all mapped ones, refused or not"
    );
    // Read again after a step's scan by the runs that began after it was
    // refused, and only it.
    let refused_at = refused[0].updated_at;
    let again = |before| {
        let store = store.clone();
        let s = s.clone();
        async move { store.refused_before(&s, before, None, 100).await.unwrap() }
    };
    let later = again(refused_at + chrono::Duration::seconds(1)).await;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].source_id.as_deref(), Some("a-1"));
    assert!(
        again(refused_at).await.is_empty(),
        "a run begun before the refusal decided it"
    );
    let past = store
        .refused_before(
            &s,
            refused_at + chrono::Duration::seconds(1),
            Some(later[0].id),
            100,
        )
        .await
        .unwrap();
    assert!(past.is_empty());

    let wanted = ids(&["a-0", "a-9", "a-10", "a-49", "nobody"]);
    let by_source = store.lookup(&s, Side::Source, &wanted).await.unwrap();
    assert_eq!(by_source.len(), 4, "unknown ids are absent");
    assert_eq!(by_source["a-0"].status, MappingStatus::Mapped);
    assert_eq!(by_source["a-0"].target_id.as_deref(), Some("T-a-0"));
    assert_eq!(by_source["a-0"].base, Some(fields(json!({"n": 1}))));
    assert_eq!(by_source["a-10"].status, MappingStatus::Pending);
    assert_eq!(by_source["a-49"].idempotency_key.as_deref(), Some("key-a-49"));

    let by_target = store
        .lookup(&s, Side::Target, &ids(&["T-a-9", "T-a-10"]))
        .await
        .unwrap();
    assert_eq!(by_target.len(), 1);
    assert_eq!(by_target["T-a-9"].source_id.as_deref(), Some("a-9"));

    // Another tenant, integration or entity type sees none of it.
    for other in [
        EntityScope::new("tenant-b", "crm-to-erp", "account"),
        EntityScope::new("tenant-a", "other", "account"),
        scope("contact"),
    ] {
        assert!(
            store
                .lookup(&other, Side::Source, &wanted)
                .await
                .unwrap()
                .is_empty()
        );
    }

    // The same source id cannot be mapped twice.
    let err = store
        .commit_page(PageCommit {
            mappings: vec![MappingWrite::Insert(pending(&s, "a-3"))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");
}

/// Reference translation reads parents through `lookup_links`: the same
/// status and ids as `lookup`; read from the database it comes without the
/// base snapshot, and is not cached, so a `lookup` after it still has the
/// base (a decision compares against it).
async fn links_read_without_bases_never_stand_in_for_mappings(store: Arc<Store>) {
    let s = scope("account");
    let stored = insert(&store, (0..3).map(|i| pending(&s, &format!("a-{i}"))).collect()).await;
    store
        .commit_page(PageCommit {
            mappings: vec![confirm(&stored[0], "T-a-0", fields(json!({"name": "Acme"})))],
            ..Default::default()
        })
        .await
        .unwrap();
    let wanted = ids(&["a-0", "a-1", "nobody"]);
    for _ in 0..2 {
        // Out of the cache (if any), so that the links are read from the
        // database.
        let mut keys = store.cache().keys(&s, Side::Source, &wanted);
        keys.extend(store.cache().keys(&s, Side::Target, &ids(&["T-a-0"])));
        store.cache().delete_many(&keys).await;
        let links = store.lookup_links(&s, Side::Source, &wanted).await.unwrap();
        assert_eq!(links["a-0"].base, None, "read without the base");
        assert_eq!(links.len(), 2, "unknown ids are absent");
        assert_eq!(
            (links["a-0"].status, links["a-0"].target_id.as_deref()),
            (MappingStatus::Mapped, Some("T-a-0"))
        );
        assert_eq!(links["a-1"].status, MappingStatus::Pending);
        let mappings = store.lookup(&s, Side::Source, &wanted).await.unwrap();
        assert_eq!(mappings["a-0"].base, Some(fields(json!({"name": "Acme"}))));
        for id in ["a-0", "a-1"] {
            let (link, mapping) = (&links[id], &mappings[id]);
            assert_eq!(
                (
                    link.id,
                    link.status,
                    &link.source_id,
                    &link.target_id,
                    link.version
                ),
                (
                    mapping.id,
                    mapping.status,
                    &mapping.source_id,
                    &mapping.target_id,
                    mapping.version
                )
            );
        }
    }
    let by_target = store
        .lookup_links(&s, Side::Target, &ids(&["T-a-0"]))
        .await
        .unwrap();
    assert_eq!(by_target["T-a-0"].source_id.as_deref(), Some("a-0"));
}

async fn racing_transitions_have_one_winner(store: Arc<Store>) {
    let s = scope("account");
    for round in 0..5 {
        let id = format!("race-{round}");
        let read = insert(&store, vec![pending(&s, &id)]).await.remove(0);
        let target_id = format!("T-{round}");
        let to_mapped = confirm(&read, &target_id, Fields::new());
        let to_failed = MappingWrite::Transition {
            current: read.clone(),
            change: MappingChange::Fail {
                error: "target said no".into(),
            },
        };
        let (a, b) = tokio::join!(
            {
                let store = store.clone();
                async move {
                    store
                        .commit_page(PageCommit {
                            mappings: vec![to_mapped],
                            ..Default::default()
                        })
                        .await
                }
            },
            {
                let store = store.clone();
                async move {
                    store
                        .commit_page(PageCommit {
                            mappings: vec![to_failed],
                            ..Default::default()
                        })
                        .await
                }
            }
        );
        let (winner, loser) = match (&a, &b) {
            (Ok(_), Err(e)) => (MappingStatus::Mapped, e),
            (Err(e), Ok(_)) => (MappingStatus::Failed, e),
            _ => panic!("exactly one must win: {a:?} / {b:?}"),
        };
        let msg = loser.to_string();
        let expected = match winner {
            MappingStatus::Mapped => "mapping transition mapped -> failed is not allowed",
            _ => "mapping transition failed -> mapped is not allowed",
        };
        assert!(msg.contains(expected) && msg.contains(&id), "{msg}");
        let now = store
            .lookup(&s, Side::Source, &ids(&[&id]))
            .await
            .unwrap()
            .remove(&id)
            .unwrap();
        assert_eq!(now.status, winner);
        assert_eq!(now.version, 2);
        match winner {
            MappingStatus::Mapped => assert_eq!(now.target_id, Some(target_id)),
            _ => assert_eq!(now.last_error.as_deref(), Some("target said no")),
        }
    }
}

async fn refused_transition_leaves_page_unwritten(store: Arc<Store>) {
    let s = scope("account");
    let run_id = new_run(&store).await;
    let read = insert(
        &store,
        vec![pending(&s, "a-1"), pending(&s, "a-2"), pending(&s, "a-3")],
    )
    .await;
    store
        .commit_page(PageCommit {
            mappings: vec![confirm(&read[2], "T-3", Fields::new())],
            checkpoint: Some(checkpoint(run_id, json!({"after": "a-0"}), 1)),
            ..Default::default()
        })
        .await
        .unwrap();
    let mapped3 = store
        .lookup(&s, Side::Source, &ids(&["a-3"]))
        .await
        .unwrap()
        .remove("a-3")
        .unwrap();

    // a-1 and a-2 may move on, but mapped -> pending is not a transition.
    let err = store
        .commit_page(PageCommit {
            mappings: vec![
                confirm(&read[0], "T-1", Fields::new()),
                MappingWrite::Transition {
                    current: read[1].clone(),
                    change: MappingChange::Fail { error: "x".into() },
                },
                MappingWrite::Transition {
                    current: mapped3.clone(),
                    change: MappingChange::Reserve {
                        idempotency_key: "again".into(),
                    },
                },
            ],
            checkpoint: Some(checkpoint(run_id, json!({"after": "a-3"}), 4)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("mapping transition mapped -> pending is not allowed"),
        "{err}"
    );
    assert_eq!(status_of(&store, &s, "a-1").await, Some(MappingStatus::Pending));
    assert_eq!(status_of(&store, &s, "a-2").await, Some(MappingStatus::Pending));
    assert_eq!(status_of(&store, &s, "a-3").await, Some(MappingStatus::Mapped));
    let cp = store
        .load_checkpoint(run_id, "account", StepDirection::Forward)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.cursor, Some(json!({"after": "a-0"})));
    assert_eq!(cp.counters.read, 1);
}

async fn lost_race_mid_page_rolls_back_the_page(store: Arc<Store>) {
    let s = scope("account");
    let run_id = new_run(&store).await;
    let read = insert(&store, vec![pending(&s, "b-1"), pending(&s, "b-2")]).await;
    // Someone else moves b-2 on after we read it.
    store
        .commit_page(PageCommit {
            mappings: vec![confirm(&read[1], "T-2", Fields::new())],
            ..Default::default()
        })
        .await
        .unwrap();
    let conflict = sample_conflict("tenant-a", "b-1");
    let conflict_id = conflict.id;
    // Our page: b-1 first (fine on its own), then b-2 from a stale read.
    let err = store
        .commit_page(PageCommit {
            mappings: vec![
                confirm(&read[0], "T-1", Fields::new()),
                MappingWrite::Transition {
                    current: read[1].clone(),
                    change: MappingChange::Fail { error: "late".into() },
                },
            ],
            conflicts: vec![conflict],
            checkpoint: Some(checkpoint(run_id, json!({"after": "b-2"}), 2)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("mapped -> failed is not allowed"),
        "{err}"
    );
    assert_eq!(status_of(&store, &s, "b-1").await, Some(MappingStatus::Pending));
    assert_eq!(status_of(&store, &s, "b-2").await, Some(MappingStatus::Mapped));
    assert_eq!(
        store
            .load_checkpoint(run_id, "account", StepDirection::Forward)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .load_conflicts(&"tenant-a".into(), &[conflict_id])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn cache_follows_every_committed_transition(store: Arc<Store>) {
    let s = scope("contact");
    let mut current = insert(&store, vec![pending(&s, "c-1")]).await.remove(0);
    // Lookups racing with the writes must never see a status older than the
    // last commit that finished before the lookup started.
    let reader = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                store.lookup(&s, Side::Source, &ids(&["c-1"])).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let cycle = [
        MappingChange::Confirm {
            source_id: "c-1".into(),
            target_id: "T-1".into(),
            base: Fields::new(),
        },
        MappingChange::MarkStale {
            reason: "gone".into(),
        },
        MappingChange::Reserve {
            idempotency_key: "k2".into(),
        },
        MappingChange::Fail { error: "no".into() },
        MappingChange::Reserve {
            idempotency_key: "k3".into(),
        },
    ];
    for change in cycle.iter().cycle().take(20) {
        let expected = change.target_status();
        current = store
            .commit_page(PageCommit {
                mappings: vec![MappingWrite::Transition {
                    current: current.clone(),
                    change: change.clone(),
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .remove(0)
            .as_ref()
            .clone();
        let seen = store
            .lookup(&s, Side::Source, &ids(&["c-1"]))
            .await
            .unwrap()
            .remove("c-1")
            .unwrap();
        assert_eq!((seen.status, seen.version), (expected, current.version));
        if expected == MappingStatus::Mapped {
            let by_target = store.lookup(&s, Side::Target, &ids(&["T-1"])).await.unwrap();
            assert_eq!(by_target["T-1"].version, current.version);
        }
    }
    reader.await.unwrap();
    if store.cache().is_enabled() {
        assert!(store.cache().counts().hits > 0, "the cache answered some lookups");
    }
}

async fn awkward_names_round_trip(store: Arc<Store>) {
    let names = [
        "it's \"quoted\"",
        "100% * all",
        "line\nbreak",
        "naïve 東京 🚀",
        "a:b",
        "semi;colon -- DROP TABLE id_mappings",
    ];
    for (i, name) in names.iter().enumerate() {
        let s = EntityScope::new(*name, *name, *name);
        let source_id = format!("{name}/{i}");
        let stored = insert(&store, vec![pending(&s, &source_id)]).await.remove(0);
        store
            .commit_page(PageCommit {
                mappings: vec![confirm(&stored, name, fields(json!({ *name: *name })))],
                ..Default::default()
            })
            .await
            .unwrap();
        let found = store
            .lookup(&s, Side::Source, std::slice::from_ref(&source_id))
            .await
            .unwrap();
        let m = &found[&source_id];
        assert_eq!(m.tenant_id.as_str(), *name);
        assert_eq!(m.integration_id.as_str(), *name);
        assert_eq!(m.entity_type.as_str(), *name);
        assert_eq!(m.target_id.as_deref(), Some(*name));
        assert_eq!(m.base, Some(fields(json!({ *name: *name }))));
    }
    // `a` + `b:c` must not meet `a:b` + `c` in the cache or the database.
    let left = EntityScope::new("a", "b:c", "x");
    let right = EntityScope::new("a:b", "c", "x");
    insert(&store, vec![pending(&left, "same")]).await;
    assert!(
        store
            .lookup(&right, Side::Source, &ids(&["same"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .lookup(&left, Side::Source, &ids(&["same"]))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn five_megabyte_snapshot_round_trips(store: Arc<Store>) {
    let s = scope("product");
    let big = "x".repeat(5 * 1024 * 1024);
    let base = fields(json!({ "description": big, "sku": "P-1" }));
    let stored = insert(&store, vec![pending(&s, "p-1")]).await.remove(0);
    store
        .commit_page(PageCommit {
            mappings: vec![confirm(&stored, "T-p-1", base.clone())],
            ..Default::default()
        })
        .await
        .unwrap();
    let loaded = store
        .lookup(&s, Side::Source, &ids(&["p-1"]))
        .await
        .unwrap()
        .remove("p-1")
        .unwrap();
    assert_eq!(loaded.base, Some(base));
}

fn sample_conflict(tenant: &str, source_id: &str) -> ConflictRecord {
    ConflictRecord {
        id: Uuid::new_v4(),
        tenant_id: tenant.into(),
        integration_id: "crm-to-erp".into(),
        entity_type: "account".into(),
        run_id: None,
        source_record: Record {
            id: source_id.into(),
            fields: fields(json!({"name": "Acme Corp"})),
            modified_at: Utc::now(),
        },
        target_record: Record {
            id: format!("T-{source_id}"),
            fields: fields(json!({"name": "ACME"})),
            modified_at: Utc::now(),
        },
        base: Some(fields(json!({"name": "Acme"}))),
        conflicting_fields: vec!["name".into()],
        strategy_applied: Strategy::Manual,
        resolution: None,
        status: ConflictStatus::Pending,
        resolved_by: None,
        created_at: Utc::now(),
        resolved_at: None,
        outcome: None,
    }
}

/// What a first load relies on to skip lookups: a scope is empty only
/// while none of its mappings (whichever side's id it has), reservations
/// or pending conflicts exist, and no other run of its integration holds
/// a live lease (a second guard beside the fence on an ended run's commits);
/// another scope's, or another integration's, do not count.
async fn a_scope_is_empty_until_it_holds_a_mapping_a_reservation_or_a_conflict(store: Arc<Store>) {
    let (accounts, contacts, orders, products) = (
        scope("account"),
        scope("contact"),
        scope("order"),
        scope("product"),
    );
    let asking = Uuid::new_v4();
    let ttl = std::time::Duration::from_secs(60);
    for s in [&accounts, &contacts, &orders, &products] {
        assert!(
            store.scope_is_empty(s, asking).await.unwrap(),
            "{s:?} before anything"
        );
    }
    // A run of the integration whose worker still holds its lease.
    let other = new_run_of(&store, "crm-to-erp").await;
    assert!(store.claim_lease(&other, "worker-0", ttl).await.unwrap());
    assert!(
        !store.scope_is_empty(&accounts, asking).await.unwrap(),
        "another run's live lease counts"
    );
    assert!(
        store.scope_is_empty(&accounts, other.id).await.unwrap(),
        "the asking run's own lease does not"
    );
    let held = Lease {
        run_id: other.id,
        worker_id: "worker-0".into(),
    };
    store.release_lease(&held).await.unwrap();
    assert!(
        store.scope_is_empty(&accounts, asking).await.unwrap(),
        "a released lease does not count"
    );
    // A mapping with a source id only, and one with a target id only.
    insert(&store, vec![pending(&contacts, "c-1")]).await;
    let mut backward = pending(&orders, "o-1");
    (backward.source_id, backward.target_id) = (None, Some("T-o-1".into()));
    insert(&store, vec![backward]).await;
    assert!(!store.scope_is_empty(&contacts, asking).await.unwrap());
    assert!(!store.scope_is_empty(&orders, asking).await.unwrap());
    assert!(
        store.scope_is_empty(&accounts, asking).await.unwrap(),
        "other scopes' mappings do not count"
    );
    // A reservation alone, made under a lease of another integration's run.
    let run_id = new_run(&store).await;
    let run = store.load_run(None, run_id).await.unwrap().unwrap();
    assert!(store.claim_lease(&run, "worker-1", ttl).await.unwrap());
    assert!(
        store.scope_is_empty(&accounts, asking).await.unwrap(),
        "another integration's lease does not count"
    );
    let lease = Lease {
        run_id,
        worker_id: "worker-1".into(),
    };
    let (reservation, _) = store
        .reserve(
            &products,
            vec![MappingWrite::Insert(pending(&products, "p-1"))],
            &lease,
        )
        .await
        .unwrap();
    assert!(reservation.is_some());
    assert!(
        !store.scope_is_empty(&products, asking).await.unwrap(),
        "a reservation counts"
    );
    // A pending conflict alone (`sample_conflict` is an account's).
    store
        .commit_page(PageCommit {
            conflicts: vec![sample_conflict("tenant-a", "a-1")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !store.scope_is_empty(&accounts, asking).await.unwrap(),
        "a pending conflict counts"
    );
}

/// `runs show 5eed` and `conflicts show c0f1`: the ids whose text starts
/// with what an operator typed (hyphens included, in any case), no others.
async fn runs_and_conflicts_are_listed_by_the_start_of_their_id(store: Arc<Store>) {
    let ids = [
        0x5eed_0000_0000_4000_8000_0000_0000_0001_u128,
        0x5eed_0000_0000_4000_8000_0000_0000_0002,
        0x5eee_0000_0000_4000_8000_0000_0000_0001,
    ];
    for (i, id) in ids.into_iter().enumerate() {
        let run = RunRow {
            id: Uuid::from_u128(id),
            tenant_id: "tenant-a".into(),
            // One active run an integration.
            integration_id: format!("prefixes-{i}").into(),
            state: RunState::Planned,
            plan: json!({"stages": []}),
            trigger: "manual".into(),
            error: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
        };
        store.create_run(&run, &[]).await.unwrap();
    }
    let runs = |prefix: &str| {
        let store = store.clone();
        let filter = RunFilter {
            id_prefix: Some(prefix.to_owned()),
            limit: 10,
            ..Default::default()
        };
        async move {
            let mut ids: Vec<u128> = store
                .list_runs(&filter)
                .await
                .unwrap()
                .iter()
                .map(|r| r.id.as_u128())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(runs("5eed").await, ids[..2]);
    assert_eq!(runs("5EED0000-0000-4000-8000-00000000000").await, ids[..2]);
    assert_eq!(runs("5eed0000-0000-4000-8000-000000000002").await, ids[1..2]);
    assert_eq!(runs("5ee").await, ids);
    assert_eq!(runs("5eef").await, Vec::<u128>::new());
    let mut conflict = sample_conflict("tenant-a", "p-1");
    conflict.id = Uuid::from_u128(0xc0f1_0000_0000_4000_8000_0000_0000_0001);
    let mut other = sample_conflict("tenant-a", "p-2");
    other.id = Uuid::from_u128(0xc0f2_0000_0000_4000_8000_0000_0000_0001);
    store
        .commit_page(PageCommit {
            conflicts: vec![conflict.clone(), other],
            ..Default::default()
        })
        .await
        .unwrap();
    let found = store
        .list_conflicts(&ConflictFilter {
            id_prefix: Some("C0F1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|c| c.id).collect::<Vec<_>>(), [conflict.id]);
}

/// A record whose conflict a reviewer has decided waits, as it did while
/// the conflict was pending, until a run applies the decision: a run that
/// met it in between parked a second conflict on it, and the decision
/// applied after left that one to be decided again, and dropped. A
/// strategy's own settlement (`system`) and an applied decision close it.
async fn a_decided_conflict_stays_open_until_its_decision_is_applied(store: Arc<Store>) {
    let s = scope("account");
    let (decided, pending, settled) = (
        sample_conflict("tenant-a", "a-decided"),
        sample_conflict("tenant-a", "a-pending"),
        sample_conflict("tenant-a", "a-settled"),
    );
    store
        .commit_page(PageCommit {
            conflicts: vec![decided.clone(), pending.clone(), settled.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let choice = fields(json!({"name": "ACME"}));
    store.resolve_conflict(&decided, &choice, "alice").await.unwrap();
    store.resolve_conflict(&settled, &choice, "system").await.unwrap();
    let all = ids(&["a-decided", "a-pending", "a-settled", "a-none"]);
    let open = |side| {
        let (store, s, all) = (store.clone(), s.clone(), all.clone());
        async move {
            let mut open: Vec<String> = store
                .open_conflicts(&s, side, &all)
                .await
                .unwrap()
                .into_iter()
                .collect();
            open.sort();
            open
        }
    };
    assert_eq!(open(Side::Source).await, ["a-decided", "a-pending"]);
    let targets = ids(&["T-a-decided", "T-a-pending", "T-a-settled"]);
    let mut by_target: Vec<String> = store
        .open_conflicts(&s, Side::Target, &targets)
        .await
        .unwrap()
        .into_iter()
        .collect();
    by_target.sort();
    assert_eq!(by_target, ["T-a-decided", "T-a-pending"]);
    store
        .commit_page(PageCommit {
            applied_conflicts: vec![(decided.id, "applied".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open(Side::Source).await, ["a-pending"]);
    // What became of the decision is kept with it, for the reviewer.
    let tenant: TenantId = "tenant-a".into();
    let outcomes: Vec<(Uuid, Option<String>)> = store
        .load_conflicts(&tenant, &[decided.id, pending.id])
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.outcome))
        .collect();
    assert!(
        outcomes.contains(&(decided.id, Some("applied".into()))),
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&(pending.id, None)), "{outcomes:?}");
}

async fn conflicts_are_stored_per_tenant(store: Arc<Store>) {
    let mine = sample_conflict("tenant-a", "a-1");
    let theirs = sample_conflict("tenant-b", "a-1");
    store
        .commit_page(PageCommit {
            conflicts: vec![mine.clone(), theirs.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let tenant_a: TenantId = "tenant-a".into();
    let loaded = store
        .load_conflicts(&tenant_a, &[mine.id, theirs.id])
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1, "tenant-b's conflict is invisible to tenant-a");
    let got = &loaded[0];
    assert_eq!(got.id, mine.id);
    assert_eq!(got.source_record.fields, mine.source_record.fields);
    assert_eq!(got.target_record.id, mine.target_record.id);
    assert_eq!(got.base, mine.base);
    assert_eq!(got.conflicting_fields, mine.conflicting_fields);
    assert_eq!(
        (got.status, got.strategy_applied),
        (ConflictStatus::Pending, Strategy::Manual)
    );
}

#[tokio::test]
async fn snapshot_over_the_limit_is_refused_on_both_backends() {
    for db in [Db::Sqlite, Db::Postgres] {
        let Some((store, services)) = open(db, Cache::None, 1024 * 1024).await else {
            continue;
        };
        let s = scope("product");
        let stored = insert(&store, vec![pending(&s, "p-big")]).await.remove(0);
        let err = store
            .commit_page(PageCommit {
                mappings: vec![confirm(
                    &stored,
                    "T",
                    fields(json!({ "blob": "y".repeat(2 * 1024 * 1024) })),
                )],
                ..Default::default()
            })
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::TooLarge { limit: 1048576, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("base snapshot of product `p-big`") && msg.contains("over the limit"),
            "{msg}"
        );
        assert_eq!(
            status_of(&store, &s, "p-big").await,
            Some(MappingStatus::Pending),
            "{db:?}"
        );
        if let Some(pg) = services.pg {
            pg.drop().await;
        }
    }
}

/// A database written before migration 0007, whose ID-map indexes led with
/// the tenant, integration and entity type, is upgraded in place to scope
/// numbers: its mappings are found again by either id and within their own
/// scope only, their ids stay unique, and a scope first seen after the
/// upgrade is numbered apart.
#[tokio::test]
async fn postgres_mappings_written_before_scope_numbers_survive_the_upgrade() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut before = sqlx::migrate::Migrator::new(std::path::Path::new("crates/store/migrations/postgres"))
        .await
        .expect("read the migrations");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 7)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&schema.pool).await.expect("migrate up to 0006");
    let row_ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO id_mappings (id, tenant_id, integration_id, entity_type, source_id, target_id, status, \
             base, idempotency_key, attempts, version, created_at, updated_at) VALUES \
         ($1, 'tenant-a', 'crm-to-erp', 'account', 'a-1', 'T-1', 'mapped', '{\"name\": \"Acme\"}', NULL, 0, 2, \
             now(), now()), \
         ($2, 'tenant-a', 'crm-to-erp', 'contact', 'a-1', 'T-9', 'mapped', '{}', NULL, 0, 2, now(), now()), \
         ($3, 'tenant-b', 'crm-to-erp', 'account', 'a-1', NULL, 'pending', NULL, 'key-a-1', 0, 1, now(), now())",
    )
    .bind(row_ids[0])
    .bind(row_ids[1])
    .bind(row_ids[2])
    .execute(&schema.pool)
    .await
    .expect("rows as the old schema held them");

    let store = Store::postgres(
        schema.pool.clone(),
        MappingCache::disabled(),
        DEFAULT_MAX_SNAPSHOT_BYTES,
    )
    .await
    .expect("upgrade");
    let accounts = scope("account");
    let found = store
        .lookup(&accounts, Side::Source, &ids(&["a-1"]))
        .await
        .unwrap();
    assert_eq!(found["a-1"].id, row_ids[0]);
    assert_eq!(found["a-1"].base, Some(fields(json!({ "name": "Acme" }))));
    let by_target = store
        .lookup(&accounts, Side::Target, &ids(&["T-1", "T-9"]))
        .await
        .unwrap();
    assert_eq!(
        by_target.keys().collect::<Vec<_>>(),
        vec!["T-1"],
        "T-9 is a contact's"
    );
    let contacts = store
        .lookup(&scope("contact"), Side::Source, &ids(&["a-1"]))
        .await
        .unwrap();
    assert_eq!(contacts["a-1"].target_id.as_deref(), Some("T-9"));
    let other_tenant = EntityScope::new("tenant-b", "crm-to-erp", "account");
    let theirs = store
        .lookup(&other_tenant, Side::Source, &ids(&["a-1"]))
        .await
        .unwrap();
    assert_eq!(theirs["a-1"].status, MappingStatus::Pending);
    assert_eq!(
        store
            .unsettled_mappings(&other_tenant, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![row_ids[2]]
    );
    assert!(
        store
            .unsettled_mappings(&accounts, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let again = store
        .commit_page(PageCommit {
            mappings: vec![MappingWrite::Insert(pending(&accounts, "a-1"))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::Duplicate { .. }), "{again}");

    let orders = scope("order");
    let new = insert(&store, vec![pending(&orders, "a-1")]).await.remove(0);
    let found = store.lookup(&orders, Side::Source, &ids(&["a-1"])).await.unwrap();
    assert_eq!(found["a-1"].id, new.id);
    let found = store
        .lookup(&accounts, Side::Source, &ids(&["a-1"]))
        .await
        .unwrap();
    assert_eq!(found["a-1"].id, row_ids[0]);
    schema.drop().await;
}

/// "Ready to execute" is defined once, by the core
/// (`syncd_core::run::ready_to_execute`): each backend's query for the runs
/// a worker may take agrees with it in every run state, with and without a
/// conflict waiting for a reviewer, a live lease, and an unconfirmed
/// mass-deletion hold.
async fn ready_runs_are_exactly_those_the_core_calls_ready(store: Arc<Store>) {
    use syncd_core::run::{RunEvent, ready_to_execute};
    let ttl = std::time::Duration::from_secs(60);
    let (mut expected, mut integrations) = (Vec::new(), Vec::new());
    for state in RunState::ALL {
        let events: &[RunEvent] = match state {
            RunState::Planned => &[],
            RunState::Running => &[RunEvent::Start],
            RunState::Suspended => &[RunEvent::Start, RunEvent::Suspend],
            RunState::Succeeded => &[RunEvent::Start, RunEvent::Succeed],
            RunState::Failed => &[RunEvent::Start, RunEvent::Fail],
            RunState::Cancelled => &[RunEvent::Cancel],
        };
        for pending in [false, true] {
            for leased in [false, true] {
                for held in [false, true] {
                    let id = new_run(&store).await;
                    let mut run = store.load_run(None, id).await.unwrap().unwrap();
                    if leased {
                        assert!(store.claim_lease(&run, "worker-1", ttl).await.unwrap());
                    }
                    for event in events {
                        run = store.transition_run(&run, *event, None).await.unwrap();
                    }
                    assert_eq!(run.state, state);
                    if pending {
                        let mut c = sample_conflict("tenant-a", &format!("s-{id}"));
                        c.integration_id = run.integration_id.clone();
                        c.run_id = Some(id);
                        store
                            .commit_page(PageCommit {
                                conflicts: vec![c],
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                    }
                    if held {
                        store.add_hold(&unconfirmed_hold(id)).await.unwrap();
                    }
                    integrations.push(run.integration_id.to_string());
                    if ready_to_execute(state, pending, leased, held) {
                        expected.push(id);
                    }
                }
            }
        }
    }
    let served: Vec<&str> = integrations.iter().map(String::as_str).collect();
    let mut ready: Vec<Uuid> = store
        .runs_to_execute(&served, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    ready.sort();
    expected.sort();
    assert_eq!(ready, expected);
    // Neither leased nor held: planned and running with or without a
    // pending conflict, suspended without.
    assert_eq!(ready.len(), 5);
}

/// An operator's resume and the workers agree on a run the mass-deletion
/// brake holds: neither goes on with it until its deletions are confirmed.
async fn a_held_run_is_resumed_only_once_its_deletions_are_confirmed(store: Arc<Store>) {
    use syncd_core::run::{ResumeRefused, RunEvent};
    use syncd_store::StoreError;
    let id = new_run(&store).await;
    let mut run = store.load_run(None, id).await.unwrap().unwrap();
    for event in [RunEvent::Start, RunEvent::Suspend] {
        run = store.transition_run(&run, event, None).await.unwrap();
    }
    store.add_hold(&unconfirmed_hold(id)).await.unwrap();
    let integration = run.integration_id.to_string();
    match store.check_resume(&run).await {
        Err(StoreError::NotResumable {
            source: ResumeRefused::Held(held),
            ..
        }) => assert_eq!(held, id),
        other => panic!("a held run was not refused: {other:?}"),
    }
    assert!(
        store
            .runs_to_execute(&[integration.as_str()], 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.confirm_deletes(None, id, "ops").await.unwrap();
    store.check_resume(&run).await.unwrap();
    let ready = store.runs_to_execute(&[integration.as_str()], 10).await.unwrap();
    assert_eq!(ready.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
}

/// A mass-deletion hold on `run` nobody has confirmed.
fn unconfirmed_hold(run: Uuid) -> syncd_store::RunHold {
    syncd_store::RunHold {
        run_id: run,
        tenant_id: "tenant-a".into(),
        entity_type: "account".into(),
        count: 10,
        mapped: 10,
        limit: 1,
        confirmed_by: None,
        confirmed_at: None,
        created_at: Utc::now(),
    }
}

/// The rule ARCHITECTURE.md states for distributing the state tables by
/// tenant (Citus enforces a unique key only when it includes the
/// distribution column): every primary key and unique index of the
/// PostgreSQL store includes `tenant_id`, but on the tables kept whole on
/// every node (`api_tokens`) and the migrations' own. A migration that adds
/// a key without it fails here.
#[tokio::test]
async fn every_unique_key_of_a_distributed_table_includes_the_tenant() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let store = Store::connect(&StoreConfig::new(&schema.url), MappingCache::disabled())
        .await
        .expect("store");
    let keys: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, \
                array(SELECT a.attname::text FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY AS k(n, o) \
                      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o) \
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = $1 AND x.indisunique ORDER BY 1, 2",
    )
    .bind(&schema.name)
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    let tables: std::collections::BTreeSet<&str> = keys.iter().map(|(t, _, _)| t.as_str()).collect();
    for table in [
        "id_mappings",
        "runs",
        "steps",
        "run_leases",
        "conflicts",
        "reservations",
        "mapping_scopes",
    ] {
        assert!(tables.contains(table), "{table} has a unique key: {keys:?}");
    }
    let without: Vec<String> = keys
        .iter()
        .filter(|(table, _, _)| !matches!(table.as_str(), "api_tokens" | "_sqlx_migrations"))
        .filter(|(_, _, columns)| !columns.iter().any(|c| c == "tenant_id"))
        .map(|(table, index, columns)| format!("{table}.{index} ({})", columns.join(", ")))
        .collect();
    assert!(
        without.is_empty(),
        "unique keys without tenant_id, which a table distributed by tenant cannot enforce: {without:?}"
    );
    drop(store);
    schema.drop().await;
}

/// The entity types that hold a mapping, as a run's start checks for an
/// entity renamed in the definition: each once, only the tenant's and the
/// integration's.
async fn the_entity_types_holding_mappings_are_found_per_tenant_and_integration(store: Arc<Store>) {
    let (tenant, integration) = (TenantId::from("tenant-a"), IntegrationId::from("crm-to-erp"));
    assert!(
        store
            .mapped_entity_types(&tenant, &integration)
            .await
            .unwrap()
            .is_empty()
    );
    for entity in ["order", "account", "contact"] {
        insert(
            &store,
            (0..3)
                .map(|i| pending(&scope(entity), &format!("{entity}-{i}")))
                .collect(),
        )
        .await;
    }
    insert(
        &store,
        vec![
            pending(&EntityScope::new("tenant-b", "crm-to-erp", "invoice"), "i-1"),
            pending(&EntityScope::new("tenant-a", "other", "invoice"), "i-2"),
        ],
    )
    .await;
    assert_eq!(
        store.mapped_entity_types(&tenant, &integration).await.unwrap(),
        ["account", "contact", "order"]
    );
}
