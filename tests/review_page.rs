//! The review page in a real browser: headless chromium, driven through
//! chromedriver, loads a tenant's pending conflicts with its token, shows
//! the conflicting field marked, and the reviewer edits the value and
//! resolves; the database then holds the reviewer's decision, both systems
//! the edited value, and the worker has finished the run.
//!
//! On failure a screenshot and the page source are saved under
//! `target/test-artifacts/`.

use syncd_test_support as support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::systems::{ReviewScenario, suspended_on_review};
use support::webdriver::Browser;
use support::{PgSchema, TempDir};
use syncd_core::plan::DependencyGraph;
use syncd_core::workflow::Workflow;
use syncd_engine::run::executor::Options;
use syncd_engine::worker::{Definition, Worker};
use syncd_store::cache::MappingCache;
use syncd_store::{Principal, Store};

/// The API and the review page of `store`, and a worker serving the
/// integration `toml` that resumes runs once their conflicts are decided.
struct Served {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<Result<(), syncd_engine::run::executor::RunError>>,
}

impl Served {
    async fn start(store: &Arc<Store>, toml: &str) -> Served {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let worker = Worker {
            store: store.clone(),
            definitions: vec![Definition {
                workflow: Workflow::parse("test.toml", toml).unwrap(),
                graph: DependencyGraph::builtin_default(),
            }],
            options: Options {
                shutdown: Some(shutdown.clone()),
                ..Options::default()
            },
            poll: Duration::from_millis(250),
            clock: std::sync::Arc::new(syncd_core::clock::SystemClock),
        };
        let serving = tokio::spawn(async move { worker.serve(shutdown).await });
        let addr = support::http::serve(store.clone()).await;
        Served { addr, stop, serving }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.serving.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_reviewer_edits_and_resolves_a_conflict_in_the_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("review-page");
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    let ReviewScenario {
        source,
        target,
        toml,
        run,
    } = suspended_on_review(store.clone(), &dir).await;
    let served = Served::start(&store, &toml).await;
    let addr = served.addr;
    let token = store.create_token(&Principal::Tenant("t1".into())).await.unwrap();

    let review = async {
        browser.goto(&format!("http://{addr}/review")).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#reviewer").await.type_text("reviewer-7").await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "1 pending").await;

        // The pending conflict, with its one conflicting field marked.
        let conflicts = browser.find_all("section.conflict").await;
        assert_eq!(conflicts.len(), 1);
        let conflict = &conflicts[0];
        let target_id = target.dump("customers").await[0]["id"].clone();
        let meta = conflict.find(".meta").await.text().await;
        assert_eq!(
            meta,
            format!(
                "account · source A-1 · target {} · conflicting: name",
                target_id.as_str().unwrap()
            ),
            "the conflict's heading"
        );
        let mut rows = Vec::new();
        for row in conflict.find_all("tbody tr").await {
            let mut cells = Vec::new();
            for cell in row.find_all("td").await {
                cells.push(cell.text().await);
            }
            rows.push((row.has_class("conflicting").await, cells));
        }
        let marked: Vec<_> = rows.iter().filter(|(marked, _)| *marked).collect();
        assert_eq!(marked.len(), 1, "only `name` is marked: {rows:?}");
        assert_eq!(
            marked[0].1[..4],
            ["name", "Acme", "Acme S", "Acme T"],
            "field, base, source, target"
        );

        // The reviewer edits the value and resolves with it.
        let input = conflict.find("input[name=name]").await;
        assert_eq!(
            input.property("value").await,
            "Acme S",
            "the source's value to start from"
        );
        // Digits typed into a text field stay text (the field is a name).
        input.clear().await;
        input.type_text("2027").await;
        conflict.find("button[data-take=values]").await.click().await;
        conflict.find(".result").await.wait_for_text("resolved ✓").await;

        // The database holds the reviewer's decision ...
        type Decision = (String, Option<String>, Option<Value>, bool);
        let decisions: Vec<Decision> = sqlx::query_as(
            "SELECT status, resolved_by, resolution, resolved_at IS NOT NULL \
             FROM conflicts WHERE run_id = $1",
        )
        .bind(run.id)
        .fetch_all(&pg.pool)
        .await
        .unwrap();
        let reviewed = (
            "resolved".to_owned(),
            Some("reviewer-7".to_owned()),
            Some(json!({"name": "2027"})),
            true,
        );
        assert_eq!(decisions, [reviewed], "status, by, values, resolved at");
        // ... the worker resumes the run and finishes it ...
        let started = Instant::now();
        loop {
            let state: String = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
                .bind(run.id)
                .fetch_one(&pg.pool)
                .await
                .unwrap();
            if state == "succeeded" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "run {} still {state} 10 s after the review",
                run.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ... and both systems hold the edited value.
        assert_eq!(source.dump("accounts").await[0]["name"], "2027");
        assert_eq!(target.dump("customers").await[0]["customer_name"], "2027");

        // Reloaded, the page has nothing left to review.
        browser.goto(&format!("http://{addr}/review")).await;
        browser.wait_for_text("#status", "0 pending").await;
    };
    browser.saving_artifacts_on_panic("review_page", review).await;

    browser.quit().await;
    served.stop().await;
    pg.drop().await;
}

/// Money in a `numeric` column, in conflict: the page shows every digit of
/// base, source and target (a double would show `12345678901234567000`),
/// and the value the reviewer types reaches both systems exactly.
#[tokio::test]
async fn the_review_page_shows_and_writes_numbers_exactly() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let ddl = "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric, updated_at timestamptz NOT NULL)";
    let (Some(source), Some(target)) = (PgSchema::create().await, PgSchema::create().await) else {
        return;
    };
    for db in [&source, &target] {
        sqlx::raw_sql(ddl).execute(&db.pool).await.unwrap();
    }
    sqlx::raw_sql("INSERT INTO ledger VALUES ('L-1', 12345678901234567890.123456789, now())")
        .execute(&source.pool)
        .await
        .unwrap();
    let toml = format!(
        r#"name = "exact"
direction = "bidirectional"
strategy = "manual"
source = "src"
target = "dst"
[systems.src]
connector = "sql"
url = "{}"
[systems.dst]
connector = "sql"
url = "{}"
[[entities]]
name = "product"
table = "ledger"
[tenants.t1]
"#,
        source.url, target.url
    );
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    support::systems::sync_once(store.clone(), &toml, 100)
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE ledger SET amount = 12345678901234567890.123456781, updated_at = now()")
        .execute(&source.pool)
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE ledger SET amount = 12345678901234567890.123456782, updated_at = now()")
        .execute(&target.pool)
        .await
        .unwrap();
    let run = support::systems::sync_once(store.clone(), &toml, 100)
        .await
        .unwrap();
    assert_eq!(run.state, syncd_engine::run::RunState::Suspended);

    let served = Served::start(&store, &toml).await;
    let addr = served.addr;
    let token = store.create_token(&Principal::Tenant("t1".into())).await.unwrap();

    let review = async {
        browser.goto(&format!("http://{addr}/review")).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#reviewer").await.type_text("reviewer-8").await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "1 pending").await;
        let conflict = &browser.find_all("section.conflict").await[0];
        let row = conflict.find("tbody tr.conflicting").await;
        let mut cells = Vec::new();
        for cell in row.find_all("td").await {
            cells.push(cell.text().await);
        }
        assert_eq!(
            cells[..4],
            [
                "amount",
                "12345678901234567890.123456789",
                "12345678901234567890.123456781",
                "12345678901234567890.123456782"
            ],
            "field, base, source, target"
        );
        let input = conflict.find("input[name=amount]").await;
        assert_eq!(input.property("value").await, "12345678901234567890.123456781");
        input.clear().await;
        input.type_text("98765432109876543210.987654321").await;
        conflict.find("button[data-take=values]").await.click().await;
        conflict.find(".result").await.wait_for_text("resolved ✓").await;

        let started = Instant::now();
        loop {
            let state: String = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
                .bind(run.id)
                .fetch_one(&pg.pool)
                .await
                .unwrap();
            if state == "succeeded" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "run still {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for db in [&source, &target] {
            let amount: String = sqlx::query_scalar("SELECT amount::text FROM ledger")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(amount, "98765432109876543210.987654321");
        }
    };
    browser
        .saving_artifacts_on_panic("review_page_exact", review)
        .await;

    browser.quit().await;
    served.stop().await;
    for schema in [pg, source, target] {
        schema.drop().await;
    }
}

/// A revoked token is refused at once, and the page says so.
#[tokio::test]
async fn the_review_page_shows_that_a_revoked_token_is_refused() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    let (token, info) = store
        .create_token_until(&Principal::Tenant("t1".into()), None)
        .await
        .unwrap();
    let addr = support::http::serve(store.clone()).await;
    let check = async {
        browser.goto(&format!("http://{addr}/review")).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "0 pending").await;
        store.revoke_token(&info.prefix).await.unwrap().unwrap();
        browser.find("#load").await.click().await;
        let status = browser.find("#status").await;
        let started = Instant::now();
        loop {
            let text = status.text().await;
            if text.contains("was revoked at") {
                assert!(text.contains(&info.prefix), "{text}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the page shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    browser
        .saving_artifacts_on_panic("review_page_revoked", check)
        .await;
    browser.quit().await;
    pg.drop().await;
}
