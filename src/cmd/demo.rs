//! `syncd demo`: a shop's CRM and an ERP as two SQLite databases, synced
//! both ways with the shipped `crm-to-erp` definition, then edited on both
//! sides so that every conflict strategy has something to decide.

use super::{CmdResult, runtime};
use chrono::{DateTime, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use syncd_connect::format_time;
use syncd_core::conflict::ConflictStatus;
use syncd_core::ids::TenantId;
use syncd_core::workflow::{self, Workflow};
use syncd_engine::run::RunState;
use syncd_engine::run::executor::{Job, Options};
use syncd_store::cache::MappingCache;
use syncd_store::{ConflictFilter, Store, StoreConfig};

const WORKFLOW: &str = include_str!("../../workflows/crm-to-erp.toml");
const PARTNER_GRAPH: &str = include_str!("../../workflows/partners/acme-saas.toml");
const TENANT: &str = "acme";

const ACCOUNTS: usize = 1_200;
const CONTACTS: usize = 3_000;
const PRODUCTS: usize = 400;
const ORDERS: usize = 2_000;
const LINES: usize = 4_000;
const ERP_ONLY_CUSTOMERS: usize = 40;

const CRM_SCHEMA: &str = "
CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, industry TEXT, parent_account_id TEXT,
                       updated_at TEXT NOT NULL);
CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT, email TEXT, account_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE products (id TEXT PRIMARY KEY, sku TEXT, name TEXT, price REAL, updated_at TEXT NOT NULL);
CREATE TABLE orders (id TEXT PRIMARY KEY, account_id TEXT, status TEXT, total REAL, updated_at TEXT NOT NULL);
CREATE TABLE order_lines (id TEXT PRIMARY KEY, order_id TEXT, product_id TEXT, quantity INTEGER,
                          updated_at TEXT NOT NULL);
CREATE INDEX accounts_changes ON accounts (updated_at, id);
CREATE INDEX contacts_changes ON contacts (updated_at, id);
CREATE INDEX products_changes ON products (updated_at, id);
CREATE INDEX orders_changes ON orders (updated_at, id);
CREATE INDEX order_lines_changes ON order_lines (updated_at, id);
";

const ERP_SCHEMA: &str = "
CREATE TABLE customers (id TEXT PRIMARY KEY, customer_name TEXT NOT NULL, industry TEXT, parent_customer_id TEXT,
                        credit_limit REAL DEFAULT 10000, updated_at TEXT NOT NULL);
CREATE TABLE people (id TEXT PRIMARY KEY, full_name TEXT, email TEXT, customer_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE products (id TEXT PRIMARY KEY, sku TEXT, title TEXT, price REAL, updated_at TEXT NOT NULL);
CREATE TABLE sales_orders (id TEXT PRIMARY KEY, customer_id TEXT, status TEXT, total REAL,
                           updated_at TEXT NOT NULL);
CREATE TABLE sales_order_lines (id TEXT PRIMARY KEY, sales_order_id TEXT, product_id TEXT, quantity INTEGER,
                                updated_at TEXT NOT NULL);
CREATE INDEX customers_changes ON customers (updated_at, id);
CREATE INDEX people_changes ON people (updated_at, id);
CREATE INDEX products_changes ON products (updated_at, id);
CREATE INDEX sales_orders_changes ON sales_orders (updated_at, id);
CREATE INDEX sales_order_lines_changes ON sales_order_lines (updated_at, id);
";

/// A small deterministic generator, so every demo has the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

async fn open(path: &Path) -> Result<SqlitePool, String> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .map_err(|e| format!("error: {}: {e}", path.display()))
}

async fn exec(pool: &SqlitePool, sql: &str) -> Result<(), String> {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("error: demo data: {e}"))
}

/// Runs statements with bound values in one transaction.
async fn insert_rows(pool: &SqlitePool, sql: &str, rows: Vec<Vec<serde_json::Value>>) -> Result<(), String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    for row in rows {
        let mut q = sqlx::query(sql);
        for v in row {
            q = match v {
                serde_json::Value::Null => q.bind(None::<String>),
                serde_json::Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
                serde_json::Value::Number(n) => q.bind(n.as_f64()),
                serde_json::Value::String(s) => q.bind(s),
                other => q.bind(other.to_string()),
            };
        }
        q.execute(&mut *tx)
            .await
            .map_err(|e| format!("error: demo data: {e}"))?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

fn t(at: DateTime<Utc>, ms: usize) -> serde_json::Value {
    serde_json::Value::String(format_time(at + chrono::Duration::milliseconds(ms as i64)))
}

async fn seed(crm: &SqlitePool, erp: &SqlitePool, start: DateTime<Utc>) -> Result<usize, String> {
    use serde_json::json;
    exec(crm, CRM_SCHEMA).await?;
    exec(erp, ERP_SCHEMA).await?;
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let industries = [
        "retail",
        "manufacturing",
        "logistics",
        "software",
        "food",
        "health",
    ];
    let first = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Leslie",
    ];
    let last = [
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Perlman",
    ];
    let statuses = ["open", "paid", "shipped", "delivered"];

    let accounts: Vec<Vec<serde_json::Value>> = (0..ACCOUNTS)
        .map(|i| {
            // Every 12th account belongs to a group; the parent is sometimes
            // later in the table, so the demo shows deferred references.
            let parent = (i % 12 == 5).then(|| format!("ACC-{:05}", (i * 7 + 3) % ACCOUNTS));
            vec![
                json!(format!("ACC-{i:05}")),
                json!(format!("{} {} Ltd", rng.pick(&last), rng.pick(&industries))),
                json!(rng.pick(&industries)),
                json!(parent),
                t(start, i),
            ]
        })
        .collect();
    insert_rows(
        crm,
        "INSERT INTO accounts (id, name, industry, parent_account_id, updated_at) VALUES (?, ?, ?, ?, ?)",
        accounts,
    )
    .await?;
    let contacts = (0..CONTACTS)
        .map(|i| {
            let (f, l) = (rng.pick(&first), rng.pick(&last));
            vec![
                json!(format!("CON-{i:05}")),
                json!(format!("{f} {l}")),
                json!(format!(
                    "{}.{}{i}@example.com",
                    f.to_lowercase(),
                    l.to_lowercase()
                )),
                json!(format!("ACC-{:05}", rng.below(ACCOUNTS))),
                t(start, i),
            ]
        })
        .collect();
    insert_rows(
        crm,
        "INSERT INTO contacts (id, name, email, account_id, updated_at) VALUES (?, ?, ?, ?, ?)",
        contacts,
    )
    .await?;
    let products = (0..PRODUCTS)
        .map(|i| {
            vec![
                json!(format!("PRD-{i:04}")),
                json!(format!("SKU-{:06}", 100_000 + i * 37)),
                json!(format!("Widget {i}")),
                json!((rng.below(20_000) as f64 + 99.0) / 100.0),
                t(start, i),
            ]
        })
        .collect();
    insert_rows(
        crm,
        "INSERT INTO products (id, sku, name, price, updated_at) VALUES (?, ?, ?, ?, ?)",
        products,
    )
    .await?;
    let orders = (0..ORDERS)
        .map(|i| {
            vec![
                json!(format!("ORD-{i:05}")),
                json!(format!("ACC-{:05}", rng.below(ACCOUNTS))),
                json!(rng.pick(&statuses)),
                json!((rng.below(500_000) as f64) / 100.0),
                t(start, i),
            ]
        })
        .collect();
    insert_rows(
        crm,
        "INSERT INTO orders (id, account_id, status, total, updated_at) VALUES (?, ?, ?, ?, ?)",
        orders,
    )
    .await?;
    let lines = (0..LINES)
        .map(|i| {
            vec![
                json!(format!("OL-{i:05}")),
                json!(format!("ORD-{:05}", i / 2)),
                json!(format!("PRD-{:04}", rng.below(PRODUCTS))),
                json!(1 + rng.below(9) as i64),
                t(start, i),
            ]
        })
        .collect();
    insert_rows(
        crm,
        "INSERT INTO order_lines (id, order_id, product_id, quantity, updated_at) VALUES (?, ?, ?, ?, ?)",
        lines,
    )
    .await?;
    // Customers that exist only in the ERP flow back to the CRM.
    let erp_only = (0..ERP_ONLY_CUSTOMERS)
        .map(|i| {
            vec![
                json!(format!("C-{:04}", 9000 + i)),
                json!(format!("{} Direct {i}", rng.pick(&last))),
                json!(rng.pick(&industries)),
                t(start, i),
            ]
        })
        .collect();
    insert_rows(
        erp,
        "INSERT INTO customers (id, customer_name, industry, updated_at) VALUES (?, ?, ?, ?)",
        erp_only,
    )
    .await?;
    Ok(ACCOUNTS + CONTACTS + PRODUCTS + ORDERS + LINES + ERP_ONLY_CUSTOMERS)
}

/// The ERP id the engine gave a CRM record.
async fn erp_id(store: &Store, entity: &str, crm_id: &str) -> Result<String, String> {
    let scope = syncd_core::ids::EntityScope::new(TENANT, "crm-to-erp", entity);
    store
        .lookup(&scope, syncd_core::record::Side::Source, &[crm_id.to_owned()])
        .await
        .map_err(|e| e.to_string())?
        .remove(crm_id)
        .and_then(|m| m.target_id)
        .ok_or_else(|| format!("error: {entity} {crm_id} was not synced"))
}

/// Edits the same records on both sides, one group per strategy.
async fn edit_both_sides(crm: &SqlitePool, erp: &SqlitePool, store: &Store) -> Result<Vec<String>, String> {
    let mut story = Vec::new();
    let now = || format_time(Utc::now());
    let run = |pool: &SqlitePool, sql: String, args: Vec<String>| {
        let pool = pool.clone();
        async move {
            let mut q = sqlx::query(&sql);
            for a in args {
                q = q.bind(a);
            }
            q.execute(&pool)
                .await
                .map(|_| ())
                .map_err(|e| format!("error: demo edit: {e}"))
        }
    };
    for i in 0..3 {
        let crm_id = format!("ACC-{:05}", i * 10);
        let erp_rec = erp_id(store, "account", &crm_id).await?;
        run(crm, "UPDATE accounts SET name = name || ' (CRM rename)', industry = 'aerospace', updated_at = ? WHERE id = ?".into(), vec![now(), crm_id.clone()]).await?;
        run(erp, "UPDATE customers SET customer_name = 'ERP name ' || id, industry = 'defence', updated_at = ? WHERE id = ?".into(), vec![now(), erp_rec]).await?;
    }
    story.push(
        "account  (merge, name rule `source`): 3 accounts renamed and re-classified on both sides".into(),
    );
    for i in 0..3 {
        let crm_id = format!("CON-{:05}", i * 10);
        let erp_rec = erp_id(store, "contact", &crm_id).await?;
        run(
            crm,
            "UPDATE contacts SET email = 'crm.' || id || '@example.com', updated_at = ? WHERE id = ?".into(),
            vec![now(), crm_id],
        )
        .await?;
        run(
            erp,
            "UPDATE people SET email = 'erp.' || id || '@example.com', updated_at = ? WHERE id = ?".into(),
            vec![now(), erp_rec],
        )
        .await?;
    }
    story.push("contact  (last_write_wins): 3 emails changed in the CRM, then in the ERP".into());
    for i in 0..3 {
        let crm_id = format!("PRD-{:04}", i * 10);
        let erp_rec = erp_id(store, "product", &crm_id).await?;
        run(
            erp,
            "UPDATE products SET price = price + 1, updated_at = ? WHERE id = ?".into(),
            vec![now(), erp_rec],
        )
        .await?;
        run(
            crm,
            "UPDATE products SET price = price + 2, updated_at = ? WHERE id = ?".into(),
            vec![now(), crm_id],
        )
        .await?;
    }
    story.push("product  (source_wins): 3 prices changed on both sides".into());
    for i in 0..3 {
        let crm_id = format!("ORD-{:05}", i * 10);
        let erp_rec = erp_id(store, "order", &crm_id).await?;
        run(
            crm,
            "UPDATE orders SET status = 'cancelled', updated_at = ? WHERE id = ?".into(),
            vec![now(), crm_id],
        )
        .await?;
        run(
            erp,
            "UPDATE sales_orders SET status = 'invoiced', updated_at = ? WHERE id = ?".into(),
            vec![now(), erp_rec],
        )
        .await?;
    }
    story.push("order    (manual): 3 orders cancelled in the CRM but invoiced in the ERP".into());
    for i in 0..3 {
        let crm_id = format!("OL-{:05}", i * 10);
        let erp_rec = erp_id(store, "order_line", &crm_id).await?;
        run(
            crm,
            "UPDATE order_lines SET quantity = quantity + 10, updated_at = ? WHERE id = ?".into(),
            vec![now(), crm_id],
        )
        .await?;
        run(
            erp,
            "UPDATE sales_order_lines SET quantity = 0, updated_at = ? WHERE id = ?".into(),
            vec![now(), erp_rec],
        )
        .await?;
    }
    story.push("order_line (target_wins for acme): 3 quantities changed on both sides".into());
    run(crm, "INSERT INTO contacts (id, name, email, account_id, updated_at) VALUES ('CON-NEW01', 'New Person', 'new@example.com', 'ACC-00001', ?)".into(), vec![now()]).await?;
    story.push("and without conflict: a new CRM contact".into());
    Ok(story)
}

async fn run_once(job: &Job, label: &str) -> Result<RunState, String> {
    let started = Instant::now();
    println!("\n== {label}");
    let state = super::run::execute(job).await?;
    println!("({:.1} s)", started.elapsed().as_secs_f64());
    Ok(state)
}

/// Writes the demo's definition (its systems in `dir`) and partner graph to
/// `dir/workflows`, for `runs resume` and `syncd worker`; returns the folder.
fn write_definitions(dir: &Path) -> Result<std::path::PathBuf, String> {
    let workflows = dir.join("workflows");
    let write = |path: std::path::PathBuf, text: &str| {
        std::fs::create_dir_all(path.parent().expect("a folder"))
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| format!("error: {}: {e}", path.display()))
    };
    let here = format!("sqlite://{}/", dir.display());
    write(
        workflows.join("crm-to-erp.toml"),
        &WORKFLOW.replace("sqlite://demo-data/", &here),
    )?;
    write(workflows.join("partners/acme-saas.toml"), PARTNER_GRAPH)?;
    Ok(workflows)
}

/// Builds the demo in `dir` and runs it.
pub fn demo(dir: &Path) -> CmdResult {
    std::fs::create_dir_all(dir).map_err(|e| format!("error: {}: {e}", dir.display()))?;
    // Absolute, so that the commands printed at the end work from anywhere.
    let dir = &std::fs::canonicalize(dir).map_err(|e| format!("error: {}: {e}", dir.display()))?;
    // The example's second tenant, globex, has systems of its own there.
    let globex = dir.join("globex");
    std::fs::create_dir_all(&globex).map_err(|e| format!("error: {}: {e}", globex.display()))?;
    for name in ["crm.db", "erp.db", "syncd.db", "globex/crm.db", "globex/erp.db"] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
        }
    }
    let (crm_path, erp_path, state_path) = (dir.join("crm.db"), dir.join("erp.db"), dir.join("syncd.db"));
    runtime()?.block_on(async {
        let crm = open(&crm_path).await?;
        let erp = open(&erp_path).await?;
        let start = Utc::now() - chrono::Duration::days(1);
        let seeded = seed(&crm, &erp, start).await?;
        println!(
            "syncd demo: a CRM ({}) and an ERP ({}) with {seeded} records: accounts, contacts, products, \
             orders and order lines, {ERP_ONLY_CUSTOMERS} customers only in the ERP.",
            crm_path.display(),
            erp_path.display()
        );
        seed(
            &open(&globex.join("crm.db")).await?,
            &open(&globex.join("erp.db")).await?,
            start,
        )
        .await?;
        println!(
            "Tenant globex has a CRM and an ERP of its own in {} (the example's `[tenants.globex] urls`).",
            globex.display()
        );

        let mut wf = Workflow::parse("workflows/crm-to-erp.toml", WORKFLOW).map_err(|e| e.to_string())?;
        wf.source.url = Some(format!("sqlite://{}", crm_path.display()));
        wf.target.url = Some(format!("sqlite://{}", erp_path.display()));
        let graph = workflow::parse_graph("workflows/partners/acme-saas.toml", PARTNER_GRAPH)
            .map_err(|e| e.to_string())?;
        let store_url = format!("sqlite://{}", state_path.display());
        let store = Arc::new(
            Store::connect(&StoreConfig::new(&store_url), MappingCache::local())
                .await
                .map_err(|e| format!("error: {e}"))?,
        );
        let job = Job::prepare(
            store.clone(),
            wf,
            &graph,
            TenantId::from(TENANT),
            Options::default(),
        )
        .await
        .map_err(|e| format!("error: {e}"))?;
        println!("plan (partner acme-saas):\n{}", job.plan());

        run_once(&job, "run 1: first sync, both ways").await?;
        run_once(
            &job,
            "run 2: again at once: nothing changed, so nothing is written",
        )
        .await?;

        println!("\n== edits on both sides since run 2:");
        for line in edit_both_sides(&crm, &erp, &store).await? {
            println!("  {line}");
        }
        let state = run_once(&job, "run 3: the edits meet the strategies").await?;

        let conflicts = store
            .list_conflicts(&ConflictFilter {
                tenant: Some(TenantId::from(TENANT)),
                limit: 100,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("error: {e}"))?;
        println!("\n== conflicts recorded ({})", conflicts.len());
        for c in &conflicts {
            let outcome = match (&c.status, &c.resolution) {
                (ConflictStatus::Pending, _) => "pending: waits for a reviewer".to_owned(),
                (_, Some(r)) => format!("settled to {}", serde_json::Value::Object(r.clone())),
                _ => "resolved".into(),
            };
            println!(
                "  {:<10} {:<10} {:<16} [{}] {}",
                c.entity_type,
                c.source_record.id,
                c.strategy_applied,
                c.conflicting_fields.join(", "),
                outcome
            );
        }
        if state == RunState::Suspended {
            let workflows = write_definitions(dir)?;
            let pending: Vec<_> = conflicts
                .iter()
                .filter(|c| c.status == ConflictStatus::Pending)
                .collect();
            let run = pending
                .first()
                .and_then(|c| c.run_id)
                .map_or_else(|| "<RUN>".to_owned(), |r| r.to_string());
            // What a user with nothing but the README runs (the demo's own
            // command); with syncd installed, `syncd` alone.
            let syncd = "cargo run --release --";
            println!(
                "\nA worker runs both tenants on their schedules, on this state store (another one knows \
                 nothing of what was synced, and would copy it all again):\n  \
                 SYNCD_DATABASE_URL={store_url} {syncd} worker --workflows {}",
                workflows.display()
            );
            println!(
                "\nThe run is suspended until the parked order conflicts are decided. To decide them and \
                 finish the run:\n  export SYNCD_DATABASE_URL={store_url}\n  \
                 {syncd} conflicts list --tenant {TENANT} --status pending"
            );
            if let Some(first) = pending.first() {
                println!("  {syncd} conflicts show {}", first.id);
            }
            for (i, c) in pending.iter().enumerate() {
                let take = if i == 0 { "target" } else { "source" };
                println!(
                    "  {syncd} conflicts resolve {} --take {take} --by you@example.com",
                    c.id
                );
            }
            println!("  {syncd} runs resume {run} --workflows {}", workflows.display());
        }
        Ok(())
    })
}
