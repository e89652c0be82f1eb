//! A CRM in PostgreSQL synced both ways with json-server, an off-the-shelf
//! REST server from the npm registry (pinned in `.ci/peers`), through the
//! real binary (`syncd run`), with nothing but the definition saying how
//! that server works: top-level arrays, `_page`/`_limit` paging, numeric ids
//! it assigns itself, and no update times at all.
//!
//! json-server's own request log counts what each run sent it.

use syncd_test_support as support;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Output;
use support::TempDir;
use support::json_server::{JsonServer, Requests};
use support::systems::{Kind, SystemDb, crm_rows};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::MappingStatus;
use syncd_core::record::Side;
use syncd_store::cache::MappingCache;
use syncd_store::{Store, StoreConfig};

const TENANT: &str = "t1";
const INTEGRATION: &str = "crm-to-rest";

/// (entity, CRM table, json-server collection)
const ENTITIES: [(&str, &str, &str); 3] = [
    ("account", "accounts", "customers"),
    ("contact", "contacts", "people"),
    ("order", "orders", "sales_orders"),
];

/// json-server's conventions, said in the definition: every collection is
/// a top-level array paged by `_page` and `_limit`, in id order, with
/// numeric ids it assigns, and no update times (`updated_field = ""`).
fn definition(crm: &str, rest: &str) -> String {
    let collection = |path: &str| {
        format!(
            r#"{{ path = "{path}", records = "", record = "", updated_field = "", id_type = "number", page_param = "_page", size_param = "_limit", page_size = 25, query = {{ _sort = "id" }}, external_id_field = "sync_key" }}"#
        )
    };
    format!(
        r#"name = "{INTEGRATION}"
direction = "bidirectional"
source = "crm"
target = "rest"
# Any change seen on both sides of one field would stop the run for a
# reviewer: a change the REST side did not have must never look like one.
strategy = "manual"

[systems.crm]
connector = "sql"
url = "{crm}"

[systems.rest]
connector = "http"
url = "{rest}"
backoff = "20ms"
entities.account = {account}
entities.contact = {contact}
entities.order = {order}

[[entities]]
name = "account"
source_table = "accounts"
target_table = "customers"
reconcile_every = "0s"
[entities.fields]
name = {{ source = "name", target = "customer_name" }}
industry = "industry"
parent_id = {{ references = "account" }}

[[entities]]
name = "contact"
source_table = "contacts"
target_table = "people"
reconcile_every = "0s"
[entities.fields]
name = {{ source = "name", target = "full_name" }}
email = "email"
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}

[[entities]]
name = "order"
source_table = "orders"
target_table = "sales_orders"
reconcile_every = "0s"
on_target_delete = "propagate"
[entities.fields]
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
contact_id = {{ references = "contact" }}
total = "total"
status = "status"

[tenants.{TENANT}]
"#,
        account = collection("/customers"),
        contact = collection("/people"),
        order = collection("/sales_orders"),
    )
}

struct Setup {
    dir: TempDir,
    crm: SystemDb,
    rest: JsonServer,
    workflow: PathBuf,
    database_url: String,
    runs: usize,
}

impl Setup {
    /// Runs `syncd run` to its end; the output and the requests json-server
    /// logged meanwhile.
    async fn run(&mut self) -> (Output, Requests) {
        self.runs += 1;
        let out = self.dir.0.join(format!("run-{}.out", self.runs));
        let err = self.dir.0.join(format!("run-{}.err", self.runs));
        let before = self.rest.mark().await;
        // Engine pages of 40 records over json-server pages of 25: a listing
        // goes on from a saved page number in the middle of a scan.
        let mut child = std::process::Command::new(support::syncd_bin())
            .arg("run")
            .arg(&self.workflow)
            .args(["--tenant", TENANT, "--page-size", "40"])
            .env("SYNCD_DATABASE_URL", &self.database_url)
            .env_remove("SYNCD_REDIS_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let after = self.rest.mark().await;
        let output = Output {
            status,
            stdout: std::fs::read(out).unwrap(),
            stderr: std::fs::read(err).unwrap(),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("succeeded"),
            "run {}:\n{stdout}\n{}",
            self.runs,
            String::from_utf8_lossy(&output.stderr)
        );
        support::assert_table_accounted(&stdout);
        (output, self.rest.requests_between(before, after))
    }

    /// Target id (json-server's) of each mapped CRM record, by entity and
    /// CRM id; every mapping `mapped`.
    async fn mapped(&self) -> HashMap<&'static str, HashMap<String, Value>> {
        let store = Store::connect(&StoreConfig::new(&self.database_url), MappingCache::disabled())
            .await
            .unwrap();
        let mut all = HashMap::new();
        for (entity, table, _) in ENTITIES {
            let ids: Vec<String> = self.crm.dump(table).await.iter().map(crm_id).collect();
            let scope = EntityScope::new(TENANT, INTEGRATION, entity);
            let found = store.lookup(&scope, Side::Source, &ids).await.unwrap();
            let mut here = HashMap::new();
            for id in ids {
                let m = found
                    .get(&id)
                    .unwrap_or_else(|| panic!("{entity} {id} has no mapping"));
                assert_eq!(
                    m.status,
                    MappingStatus::Mapped,
                    "{entity} {id}: {:?}",
                    m.last_error
                );
                let target = m.target_id.clone().expect("a mapped record has its target id");
                let number: u64 = target
                    .parse()
                    .unwrap_or_else(|_| panic!("json-server ids are numbers, not {target}"));
                here.insert(id, json!(number));
            }
            all.insert(entity, here);
        }
        all
    }

    /// Both systems hold the same records: one json-server record per CRM
    /// row and no other, with equal values and references translated to
    /// json-server's numeric ids.
    async fn assert_converged(&self) {
        let mapped = self.mapped().await;
        let to_rest = |entity: &str, v: &Value| match v.as_str() {
            Some(id) => mapped[entity]
                .get(id)
                .cloned()
                .unwrap_or_else(|| panic!("{entity} {id} is referenced but not mapped")),
            None => Value::Null,
        };
        for (entity, table, collection) in ENTITIES {
            let rows = self.crm.dump(table).await;
            let records: HashMap<String, Value> = self
                .rest
                .records(collection)
                .await
                .into_iter()
                .map(|r| (r["id"].to_string(), r))
                .collect();
            assert_eq!(
                records.len(),
                rows.len(),
                "{collection}: {} records for {} CRM rows",
                records.len(),
                rows.len()
            );
            let mut seen = HashSet::new();
            for row in &rows {
                let target = &mapped[entity][&crm_id(row)];
                assert!(seen.insert(target.to_string()), "two CRM rows map to {target}");
                let r = records.get(&target.to_string()).unwrap_or_else(|| {
                    panic!("{entity} {} maps to {target}, not in json-server", crm_id(row))
                });
                let pairs: Vec<(&Value, Value)> = match entity {
                    "account" => vec![
                        (&r["customer_name"], row["name"].clone()),
                        (&r["industry"], row["industry"].clone()),
                        (&r["parent_id"], to_rest("account", &row["parent_id"])),
                    ],
                    "contact" => vec![
                        (&r["full_name"], row["name"].clone()),
                        (&r["email"], row["email"].clone()),
                        (&r["customer_id"], to_rest("account", &row["account_id"])),
                    ],
                    _ => vec![
                        (&r["customer_id"], to_rest("account", &row["account_id"])),
                        (&r["contact_id"], to_rest("contact", &row["contact_id"])),
                        (&r["status"], row["status"].clone()),
                    ],
                };
                for (rest, crm) in pairs {
                    assert_eq!(rest, &crm, "{entity} {}: {r} against {row}", crm_id(row));
                }
                if entity == "order" {
                    // The same number: JSON numbers keep no scale (0.50 is 0.5).
                    let exact = |v: &Value| {
                        let text = v.to_string().trim_matches('"').to_owned();
                        match text.contains('.') {
                            true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
                            false => text,
                        }
                    };
                    assert_eq!(exact(&r["total"]), exact(&row["total"]), "{r} against {row}");
                }
            }
        }
    }

    async fn snapshot(&self) -> Vec<Vec<Value>> {
        let mut all = Vec::new();
        for (_, table, collection) in ENTITIES {
            all.push(self.crm.dump(table).await);
            all.push(self.rest.records(collection).await);
        }
        all
    }
}

fn crm_id(row: &Value) -> String {
    row["id"].as_str().expect("CRM ids are text").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_and_json_server_converge_both_ways_and_a_second_run_writes_nothing() {
    let dir = TempDir::new("rest-peer");
    let Some(crm) = SystemDb::with_tables(Kind::Postgres, &dir, "source").await else {
        return;
    };
    // Records that exist only on the REST side, referencing each other by
    // json-server's numeric ids.
    let native = json!({
        "customers": [
            {"id": 1, "customer_name": "REST 1", "industry": "saas"},
            {"id": 2, "customer_name": "REST 2", "industry": "saas", "parent_id": 1},
        ],
        "people": [{"id": 1, "full_name": "Signup", "email": "signup@rest.test", "customer_id": 2}],
        "sales_orders": [],
    });
    let Some(rest) = JsonServer::start(&native).await else {
        return;
    };
    // 20 accounts, 40 contacts, 60 orders.
    let (accounts, contacts, orders) = crm_rows(20);
    crm.insert("accounts", &accounts).await;
    crm.insert("contacts", &contacts).await;
    crm.insert("orders", &orders).await;
    let workflow = dir.0.join("crm-to-rest.toml");
    std::fs::write(&workflow, definition(&crm.url(), &rest.url())).unwrap();
    let database_url = dir.sqlite_url("state.db");
    let mut setup = Setup {
        dir,
        crm,
        rest,
        workflow,
        database_url,
        runs: 0,
    };

    // The first run: every CRM record is one POST, the REST records arrive
    // in the CRM with their references.
    // An account whose parent is not created yet is created without it and
    // patched once the parent has its id.
    let with_parent = accounts.iter().filter(|a| !a["parent_id"].is_null()).count();
    let (_, sent) = setup.run().await;
    assert_eq!(sent.of("POST"), 120, "{sent:?}");
    assert_eq!(sent.of("PATCH"), with_parent, "{sent:?}");
    assert_eq!(sent.writes(), 120 + with_parent, "{sent:?}");
    setup.assert_converged().await;
    let crm_accounts = setup.crm.dump("accounts").await;
    let rest2 = crm_accounts
        .iter()
        .find(|a| a["name"] == "REST 2")
        .expect("a REST account arrives in the CRM");
    let rest1 = crm_accounts.iter().find(|a| a["name"] == "REST 1").unwrap();
    assert_eq!(rest2["parent_id"], rest1["id"], "its self-reference in CRM ids");
    let signup = setup
        .crm
        .dump("contacts")
        .await
        .into_iter()
        .find(|c| c["name"] == "Signup")
        .expect("a REST contact arrives in the CRM");
    assert_eq!(signup["account_id"], rest2["id"]);

    // Nothing changed: nothing is written, to either side.
    let before = setup.snapshot().await;
    let (_, sent) = setup.run().await;
    assert_eq!(sent.writes(), 0, "a run without changes wrote: {sent:?}");
    assert_eq!(
        setup.snapshot().await,
        before,
        "a run without changes changed a record"
    );
    eprintln!("a run without changes sent {sent:?}");

    // Edits on each side, a reference moved on each, a create on each, a
    // delete on each.
    let mapped = setup.mapped().await;
    let target = |entity: &str, id: &str| mapped[entity][id].clone();
    let now = "now()";
    setup
        .crm
        .exec(&format!(
            "UPDATE contacts SET name = 'Renamed in the CRM', updated_at = {now} WHERE id = 'C-000001';
             UPDATE orders SET account_id = 'A-000009', updated_at = {now} WHERE id = 'O-000004';
             INSERT INTO accounts (id, name, industry, updated_at) VALUES ('A-NEW', 'Made in the CRM', 'food', {now});
             DELETE FROM orders WHERE id = 'O-000005';"
        ))
        .await;
    let rest = &setup.rest;
    rest.patch(
        "people",
        &target("contact", "C-000002"),
        json!({"email": "edited@rest.test"}),
    )
    .await;
    rest.patch(
        "people",
        &target("contact", "C-000003"),
        json!({"customer_id": target("account", "A-000007")}),
    )
    .await;
    rest.create(
        "customers",
        json!({"customer_name": "Made in REST", "industry": "saas"}),
    )
    .await;
    rest.delete("sales_orders", &target("order", "O-000006")).await;

    let (_, sent) = setup.run().await;
    // Exactly what changed on the CRM side is sent: the new account, the
    // renamed contact, the moved order, the deleted order.
    assert_eq!(sent.of("POST"), 1, "{sent:?}");
    assert_eq!(sent.of("PATCH"), 2, "{sent:?}");
    assert_eq!(sent.of("DELETE"), 1, "{sent:?}");
    assert_eq!(sent.of("PUT"), 0, "{sent:?}");
    let contacts: HashMap<String, Value> = setup
        .crm
        .dump("contacts")
        .await
        .into_iter()
        .map(|c| (crm_id(&c), c))
        .collect();
    assert_eq!(
        contacts["C-000002"]["email"], "edited@rest.test",
        "a REST edit reaches the CRM"
    );
    assert_eq!(
        contacts["C-000003"]["account_id"], "A-000007",
        "a reference moved in REST"
    );
    let orders = setup.crm.dump("orders").await;
    assert!(
        !orders.iter().any(|o| o["id"] == "O-000006"),
        "an order deleted in REST is deleted in the CRM (propagate)"
    );
    assert!(
        setup
            .crm
            .dump("accounts")
            .await
            .iter()
            .any(|a| a["name"] == "Made in REST"),
        "a REST create reaches the CRM"
    );
    setup.assert_converged().await;
    let people = setup.rest.records("people").await;
    let c1 = target("contact", "C-000001");
    assert_eq!(
        people.iter().find(|p| p["id"] == c1).unwrap()["full_name"],
        "Renamed in the CRM"
    );

    // And again nothing to do.
    let before = setup.snapshot().await;
    let (_, sent) = setup.run().await;
    assert_eq!(sent.writes(), 0, "a run without changes wrote: {sent:?}");
    assert_eq!(setup.snapshot().await, before);
    setup.crm.drop().await;
}

/// json-server reads JSON numbers as JavaScript does, as doubles: it stored
/// `9007199254740993` as `9007199254740992`, and the next read of it looked
/// like an edit made there, synced back over the CRM's exact value, in a
/// run that said succeeded. A number a double would change now fails its
/// record before anything is sent; the rest sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_json_server_would_round_fail_their_record_and_are_never_sent() {
    let dir = TempDir::new("rest-numbers");
    let Some(crm) = SystemDb::create(Kind::Postgres, &dir, "source").await else {
        return;
    };
    crm.exec(
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric, doc jsonb, ratio float8, updated_at timestamptz NOT NULL);
         INSERT INTO ledger VALUES ('fits', 12.50, '{\"x\": 1e21, \"y\": [12.50]}', -1391674849710224.25, '2026-01-01T00:00:00Z'),
             ('big', 9007199254740993, NULL, NULL, now()), ('wide', 12345678901234567890.123456789, NULL, NULL, now())",
    )
    .await;
    let Some(mut rest) = JsonServer::start(&json!({"ledger": []})).await else {
        return;
    };
    let workflow = dir.0.join("ledger.toml");
    std::fs::write(
        &workflow,
        format!(
            r#"name = "ledger"
direction = "bidirectional"
source = "crm"
target = "rest"

[systems.crm]
connector = "sql"
url = "{}"

[systems.rest]
connector = "http"
url = "{}"
backoff = "20ms"
entities.entry = {{ path = "/ledger", records = "", record = "", updated_field = "", id_type = "number", page_param = "_page", size_param = "_limit", query = {{ _sort = "id" }}, external_id_field = "sync_key" }}

[[entities]]
name = "entry"
source_table = "ledger"
target_table = "ledger"
reconcile_every = "0s"
[entities.fields]
amount = "amount"
doc = "doc"
ratio = "ratio"

[tenants.{TENANT}]
"#,
            crm.url(),
            rest.url()
        ),
    )
    .unwrap();
    let database_url = dir.sqlite_url("state.db");
    for run in 1..=2 {
        let before = rest.mark().await;
        let out = std::process::Command::new(support::syncd_bin())
            .arg("run")
            .arg(&workflow)
            .args(["--tenant", TENANT])
            .env("SYNCD_DATABASE_URL", &database_url)
            .env_remove("SYNCD_REDIS_URL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("succeeded"),
            "run {run}: {stdout}"
        );
        support::assert_table_accounted(&stdout);
        let after = rest.mark().await;
        let sent = rest.requests_between(before, after);
        // The first run creates the one that fits; nothing else is sent.
        assert_eq!(sent.writes(), if run == 1 { 1 } else { 0 }, "run {run}: {sent:?}");
        let records = rest.records("ledger").await;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0]["amount"], json!(12.5));
        let amounts: Vec<String> = sqlx::query_scalar("SELECT amount::text FROM ledger ORDER BY id")
            .fetch_all(crm.pg_pool().unwrap())
            .await
            .unwrap();
        assert_eq!(
            amounts,
            ["9007199254740993", "12.50", "12345678901234567890.123456789"]
        );
        // The document json-server writes back as `1e+21` and `12.5` holds
        // the same numbers: nothing is written back to the CRM.
        assert_eq!(records[0]["doc"]["y"], json!([12.5]), "{records:?}");
        // A double between two shortest texts: json-server prints the one,
        // syncd the other; the same double on both sides, nothing refused.
        assert_eq!(
            records[0]["ratio"].to_string(),
            "-1391674849710224.2",
            "{records:?}"
        );
        let fits: (String, String, f64) =
            sqlx::query_as("SELECT doc::text, updated_at::text, ratio FROM ledger WHERE id = 'fits'")
                .fetch_one(crm.pg_pool().unwrap())
                .await
                .unwrap();
        assert_eq!(
            fits,
            (
                "{\"x\": 1000000000000000000000, \"y\": [12.50]}".into(),
                "2026-01-01 00:00:00+00".into(),
                -1_391_674_849_710_224.3
            ),
            "run {run}"
        );
    }
    let store = Store::connect(&StoreConfig::new(&database_url), MappingCache::disabled())
        .await
        .unwrap();
    let scope = EntityScope::new(TENANT, "ledger", "entry");
    let found = store
        .lookup(
            &scope,
            Side::Source,
            &["big".into(), "wide".into(), "fits".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        (found["fits"].status, found["fits"].last_error.as_deref()),
        (MappingStatus::Mapped, None)
    );
    for (id, n) in [
        ("big", "9007199254740993"),
        ("wide", "12345678901234567890.123456789"),
    ] {
        let m = &found[id];
        assert_eq!(m.status, MappingStatus::Failed, "{id}");
        let why = m.last_error.as_deref().unwrap_or_default();
        assert!(
            why.contains(&format!(
                "field `amount` (`amount`): {n} is not kept by an API that reads numbers as doubles"
            )),
            "{why}"
        );
    }
    crm.drop().await;
}

/// What real APIs do to a listing, with json-server: pages capped below the
/// size asked for (it ignores `per_page` and answers ten a page: a short
/// page ended the listing, and 15 of 25 records were never read, every run
/// succeeding), and update times as `Date.now()` numbers shared by more
/// records than a page holds (the listing began again at page 1 forever).
#[tokio::test]
async fn capped_pages_and_numeric_times_shared_by_a_page_are_read_whole() {
    let dir = TempDir::new("rest-listings");
    let Some(db) = SystemDb::create(Kind::Postgres, &dir, "db").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL);
         CREATE TABLE stamps (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
    )
    .await;
    let at = 1_796_684_368_000_i64;
    let items: Vec<Value> = (1..=25)
        .map(|i| json!({"id": i, "name": format!("item {i}")}))
        .collect();
    let stamps: Vec<Value> = (1..=5)
        .map(|i| json!({"id": i, "name": format!("stamp {i}"), "updated_at": at}))
        .collect();
    let Some(rest) = JsonServer::start(&json!({"items": items, "stamps": stamps})).await else {
        return;
    };
    let workflow = dir.0.join("feed.toml");
    std::fs::write(
        &workflow,
        format!(
            r#"name = "feed"
direction = "one_way"
source = "rest"
target = "db"

[systems.rest]
connector = "http"
url = "{}"
backoff = "20ms"
entities.item = {{ path = "/items", records = "", record = "", updated_field = "", id_type = "number", page_param = "_page", size_param = "per_page", page_size = 25, query = {{ _sort = "id" }} }}
entities.stamp = {{ path = "/stamps", records = "", record = "", updated_field = "updated_at", since_param = "updated_at_gte", id_type = "number", page_param = "_page", size_param = "_limit", page_size = 2, query = {{ _sort = "updated_at,id" }} }}

[systems.db]
connector = "sql"
url = "{}"

[[entities]]
name = "item"
table = "items"

[[entities]]
name = "stamp"
table = "stamps"

[tenants.{TENANT}]
"#,
            rest.url(),
            db.url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(support::syncd_bin())
        .arg("run")
        .arg(&workflow)
        .args(["--tenant", TENANT])
        .env("SYNCD_DATABASE_URL", dir.sqlite_url("state.db"))
        .env_remove("SYNCD_REDIS_URL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the run did not end in 120 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("succeeded"), "{stdout}");
    for (table, n) in [("items", 25), ("stamps", 5)] {
        assert_eq!(db.dump(table).await.len(), n, "{table}: {stdout}");
    }
    // Listed newest first: all but the first record were taken for read
    // already and never synced, every run succeeding. The run stops.
    let definition = std::fs::read_to_string(&workflow).unwrap().replace(
        r#"_sort = "updated_at,id" }"#,
        r#"_sort = "updated_at,id", _order = "desc,desc" }"#,
    );
    for i in 6..=8 {
        rest.create(
            "stamps",
            json!({"id": i, "name": format!("stamp {i}"), "updated_at": at + i}),
        )
        .await;
    }
    std::fs::write(&workflow, definition).unwrap();
    let out = std::process::Command::new(support::syncd_bin())
        .arg("run")
        .arg(&workflow)
        .args(["--tenant", TENANT])
        .env("SYNCD_DATABASE_URL", dir.sqlite_url("state.db"))
        .env_remove("SYNCD_REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the listing is not in the order of `updated_at`, oldest first"),
        "{stderr}"
    );
    db.drop().await;
}
