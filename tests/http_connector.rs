//! The HTTP/JSON connector against a SaaS-like API (`support::saas`) over
//! loopback: a CRM in SQLite synced both ways with an API that pages,
//! rate-limits, fails, drops connections and validates, always through the
//! real binary (`syncd run`), as an operator runs it.

use syncd_test_support as support;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use support::TempDir;
use support::saas::{
    Faults, SaasConfig, SaasServer, TOKEN, TOKEN_VAR, crm_api as api, crm_definition as definition,
};
use support::systems::{Kind, SystemDb, crm_rows};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::{IdMapping, MappingStatus};
use syncd_core::record::Side;
use syncd_store::cache::MappingCache;
use syncd_store::{Store, StoreConfig};

const INTEGRATION: &str = support::saas::CRM_INTEGRATION;
const TENANT: &str = "t1";

/// A SQLite CRM, the API, a state store and a definition connecting them.
struct Setup {
    dir: TempDir,
    source: SystemDb,
    server: SaasServer,
    workflow: PathBuf,
    database_url: String,
    /// The token `syncd` is given (the server wants [`TOKEN`]).
    token: String,
    /// More environment for `syncd`.
    extra_env: Vec<(String, String)>,
    runs: usize,
}

impl Setup {
    /// `n` accounts' worth of CRM rows (`6n` records) and an API with
    /// `faults` and `rate_limit`.
    async fn new(label: &str, n: usize, config: SaasConfig, system: &str, entity: &str) -> Setup {
        let dir = TempDir::new(label);
        let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let (accounts, contacts, orders) = crm_rows(n);
        source.insert("accounts", &accounts).await;
        source.insert("contacts", &contacts).await;
        source.insert("orders", &orders).await;
        let server = SaasServer::start(config).await;
        let workflow = dir.0.join("crm-to-saas.toml");
        std::fs::write(
            &workflow,
            definition(&source.url(), &server.url(), system, entity),
        )
        .unwrap();
        let database_url = dir.sqlite_url("state.db");
        Setup {
            dir,
            source,
            server,
            workflow,
            database_url,
            token: TOKEN.into(),
            extra_env: Vec::new(),
            runs: 0,
        }
    }

    /// Starts `syncd run` (the README's way), its output going to files.
    fn spawn(&mut self) -> (std::process::Child, PathBuf, PathBuf) {
        self.runs += 1;
        let out = self.dir.0.join(format!("run-{}.out", self.runs));
        let err = self.dir.0.join(format!("run-{}.err", self.runs));
        let mut env = vec![(TOKEN_VAR, self.token.as_str())];
        env.extend(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = support::spawn_syncd_run(&self.workflow, TENANT, &self.database_url, &env, &out, &err);
        (child, out, err)
    }

    /// Runs `syncd run` to its end.
    async fn run(&mut self) -> Output {
        let (mut child, out, err) = self.spawn();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let output = Output {
            status,
            stdout: std::fs::read(out).unwrap(),
            stderr: std::fs::read(err).unwrap(),
        };
        support::assert_table_accounted(&String::from_utf8_lossy(&output.stdout));
        output
    }

    /// The state store, read after the processes that wrote it.
    async fn store(&self) -> Store {
        Store::connect(&StoreConfig::new(&self.database_url), MappingCache::disabled())
            .await
            .unwrap()
    }

    /// Every mapping of `entity`, by source id.
    async fn mappings(
        &self,
        store: &Store,
        entity: &str,
        source_ids: &[String],
    ) -> HashMap<String, IdMapping> {
        let scope = EntityScope::new(TENANT, INTEGRATION, entity);
        store.lookup(&scope, Side::Source, source_ids).await.unwrap()
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// The records of `collection` by id, with no two created for one key.
fn by_id_without_duplicates(server: &SaasServer, collection: &str) -> HashMap<String, Value> {
    let records = server.records(collection);
    let mut keys = HashSet::new();
    for r in &records {
        if let Some(k) = r.get("external_id").and_then(Value::as_str) {
            assert!(
                keys.insert(k.to_owned()),
                "{collection}: two records created with key {k}"
            );
        }
    }
    records.into_iter().map(|r| (id_of(&r), r)).collect()
}

/// Both sides hold the same records: every CRM row once in the API (fields
/// equal, references translated through the ID map), every API record once
/// in the CRM, and every mapping `mapped`.
async fn assert_converged(setup: &Setup) {
    let store = setup.store().await;
    let mut target_of: HashMap<String, HashMap<String, String>> = HashMap::new();
    for (entity, table, collection) in [
        ("account", "accounts", "customers"),
        ("contact", "contacts", "people"),
        ("order", "orders", "sales_orders"),
    ] {
        let rows = setup.source.dump(table).await;
        let api = by_id_without_duplicates(&setup.server, collection);
        assert_eq!(
            api.len(),
            rows.len(),
            "{collection}: {} API records for {} CRM rows",
            api.len(),
            rows.len()
        );
        let ids: Vec<String> = rows.iter().map(id_of).collect();
        let mappings = setup.mappings(&store, entity, &ids).await;
        let mut seen = HashSet::new();
        let mut ids_here = HashMap::new();
        for id in &ids {
            let m = mappings
                .get(id)
                .unwrap_or_else(|| panic!("{entity} {id} has no mapping"));
            assert_eq!(
                m.status,
                MappingStatus::Mapped,
                "{entity} {id}: {:?}",
                m.last_error
            );
            let target = m.target_id.clone().unwrap();
            assert!(
                api.contains_key(&target),
                "{entity} {id} maps to {target}, not in the API"
            );
            assert!(seen.insert(target.clone()), "two CRM rows map to {target}");
            ids_here.insert(id.clone(), target);
        }
        target_of.insert(entity.to_owned(), ids_here);
    }
    // Field values and translated references.
    let translate = |entity: &str, v: &Value| -> Value {
        match v.as_str() {
            Some(id) => json!(target_of[entity][id]),
            None => Value::Null,
        }
    };
    let api: HashMap<String, Value> = setup
        .server
        .records("customers")
        .into_iter()
        .map(|r| (id_of(&r), r))
        .collect();
    for row in setup.source.dump("accounts").await {
        let r = &api[&target_of["account"][&id_of(&row)]];
        assert_eq!(r["customer_name"], row["name"], "{row}");
        assert_eq!(r["industry"], row["industry"], "{row}");
        assert_eq!(r["parent_id"], translate("account", &row["parent_id"]), "{row}");
    }
    let api: HashMap<String, Value> = setup
        .server
        .records("people")
        .into_iter()
        .map(|r| (id_of(&r), r))
        .collect();
    for row in setup.source.dump("contacts").await {
        let r = &api[&target_of["contact"][&id_of(&row)]];
        assert_eq!(
            (&r["full_name"], &r["email"]),
            (&row["name"], &row["email"]),
            "{row}"
        );
        assert_eq!(
            r["customer_id"],
            translate("account", &row["account_id"]),
            "{row}"
        );
    }
    let api: HashMap<String, Value> = setup
        .server
        .records("sales_orders")
        .into_iter()
        .map(|r| (id_of(&r), r))
        .collect();
    for row in setup.source.dump("orders").await {
        let r = &api[&target_of["order"][&id_of(&row)]];
        assert_eq!(
            r["customer_id"],
            translate("account", &row["account_id"]),
            "{row}"
        );
        assert_eq!(r["contact_id"], translate("contact", &row["contact_id"]), "{row}");
        assert_eq!(r["status"], row["status"], "{row}");
        assert_eq!(r["total"].as_f64(), row["total"].as_f64(), "{row}");
    }
}

/// Everything both systems hold, to compare before and after a run.
async fn snapshot(setup: &Setup) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for table in ["accounts", "contacts", "orders"] {
        all.push(setup.source.dump(table).await);
    }
    for collection in ["customers", "people", "sales_orders"] {
        all.push(setup.server.records(collection));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_api_converge_through_faults_and_a_second_run_writes_nothing() {
    // 834 accounts, 1,668 contacts, 2,502 orders: 5,004 records in 3 stages.
    let faults = Faults {
        p_5xx: 0.10,
        p_429: 0.05,
        p_drop: 0.02,
    };
    let mut setup = Setup::new(
        "http-e2e",
        834,
        api(faults, None),
        "concurrency = 16\nretries = 12",
        "",
    )
    .await;
    // Records that exist only in the API flow the other way.
    let native: Vec<Value> = (0..25)
        .map(|i| {
            setup.server.insert(
                "customers",
                json!({"customer_name": format!("SaaS {i}"), "industry": "saas"}),
            )
        })
        .collect();
    for (i, c) in native.iter().enumerate().take(10) {
        setup.server.insert(
            "people",
            json!({"full_name": format!("Signup {i}"), "email": format!("s{i}@saas.test"), "customer_id": id_of(c)}),
        );
    }
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("succeeded"),
        "{}",
        text(&output)
    );
    let requests = setup.server.requests();
    assert!(requests > 5_004, "every create is a request: {requests}");

    assert_eq!(setup.source.dump("accounts").await.len(), 834 + 25);
    assert_eq!(setup.source.dump("contacts").await.len(), 1_668 + 10);
    assert_converged(&setup).await;
    let signup = setup
        .source
        .dump("contacts")
        .await
        .into_iter()
        .find(|c| c["name"] == "Signup 3")
        .expect("an API record arrives in the CRM");
    let account = setup
        .source
        .dump("accounts")
        .await
        .into_iter()
        .find(|a| a["id"] == signup["account_id"])
        .expect("its reference is translated to the CRM's id");
    assert_eq!(account["name"], "SaaS 3");

    // A second run, still through faults, writes nothing to either side.
    let before = snapshot(&setup).await;
    let creates = setup.server.creates_performed();
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(setup.server.creates_performed(), creates);
    assert_eq!(snapshot(&setup).await, before, "the second run changed a record");
    setup.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_every_second_and_is_used_to_within_ten_percent() {
    // Pure sync traffic: no reconciliation or re-verification reads.
    let mut setup = Setup::new(
        "http-rate",
        100,
        api(Faults::default(), Some(50)),
        "rate_limit = 50",
        "reconcile_every = \"never\"\nverify_after = \"never\"",
    )
    .await;
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    assert_converged(&setup).await;
    let counts = setup.server.per_second_counts();
    let busy: Vec<u32> = counts.iter().copied().skip_while(|c| *c == 0).collect();
    assert!(
        busy.iter().all(|c| *c <= 50),
        "over the limit in some second: {busy:?}"
    );
    // The first and last seconds are partial; the full ones in between
    // must average within 10% of the limit.
    let full = &busy[1..busy.len().saturating_sub(1).max(1)];
    assert!(full.len() >= 10, "{busy:?}");
    let mean = full.iter().sum::<u32>() as f64 / full.len() as f64;
    assert!(mean >= 45.0, "{mean:.1} requests/s under a limit of 50: {busy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_create_and_checkpoint_the_api_has_no_duplicate() {
    // 1,800 records; kills land after 1 to 80 further creates. The API
    // ignores idempotency keys here, so only the search by external id
    // before a repeated create keeps it free of duplicates.
    let config = SaasConfig {
        ignore_idempotency_keys: true,
        ..api(Faults::default(), None)
    };
    let mut setup = Setup::new("http-kill", 300, config, "", "").await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64
        ^ std::env::var("SYNCD_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(11);
    let mut next = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let mut kills = 0;
    let mut attempts = 0;
    let store = setup.store().await;
    loop {
        attempts += 1;
        assert!(attempts < 300, "the run did not finish after {kills} kills");
        let creates_before = setup.server.creates_performed();
        let (mut child, _out, err) = setup.spawn();
        // Kill once the API has seen a random number of further creates,
        // plus a random delay: inside a page, between the writes and the
        // checkpoint.
        let wait_for = 1 + next(80);
        let delay = Duration::from_millis(next(40));
        let mut killed = false;
        if kills < 12 {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if setup.server.creates_performed() >= creates_before + wait_for {
                    tokio::time::sleep(delay).await;
                    if child.try_wait().unwrap().is_none() {
                        child.kill().unwrap();
                        killed = true;
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        if killed {
            kills += 1;
            // No key was used twice, whatever the moment.
            for collection in ["customers", "people", "sales_orders"] {
                by_id_without_duplicates(&setup.server, collection);
            }
            continue;
        }
        if status.success() {
            break;
        }
        let stderr = std::fs::read_to_string(err).unwrap();
        assert!(stderr.contains("is being executed by worker"), "{stderr}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("{kills} kills in {attempts} attempts");
    assert!(kills >= 10, "only {kills} kills landed");
    drop(store);
    assert_converged(&setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_fails_alone_with_the_api_message() {
    let mut setup = Setup::new("http-422", 10, api(Faults::default(), None), "", "").await;
    setup
        .source
        .exec("UPDATE contacts SET email = 'not-an-address' WHERE id = 'C-000007'")
        .await;
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    let store = setup.store().await;
    let contacts: Vec<String> = setup.source.dump("contacts").await.iter().map(id_of).collect();
    let mappings = setup.mappings(&store, "contact", &contacts).await;
    for (id, m) in &mappings {
        if id == "C-000007" {
            assert_eq!(m.status, MappingStatus::Failed);
            let error = m.last_error.as_deref().unwrap_or_default();
            assert!(error.contains("422") && error.contains("email"), "{error}");
        } else {
            assert_eq!(m.status, MappingStatus::Mapped, "{id}: {:?}", m.last_error);
        }
    }
    assert_eq!(setup.server.records("people").len(), contacts.len() - 1);
    // The orders of that contact fail too, naming the parent; the rest sync.
    let orders = setup.server.records("sales_orders").len();
    let failed_orders = setup
        .source
        .dump("orders")
        .await
        .iter()
        .filter(|o| o["contact_id"] == "C-000007")
        .count();
    assert_eq!(orders, 30 - failed_orders);

    // An update the API refuses: the mapping stays `mapped` with its old
    // base and the API's message; the API keeps the old value.
    let before = setup.server.records("people");
    let now = syncd_connect::format_time(chrono::Utc::now());
    setup
        .source
        .exec(&format!(
            "UPDATE contacts SET email = 'no-at-sign', updated_at = '{now}' WHERE id = 'C-000002'"
        ))
        .await;
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    let m = &setup.mappings(&store, "contact", &["C-000002".into()]).await["C-000002"];
    assert_eq!(m.status, MappingStatus::Mapped);
    let error = m.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("saas refused the update") && error.contains("422") && error.contains("email"),
        "{error}"
    );
    assert_eq!(
        m.base.as_ref().unwrap()["email"],
        "p2@example.com",
        "the base stays what both agreed on"
    );
    assert_eq!(setup.server.records("people"), before, "the API kept its record");

    // Fixed in the CRM, both records sync on the next run.
    let now = syncd_connect::format_time(chrono::Utc::now());
    setup
        .source
        .exec(&format!(
            "UPDATE contacts SET email = 'fixed@example.com', updated_at = '{now}' \
             WHERE id IN ('C-000007', 'C-000002')"
        ))
        .await;
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    assert_converged(&setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_stops_the_step_with_one_clear_error_and_no_retries() {
    let mut setup = Setup::new(
        "http-401",
        10,
        api(Faults::default(), None),
        "concurrency = 4",
        "",
    )
    .await;
    setup.token = "sk_test_revoked".into();
    let output = setup.run().await;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = "system `saas` refused the credentials: 401 Unauthorized";
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(said), "{stderr}");
    // Logged once by the run as well, and no more: no error per record.
    assert_eq!(stderr.matches(said).count(), 2, "{stderr}");
    assert!(stderr.contains("check the token in $SAAS_TOKEN"), "{stderr}");
    // At most the requests in flight when the first 401 came back.
    assert!(
        setup.server.requests() <= 4,
        "{} requests",
        setup.server.requests()
    );
    assert_eq!(setup.server.creates_performed(), 0);
    // The run failed with that reason; nothing is lost for a retry.
    let store = setup.store().await;
    let run = store
        .list_runs(&syncd_store::RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the run is recorded");
    assert_eq!(run.state, syncd_engine::run::RunState::Failed);
    assert!(
        run.error.as_deref().unwrap_or_default().contains(said),
        "{:?}",
        run.error
    );
    // The step it failed in says so, with the reason; no step is left
    // looking as if it were still running.
    let steps = store.load_steps(run.id).await.unwrap();
    let failed: Vec<_> = steps
        .iter()
        .filter(|s| s.state == syncd_engine::run::StepState::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{steps:?}");
    assert!(
        failed[0].error.as_deref().unwrap_or_default().contains(said),
        "{:?}",
        failed[0]
    );
    assert!(
        !steps
            .iter()
            .any(|s| s.state == syncd_engine::run::StepState::Running),
        "{steps:?}"
    );

    // The tenant's own credentials (`auth_env`) take the place of the
    // system's: with $SAAS_TOKEN still revoked, the run succeeds.
    let mut definition = std::fs::read_to_string(&setup.workflow).unwrap();
    definition.push_str("auth_env = { saas = \"T1_SAAS_TOKEN\" }\n");
    std::fs::write(&setup.workflow, definition).unwrap();
    setup.extra_env = vec![("T1_SAAS_TOKEN".into(), TOKEN.into())];
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    assert_converged(&setup).await;
}

#[tokio::test]
async fn a_record_edited_while_numbered_pages_are_read_loses_no_other_record() {
    use syncd_connect::{FieldColumn, HttpConnector};
    // 40 people in pages of 10. When the second page is asked for, the
    // third record is edited and moves to the end of the listing: every
    // record after it shifts one place, so "page 2" no longer starts with
    // the eleventh. The scan goes on by time, not by page number.
    let server = SaasServer::start(api(Faults::default(), None)).await;
    let ids: Vec<String> = (0..40)
        .map(|i| {
            let p = server.insert(
                "people",
                json!({"full_name": format!("P{i}"), "email": format!("p{i}@x.test")}),
            );
            id_of(&p)
        })
        .collect();
    server.touch_at_request(2, "people", &ids[2]);
    let definition = definition("sqlite://unused.db", &server.url(), "", "").replace(
        r#"entities.contact = { path = "/people", has_more = "/has_more","#,
        r#"entities.contact = { path = "/people", has_more = "/has_more", page_size = 10,"#,
    );
    let wf = syncd_core::workflow::Workflow::parse("paging.toml", &definition).unwrap();
    let conn = HttpConnector::connect(&wf.target, &server.url(), |_| Some(TOKEN.into())).unwrap();
    let columns = conn.columns("contact", &["full_name", "email"]).unwrap();
    let fields = ["email", "full_name"]
        .map(|f| FieldColumn::untyped(f, f))
        .to_vec();
    let binding = conn.binding("contact", columns, fields, None).unwrap();
    let page = conn.read_changes(&binding, None, 1_000).await.unwrap();
    assert!(page.done);
    let read: HashSet<String> = page.records.iter().map(|r| r.id.clone()).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !read.contains(*id)).collect();
    assert!(missing.is_empty(), "not read: {missing:?}");
    assert_eq!(page.records.len(), 40, "each record once");
    // The edited record as it is now, at the end.
    let last = page.records.last().unwrap();
    assert_eq!(last.id, ids[2]);
    assert!(
        server.requests() >= 5,
        "read page by page: {} requests",
        server.requests()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_the_api_refuses_fails_the_run_with_its_message() {
    // Contacts under `manual`: an email edited on both sides parks; the
    // reviewer's value is one the API refuses (no `@`).
    let mut setup = Setup::new(
        "http-resolve",
        5,
        api(Faults::default(), None),
        "",
        "strategy = \"manual\"",
    )
    .await;
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    let store = setup.store().await;
    let contact = &setup.mappings(&store, "contact", &["C-000001".into()]).await["C-000001"];
    let api_id = contact.target_id.clone().unwrap();
    let now = syncd_connect::format_time(chrono::Utc::now());
    setup
        .source
        .exec(&format!(
            "UPDATE contacts SET email = 'crm@example.com', updated_at = '{now}' WHERE id = 'C-000001'"
        ))
        .await;
    setup
        .server
        .update_direct("people", &api_id, json!({"email": "saas@example.com"}));
    let output = setup.run().await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("suspended"),
        "{}",
        text(&output)
    );
    let conflict = store
        .list_conflicts(&syncd_store::ConflictFilter {
            status: Some(syncd_core::conflict::ConflictStatus::Pending),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .pop()
        .expect("a parked conflict");
    let syncd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(args)
            .env("SYNCD_DATABASE_URL", &setup.database_url)
            .env(TOKEN_VAR, TOKEN)
            .env_remove("SYNCD_REDIS_URL")
            .output()
            .unwrap()
    };
    let id = conflict.id.to_string();
    let resolved = syncd(&[
        "conflicts",
        "resolve",
        &id,
        "--values",
        r#"{"email": "nobody"}"#,
        "--by",
        "rita",
    ]);
    assert!(resolved.status.success(), "{}", text(&resolved));
    let workflows = setup.dir.0.to_str().unwrap().to_owned();
    let run_id = conflict.run_id.unwrap().to_string();
    let resumed = syncd(&["runs", "resume", &run_id, "--workflows", &workflows]);
    assert!(!resumed.status.success(), "{}", text(&resumed));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        stderr.contains("the resolution was refused") && stderr.contains("422"),
        "{stderr}"
    );
    // Failed, not left `running` for a worker to retry in a loop.
    let run = store
        .load_run(None, conflict.run_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.state, syncd_engine::run::RunState::Failed);
    assert!(run.error.unwrap_or_default().contains("422"));
    assert_eq!(
        setup
            .server
            .records("people")
            .iter()
            .find(|p| p["id"] == api_id.as_str())
            .unwrap()["email"],
        "saas@example.com",
        "the API kept its value"
    );
}

/// An API whose ids are numbers got references written as strings
/// (`"customer_id": "1"`), and its own change of a reference read as a
/// conflict against the base (number against string), so that a strategy
/// could undo it. With `id_type = "number"` references are numbers, a
/// second run writes nothing, and a change of a reference made only in the
/// API reaches the CRM under `source_wins`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_into_an_api_with_numeric_ids_are_numbers_and_compare_as_equal() {
    numeric_ids(true).await;
}

/// The same API without `id_type` in the definition: references are
/// written as the CRM holds them (text), and still compare equal to the
/// API's numbers, so its change of a reference is no conflict either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_compare_by_id_when_the_definition_does_not_say_the_id_type() {
    numeric_ids(false).await;
}

async fn numeric_ids(declared: bool) {
    let mut config = api(Faults::default(), None);
    for c in &mut config.collections {
        c.numeric_ids = true;
    }
    let mut setup = Setup::new("numeric-ids", 20, config, "", "").await;
    let mut numeric = definition(
        &setup.source.url(),
        &setup.server.url(),
        "",
        r#"strategy = "source_wins""#,
    );
    if declared {
        numeric = numeric.replace(
            r#"external_id_field = "external_id" }"#,
            r#"external_id_field = "external_id", id_type = "number" }"#,
        );
        assert_eq!(numeric.matches(r#"id_type = "number""#).count(), 3);
    }
    std::fs::write(&setup.workflow, numeric).unwrap();
    let first = setup.run().await;
    assert!(first.status.success(), "{}", text(&first));

    let people = setup.server.records("people");
    assert!(!people.is_empty());
    for p in &people {
        assert!(p["id"].is_number(), "{p}");
        assert_eq!(
            p["customer_id"].is_number(),
            declared,
            "a reference to a numeric id is a number where the definition says so: {p}"
        );
    }
    for o in setup
        .server
        .records("sales_orders")
        .into_iter()
        .filter(|_| declared)
    {
        assert!(o["customer_id"].is_number() && o["contact_id"].is_number(), "{o}");
    }
    let before = snapshot(&setup).await;
    let second = setup.run().await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(snapshot(&setup).await, before, "the second run wrote something");

    // The API moves one person to another customer; the CRM did nothing.
    let store = setup.store().await;
    let contacts = setup.source.dump("contacts").await;
    let contact = &contacts[0];
    let accounts = setup.source.dump("accounts").await;
    let other_account = accounts
        .iter()
        .map(id_of)
        .find(|a| Some(a.as_str()) != contact["account_id"].as_str())
        .unwrap();
    let person = setup.mappings(&store, "contact", &[id_of(contact)]).await[&id_of(contact)]
        .target_id
        .clone()
        .unwrap();
    let customer = setup
        .mappings(&store, "account", std::slice::from_ref(&other_account))
        .await[&other_account]
        .target_id
        .clone()
        .unwrap();
    let customer_number: u64 = customer.parse().unwrap();
    setup
        .server
        .update_direct("people", &person, json!({ "customer_id": customer_number }));
    let third = setup.run().await;
    assert!(third.status.success(), "{}", text(&third));
    let moved = setup
        .source
        .dump("contacts")
        .await
        .into_iter()
        .find(|c| id_of(c) == id_of(contact))
        .unwrap();
    assert_eq!(
        moved["account_id"],
        json!(other_account),
        "the API's change reached the CRM"
    );
    let kept = setup
        .server
        .records("people")
        .into_iter()
        .find(|p| p["id"] == json!(person.parse::<u64>().unwrap()))
        .unwrap();
    assert_eq!(
        kept["customer_id"],
        json!(customer_number),
        "and stayed in the API"
    );
    assert!(
        store
            .list_conflicts(&Default::default())
            .await
            .unwrap()
            .is_empty(),
        "a change made on one side only is not a conflict"
    );
}

/// The API as the source, its ids numbers, the definition silent on their
/// type: a reference was based as the API's number and compared with the
/// CRM's id translated back as text, so a change only the API made read as
/// a conflict and `target_wins` undid it. References now compare by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_sources_change_of_a_reference_is_no_conflict() {
    let dir = TempDir::new("api-source");
    let crm = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let mut config = api(Faults::default(), None);
    for c in &mut config.collections {
        c.numeric_ids = true;
    }
    let server = SaasServer::start(config).await;
    let acme = server.insert(
        "customers",
        json!({"customer_name": "Acme", "industry": "retail", "parent_id": null}),
    );
    let globex = server.insert(
        "customers",
        json!({"customer_name": "Globex", "industry": "energy", "parent_id": null}),
    );
    let person = server.insert(
        "people",
        json!({"full_name": "Ada", "email": "ada@example.com", "customer_id": acme["id"]}),
    );
    let definition = format!(
        r#"name = "saas-to-crm"
direction = "bidirectional"
strategy = "target_wins"
source = "saas"
target = "crm"

[systems.saas]
connector = "http"
url = "{}"
auth = {{ bearer_env = "{TOKEN_VAR}" }}
backoff = "20ms"
entities.account = {{ path = "/customers", pagination = "cursor", external_id_field = "external_id" }}
entities.contact = {{ path = "/people", has_more = "/has_more", external_id_field = "external_id" }}

[systems.crm]
connector = "sql"
url = "{}"

[[entities]]
name = "account"
source_table = "customers"
target_table = "accounts"
[entities.fields]
name = {{ source = "customer_name", target = "name" }}
industry = "industry"
parent_id = {{ references = "account" }}

[[entities]]
name = "contact"
source_table = "people"
target_table = "contacts"
[entities.fields]
name = {{ source = "full_name", target = "name" }}
email = "email"
account_id = {{ source = "customer_id", target = "account_id", references = "account" }}

[tenants.t1]
"#,
        server.url(),
        crm.url()
    );
    let workflow = dir.0.join("saas-to-crm.toml");
    std::fs::write(&workflow, definition).unwrap();
    let database_url = dir.sqlite_url("state.db");
    let run = |n: usize| {
        let (out, err) = (dir.0.join(format!("{n}.out")), dir.0.join(format!("{n}.err")));
        let mut child = support::spawn_syncd_run(
            &workflow,
            TENANT,
            &database_url,
            &[(TOKEN_VAR, TOKEN)],
            &out,
            &err,
        );
        let status = child.wait().unwrap();
        let stdout = std::fs::read_to_string(out).unwrap();
        assert!(
            status.success(),
            "{stdout}\n{}",
            std::fs::read_to_string(err).unwrap()
        );
        support::assert_table_accounted(&stdout);
        stdout
    };
    let before = server.records("people");
    run(1);
    // Nothing was written back: the CRM's copy compares equal to the API's.
    assert_eq!(
        server.records("people"),
        before,
        "the first run wrote back to the API"
    );
    let store = Store::connect(&StoreConfig::new(&database_url), MappingCache::disabled())
        .await
        .unwrap();
    let crm_id = |entity: &'static str, id: &Value| {
        let store = &store;
        let id = id.to_string();
        async move {
            store
                .lookup(
                    &EntityScope::new(TENANT, "saas-to-crm", entity),
                    Side::Source,
                    std::slice::from_ref(&id),
                )
                .await
                .unwrap()[&id]
                .target_id
                .clone()
                .unwrap()
        }
    };
    let contact = crm_id("contact", &person["id"]).await;
    let account_of = |rows: Vec<Value>| {
        rows.into_iter()
            .find(|c| c["id"] == json!(contact))
            .map(|c| c["account_id"].clone())
            .unwrap()
    };
    assert_eq!(
        account_of(crm.dump("contacts").await),
        json!(crm_id("account", &acme["id"]).await)
    );

    // Only the API moves Ada to Globex.
    server.update_direct(
        "people",
        &person["id"].to_string(),
        json!({"customer_id": globex["id"]}),
    );
    let moved = server.records("people");
    run(2);
    assert_eq!(
        server.records("people"),
        moved,
        "the second run wrote back to the API"
    );
    assert_eq!(
        account_of(crm.dump("contacts").await),
        json!(crm_id("account", &globex["id"]).await),
        "the API's change reached the CRM"
    );
    let ada = server
        .records("people")
        .into_iter()
        .find(|p| p["id"] == person["id"])
        .unwrap();
    assert_eq!(ada["customer_id"], globex["id"], "and stayed in the API");
    assert!(
        store
            .list_conflicts(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

/// A run failed by a permanent error (a wrong path in the definition: the
/// API answers 404 for the orders) is continued from its checkpoints by
/// `syncd runs resume` once the definition is fixed: the steps done are not
/// done again, and the run ends `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_from_its_checkpoints_once_fixed() {
    let mut setup = Setup::new("resume-failed", 20, api(Faults::default(), None), "", "").await;
    let good = std::fs::read_to_string(&setup.workflow).unwrap();
    let wrong = good.replace(r#"path = "/sales_orders""#, r#"path = "/sales_orderz""#);
    assert_ne!(wrong, good);
    std::fs::write(&setup.workflow, &wrong).unwrap();
    let failed = setup.run().await;
    assert!(!failed.status.success(), "{}", text(&failed));
    let store = setup.store().await;
    let run = store
        .list_runs(&syncd_store::RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(run.state, syncd_engine::run::RunState::Failed);
    assert!(
        run.error.as_deref().unwrap_or_default().contains("404"),
        "{:?}",
        run.error
    );
    let before: Vec<_> = store.load_steps(run.id).await.unwrap();
    let done_before = |entity: &str| {
        before
            .iter()
            .find(|s| s.entity_type.as_str() == entity && s.direction.as_str() == "forward")
            .unwrap()
            .clone()
    };
    assert_eq!(done_before("account").state, syncd_engine::run::StepState::Done);
    assert_eq!(done_before("contact").state, syncd_engine::run::StepState::Done);

    let (folder, database_url) = (
        setup.workflow.parent().unwrap().to_owned(),
        setup.database_url.clone(),
    );
    let resume = |id: uuid::Uuid| {
        Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["runs", "resume", &id.to_string(), "--workflows"])
            .arg(&folder)
            .env("SYNCD_DATABASE_URL", &database_url)
            .env(TOKEN_VAR, TOKEN)
            .env_remove("SYNCD_REDIS_URL")
            .output()
            .unwrap()
    };
    // Not fixed yet: resumed, it fails again, as the same run.
    let still = resume(run.id);
    assert!(!still.status.success(), "{}", text(&still));
    assert!(
        String::from_utf8_lossy(&still.stderr).contains("404"),
        "{}",
        text(&still)
    );

    std::fs::write(&setup.workflow, &good).unwrap();
    let resumed = resume(run.id);
    assert!(resumed.status.success(), "{}", text(&resumed));
    support::assert_table_accounted(&String::from_utf8_lossy(&resumed.stdout));
    let run = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(run.state, syncd_engine::run::RunState::Succeeded);
    let after = store.load_steps(run.id).await.unwrap();
    for entity in ["account", "contact"] {
        let step = after
            .iter()
            .find(|s| s.entity_type.as_str() == entity && s.direction.as_str() == "forward")
            .unwrap();
        assert_eq!(
            step.counters,
            done_before(entity).counters,
            "{entity} was not done again"
        );
    }
    assert_converged(&setup).await;
    assert_eq!(
        store
            .list_runs(&syncd_store::RunFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1,
        "one run from start to end"
    );

    // A failed run that a later run followed is not resumed: that one is.
    std::fs::write(&setup.workflow, &wrong).unwrap();
    setup
        .source
        .exec(&format!(
            "UPDATE orders SET status = 'paid', updated_at = '{}'",
            syncd_connect::format_time(chrono::Utc::now())
        ))
        .await;
    assert!(!setup.run().await.status.success());
    assert!(!setup.run().await.status.success());
    let runs = store
        .list_runs(&syncd_store::RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let (latest, older) = (runs[0].id, runs[1].id);
    let refused = resume(older);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains(&format!("run {latest} of the same integration started after it")),
        "{}",
        text(&refused)
    );
    std::fs::write(&setup.workflow, &good).unwrap();
    assert!(resume(latest).status.success());
}

/// An API that answers 503 to everything for a while, longer than the
/// client's own retries (`retries = 1`): the run waits it out and goes on
/// from its last checkpoint, instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_down_longer_than_its_retries_is_waited_for() {
    let down = Faults {
        p_5xx: 1.0,
        ..Faults::default()
    };
    let mut setup = Setup::new("api-down", 20, api(down, None), "retries = 1", "").await;
    let (mut child, out, err) = setup.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run waits while the API is down"
    );
    setup.server.set_faults(Faults::default());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let output = Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    };
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("transient fault"),
        "{}",
        text(&output)
    );
    assert_converged(&setup).await;
}

/// `syncd run` with stderr piped (a log file, CI) writes a progress line
/// when a step starts and then at least every `SYNCD_PROGRESS_EVERY`
/// (here 1 s; 10 s by default) of a long step: a run paced to about 8 s
/// by the API's rate limit shows steps that go on, read count rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_off_a_terminal_reports_its_progress_periodically() {
    let setup = Setup::new(
        "http-progress",
        20,
        api(Faults::default(), None),
        "rate_limit = 15",
        "reconcile_every = \"never\"\nverify_after = \"never\"",
    )
    .await;
    let out = std::process::Command::new(support::syncd_bin())
        .arg("run")
        .arg(&setup.workflow)
        .args(["--tenant", TENANT, "--page-size", "5"])
        .env("SYNCD_DATABASE_URL", &setup.database_url)
        .env(TOKEN_VAR, TOKEN)
        .env("SYNCD_PROGRESS_EVERY", "1s")
        .env_remove("SYNCD_LOG")
        .env_remove("SYNCD_REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains("syncd::progress")).collect();
    // Lines of one step (`[k/n] entity direction`), in order, by read count.
    // A step's first line says it started (its counts would be zeros).
    let mut by_step: HashMap<String, Vec<u64>> = HashMap::new();
    let mut started = std::collections::HashSet::new();
    for line in &progress {
        let at = line.find('[').unwrap_or_else(|| panic!("{line}"));
        let words: Vec<&str> = line[at..].split_whitespace().collect();
        let step = words[..3].join(" ").trim_end_matches(':').to_owned();
        if words.get(3) == Some(&"started") {
            assert!(!by_step.contains_key(&step), "started after its counts: {line}");
            started.insert(step);
            continue;
        }
        let read: u64 = words[4].parse().unwrap_or_else(|_| panic!("{line}"));
        by_step.entry(step).or_default().push(read);
    }
    assert!(
        by_step.keys().all(|s| started.contains(s)),
        "a step's counts came without its start:\n{}",
        progress.join("\n")
    );
    let periodic = by_step
        .values()
        .filter(|reads| {
            reads.len() >= 2 && reads.windows(2).all(|w| w[0] <= w[1]) && reads.last() > reads.first()
        })
        .count();
    assert!(
        periodic >= 1,
        "no step reported its progress more than once:\n{}",
        progress.join("\n")
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal codes off a terminal:\n{stderr}"
    );
}

/// A server that does not implement what it is asked (`501 Not
/// Implemented`, as Python's `http.server` answers a POST, with an HTML
/// page) will not implement it later: the step stops at its first answer
/// with a one-line reason, rather than retry it as a passing fault for the
/// run's whole retry window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_implement_the_request_stops_the_step_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let page = "<!DOCTYPE HTML>\n<html lang=\"en\">\n  <body>\n    <h1>Error response</h1>\n    \
                            <p>Error code: 501</p>\n  </body>\n</html>\n";
                let reply = format!(
                    "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    let mut setup = Setup::new("not-implemented", 1, api(Faults::default(), None), "", "").await;
    let good = std::fs::read_to_string(&setup.workflow).unwrap();
    let pointed = good.replace(&setup.server.url(), &url);
    assert_ne!(pointed, good);
    std::fs::write(&setup.workflow, pointed).unwrap();
    let started = std::time::Instant::now();
    let failed = setup.run().await;
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let run = setup
        .store()
        .await
        .list_runs(&syncd_store::RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("501 Not Implemented") && error.contains("<!DOCTYPE HTML> <html lang=\"en\">"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "asked once, not retried"
    );
    setup.server.stop().await;
}

/// `syncd check --connect` asks the API for one record of each collection:
/// it says every system was reached only when the API answered, and names
/// a refused token or a server that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_asks_the_api_itself() {
    let setup = Setup::new(
        "check-connect-api",
        1,
        api(Faults::default(), None),
        "retries = 1",
        "",
    )
    .await;
    let check = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["check", "--connect"])
            .arg(&setup.workflow)
            .env(TOKEN_VAR, token)
            .output()
            .unwrap()
    };
    let ok = check(TOKEN);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("every system reached and checked"),
        "{}",
        text(&ok)
    );
    let refused = check("not-the-token");
    assert!(!refused.status.success(), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        said.contains("refused the credentials") && said.contains(TOKEN_VAR),
        "{said}"
    );
    setup.server.stop().await;
    let gone = check(TOKEN);
    assert!(!gone.status.success(), "{}", text(&gone));
    assert!(
        !String::from_utf8_lossy(&gone.stdout).contains("every system reached"),
        "{}",
        text(&gone)
    );
}
