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
use support::systems::{ReviewScenario, suspended_on_review, suspended_on_reviews};
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
        let definition = Definition {
            workflow: Workflow::parse("test.toml", toml).unwrap(),
            graph: DependencyGraph::builtin_default(),
        };
        let addr = support::http::serve_with(store.clone(), vec![definition]).await;
        Served { addr, stop, serving }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.serving.await.unwrap().unwrap();
    }
}

/// A browser test's state store: the PostgreSQL schema `pg`, no cache.
async fn store_in(pg: &PgSchema) -> Arc<Store> {
    Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    )
}

/// A decision on a field the source changed again after the conflict was
/// parked is not applied: the run parks the conflict again with the values
/// both hold now. The page said "resolved ✓" and listed the decision as
/// made; it says now that it was not applied, and why, in both places.
#[tokio::test]
async fn a_decision_a_run_does_not_apply_is_said_not_applied() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("review-not-applied");
    let store = store_in(&pg).await;
    let ReviewScenario { source, toml, .. } = suspended_on_review(store.clone(), &dir).await;
    let served = Served::start(&store, &toml).await;
    let token = store.create_token(&Principal::Tenant("t1".into())).await.unwrap();
    let review = async {
        browser.goto(&format!("http://{}/review", served.addr)).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#reviewer").await.type_text("reviewer-7").await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "1 pending").await;
        // The source changes the decided field after the page was loaded.
        let now = syncd_connect::format_time(chrono::Utc::now());
        source
            .exec(&format!(
                "UPDATE accounts SET name = 'Acme S2', updated_at = '{now}'"
            ))
            .await;
        let conflict = browser.find("section.conflict").await;
        conflict.find("button[data-take=source]").await.click().await;
        let result = conflict.find(".result").await;
        result
            .wait_for_text_containing(
                "not applied: a decided field changed on a side since the conflict was parked",
            )
            .await;
        assert!(result.has_class("error").await);
        let said = result.text().await;
        let again = store
            .list_conflicts(&syncd_store::ConflictFilter {
                tenant: Some("t1".into()),
                status: Some(syncd_core::conflict::ConflictStatus::Pending),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "parked again");
        assert!(
            said.ends_with(&format!("parked again as conflict {}", again[0].id)),
            "{said}"
        );
        browser
            .find("#decided-list li")
            .await
            .wait_for_text_containing("· not applied: a decided field changed")
            .await;
        assert_eq!(
            source.dump("accounts").await[0]["name"],
            "Acme S2",
            "the later edit is kept"
        );
    };
    browser
        .saving_artifacts_on_panic("review_page_not_applied", Box::pin(review))
        .await;
    browser.quit().await;
    served.stop().await;
    pg.drop().await;
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
    let store = store_in(&pg).await;
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
        let heading = conflict.find("h2").await.text().await;
        assert_eq!(
            heading,
            format!("account A-1 ↔ {}", target_id.as_str().unwrap()),
            "the conflict's heading"
        );
        assert_eq!(conflict.find(".meta").await.text().await, "conflicting: name");
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
        let input = conflict.find("textarea[name=name]").await;
        assert_eq!(
            input.property("value").await,
            "Acme S",
            "the source's value to start from"
        );
        // Digits typed into a text field stay text (the field is a name).
        input.clear().await;
        input.type_text("2027").await;
        conflict.find("button[data-take=values]").await.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;

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
    let store = store_in(&pg).await;
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
        let input = conflict.find("textarea[name=amount]").await;
        assert_eq!(input.property("value").await, "12345678901234567890.123456781");
        input.clear().await;
        input.type_text("98765432109876543210.987654321").await;
        conflict.find("button[data-take=values]").await.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;

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
    let store = store_in(&pg).await;
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

/// A suspended run of `tenant` t1 on two SQLite systems in `dir`, with one
/// conflict (`manual`) per account of `names`: each (source's new name,
/// target's new name) of account `A-i`, synced first as "Acme i".
async fn suspended_with(store: &Arc<Store>, dir: &TempDir, names: &[(&str, &str)]) -> ReviewScenario {
    let bases: Vec<String> = (1..=names.len()).map(|i| format!("Acme {i}")).collect();
    let accounts: Vec<(&str, &str, &str)> = bases
        .iter()
        .zip(names)
        .map(|(base, (s, t))| (base.as_str(), *s, *t))
        .collect();
    suspended_on_reviews(store.clone(), dir, &accounts).await
}

/// Three conflicts of one suspended run decided on the page by a reviewer
/// whose token names them: one takes the source, one the target, one an
/// edited value. The page then follows the run until a worker has resumed
/// it and it `succeeded`, and lists the three decisions with who made
/// them. Readable at 1280×800 and in a narrow window (nothing wider than
/// the window); every control a labelled button or input.
#[tokio::test]
async fn a_reviewer_decides_three_conflicts_and_sees_the_run_succeed() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("review-three");
    let store = store_in(&pg).await;
    let ReviewScenario {
        source,
        target,
        toml,
        run,
    } = suspended_with(&store, &dir, &[("S 1", "T 1"), ("S 2", "T 2"), ("S 3", "T 3")]).await;
    let served = Served::start(&store, &toml).await;
    let addr = served.addr;
    let (token, _) = store
        .create_token_for(&Principal::Tenant("t1".into()), None, Some("reviewer-9"))
        .await
        .unwrap();

    let review = async {
        browser.resize(1280, 800).await;
        browser.goto(&format!("http://{addr}/review")).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "3 pending").await;
        browser
            .find("#whoami")
            .await
            .wait_for_text("deciding as reviewer-9 · tenant t1")
            .await;
        assert_eq!(
            browser.find("#reviewer-field").await.property("hidden").await,
            json!(true),
            "no user id to type: the token names its holder"
        );
        let labelled = browser
            .script(
                "return [...document.querySelectorAll('button')].every(b => b.textContent.trim() !== '') && \
                 [...document.querySelectorAll('input, textarea')].every(i => i.getAttribute('aria-label') || i.closest('label'))",
            )
            .await;
        assert_eq!(labelled, json!(true), "every control says what it does");
        let wide = "return document.documentElement.scrollWidth <= window.innerWidth";
        assert_eq!(
            browser.script(wide).await,
            json!(true),
            "nothing wider than 1280 px"
        );
        browser.resize(420, 800).await;
        assert_eq!(
            browser.script(wide).await,
            json!(true),
            "nothing wider than a narrow window"
        );
        browser.resize(1280, 800).await;

        let sections = browser.find_all("section.conflict").await;
        assert_eq!(sections.len(), 3);
        for section in &sections {
            let run_cell = section.find("dd[data-context=run]").await.text().await;
            assert_eq!(run_cell, run.id.to_string());
        }
        // A-1: the source's value; A-2: the target's; A-3: an edit.
        let by_heading = |i: usize| format!("account A-{i} ↔");
        for section in &sections {
            let heading = section.find("h2").await.text().await;
            if heading.starts_with(&by_heading(1)) {
                section.find("button[data-take=source]").await.click().await;
            } else if heading.starts_with(&by_heading(2)) {
                section.find("button[data-take=target]").await.click().await;
            } else {
                let input = section.find("textarea[name=name]").await;
                input.clear().await;
                input.type_text("Reviewed 3").await;
                section.find("button[data-take=values]").await.click().await;
            }
            // Recorded, and said to wait for the run (which resumes only
            // once its last conflict is decided).
            section
                .find(".result")
                .await
                .wait_for_text("decided: waiting for a run to apply it…")
                .await;
        }
        // The page follows the run: resumed by the worker, then succeeded.
        let status = browser.find("#run-status").await;
        let started = Instant::now();
        loop {
            let text = status.text().await;
            if text.ends_with(": succeeded") {
                assert_eq!(text, format!("Run {}: succeeded", run.id));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the page shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(status.has_class("state-succeeded").await);
        // Each decision is said applied once the run wrote it.
        Box::pin(async {
            for section in &sections {
                section.find(".result").await.wait_for_text("applied ✓").await;
            }
        })
        .await;
        let link = browser.find("#run-status a").await;
        assert_eq!(
            link.property("href").await,
            json!(format!("http://{addr}/api/runs/{}", run.id))
        );
        // The link shows the run here, with the token (a plain link would
        // have none).
        link.click().await;
        let detail = browser.find("#run-status .run-detail").await;
        detail
            .wait_for_text_containing("succeeded · trigger test · pending conflicts 0")
            .await;
        assert!(
            detail.text().await.contains("account forward: done, read 3,"),
            "{}",
            detail.text().await
        );
        // Past decisions, with who and when.
        let decided = browser.find_all("#decided-list li").await;
        assert_eq!(decided.len(), 3);
        for li in &decided {
            let text = li.text().await;
            assert!(text.contains("— by reviewer-9 at 20"), "{text}");
        }
        let texts = {
            let mut t = Vec::new();
            for li in &decided {
                t.push(li.text().await);
            }
            t.join("\n")
        };
        for expected in [
            r#"A-1: name = S 1"#,
            r#"A-2: name = T 2"#,
            r#"A-3: name = Reviewed 3"#,
        ] {
            assert!(texts.contains(expected), "{expected} in {texts}");
        }
    };
    // Boxed: the test's future is too large for a test thread's stack.
    browser
        .saving_artifacts_on_panic("review_page_three", Box::pin(review))
        .await;

    // The systems hold the decisions; the store, who made them.
    let names: Vec<Value> = source
        .dump("accounts")
        .await
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [json!("S 1"), json!("T 2"), json!("Reviewed 3")]);
    let mut held: Vec<Value> = target
        .dump("customers")
        .await
        .iter()
        .map(|r| r["customer_name"].clone())
        .collect();
    held.sort_by_key(|v| v.to_string());
    assert_eq!(held, [json!("Reviewed 3"), json!("S 1"), json!("T 2")]);
    let by: Vec<String> = sqlx::query_scalar("SELECT resolved_by FROM conflicts WHERE run_id = $1")
        .bind(run.id)
        .fetch_all(&pg.pool)
        .await
        .unwrap();
    assert_eq!(by, ["reviewer-9"; 3]);
    browser.quit().await;
    served.stop().await;
    pg.drop().await;
}

/// A conflict whose values are HTML shows them as text, with its context:
/// tenant, integration, entity, the two systems by name with each side's
/// record and change time, the strategy that parked it, its run and when.
#[tokio::test]
async fn the_review_page_shows_a_conflicts_context_and_its_html_as_text() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("review-context");
    let store = store_in(&pg).await;
    let hostile_source = r#"<img src=x onerror="window.pwned=1">"#;
    let hostile_target = "<b>bold</b> & <script>window.pwned=2</script>";
    let ReviewScenario {
        source: _source,
        target,
        toml,
        run,
    } = suspended_with(&store, &dir, &[(hostile_source, hostile_target)]).await;
    let served = Served::start(&store, &toml).await;
    let addr = served.addr;
    let token = store.create_token(&Principal::Tenant("t1".into())).await.unwrap();
    let target_id = target.dump("customers").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let check = async {
        browser.goto(&format!("http://{addr}/review")).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "1 pending").await;
        let section = browser.find("section.conflict").await;
        let context = |key: &'static str| {
            let section = &section;
            async move {
                section
                    .find(&format!("dd[data-context={key}]"))
                    .await
                    .text()
                    .await
            }
        };
        assert_eq!(context("tenant").await, "t1");
        assert_eq!(context("integration").await, "e2e");
        assert_eq!(context("entity").await, "account");
        assert_eq!(context("strategy").await, "manual");
        assert_eq!(context("run").await, run.id.to_string());
        assert!(
            context("parked").await.ends_with(" UTC"),
            "{}",
            context("parked").await
        );
        let source_side = context("source").await;
        assert!(
            source_side.starts_with("A-1, changed 20") && source_side.ends_with(" UTC"),
            "{source_side}"
        );
        let target_side = context("target").await;
        assert!(
            target_side.starts_with(&format!("{target_id}, changed 20")),
            "{target_side}"
        );
        // The systems by name, in the context and the table's header.
        let labels: Vec<String> = {
            let mut l = Vec::new();
            for dt in section.find_all("dt").await {
                l.push(dt.text().await);
            }
            l
        };
        assert!(
            labels.contains(&"crm (source)".to_owned()) && labels.contains(&"erp (target)".to_owned()),
            "{labels:?}"
        );
        let mut header = Vec::new();
        for th in section.find_all("th").await {
            header.push(th.text().await);
        }
        assert_eq!(
            header,
            ["field", "base", "crm (source)", "erp (target)", "decision"]
        );
        assert_eq!(
            section.find("button[data-take=source]").await.text().await,
            "Take crm (source)"
        );
        // The values, as text: no element made of them, no script run.
        let row = section.find("tr.conflicting").await;
        let mut cells = Vec::new();
        for td in row.find_all("td").await {
            cells.push(td.text().await);
        }
        assert_eq!(cells[..4], ["name", "Acme 1", hostile_source, hostile_target]);
        assert!(section.find_all("img").await.is_empty());
        assert!(section.find_all("b").await.is_empty());
        assert!(section.find_all("script").await.is_empty());
        assert_eq!(
            browser.script("return window.pwned === undefined").await,
            json!(true)
        );
    };
    browser
        .saving_artifacts_on_panic("review_page_context", check)
        .await;
    browser.quit().await;
    served.stop().await;
    pg.drop().await;
}

/// One column of the table `notes` that [`parked_notes`] makes: its name,
/// SQL type, and its values (as the type's text; `None` is NULL) at the
/// first sync, then in the source and in the target.
struct Column {
    name: &'static str,
    sql: &'static str,
    base: Option<String>,
    source: Option<String>,
    target: Option<String>,
}

/// A `text` column (see [`Column`]).
fn text(name: &'static str, base: &str, source: Option<&str>, target: Option<&str>) -> Column {
    typed(name, "text", base, source, target)
}

fn typed(
    name: &'static str,
    sql: &'static str,
    base: &str,
    source: Option<&str>,
    target: Option<&str>,
) -> Column {
    Column {
        name,
        sql,
        base: Some(base.to_owned()),
        source: source.map(str::to_owned),
        target: target.map(str::to_owned),
    }
}

/// A run suspended on one conflict (`manual`) of record `N-1` in table
/// `notes` of two PostgreSQL schemas, and the store that holds it.
struct Parked {
    pg: PgSchema,
    source: PgSchema,
    target: PgSchema,
    store: Arc<Store>,
    toml: String,
    run: syncd_store::RunRow,
}

impl Parked {
    /// What table `notes` holds in `db` in `columns`, each as its text.
    async fn held(db: &PgSchema, columns: &[&str]) -> Vec<Option<String>> {
        let select = columns
            .iter()
            .map(|c| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!("SELECT {select} FROM notes"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (0..columns.len())
            .map(|i| sqlx::Row::get::<Option<String>, _>(&row, i))
            .collect()
    }

    /// Waits until a worker has resumed the run and it succeeded.
    async fn until_succeeded(&self) {
        let started = Instant::now();
        loop {
            let state: String = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
                .bind(self.run.id)
                .fetch_one(&self.pg.pool)
                .await
                .unwrap();
            if state == "succeeded" {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "run still {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn drop(self) {
        for schema in [self.pg, self.source, self.target] {
            schema.drop().await;
        }
    }
}

/// Syncs a record of `columns` from the source to the target, changes it
/// on both sides, and syncs again: the run is suspended on its conflict.
/// `None` (the test skips) without PostgreSQL.
async fn parked_notes(columns: &[Column]) -> Option<Parked> {
    let pg = PgSchema::create().await?;
    let (source, target) = (PgSchema::create().await?, PgSchema::create().await?);
    let defined: Vec<String> = columns.iter().map(|c| format!("{} {}", c.name, c.sql)).collect();
    let ddl = format!(
        "CREATE TABLE notes (id text PRIMARY KEY, {}, updated_at timestamptz NOT NULL)",
        defined.join(", ")
    );
    for db in [&source, &target] {
        sqlx::raw_sql(&ddl).execute(&db.pool).await.unwrap();
    }
    // Each value bound as text and cast to its column's type.
    let cast = |i: usize, c: &Column| format!("${}::text::{}", i + 1, c.sql);
    let insert = format!(
        "INSERT INTO notes VALUES ('N-1', {}, now())",
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| cast(i, c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let update = format!(
        "UPDATE notes SET {}, updated_at = now()",
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.name, cast(i, c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let write = |sql: &str, db: &PgSchema, values: Vec<Option<String>>| {
        let (sql, pool) = (sql.to_owned(), db.pool.clone());
        async move {
            let mut query = sqlx::query(&sql);
            for v in values {
                query = query.bind(v);
            }
            query.execute(&pool).await.unwrap();
        }
    };
    let values = |f: fn(&Column) -> &Option<String>| columns.iter().map(|c| f(c).clone()).collect();
    write(&insert, &source, values(|c| &c.base)).await;
    let toml = format!(
        r#"name = "notes"
direction = "bidirectional"
strategy = "manual"
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
table = "notes"
[tenants.t1]
"#,
        source.url, target.url
    );
    let store = store_in(&pg).await;
    support::systems::sync_once(store.clone(), &toml, 100)
        .await
        .unwrap();
    write(&update, &source, values(|c| &c.source)).await;
    write(&update, &target, values(|c| &c.target)).await;
    let run = support::systems::sync_once(store.clone(), &toml, 100)
        .await
        .unwrap();
    assert_eq!(run.state, syncd_engine::run::RunState::Suspended);
    Some(Parked {
        pg,
        source,
        target,
        store,
        toml,
        run,
    })
}

/// Opens the review page with `token` as user `reviewer-1` and waits until
/// it lists `pending` conflicts ("1 pending").
async fn open_review(browser: &Browser, addr: std::net::SocketAddr, token: &str, pending: &str) {
    browser.goto(&format!("http://{addr}/review")).await;
    browser.find("#token").await.type_text(token).await;
    browser.find("#reviewer").await.type_text("reviewer-1").await;
    browser.find("#load").await.click().await;
    browser.wait_for_text("#status", pending).await;
}

/// The row of `field` in the (first) conflict's table.
async fn row_of<'b>(browser: &'b Browser, field: &str) -> support::webdriver::Element<'b> {
    for row in browser.find_all("section.conflict tbody tr").await {
        if row.find("td").await.text().await == field {
            return row;
        }
    }
    panic!("no row for field `{field}`");
}

/// A value the reviewer leaves as it is goes back to both systems exactly
/// as it was, line breaks (CRLF too), tabs and blanks at either end
/// included, when only another field is edited; what the reviewer types
/// keeps its line breaks.
#[tokio::test]
async fn an_untouched_value_goes_back_exactly_when_another_field_is_edited() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let title = "line 1\r\n\tline 2  \n  line 3 ";
    let Some(parked) = parked_notes(&[
        text("title", "first", Some(title), Some("T title")),
        text("body", "first body", Some("S body"), Some("T body")),
    ])
    .await
    else {
        return;
    };
    let served = Served::start(&parked.store, &parked.toml).await;
    let token = parked
        .store
        .create_token(&Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let review = async {
        open_review(&browser, served.addr, &token, "1 pending").await;
        let row = row_of(&browser, "body").await;
        let body = row.find("[name=body]").await;
        body.clear().await;
        body.type_text("Reviewed\nbody").await;
        let conflict = browser.find("section.conflict").await;
        conflict.find("button[data-take=values]").await.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;
        parked.until_succeeded().await;
        for db in [&parked.source, &parked.target] {
            assert_eq!(
                Parked::held(db, &["title", "body"]).await,
                [Some(title.to_owned()), Some("Reviewed\nbody".to_owned())]
            );
        }
    };
    browser
        .saving_artifacts_on_panic("review_page_untouched", review)
        .await;
    browser.quit().await;
    served.stop().await;
    parked.drop().await;
}

/// Where the source holds NULL, what the reviewer types is read as the
/// kind the target holds: `1.50` and `null` typed for text fields are
/// that text, not a number or NULL; a number typed for a number field is
/// that number, every digit.
#[tokio::test]
async fn what_a_reviewer_types_is_of_the_kind_the_other_side_holds() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(parked) = parked_notes(&[
        text("title", "first", None, Some("erp-title")),
        text("label", "first", None, Some("null")),
        typed("price", "numeric", "1", None, Some("3.25")),
    ])
    .await
    else {
        return;
    };
    let served = Served::start(&parked.store, &parked.toml).await;
    let token = parked
        .store
        .create_token(&Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let review = async {
        open_review(&browser, served.addr, &token, "1 pending").await;
        let conflict = browser.find("section.conflict").await;
        let resolve = conflict.find("button[data-take=values]").await;
        for (field, typed) in [("title", "1.50"), ("label", "null"), ("price", "2,75")] {
            let row = row_of(&browser, field).await;
            let decision = row.find(&format!("[name={field}]")).await;
            decision.clear().await;
            decision.type_text(typed).await;
        }
        // Not a number where one is held: said, and nothing sent.
        resolve.click().await;
        conflict
            .find(".result")
            .await
            .wait_for_text("price: “2,75” is not a number; type one (12.50), or choose NULL")
            .await;
        let row = row_of(&browser, "price").await;
        let price = row.find("[name=price]").await;
        price.clear().await;
        price.type_text("2.75").await;
        resolve.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;
        parked.until_succeeded().await;
        for db in [&parked.source, &parked.target] {
            assert_eq!(
                Parked::held(db, &["title", "label", "price"]).await,
                [Some("1.50".into()), Some("null".into()), Some("2.75".into())]
            );
        }
    };
    browser
        .saving_artifacts_on_panic("review_page_kinds", review)
        .await;
    browser.quit().await;
    served.stop().await;
    parked.drop().await;
}

/// NULL and the empty text are choices of their own: a reviewer picks
/// either for a field that holds text, and a field the source holds as
/// NULL or as empty text starts with that choice and keeps it.
#[tokio::test]
async fn a_reviewer_can_choose_null_or_the_empty_text() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(parked) = parked_notes(&[
        text("a", "a0", Some("a S"), Some("a T")),
        text("b", "b0", Some("b S"), Some("b T")),
        text("c", "c0", None, Some("c T")),
        text("d", "d0", Some(""), Some("d T")),
    ])
    .await
    else {
        return;
    };
    let served = Served::start(&parked.store, &parked.toml).await;
    let token = parked
        .store
        .create_token(&Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let review = async {
        open_review(&browser, served.addr, &token, "1 pending").await;
        let choice = |field: &'static str, choice: &'static str| {
            let browser = &browser;
            async move {
                let row = row_of(browser, field).await;
                let found = row
                    .find(&format!("input[type=radio][value={choice}]"))
                    .await
                    .property("checked")
                    .await;
                (row, found)
            }
        };
        assert_eq!(
            choice("c", "null").await.1,
            json!(true),
            "c starts as the source's NULL"
        );
        assert_eq!(
            choice("d", "empty").await.1,
            json!(true),
            "d starts as the source's empty text"
        );
        assert_eq!(
            choice("a", "value").await.1,
            json!(true),
            "a starts as the source's text"
        );
        let (a, _) = choice("a", "null").await;
        a.find("input[type=radio][value=null]").await.click().await;
        let (b, _) = choice("b", "empty").await;
        b.find("input[type=radio][value=empty]").await.click().await;
        let conflict = browser.find("section.conflict").await;
        conflict.find("button[data-take=values]").await.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;
        parked.until_succeeded().await;
        for db in [&parked.source, &parked.target] {
            assert_eq!(
                Parked::held(db, &["a", "b", "c", "d"]).await,
                [None, Some(String::new()), None, Some(String::new())]
            );
        }
    };
    browser
        .saving_artifacts_on_panic("review_page_null_empty", review)
        .await;
    browser.quit().await;
    served.stop().await;
    parked.drop().await;
}

/// What the page shows of each conflicting field's base, source and target
/// cells: the rendered text, the markers in it (NULL, empty text, a JSON
/// document's tag, a shortened value's note) and the blanks it marks, and
/// whether each marker and mark is styled apart from the value's text.
const CELLS: &str = r#"
const seen = (td) => {
  const styled = (e) => getComputedStyle(e).backgroundColor !== "rgba(0, 0, 0, 0)";
  const markers = [...td.querySelectorAll(".marker")];
  const blanks = [...td.querySelectorAll(".blank")];
  return {
    text: td.innerText,
    markers: markers.map((m) => m.textContent),
    blanks: blanks.map((b) => b.textContent),
    styled: [...markers, ...blanks].every(styled),
  };
};
const rows = [...document.querySelectorAll("section.conflict tbody tr")];
return Object.fromEntries(rows.map((r) => [r.cells[0].textContent, [...r.cells].slice(1, 4).map(seen)]));
"#;

/// Values that would look alike are shown apart: NULL (a marker no text
/// makes) from the text `—` and the text `NULL`; empty text; blanks at
/// either end, double spaces, tabs and line breaks; a JSON document from
/// text that reads like one. A value of 50,000 characters is shown whole
/// in a cell that scrolls, the page no wider than the window, and the
/// Decided list shortens it, saying so.
#[tokio::test]
async fn values_that_look_alike_are_shown_apart() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let spaced = " two  spaces\tand\na break ";
    let long = format!("{}words", "word ".repeat(9_999));
    let Some(parked) = parked_notes(&[
        text("n", "n0", None, Some("—")),
        text("e", "e0", Some(""), Some("NULL")),
        text("s", "s0", Some(spaced), Some("two spaces")),
        typed(
            "doc",
            "jsonb",
            r#"{"a": 0}"#,
            Some(r#"{"a": 1}"#),
            Some(r#"{"a": 2}"#),
        ),
        text("j", "j0", Some(r#"{"a": 1}"#), Some("j T")),
        text("long", "short", Some(&long), Some("short T")),
    ])
    .await
    else {
        return;
    };
    let served = Served::start(&parked.store, &parked.toml).await;
    let token = parked
        .store
        .create_token(&Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let review = async {
        browser.resize(1280, 800).await;
        open_review(&browser, served.addr, &token, "1 pending").await;
        let cells = browser.script(CELLS).await;
        let plain = |text: &str| json!({"text": text, "markers": [], "blanks": [], "styled": true});
        let marker = |m: &str| json!({"text": m, "markers": [m], "blanks": [], "styled": true});
        assert_eq!(cells["n"], json!([plain("n0"), marker("NULL"), plain("—")]));
        assert_eq!(
            cells["e"],
            json!([plain("e0"), marker("empty text"), plain("NULL")])
        );
        assert_eq!(
            cells["s"][1],
            json!({"text": spaced, "markers": [], "blanks": [" ", "  ", "\t", "\n", " "], "styled": true})
        );
        assert_eq!(cells["j"][1], plain(r#"{"a": 1}"#));
        let doc = &cells["doc"][1];
        assert_eq!(doc["markers"], json!(["JSON"]), "{doc}");
        assert!(doc["text"].as_str().unwrap().contains(r#""a": 1"#), "{doc}");

        // The long value: whole, in a cell that scrolls.
        let layout = browser
            .script(
                r#"const row = [...document.querySelectorAll("section.conflict tbody tr")]
                     .find((r) => r.cells[0].textContent === "long");
                   const td = row.cells[2];
                   const scrolls = [td, ...td.querySelectorAll("*")].some((e) =>
                     e.scrollHeight > e.clientHeight + 10 && getComputedStyle(e).overflowY === "auto");
                   return { chars: td.textContent.length, height: td.getBoundingClientRect().height, scrolls,
                            narrow: document.documentElement.scrollWidth <= window.innerWidth };"#,
            )
            .await;
        assert_eq!(layout["chars"], json!(50_000), "{layout}");
        assert!(layout["height"].as_f64().unwrap() < 400.0, "{layout}");
        assert_eq!(layout["scrolls"], json!(true), "{layout}");
        assert_eq!(layout["narrow"], json!(true), "{layout}");

        // Decided: the long value shortened, saying so; NULL and the empty
        // text with their markers.
        let conflict = browser.find("section.conflict").await;
        conflict.find("button[data-take=source]").await.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;
        let li = browser.find("#decided-list li").await;
        li.wait_for_text_containing("— by reviewer-1 at").await;
        let text = li.text().await;
        assert!(text.chars().count() < 1_000, "{text}");
        assert!(text.contains("long = word word word"), "{text}");
        assert!(
            text.contains("shortened") && text.contains("50,000 characters"),
            "{text}"
        );
        let markers = browser
            .script(r##"return [...document.querySelectorAll("#decided-list li .marker")].map((m) => m.textContent)"##)
            .await;
        let markers: Vec<String> = serde_json::from_value(markers).unwrap();
        for expected in ["NULL", "empty text", "JSON"] {
            assert!(markers.iter().any(|m| m == expected), "{expected} in {markers:?}");
        }
        assert!(markers.iter().any(|m| m.contains("shortened")), "{markers:?}");
    };
    browser
        .saving_artifacts_on_panic("review_page_look_alike", Box::pin(review))
        .await;
    browser.quit().await;
    served.stop().await;
    parked.drop().await;
}

/// A value with a right-to-left override (`gift \u{202E}cod.exe`) cannot
/// reverse the text after it: the Decided line still reads "by alice at
/// ..." left to right, as do the conflict's heading and table.
#[tokio::test]
async fn a_right_to_left_override_in_a_value_stays_inside_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("review-bidi");
    let store = store_in(&pg).await;
    let ReviewScenario { toml, .. } = suspended_with(&store, &dir, &[("gift \u{202E}cod.exe", "T 1")]).await;
    let served = Served::start(&store, &toml).await;
    let (token, _) = store
        .create_token_for(&Principal::Tenant("t1".into()), None, Some("alice"))
        .await
        .unwrap();
    let check = async {
        browser.goto(&format!("http://{}/review", served.addr)).await;
        browser.find("#token").await.type_text(&token).await;
        browser.find("#load").await.click().await;
        browser.wait_for_text("#status", "1 pending").await;
        let conflict = browser.find("section.conflict").await;
        conflict.find("button[data-take=source]").await.click().await;
        conflict.find(".result").await.wait_for_text("applied ✓").await;
        browser
            .find("#decided-list li")
            .await
            .wait_for_text_containing("by alice at")
            .await;
        // Where each character of " by alice at" is drawn, left to right.
        let drawn = browser
            .script(
                r##"const li = document.querySelector("#decided-list li");
                   const walk = document.createTreeWalker(li, NodeFilter.SHOW_TEXT);
                   const chars = [];
                   for (let node; (node = walk.nextNode());) {
                     for (let i = 0; i < node.data.length; i++) chars.push([node, i]);
                   }
                   const at = chars.map(([node, i]) => node.data[i]).join("").indexOf(" by alice at");
                   return chars.slice(at, at + " by alice at".length).map(([node, i]) => {
                     const range = document.createRange();
                     range.setStart(node, i);
                     range.setEnd(node, i + 1);
                     return range.getBoundingClientRect().left;
                   });"##,
            )
            .await;
        let xs: Vec<f64> = serde_json::from_value(drawn).unwrap();
        assert!(
            xs.windows(2).all(|w| w[0] < w[1]),
            "\" by alice at\" is drawn out of order, at x = {xs:?}"
        );
    };
    browser.saving_artifacts_on_panic("review_page_bidi", check).await;
    browser.quit().await;
    served.stop().await;
    pg.drop().await;
}
