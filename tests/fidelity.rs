//! Values arrive exactly as the source holds them, through `syncd run`, or
//! the record fails alone and loudly: never a silent rounding, blanking or
//! null, and never a run that says "succeeded" while the systems differ.

use syncd_test_support as support;

use serde_json::Value;
use std::process::Command;
use support::TempDir;
use support::systems::{Kind, SystemDb};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::MappingStatus;
use syncd_store::cache::MappingCache;
use syncd_store::{Store, StoreConfig};

/// What one `syncd run` printed, and whether it exited 0.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The step table's row for `entity`'s forward step, by column name.
    fn counter(&self, entity: &str, column: &str) -> u64 {
        let mut lines = self.stdout.lines().skip_while(|l| !l.starts_with("stage"));
        let header: Vec<&str> = lines.next().expect("a step table").split_whitespace().collect();
        let at = header
            .iter()
            .position(|h| *h == column)
            .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
        let row = lines
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.get(1) == Some(&entity) && r.get(2) == Some(&"forward"))
            .unwrap_or_else(|| panic!("no forward step of {entity} in\n{}", self.stdout));
        row[at].parse().unwrap()
    }

    fn writes(&self, entity: &str) -> u64 {
        self.counter(entity, "created") + self.counter(entity, "updated")
    }

    /// Records created and updated by every sync step of `entity`, both
    /// directions.
    fn writes_both_ways(&self, entity: &str) -> u64 {
        let mut lines = self.stdout.lines().skip_while(|l| !l.starts_with("stage"));
        let header: Vec<&str> = lines.next().expect("a step table").split_whitespace().collect();
        let at = |c: &str| header.iter().position(|h| *h == c).unwrap();
        lines
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|r| r.get(1) == Some(&entity) && matches!(r.get(2), Some(&"forward" | &"backward")))
            .map(|r| r[at("created")].parse::<u64>().unwrap() + r[at("updated")].parse::<u64>().unwrap())
            .sum()
    }
}

/// A folder with a definition and the embedded state store, as an operator
/// would have it.
struct Setup {
    dir: TempDir,
    source: SystemDb,
    target: SystemDb,
}

impl Setup {
    async fn new(source: Kind, source_ddl: &str, target: Kind, target_ddl: &str) -> Option<Setup> {
        let dir = TempDir::new("fidelity");
        let source = SystemDb::create(source, &dir, "source").await?;
        let target = SystemDb::create(target, &dir, "target").await?;
        source.exec(source_ddl).await;
        target.exec(target_ddl).await;
        let definition = format!(
            r#"name = "exact"
direction = "one_way"
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
            source.url(),
            target.url()
        );
        std::fs::write(dir.0.join("exact.toml"), definition).unwrap();
        Some(Setup { dir, source, target })
    }

    /// Rewrites the definition with `change`.
    fn edit(&self, change: impl FnOnce(String) -> String) {
        let path = self.dir.0.join("exact.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, change(toml)).unwrap();
    }

    /// Makes the integration bidirectional, with `strategy` when given.
    fn both_ways(&self, strategy: Option<&str>) {
        let with = strategy
            .map(|s| format!("\nstrategy = \"{s}\""))
            .unwrap_or_default();
        self.edit(|t| {
            t.replace(
                "direction = \"one_way\"",
                &format!("direction = \"bidirectional\"{with}"),
            )
        });
    }

    fn run(&self, env: &[(&str, &str)]) -> Ran {
        self.run_with(&[], env)
    }

    /// `syncd run` with more `args` (`--page-size 2`), whatever its end:
    /// the caller says what it should have been.
    fn attempt(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .current_dir(&self.dir.0)
            .args(["run", "exact.toml", "--tenant", "t1"])
            .args(args)
            .env("SYNCD_DATABASE_URL", self.dir.sqlite_url("state.db"))
            .env_remove("SYNCD_REDIS_URL")
            .envs(env.iter().copied())
            .output()
            .expect("the syncd binary runs");
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `syncd run` with more `args` (`--page-size 2`), which must succeed.
    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let ran = self.attempt(args, env);
        assert!(ran.ok, "syncd run failed:\n{}\n{}", ran.stdout, ran.stderr);
        assert!(ran.stdout.contains("succeeded"), "{}", ran.stdout);
        support::assert_table_accounted(&ran.stdout);
        ran
    }

    /// Runs another `syncd` verb on the same state store; its stdout.
    fn syncd(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .current_dir(&self.dir.0)
            .args(args)
            .env("SYNCD_DATABASE_URL", self.dir.sqlite_url("state.db"))
            .env_remove("SYNCD_TOKEN")
            .output()
            .expect("the syncd binary runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    async fn mapping(&self, id: &str) -> syncd_core::mapping::IdMapping {
        let store = Store::connect(
            &StoreConfig::new(self.dir.sqlite_url("state.db")),
            MappingCache::local(),
        )
        .await
        .unwrap();
        store
            .find_mapping(
                &EntityScope::new("t1", "exact", "product"),
                syncd_core::record::Side::Source,
                id,
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a mapping for {id}"))
    }

    /// The target's values of text `column`, sorted (`(none)` for NULL).
    async fn target_texts(&self, column: &str) -> Vec<String> {
        let mut texts: Vec<String> = self
            .target
            .dump("ledger")
            .await
            .iter()
            .map(|r| r[column].as_str().unwrap_or("(none)").to_owned())
            .collect();
        texts.sort();
        texts
    }

    /// A job of the definition through `store` (a process of its own, with
    /// its own mapping cache), its tables bound.
    async fn job(&self, store: &std::sync::Arc<Store>) -> syncd_engine::run::executor::Job {
        let toml = std::fs::read_to_string(self.dir.0.join("exact.toml")).unwrap();
        let workflow = syncd_core::workflow::Workflow::parse("exact.toml", &toml).unwrap();
        syncd_engine::run::executor::Job::prepare(
            store.clone(),
            workflow,
            &syncd_core::plan::DependencyGraph::builtin_default(),
            "t1".into(),
            Default::default(),
        )
        .await
        .unwrap()
    }

    /// The embedded state store, as a process of its own opens it.
    async fn store(&self, cache: MappingCache) -> std::sync::Arc<Store> {
        std::sync::Arc::new(
            Store::connect(&StoreConfig::new(self.dir.sqlite_url("state.db")), cache)
                .await
                .unwrap(),
        )
    }

    /// `columns` of every row, as PostgreSQL's text of the row (exactly
    /// what it holds), in order. (Target ids are the target's own.)
    async fn pg_text(db: &SystemDb, columns: &str) -> Vec<String> {
        sqlx::query_scalar(&format!("SELECT ROW({columns})::text FROM ledger ORDER BY 1"))
            .fetch_all(db.pg_pool().unwrap())
            .await
            .unwrap()
    }

    async fn drop(self) {
        self.source.drop().await;
        self.target.drop().await;
    }
}

const PG_LEDGER: &str = "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric(38,18), big numeric, \
    ratio double precision, n bigint, at timestamptz, day date, ok boolean, ref uuid, doc jsonb, \
    updated_at timestamptz NOT NULL)";

/// `numeric` money went through a float: `12345678901234567890.123456789`
/// arrived as `12345678901234567000`, and a change in the last digit was
/// never written.
#[tokio::test]
async fn numeric_and_float_values_arrive_exactly_and_a_last_digit_change_propagates() {
    let Some(s) = Setup::new(Kind::Postgres, PG_LEDGER, Kind::Postgres, PG_LEDGER).await else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES
             ('a', 12345678901234567890.123456789012345678, 12345678901234567890.123456789, 0.1, 9223372036854775807,
              '2026-03-01 10:00:00.123456+02', '2026-03-01', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
              '{\"price\": 0.30000000000000000001, \"n\": [1, 2.50]}', now()),
             ('b', 0.000000000000000001, 0.30000000000000000001, 'Infinity', -9223372036854775808,
              '1999-12-31 23:59:59.999999+00', '0001-01-01', false, NULL, '\"text\"', now()),
             ('c', -99999999999999999999.999999999999999999, 'NaN', '-0', 0, NULL, NULL, NULL, NULL, '[]', now()),
             ('d', NULL, 'Infinity', 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, now()),
             ('e', 0, 1e-40, 1.7976931348623157e308, 1, NULL, NULL, NULL, NULL, '{}', now())",
        )
        .await;
    let first = s.run(&[]);
    assert_eq!(first.counter("product", "created"), 5, "{}", first.stdout);
    assert_eq!(first.counter("product", "failed"), 0, "{}", first.stdout);
    let columns = "n, amount, big, ratio, at, day, ok, ref, doc";
    let held = Setup::pg_text(&s.source, columns).await;
    assert_eq!(Setup::pg_text(&s.target, columns).await, held);
    assert!(
        held.iter()
            .any(|r| r.contains("12345678901234567890.123456789012345678"))
    );
    // Negative zero is a float's own: `-0` and `0` differ in their bits.
    let signs: Vec<(String, bool)> =
        sqlx::query_as("SELECT n::text, ratio::text = '-0' FROM ledger WHERE n = 0")
            .fetch_all(s.target.pg_pool().unwrap())
            .await
            .unwrap();
    assert_eq!(signs, vec![("0".to_owned(), true)]);

    // A second run writes nothing: exact values compare equal to themselves.
    assert_eq!(s.run(&[]).writes("product"), 0);

    s.source
        .exec(
            "UPDATE ledger SET amount = 12345678901234567890.123456789012345679,
                               big = 12345678901234567890.123456789000000001, updated_at = now() WHERE id = 'a'",
        )
        .await;
    let changed = s.run(&[]);
    assert_eq!(changed.counter("product", "updated"), 1, "{}", changed.stdout);
    assert_eq!(
        Setup::pg_text(&s.target, columns).await,
        Setup::pg_text(&s.source, columns).await
    );
    assert!(Setup::pg_text(&s.target, "amount, big").await.contains(
        &"(12345678901234567890.123456789012345679,12345678901234567890.123456789000000001)".to_owned()
    ));
    assert_eq!(s.run(&[]).writes("product"), 0);
    s.drop().await;
}

/// SQLite text that is not UTF-8 arrived as `''`, and ±Infinity as NULL.
#[tokio::test]
async fn sqlite_infinities_arrive_and_text_that_is_not_utf8_fails_its_record_alone() {
    let Some(s) = Setup::new(
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, ratio REAL, updated_at TEXT NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, ratio double precision, updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('a', 'plain', 9e999, '2026-01-01T00:00:00Z');
             INSERT INTO ledger VALUES ('b', CAST(x'c328ff41' AS TEXT), 1.5, '2026-01-01T00:00:01Z');
             INSERT INTO ledger VALUES ('c', 'minus', -9e999, '2026-01-01T00:00:02Z');",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 2, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 1, "{}", ran.stdout);
    assert_eq!(
        Setup::pg_text(&s.target, "name, ratio").await,
        vec!["(minus,-Infinity)".to_owned(), "(plain,Infinity)".to_owned()]
    );
    let bad = s.mapping("b").await;
    assert_eq!(bad.status, MappingStatus::Failed);
    let why = bad.last_error.unwrap();
    for part in ["product", "`b`", "field `name`", "not valid UTF-8", "x'c328ff41'"] {
        assert!(why.contains(part), "{part} in {why}");
    }
    // Fixed in the source, the record syncs with the next run.
    s.source
        .exec("UPDATE ledger SET name = 'fixed', updated_at = '2026-01-01T00:00:03Z' WHERE id = 'b'")
        .await;
    let again = s.run(&[]);
    assert_eq!(again.counter("product", "created"), 1, "{}", again.stdout);
    assert_eq!(s.mapping("b").await.status, MappingStatus::Mapped);
    s.drop().await;
}

/// A value the target column cannot hold (more digits than its scale, a
/// NaN in SQLite) fails that record with the field and the reason; the rest
/// is written.
#[tokio::test]
async fn a_value_the_target_cannot_hold_fails_its_record_naming_the_field() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric, ratio double precision,
                              updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, amount NUMERIC(10,2), ratio REAL, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('a', 12.5, 0.1, now()), ('b', 12345678901234567890.5, 1, now()),
                                       ('c', 1, 'NaN', now()), ('d', 7, '-0', now())",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 3, "{}", ran.stdout);
    assert!(
        ran.stdout.contains(
            "records failed: 3 product (forward); why:\n  \
             syncd mappings list --tenant t1 --integration exact --entity product --status failed\n"
        ),
        "{}",
        ran.stdout
    );
    for (id, field, why) in [
        ("b", "amount", "cannot be held exactly by a NUMERIC column"),
        ("c", "ratio", "NaN cannot be held"),
        ("d", "ratio", "-0 cannot be held"),
    ] {
        let m = s.mapping(id).await;
        assert_eq!(m.status, MappingStatus::Failed, "{id}");
        let error = m.last_error.unwrap();
        assert!(error.contains(&format!("field `{field}`")), "{id}: {error}");
        assert!(error.contains("entity `product`"), "{id}: {error}");
        assert!(error.contains(why), "{id}: {error}");
    }
    let rows = s.target.dump("ledger").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["amount"], serde_json::json!(12.5));

    // A synced record edited to a value the target cannot hold keeps its
    // mapping and its last agreed values, with the reason; the target
    // keeps what it had. Fixed in the source, it syncs.
    s.source
        .exec("UPDATE ledger SET amount = 0.30000000000000000001, updated_at = now() WHERE id = 'a'")
        .await;
    let refused = s.run(&[]);
    assert_eq!(refused.counter("product", "updated"), 0, "{}", refused.stdout);
    assert_eq!(refused.counter("product", "failed"), 4, "{}", refused.stdout);
    let a = s.mapping("a").await;
    assert_eq!(a.status, MappingStatus::Mapped);
    let error = a.last_error.unwrap_or_default();
    assert!(
        error.contains("field `amount`") && error.contains("0.30000000000000000001 cannot be held exactly"),
        "{error}"
    );
    assert_eq!(a.base.unwrap()["amount"], serde_json::json!(12.5));
    assert_eq!(
        s.target.dump("ledger").await[0]["amount"],
        serde_json::json!(12.5)
    );
    // An operator listing what failed sees it, beside the records never
    // created.
    let listed = s.syncd(&[
        "mappings",
        "list",
        "--tenant",
        "t1",
        "--integration",
        "exact",
        "--entity",
        "product",
        "--status",
        "failed",
    ]);
    let row = |id: &str| {
        listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("{id} in\n{listed}"))
            .to_owned()
    };
    assert!(
        row("a").contains("mapped") && row("a").contains("cannot be held exactly"),
        "{listed}"
    );
    for id in ["b", "c", "d"] {
        assert!(row(id).contains("failed"), "{listed}");
    }
    s.source
        .exec("UPDATE ledger SET amount = 0.25, updated_at = now() WHERE id = 'a'")
        .await;
    let fixed = s.run(&[]);
    assert_eq!(fixed.counter("product", "updated"), 1, "{}", fixed.stdout);
    assert_eq!(
        s.target.dump("ledger").await[0]["amount"],
        serde_json::json!(0.25)
    );
    s.drop().await;
}

/// A target record whose update time could not be read was dropped from
/// the comparison: a source edit was never written, and the run succeeded.
#[tokio::test]
async fn a_target_record_without_a_readable_update_time_is_still_compared_and_updated() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'first', now()), ('b', 'first', now())")
        .await;
    s.run(&[]);
    s.target.exec("UPDATE ledger SET updated_at = 'sometime'").await;
    s.source
        .exec("UPDATE ledger SET name = 'second', updated_at = now() WHERE id = 'a'")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "updated"), 1, "{}", ran.stdout);
    let mut names: Vec<Value> = s
        .target
        .dump("ledger")
        .await
        .into_iter()
        .map(|r| r["name"].clone())
        .collect();
    names.sort_by_key(|n| n.to_string());
    assert_eq!(
        names,
        vec![serde_json::json!("first"), serde_json::json!("second")]
    );
    s.drop().await;
}

/// One record over `SYNCD_MAX_SNAPSHOT_BYTES` failed every run of its
/// entity type, and left the rest of its page written with `pending`
/// mappings.
#[tokio::test]
async fn an_oversized_record_fails_alone_and_the_rest_of_its_page_commits() {
    let ddl = "CREATE TABLE ledger (id text PRIMARY KEY, body text, updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Postgres, ddl, Kind::Postgres, ddl).await else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger SELECT 'r' || i, 'small', now() FROM generate_series(1, 20) i;
             INSERT INTO ledger VALUES ('huge', repeat('x', 20000), now());",
        )
        .await;
    let limit = [("SYNCD_MAX_SNAPSHOT_BYTES", "10000")];
    let ran = s.run(&limit);
    assert_eq!(ran.counter("product", "created"), 20, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 1, "{}", ran.stdout);
    let huge = s.mapping("huge").await;
    assert_eq!(huge.status, MappingStatus::Failed);
    let why = huge.last_error.unwrap();
    assert!(why.contains("over the limit of 10000 bytes"), "{why}");
    assert!(why.contains("product `huge`"), "{why}");
    for i in 1..=20 {
        assert_eq!(s.mapping(&format!("r{i}")).await.status, MappingStatus::Mapped);
    }
    assert_eq!(Setup::pg_text(&s.target, "body").await.len(), 20);
    // The entity's next runs go on: a new record and an edit arrive.
    s.source
        .exec("INSERT INTO ledger VALUES ('r21', 'new', now()); UPDATE ledger SET body = 'edited', updated_at = now() WHERE id = 'r1'")
        .await;
    let next = s.run(&limit);
    assert_eq!(next.counter("product", "created"), 1, "{}", next.stdout);
    assert_eq!(next.counter("product", "updated"), 1, "{}", next.stdout);
    s.drop().await;
}

/// An update the database refuses (here a CHECK constraint) fails that
/// record alone: the rest of the batch is written, and the step goes on.
/// Every later run tries it again and counts it, so that once the cause
/// is mended the record is written by the next run (it was left differing,
/// with runs that counted nothing, until the record changed again).
#[tokio::test]
async fn an_update_the_database_refuses_fails_alone() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric, updated_at timestamptz NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric CHECK (amount >= 0),
                              updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    // Without a lookback: no later scan reads a record again unless it
    // changed. Verified on every run (whose confirm once cleared the
    // error the refused pass reads them by).
    let path = s.dir.0.join("exact.toml");
    let definition = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "connector = \"sql\"\n",
            "connector = \"sql\"\nlookback = \"0s\"\n",
        )
        .replace(
            "table = \"ledger\"\n",
            "table = \"ledger\"\nverify_after = \"0s\"\nreconcile_every = \"never\"\n",
        );
    std::fs::write(&path, definition).unwrap();
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 1, now()), ('b', 2, now()), ('c', 3, now())")
        .await;
    s.run(&[]);
    s.source
        .exec("UPDATE ledger SET amount = amount * 10 - 25, updated_at = now()")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "updated"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 2, "{}", ran.stdout);
    for id in ["a", "b"] {
        let m = s.mapping(id).await;
        assert_eq!(m.status, MappingStatus::Mapped);
        let error = m.last_error.unwrap_or_default();
        assert!(error.contains("check constraint"), "{id}: {error}");
    }
    assert_eq!(Setup::pg_text(&s.target, "amount").await, ["(1)", "(2)", "(5)"]);

    // Nothing changed: each run tries them again, and counts them.
    let again = s.run(&[]);
    assert_eq!(again.counter("product", "failed"), 2, "{}", again.stdout);
    assert_eq!(again.counter("product", "updated"), 0, "{}", again.stdout);
    // The cause is mended (and `b` is back to what the target holds,
    // without a new time): the next run writes `a`, and clears both.
    s.source.exec("UPDATE ledger SET amount = 2 WHERE id = 'b'").await;
    s.target
        .exec("ALTER TABLE ledger DROP CONSTRAINT ledger_amount_check")
        .await;
    let mended = s.run(&[]);
    assert_eq!(mended.counter("product", "failed"), 0, "{}", mended.stdout);
    assert_eq!(mended.counter("product", "updated"), 1, "{}", mended.stdout);
    assert_eq!(Setup::pg_text(&s.target, "amount").await, ["(-15)", "(2)", "(5)"]);
    for id in ["a", "b"] {
        assert_eq!(s.mapping(id).await.last_error, None, "{id}");
    }
    let quiet = s.run(&[]);
    assert_eq!(quiet.counter("product", "failed"), 0, "{}", quiet.stdout);
    assert_eq!(quiet.counter("product", "updated"), 0, "{}", quiet.stdout);
    s.drop().await;
}

/// A write the database skips without an error (a trigger that drops it:
/// PostgreSQL's `RETURN NULL`, SQLite's `RAISE(IGNORE)`; or a row deleted
/// since it was read) updates no row. It was counted updated, and its
/// mapping recorded values the target never took: every later run said
/// succeeded. It fails, saying so, and is written once the target takes it.
#[tokio::test]
async fn an_update_no_row_took_fails_its_record() {
    let pg = "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)";
    let lite = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let skip_pg = "CREATE FUNCTION silent() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                   IF NEW.name = 'silent' THEN RETURN NULL; END IF; RETURN NEW; END $$; \
                   CREATE TRIGGER silent BEFORE UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION silent()";
    let skip_lite = "CREATE TRIGGER silent BEFORE UPDATE ON ledger WHEN NEW.name = 'silent' \
                     BEGIN SELECT RAISE(IGNORE); END";
    for (kind, ddl, skip) in [(Kind::Postgres, pg, skip_pg), (Kind::Sqlite, lite, skip_lite)] {
        let Some(s) = Setup::new(Kind::Postgres, pg, kind, ddl).await else {
            return;
        };
        let path = s.dir.0.join("exact.toml");
        let definition = std::fs::read_to_string(&path).unwrap().replace(
            "connector = \"sql\"\n",
            "connector = \"sql\"\nlookback = \"0s\"\n",
        );
        std::fs::write(&path, definition).unwrap();
        s.source
            .exec("INSERT INTO ledger VALUES ('a', 'one', now()), ('b', 'two', now())")
            .await;
        s.run(&[]);
        s.target.exec(skip).await;
        s.source
            .exec("UPDATE ledger SET name = 'silent', updated_at = now()")
            .await;
        let ran = s.run(&[]);
        assert_eq!(ran.counter("product", "failed"), 2, "{kind:?}: {}", ran.stdout);
        assert_eq!(ran.counter("product", "updated"), 0, "{kind:?}: {}", ran.stdout);
        let error = s.mapping("a").await.last_error.unwrap_or_default();
        assert!(error.contains("no row was updated"), "{kind:?}: {error}");
        s.target
            .exec(match kind {
                Kind::Sqlite => "DROP TRIGGER silent",
                _ => "DROP TRIGGER silent ON ledger",
            })
            .await;
        let mended = s.run(&[]);
        assert_eq!(
            mended.counter("product", "updated"),
            2,
            "{kind:?}: {}",
            mended.stdout
        );
        assert_eq!(
            mended.counter("product", "failed"),
            0,
            "{kind:?}: {}",
            mended.stdout
        );
        s.drop().await;
    }
}

/// A `char(n)` id shorter than `n` is read with its padding, which the
/// mapping keeps; reconciliation asked PostgreSQL for it as `id::text`,
/// which drops the padding, took the record for gone and deleted its copy
/// in the other system.
#[tokio::test]
async fn a_padded_char_id_is_not_taken_for_gone_by_reconciliation() {
    let ddl = "CREATE TABLE ledger (id char(5) PRIMARY KEY, name text, updated_at timestamptz NOT NULL)";
    let target = "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Postgres, ddl, Kind::Postgres, target).await else {
        return;
    };
    let path = s.dir.0.join("exact.toml");
    let definition = std::fs::read_to_string(&path).unwrap().replace(
        "table = \"ledger\"\n",
        "table = \"ledger\"\nreconcile_every = \"0s\"\ndelete_brake = { percent = 100, max = 500 }\n",
    );
    std::fs::write(&path, definition).unwrap();
    s.source
        .exec("INSERT INTO ledger VALUES ('ab', 'short', now()), ('abcde', 'full', now())")
        .await;
    let first = s.run(&[]);
    assert_eq!(first.counter("product", "created"), 2, "{}", first.stdout);
    for _ in 0..2 {
        s.run(&[]);
        assert_eq!(Setup::pg_text(&s.target, "name").await, ["(full)", "(short)"]);
        assert_eq!(s.mapping("ab   ").await.status, MappingStatus::Mapped);
    }
    s.drop().await;
}

const MARIADB_LEDGER: &str = "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, amount DECIMAL(65,30), \
    big BIGINT UNSIGNED, label TEXT, doc JSON, at DATETIME(6), ratio DOUBLE, updated_at DATETIME(6) NOT NULL)";
const PG_WIDE_LEDGER: &str = "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric, big numeric(21,0), \
    label text, doc jsonb, at timestamptz, ratio double precision, updated_at timestamptz NOT NULL)";

/// id, amount, big, label, doc, at (UTC), ratio.
type LedgerRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
);

/// Each ledger row's values as PostgreSQL holds them, comparable with
/// what MariaDB holds: numbers canonical, the document parsed, the time in
/// UTC, the double's bits.
async fn pg_ledger(db: &SystemDb) -> Vec<Vec<String>> {
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT id, amount::text, big::text, label, doc::text, \
             to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), ratio FROM ledger ORDER BY id",
    )
    .fetch_all(db.pg_pool().unwrap())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, amount, big, label, doc, at, ratio)| {
            let number = |t: Option<String>| t.map(|t| syncd_core::value::canonical_number(&t).unwrap());
            let doc = doc.map(|d| serde_json::from_str::<Value>(&d).unwrap().to_string());
            [
                Some(id),
                number(amount),
                number(big),
                label,
                doc,
                at,
                ratio.map(|r| format!("{:x}", r.to_bits())),
            ]
            .map(|v| v.unwrap_or_else(|| "NULL".into()))
            .to_vec()
        })
        .collect()
}

/// MariaDB's own types (`DECIMAL(65,30)`, `BIGINT UNSIGNED` at its top,
/// utf8mb4 text, `JSON`, `DATETIME(6)`, `DOUBLE`) arrive in PostgreSQL
/// exactly; and the other way, a value MariaDB cannot hold (a 31st
/// decimal, 2^64) fails its record naming the field while the rest arrive
/// exactly.
#[tokio::test]
async fn mariadb_values_arrive_exactly_and_one_it_cannot_hold_fails_naming_the_field() {
    let rows = "('r1', '12345678901234567890123456789012345.123456789012345678901234567890', \
                 18446744073709551615, '😀 naïve ÷ 漢字', '{\"a\": [1, 2.50], \"b\": null}', \
                 '2026-03-04 05:06:07.123456', 0.1, '2026-01-01 00:00:00'), \
                ('r2', '-0.000000000000000000000000000001', 0, '', '[]', '1000-01-01 00:00:00', -1.5e300, \
                 '2026-01-01 00:00:01')";
    let Some(to_pg) = Setup::new(Kind::Mariadb, MARIADB_LEDGER, Kind::Postgres, PG_WIDE_LEDGER).await else {
        return;
    };
    to_pg
        .source
        .exec(&format!("INSERT INTO ledger VALUES {rows}"))
        .await;
    to_pg.run(&[]);
    let minus = format!("{:x}", (-1.5e300f64).to_bits());
    let expected = vec![
        vec![
            "r1",
            "12345678901234567890123456789012345.12345678901234567890123456789",
            "18446744073709551615",
            "😀 naïve ÷ 漢字",
            r#"{"a":[1,2.50],"b":null}"#,
            "2026-03-04 05:06:07.123456",
            "3fb999999999999a",
        ],
        vec![
            "r2",
            "-0.000000000000000000000000000001",
            "0",
            "",
            "[]",
            "1000-01-01 00:00:00.000000",
            minus.as_str(),
        ],
    ];
    let held = pg_ledger(&to_pg.target).await;
    let target_ids: Vec<&str> = held.iter().map(|r| r[0].as_str()).collect();
    // Text ids arrive as the target's own uuids: compare the values.
    assert_eq!(target_ids.len(), 2);
    let values = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = rows.iter().map(|r| r[1..].to_vec()).collect();
        v.sort();
        v
    };
    let expected: Vec<Vec<String>> = expected
        .into_iter()
        .map(|r| r.into_iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(values(&held), values(&expected));
    // Nothing to write again.
    assert_eq!(to_pg.run(&[]).writes("product"), 0);
    to_pg.drop().await;

    // PostgreSQL -> MariaDB: r3 has a 31st decimal, r4 is 2^64.
    let Some(to_my) = Setup::new(Kind::Postgres, PG_WIDE_LEDGER, Kind::Mariadb, MARIADB_LEDGER).await else {
        return;
    };
    to_my
        .source
        .exec(
            "INSERT INTO ledger VALUES \
             ('r1', 12345678901234567890123456789012345.12345678901234567890123456789, 18446744073709551615, \
              '😀 naïve ÷ 漢字', '{\"a\": [1, 2.50]}', '2026-03-04 05:06:07.123456+00', 0.1, now()), \
             ('r3', 0.1234567890123456789012345678901, 1, 'x', NULL, NULL, NULL, now()), \
             ('r4', 1, 18446744073709551616, 'y', NULL, NULL, NULL, now())",
        )
        .await;
    let ran = to_my.run(&[]);
    assert_eq!(
        ran.counter("product", "created"),
        1,
        "{}\n{:?}",
        ran.stdout,
        to_my.mapping("r1").await.last_error
    );
    assert_eq!(ran.counter("product", "failed"), 2, "{}", ran.stdout);
    let r3 = to_my.mapping("r3").await;
    assert_eq!(r3.status, MappingStatus::Failed);
    let why = r3.last_error.unwrap_or_default();
    assert!(
        why.contains("field `amount`") && why.contains("31 digits after the point"),
        "{why}"
    );
    let r4 = to_my.mapping("r4").await;
    let why = r4.last_error.unwrap_or_default();
    assert!(
        why.contains("field `big`") && why.contains("unsigned 64-bit"),
        "{why}"
    );
    // What MariaDB holds of r1, read with its own means.
    let SystemDb::Mariadb { db } = &to_my.target else {
        unreachable!()
    };
    let held: (String, String, String, String, String, f64) = sqlx::query_as(
        "SELECT CAST(amount AS CHAR), CAST(big AS CHAR), label, CAST(doc AS CHAR), \
         DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f'), ratio FROM ledger",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        syncd_core::value::canonical_number(&held.0).as_deref(),
        Some("12345678901234567890123456789012345.12345678901234567890123456789")
    );
    assert_eq!(held.1, "18446744073709551615");
    assert_eq!(held.2, "😀 naïve ÷ 漢字");
    assert_eq!(
        serde_json::from_str::<Value>(&held.3).unwrap(),
        serde_json::from_str::<Value>(r#"{"a": [1, 2.50]}"#).unwrap()
    );
    assert_eq!(held.4, "2026-03-04 05:06:07.123456");
    assert_eq!(held.5.to_bits(), 0.1f64.to_bits());
    to_my.drop().await;
}

/// A PostgreSQL row is read as one JSON document: by `row_to_json` when
/// every column of its table is a plain scalar, by `to_jsonb` when the
/// table has a document column (whose text `row_to_json` would pass
/// through unnormalized). Both readings must give every value the same:
/// the same rows, in a table of each kind, read to the same records and
/// the same unreadable rows.
#[tokio::test]
async fn a_postgres_row_reads_the_same_with_or_without_a_document_column() {
    use syncd_connect::FieldColumn;
    use syncd_connect::sql::SqlConnector;
    use syncd_core::value::Class;
    let dir = TempDir::new("two-readings");
    let Some(db) = SystemDb::create(Kind::Postgres, &dir, "system").await else {
        return;
    };
    let columns = "id text PRIMARY KEY, d double precision, r real, n numeric, m numeric(38,18), b bigint, \
                   i integer, s smallint, t text, v varchar(20), c char(5), ok boolean, at timestamptz, \
                   lt timestamp, day date, u uuid, raw bytea, updated_at timestamptz NOT NULL";
    db.exec(&format!(
        "CREATE TABLE plain ({columns}); CREATE TABLE documented ({columns}, doc jsonb);
         INSERT INTO plain VALUES
         ('a', 'NaN', 'Infinity', 'NaN', 12345678901234567890.123456789012345678, 9223372036854775807,
          -2147483648, 32767, E'tab\\there \"q\" \\\\ back \\u00e9 😀 \\u0001', 'x', 'ab', true,
          '2026-01-01 00:00:00.123456+00', '2026-01-01 00:00:00.000001', '2026-02-28',
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff0a5c', '2026-01-01 00:00:01+00'),
         ('b', '-0', '-0', 'Infinity', 0.000000000000000001, -9223372036854775808, 0, 0, '', '', '', false,
          '1970-01-01 00:00:00+00', '0001-01-01 00:00:00', '0001-01-01', '00000000-0000-0000-0000-000000000000',
          '\\x', '2026-01-01 00:00:02+00'),
         ('c', 1e300, 3.4e38, '-Infinity', -1.5, 1, 1, 1, '{{\"not\": \"json\"}}', 'v', 'c', true,
          '2026-06-30 23:59:59.999999+00', '2026-06-30 12:00:00', '2026-06-30', gen_random_uuid(), '\\x7b7d',
          '2026-01-01 00:00:03+00'),
         ('d', 0.1, 0.1, 1.50, 1.5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          '2026-01-01 00:00:04+00'),
         ('e', 5e-324, 1.17549435e-38, 1e100, -0.000000000000000001, -1, -1, -1, 'line\nbreak', 'ü', 'ß',
          false, '2026-01-01 00:00:00+05:30', '2026-01-01 00:00:00.5', '2000-02-29',
          'ffffffff-ffff-ffff-ffff-ffffffffffff', '\\xffffffff', '2026-01-01 00:00:05+00'),
         ('f', 'Infinity', '-Infinity', 'NaN', 0, 0, 0, 0, 'x', 'x', 'x', true, 'infinity', '-infinity',
          'infinity', NULL, NULL, '2026-01-01 00:00:06+00');
         INSERT INTO documented SELECT *, '{{\"k\": 1e2, \"k\": [1.0]}}' FROM plain;"
    ))
    .await;
    let system = SqlConnector::connect("system", &db.url()).await.unwrap();
    let mut read = Vec::new();
    for table in ["plain", "documented"] {
        let types = system.columns(table).await.unwrap().unwrap();
        let fields: Vec<FieldColumn> = types
            .iter()
            .filter(|(c, _)| !["id", "updated_at", "doc"].contains(&c.as_str()))
            .map(|(c, t)| {
                let class = Class::postgres(t);
                FieldColumn {
                    cdm: c.clone(),
                    column: c.clone(),
                    class,
                    kind: class.kind(),
                }
            })
            .collect();
        let b = system
            .binding("ledger", table, types, fields, None, None)
            .unwrap();
        let page = system.read_changes(&b, None, 100).await.unwrap();
        let bad: Vec<(String, String)> = page.bad.into_iter().map(|b| (b.id, b.reason)).collect();
        read.push((page.records, bad));
    }
    let (plain, documented) = (&read[0], &read[1]);
    assert_eq!(
        plain.0.len() + plain.1.len(),
        6,
        "every row read, as a record or as unreadable"
    );
    assert_eq!(
        plain.1, documented.1,
        "the same rows are unreadable, for the same reasons"
    );
    for (p, d) in plain.0.iter().zip(&documented.0) {
        assert_eq!(
            (&p.id, &p.fields),
            (&d.id, &d.fields),
            "row {} reads the same",
            p.id
        );
    }
    assert_eq!(plain.0.len(), documented.0.len());
    let b = plain.0.iter().find(|r| r.id == "b").expect("row b is readable");
    assert_eq!(
        b.fields["d"],
        Value::String("-0".into()),
        "a negative zero stays negative"
    );
    drop(system);
    db.drop().await;
}

/// MariaDB stores another value, without an error outside strict mode, for
/// an `ENUM` or `SET` value that is not one of its members as it gives them
/// back, a year in two digits, a `BINARY(n)` value shorter than `n` (padded
/// with zeros) and a `DOUBLE(M,D)` value with more than `D` decimals
/// (rounded). Each such record fails alone, naming its field, and the
/// values the columns hold exactly arrive as they are, a `BIT(8)` as the
/// number it holds (read back as that number, not as its byte).
#[tokio::test]
async fn mariadb_columns_that_would_store_another_value_fail_their_record() {
    let Some(to_my) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, kind text, tags text, yr text, at time(6), raw bytea, \
         ratio double precision, flags integer, updated_at timestamptz NOT NULL)",
        Kind::Mariadb,
        "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, kind ENUM('a','b','c'), tags SET('a','b','c'), yr YEAR, \
         at TIME(6), raw BINARY(2), ratio DOUBLE(10,2), flags BIT(8), updated_at DATETIME(6) NOT NULL)",
    )
    .await
    else {
        return;
    };
    to_my
        .source
        .exec(
            "INSERT INTO ledger VALUES \
             ('r1', 'b', 'a,c', '2024', '12:34:56.5', '\\x0102', 3.5, 5, now()), \
             ('r2', '2', 'a', '2024', NULL, NULL, NULL, NULL, now()), \
             ('r3', 'a', 'b,a', '2024', NULL, NULL, NULL, NULL, now()), \
             ('r4', 'a', 'a', '99', NULL, NULL, NULL, NULL, now()), \
             ('r5', 'a', 'a', '2024', NULL, '\\x01', NULL, NULL, now()), \
             ('r6', 'a', 'a', '2024', NULL, NULL, 3.14159, NULL, now()), \
             ('r7', 'a', 'a', '2024', NULL, NULL, NULL, 300, now())",
        )
        .await;
    let ran = to_my.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 6, "{}", ran.stdout);
    for (id, field, says) in [
        (
            "r2",
            "kind",
            "`2` is not one of the ENUM's values ('a', 'b', 'c')",
        ),
        ("r3", "tags", "`b,a` is not a SET value"),
        ("r4", "yr", "`99` is not a year from 1901 to 2155"),
        ("r5", "raw", "1 bytes are not the 2 a BINARY(2) column holds"),
        (
            "r6",
            "ratio",
            "3.14159 has more digits after the point than the column (double(10,2)) keeps (2)",
        ),
    ] {
        let m = to_my.mapping(id).await;
        assert_eq!(m.status, MappingStatus::Failed, "{id}");
        let why = m.last_error.unwrap_or_default();
        assert!(
            why.contains(&format!("field `{field}`")) && why.contains(says),
            "{id}: {why}"
        );
    }
    let SystemDb::Mariadb { db } = &to_my.target else {
        unreachable!()
    };
    let held: Vec<(String, String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT CAST(kind AS CHAR), CAST(tags AS CHAR), CAST(yr AS CHAR), CAST(at AS CHAR), HEX(raw), \
         CAST(ratio AS CHAR), CAST(CAST(flags AS UNSIGNED) AS CHAR) FROM ledger",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected = ["b", "a,c", "2024", "12:34:56.500000", "0102", "3.50", "5"].map(str::to_owned);
    assert_eq!(held, vec![expected.into()]);
    assert_eq!(to_my.run(&[]).writes("product"), 0);
    to_my.drop().await;
}

/// A value longer than a MariaDB `TINYTEXT`, `TEXT` or `TINYBLOB` holds in
/// bytes: an UPDATE that joins the rows it writes had MariaDB cut it down
/// to what the length prefix holds (300 characters into a TINYTEXT became
/// 44), strict mode or not, and the run counted it `updated`. The update
/// is refused now, naming the field, and the target keeps what it held.
#[tokio::test]
async fn text_longer_than_a_mariadb_text_column_holds_fails_its_update() {
    let Some(to_my) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, tt text, tx text, tb bytea, updated_at timestamptz NOT NULL)",
        Kind::Mariadb,
        "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, tt TINYTEXT, tx TEXT, tb TINYBLOB, \
         updated_at DATETIME(6) NOT NULL)",
    )
    .await
    else {
        return;
    };
    to_my
        .source
        .exec(
            "INSERT INTO ledger VALUES ('t', 'short', 'short', '\\x01', now() - interval '1 hour'), \
             ('x', 'short', 'short', '\\x01', now() - interval '1 hour'), \
             ('b', 'short', 'short', '\\x01', now() - interval '1 hour')",
        )
        .await;
    assert_eq!(to_my.run(&[]).counter("product", "created"), 3);
    to_my
        .source
        .exec(
            "UPDATE ledger SET tt = repeat('u', 300), updated_at = now() WHERE id = 't'; \
             UPDATE ledger SET tx = repeat('y', 65600), updated_at = now() WHERE id = 'x'; \
             UPDATE ledger SET tb = decode(repeat('ab', 300), 'hex'), updated_at = now() WHERE id = 'b'",
        )
        .await;
    let ran = to_my.run(&[]);
    assert_eq!(ran.counter("product", "failed"), 3, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "updated"), 0, "{}", ran.stdout);
    for (id, field, says) in [
        (
            "t",
            "tt",
            "300 bytes of UTF-8 are more than the column (tinytext) holds (255 bytes)",
        ),
        (
            "x",
            "tx",
            "65600 bytes of UTF-8 are more than the column (text) holds (65535 bytes)",
        ),
        (
            "b",
            "tb",
            "300 bytes are more than the column (tinyblob) holds (255 bytes)",
        ),
    ] {
        let why = to_my.mapping(id).await.last_error.unwrap_or_default();
        assert!(
            why.contains(&format!("field `{field}`")) && why.contains(says),
            "{id}: {why}"
        );
    }
    let SystemDb::Mariadb { db } = &to_my.target else {
        unreachable!()
    };
    let held: Vec<(i64, i64, i64)> = sqlx::query_as("SELECT LENGTH(tt), LENGTH(tx), LENGTH(tb) FROM ledger")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(held, vec![(5, 5, 1); 3]);
    to_my.drop().await;
}

/// PostgreSQL's array input reads each element as a value of the element
/// type, rounding a `numeric(10,2)` element (1.005 became 1.01), cutting
/// spaces past a `varchar(3)` element's length and dropping a `time`
/// element's offset, without a word; in a bidirectional integration the
/// changed arrays were then written back over the source. Such a record
/// fails now naming the field and the element; arrays that fit arrive as
/// they are.
#[tokio::test]
async fn an_array_element_its_element_type_would_change_fails_its_record() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, amounts numeric[], codes text[], times text[], \
         updated_at timestamptz NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, amounts numeric(10,2)[], codes varchar(3)[], \
         times time[], updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES \
             ('fits', '{1.25,2}', '{abc,é}', '{10:00:00}', now()), \
             ('rounds', '{1.005,2}', NULL, NULL, now()), \
             ('spaces', NULL, '{\"ab    \"}', NULL, now()), \
             ('offset', NULL, NULL, '{10:00:00,10:00:00+05}', now())",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 3, "{}", ran.stdout);
    for (id, field, says) in [
        (
            "rounds",
            "amounts",
            "element [1] of the array (numeric(10,2)): 1.005 has 3 digits after the point",
        ),
        (
            "spaces",
            "codes",
            "element [1] of the array (character varying(3)): 6 characters are more",
        ),
        (
            "offset",
            "times",
            "element [2] of the array (time without time zone): 10:00:00+05 is a time of day",
        ),
    ] {
        let why = s.mapping(id).await.last_error.unwrap_or_default();
        assert!(
            why.contains(&format!("field `{field}`")) && why.contains(says),
            "{id}: {why}"
        );
    }
    let rows = s.target.dump("ledger").await;
    assert_eq!(rows.len(), 1);
    // (A `numeric(10,2)` element keeps two digits: the same number.)
    assert_eq!(rows[0]["amounts"].to_string(), "[1.25,2.00]");
    assert_eq!(rows[0]["codes"], serde_json::json!(["abc", "é"]));
    assert_eq!(rows[0]["times"], serde_json::json!(["10:00:00"]));
    assert_eq!(s.run(&[]).writes("product"), 0);
    s.drop().await;
}

/// Text longer than a PostgreSQL `varchar(n)` fails its record naming the
/// field (PostgreSQL's own refusal names no column), and so does text that
/// is longer only by trailing spaces, which PostgreSQL would cut off
/// without a word; text that fits arrives as it is.
#[tokio::test]
async fn text_longer_than_a_postgres_varchar_fails_naming_the_field() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, label text, updated_at timestamptz NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, label varchar(3), updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('fits', 'abc', now()), ('long', 'abcd', now()), ('spaces', 'ab  ', now())")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 2, "{}", ran.stdout);
    for id in ["long", "spaces"] {
        let why = s.mapping(id).await.last_error.unwrap_or_default();
        assert!(
            why.contains("field `label`")
                && why.contains("4 characters are more than the column (character varying(3)) holds (3)"),
            "{id}: {why}"
        );
    }
    let rows = s.target.dump("ledger").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["label"], "abc");
    s.drop().await;
}

/// A `jsonb` document that is a bare number, into a SQLite `JSON` column:
/// SQLite's NUMERIC affinity would store it as a double and give back
/// `12345678901234567000`. That record fails naming the field; a number a
/// double keeps, and any number inside a document, arrive exactly.
#[tokio::test]
async fn a_number_document_a_sqlite_json_column_would_round_fails_its_record() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, doc jsonb, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, doc JSON, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('big', '12345678901234567890', now()), ('small', '1.5', now()), \
             ('inside', '{\"a\": 12345678901234567890}', now())",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 2, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 1, "{}", ran.stdout);
    let why = s.mapping("big").await.last_error.unwrap_or_default();
    assert!(
        why.contains("field `doc`") && why.contains("would store as a double"),
        "{why}"
    );
    let SystemDb::Sqlite { pool, .. } = &s.target else {
        unreachable!()
    };
    let mut held: Vec<(String, String)> = sqlx::query_as("SELECT typeof(doc), CAST(doc AS TEXT) FROM ledger")
        .fetch_all(pool)
        .await
        .unwrap();
    held.sort();
    assert_eq!(
        held,
        [
            ("real".to_owned(), "1.5".to_owned()),
            ("text".to_owned(), r#"{"a":12345678901234567890}"#.to_owned())
        ]
    );
    assert_eq!(s.run(&[]).writes("product"), 0);
    s.drop().await;
}

/// Text carried into a number column keeps what it says: `01234` (a zip
/// code, say), `+7`, ` 42 ` and `1e3` would arrive as 1234, 7, 42 and 1000,
/// and compare equal ever after. Each fails its record naming the field;
/// `12.50` is the number 12.5 and arrives.
#[tokio::test]
async fn text_a_number_column_would_not_give_back_fails_its_record() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, code text, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, code NUMERIC, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('zip', '01234', now()), ('plus', '+7', now()), ('spaced', ' 42 ', now()), \
             ('exp', '1e3', now()), ('money', '12.50', now())",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 4, "{}", ran.stdout);
    let why = s.mapping("zip").await.last_error.unwrap_or_default();
    assert!(
        why.contains("field `code`") && why.contains("`01234` is text a number would not give back"),
        "{why}"
    );
    let rows = s.target.dump("ledger").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["code"], serde_json::json!(12.5));
    s.drop().await;
}

/// Rows whose `updated_at` is NULL (or PostgreSQL's `infinity`) have no
/// place in a scan by time. A page that ended on one ended the scan (NULLs
/// order first in MariaDB and SQLite) or left a cursor no later run got
/// past (`infinity`, or NULL last in PostgreSQL); one inserted later was
/// never read. Every run said succeeded. They are now read on every run
/// and compared by value, and every other row is still read.
#[tokio::test]
async fn rows_without_a_time_are_read_on_every_run_and_do_not_stop_the_scan() {
    let hour_ago = syncd_connect::format_time(chrono::Utc::now() - chrono::Duration::hours(1));
    let cases = [
        (
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz)",
            "now() - interval '1 hour'",
            "now()",
        ),
        (
            Kind::Mariadb,
            "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, name TEXT, updated_at DATETIME(6) NULL)",
            "utc_timestamp(6) - interval 1 hour",
            "utc_timestamp(6)",
        ),
        (
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)",
            &format!("'{hour_ago}'") as &str,
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        ),
    ];
    for (kind, ddl, earlier, now) in cases {
        let Some(s) = Setup::new(
            kind,
            ddl,
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)",
        )
        .await
        else {
            continue;
        };
        let mut rows = vec![
            format!("('n1', 'null 1', NULL)"),
            format!("('n2', 'null 2', NULL)"),
            format!("('v1', 'timed 1', {earlier})"),
            format!("('v2', 'timed 2', {earlier})"),
            format!("('v3', 'timed 3', {earlier})"),
        ];
        if kind == Kind::Postgres {
            rows.push("('i1', 'infinite', 'infinity')".into());
            // A year syncd does not read as a time, which orders last.
            rows.push("('y1', 'year 10000', '10000-01-01T00:00:00Z')".into());
        }
        // Text that is no time (a `DEFAULT 'now'` mistake), which orders
        // after every time.
        if kind == Kind::Sqlite {
            rows.push("('w1', 'not a time', 'now')".into());
        }
        // A zero date, as MariaDB's default mode accepts it.
        if kind == Kind::Mariadb {
            rows.push("('z1', 'zero date', '0000-00-00 00:00:00')".into());
        }
        s.source
            .exec(&format!(
                "INSERT INTO ledger (id, name, updated_at) VALUES {}",
                rows.join(", ")
            ))
            .await;
        // Pages of 2: one ends on the second NULL row.
        let first = s.run_with(&["--page-size", "2"], &[]);
        assert_eq!(
            first.counter("product", "created"),
            rows.len() as u64,
            "{kind:?}: {}",
            first.stdout
        );
        assert_eq!(
            first.counter("product", "failed"),
            0,
            "{kind:?}: {}",
            first.stdout
        );

        // A timed edit, a new row without a time, an edit of one without.
        s.source
            .exec(&format!(
                "UPDATE ledger SET name = 'timed 1 edited', updated_at = {now} WHERE id = 'v1'"
            ))
            .await;
        s.source
            .exec("INSERT INTO ledger (id, name, updated_at) VALUES ('n3', 'null 3', NULL)")
            .await;
        s.source
            .exec("UPDATE ledger SET name = 'null 1 edited' WHERE id = 'n1'")
            .await;
        if kind == Kind::Mariadb {
            s.source
                .exec("INSERT INTO ledger (id, name, updated_at) VALUES ('z2', 'zero date 2', '0000-00-00 00:00:00')")
                .await;
        }
        let second = s.run_with(&["--page-size", "2"], &[]);
        assert_eq!(
            second.counter("product", "created"),
            if kind == Kind::Mariadb { 2 } else { 1 },
            "{kind:?}: {}",
            second.stdout
        );
        assert_eq!(
            second.counter("product", "updated"),
            2,
            "{kind:?}: {}",
            second.stdout
        );
        let mut expected = vec![
            "null 1 edited",
            "null 2",
            "null 3",
            "timed 1 edited",
            "timed 2",
            "timed 3",
        ];
        if kind == Kind::Postgres {
            expected.extend(["infinite", "year 10000"]);
        }
        if kind == Kind::Sqlite {
            expected.push("not a time");
        }
        if kind == Kind::Mariadb {
            expected.extend(["zero date", "zero date 2"]);
        }
        expected.sort();
        assert_eq!(s.target_texts("name").await, expected, "{kind:?}");

        // Read again, unchanged: nothing written.
        let third = s.run_with(&["--page-size", "2"], &[]);
        assert_eq!(third.writes("product"), 0, "{kind:?}: {}", third.stdout);
        assert!(
            third.counter("product", "read") >= 3,
            "{kind:?}: {}",
            third.stdout
        );
        s.drop().await;
    }
}

/// A column the target loses under a run (renamed by a DBA) is not one
/// record's fault: each update of the page was failed alone, kept its old
/// base and was never written again, while the next run read nothing. The
/// step now stops, naming the column, and a resume once the column is back
/// writes the page.
#[tokio::test]
async fn a_column_gone_under_a_run_stops_the_step_and_a_resume_writes_the_page() {
    let ddl = "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Postgres, ddl, Kind::Postgres, ddl).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'first', now()), ('b', 'first', now()), ('c', 'first', now())")
        .await;
    s.run(&[]);
    // What PostgreSQL answers an update naming a column it no longer has.
    s.target
        .exec(
            "CREATE FUNCTION gone() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'column \"name\" of relation \"ledger\" does not exist' USING ERRCODE = 'undefined_column'; \
             END $$; \
             CREATE TRIGGER gone BEFORE UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION gone()",
        )
        .await;
    s.source
        .exec("UPDATE ledger SET name = 'second', updated_at = now()")
        .await;
    let out = s.attempt(&[], &[]);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(!out.ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("failed")
            && (stdout.contains("column \"name\"") || stderr.contains("column \"name\"")),
        "{stdout}{stderr}"
    );
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split_whitespace().next()))
        .unwrap()
        .to_owned();
    s.target.exec("DROP TRIGGER gone ON ledger").await;
    s.syncd(&["runs", "resume", &run, "--workflows", "."]);
    let names: Vec<String> = s
        .target
        .dump("ledger")
        .await
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["second", "second", "second"]);
    s.drop().await;
}

/// Rows without a time get the patch pass too: a child created before its
/// parent in the same untimed page has its parent written in the same run,
/// and one whose parent exists nowhere fails naming it, instead of waiting
/// (counted unchanged) for ever.
#[tokio::test]
async fn rows_without_a_time_have_their_parents_patched_or_fail_naming_them() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, parent_id text, updated_at timestamptz)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, parent_id TEXT, updated_at TEXT)",
    )
    .await
    else {
        return;
    };
    let path = s.dir.0.join("exact.toml");
    let definition = std::fs::read_to_string(&path).unwrap().replace(
        "name = \"product\"\ntable = \"ledger\"\n",
        "name = \"account\"\ntable = \"ledger\"\n[entities.fields]\nparent_id = { references = \"account\" }\n",
    );
    std::fs::write(&path, definition).unwrap();
    // Ordered by id: the child `c` comes before its parent `p`.
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('c', 'child', 'p', NULL), ('d', 'dangling', 'nowhere', NULL), \
             ('p', 'parent', NULL, NULL)",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("account", "created"), 3, "{}", ran.stdout);
    assert_eq!(ran.counter("account", "failed"), 1, "{}", ran.stdout);
    let rows = s.target.dump("ledger").await;
    let by_name = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(
        by_name("child")["parent_id"],
        by_name("parent")["id"],
        "patched in the same run"
    );
    assert_eq!(by_name("dangling")["parent_id"], Value::Null);
    let store = Store::connect(
        &StoreConfig::new(s.dir.sqlite_url("state.db")),
        MappingCache::local(),
    )
    .await
    .unwrap();
    let scope = EntityScope::new("t1", "exact", "account");
    let d = store
        .find_mapping(&scope, syncd_core::record::Side::Source, "d")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.last_error.as_deref(),
        Some("missing parent: parent_id references account `nowhere`, which has not been synced")
    );
    s.drop().await;
}

/// A column renamed after a run bound its table, as each database reports
/// it to syncd's own statements (PostgreSQL names the column of the row it
/// was given, `r.name`): the step's fault, on every database, for updates
/// and creates alike. A record's own fault (a check it breaks) is still
/// its alone.
#[tokio::test]
async fn a_column_renamed_after_binding_is_the_steps_fault_on_every_database() {
    use syncd_connect::sql::SqlConnector;
    use syncd_connect::{Connector, FieldColumn, NewRecord};
    let dir = TempDir::new("renamed");
    for kind in [Kind::Postgres, Kind::Mariadb, Kind::Sqlite] {
        let Some(db) = SystemDb::create(kind, &dir, "renamed").await else {
            continue;
        };
        let ddl = match kind {
            Kind::Mariadb => {
                "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, name TEXT, code VARCHAR(8) CHECK (code <> 'bad'), \
                 updated_at DATETIME(6) NOT NULL)"
            }
            _ => {
                "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, code TEXT CHECK (code <> 'bad'), updated_at TEXT NOT NULL)"
            }
        };
        let ddl = match kind {
            Kind::Postgres => ddl.replace("updated_at TEXT", "updated_at timestamptz"),
            _ => ddl.to_owned(),
        };
        db.exec(&ddl).await;
        db.exec("INSERT INTO ledger (id, name, code, updated_at) VALUES ('a', 'first', 'x', '2026-01-01 00:00:00')")
            .await;
        let system = SqlConnector::connect("erp", &db.url()).await.unwrap();
        let types = system.columns("ledger").await.unwrap().unwrap();
        let connector = Connector::Sql(system);
        let fields: Vec<FieldColumn> = ["name", "code"]
            .into_iter()
            .map(|c| {
                let class = connector.class_of(&types[c]);
                FieldColumn {
                    cdm: c.into(),
                    column: c.into(),
                    class,
                    kind: class.kind(),
                }
            })
            .collect();
        let Connector::Sql(sql) = &connector else {
            unreachable!()
        };
        let b = sql
            .binding("product", "ledger", types, fields, None, None)
            .unwrap();
        let fields = |name: &str, code: &str| {
            serde_json::json!({"name": name, "code": code})
                .as_object()
                .unwrap()
                .clone()
        };
        let now = chrono::Utc::now();
        // A record's own fault: refused alone.
        let refused = connector
            .update(&b, &[("a".into(), fields("second", "bad"))], now)
            .await
            .unwrap();
        assert_eq!(refused.len(), 1, "{kind:?}: {refused:?}");
        db.exec("ALTER TABLE ledger RENAME COLUMN name TO label").await;
        let update = connector
            .update(&b, &[("a".into(), fields("second", "x"))], now)
            .await;
        match update {
            Err(e) => assert!(e.is_schema_fault(&b), "{kind:?}: {e}"),
            Ok(refused) => panic!("{kind:?}: refused as the record's fault: {refused:?}"),
        }
        let new = NewRecord {
            id: Some("b".into()),
            key: "k".into(),
            fields: fields("new", "x"),
            tried: false,
        };
        match connector
            .create(
                &b,
                &[
                    new.clone(),
                    NewRecord {
                        id: Some("c".into()),
                        ..new
                    },
                ],
                now,
            )
            .await
        {
            Err(e) => assert!(e.is_schema_fault(&b), "{kind:?}: {e}"),
            Ok(created) => panic!("{kind:?}: failed as the records' fault: {created:?}"),
        }
        drop(connector);
        db.drop().await;
    }
}

/// A SQLite id column without a type keeps the number 9 and the text '9'
/// apart: the row with id 9 was read by the scan, never found again by
/// its id, and its target copy deleted as gone on the second run, which
/// said succeeded. Such a table is refused, naming the column and the fix,
/// before anything is written.
#[tokio::test]
async fn a_sqlite_id_column_without_a_type_is_refused_before_anything_is_written() {
    let cases = [
        (
            "CREATE TABLE ledger (id PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)",
            "no",
        ),
        (
            "CREATE TABLE ledger (id ANY PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL) STRICT",
            "the ANY",
        ),
    ];
    for (ddl, what) in cases {
        let Some(s) = Setup::new(
            Kind::Sqlite,
            ddl,
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)",
        )
        .await
        else {
            return;
        };
        s.source
            .exec("INSERT INTO ledger VALUES (9, 'nine', '2026-01-01T00:00:00Z'), ('t1', 'text', '2026-01-01T00:00:01Z')")
            .await;
        let out = s.attempt(&[], &[]);
        let stderr = &out.stderr;
        assert!(!out.ok, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "system `src`: table `ledger`: its `id` column has {what} type, so SQLite keeps the number 9 and \
                 the text '9' as different ids and syncd cannot find its rows by id; declare it TEXT (or \
                 INTEGER) (entity `product`)"
            )),
            "{stderr}"
        );
        assert!(s.target.dump("ledger").await.is_empty(), "nothing written");
        s.drop().await;
    }
}

/// PostgreSQL column types whose input functions change a value without a
/// word: a domain over `numeric(12,2)` (checked as its base type), `time(0)`
/// (rounds the second), `name` (cuts at 63 bytes), `"char"` (keeps one
/// byte), an `interval` limited to seconds and `money` (round). Each record
/// a column would change fails alone naming the column; the one that fits
/// is written.
#[tokio::test]
async fn postgres_types_that_change_values_quietly_fail_their_records() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric, tm time, label text, ch text, iv interval, \
         cash numeric, updated_at timestamptz NOT NULL)",
        Kind::Postgres,
        "CREATE DOMAIN cents AS numeric(12,2); \
         CREATE TABLE ledger (id text PRIMARY KEY, amount cents, tm time(0), label name, ch \"char\", \
         iv interval second(0), cash money, updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger (id, amount, tm, label, ch, iv, cash, updated_at) VALUES \
             ('fits', 1.23, '10:00:01', 'short', 'h', NULL, NULL, now()), \
             ('amount', 1.2345, NULL, NULL, NULL, NULL, NULL, now()), \
             ('tm', NULL, '10:00:00.7', NULL, NULL, NULL, NULL, now()), \
             ('label', NULL, NULL, repeat('L', 70) || 'END', NULL, NULL, NULL, now()), \
             ('ch', NULL, NULL, NULL, 'hello', NULL, NULL, now()), \
             ('iv', NULL, NULL, NULL, NULL, '1.6 seconds', NULL, now()), \
             ('cash', NULL, NULL, NULL, NULL, NULL, 7.7777, now())",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(
        (
            ran.counter("product", "created"),
            ran.counter("product", "failed")
        ),
        (1, 6),
        "{}",
        ran.stdout
    );
    for (id, why) in [
        (
            "amount",
            "1.2345 has 4 digits after the point; the column (numeric(12,2)) keeps 2",
        ),
        (
            "tm",
            "10:00:00.7 has 1 digits of a second; the column (time(0) without time zone) keeps 0",
        ),
        ("label", "73 bytes are more than the column (name) holds (63)"),
        ("ch", "5 bytes are more than the column (\"char\") holds (1)"),
        ("iv", "the column (interval second(0)) rounds an interval"),
        ("cash", "a `money` column rounds"),
    ] {
        let m = s.mapping(id).await;
        let error = m.last_error.as_deref().unwrap_or_default();
        assert!(
            m.status == MappingStatus::Failed && error.contains(why),
            "{id}: {m:?}"
        );
    }
    assert_eq!(
        Setup::pg_text(&s.target, "amount, tm, label, ch").await,
        ["(1.23,10:00:01,short,h)"]
    );
    s.drop().await;
}

/// A target column altered after the run bound it (`numeric(12,4)` to
/// `numeric(12,2)`, which rounds what it is given): the run fails naming
/// the column, and nothing of the page is recorded as synced; a resume,
/// bound to the column as it is, fails the record that no longer fits and
/// writes the one that does.
#[tokio::test]
async fn a_column_altered_under_a_run_records_nothing_of_the_page() {
    let cases = [
        (
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric(12,4), updated_at timestamptz NOT NULL)",
            "ALTER TABLE ledger ALTER amount TYPE numeric(12,2)",
            "(bound as numeric(12,4), now numeric(12,2))",
        ),
        (
            Kind::Mariadb,
            "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, amount DECIMAL(12,4), updated_at DATETIME(6) NOT NULL)",
            "ALTER TABLE ledger MODIFY amount DECIMAL(12,2)",
            "(bound as decimal(12,4), now decimal(12,2))",
        ),
    ];
    for (kind, target_ddl, alter, change) in cases {
        column_altered_under_a_run(kind, target_ddl, alter, change).await;
    }
}

async fn column_altered_under_a_run(kind: Kind, target_ddl: &str, alter: &str, change: &str) {
    let ddl =
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric(12,4), updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Postgres, ddl, kind, target_ddl).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 1.2345, now()), ('b', 2.5, now())")
        .await;
    let job = s.job(&s.store(MappingCache::local()).await).await;
    // Bound; then altered before anything is written.
    s.target.exec(alter).await;
    let run = job.start("test").await.unwrap();
    let run_id = run.id.to_string();
    let error = match job.execute(run, &mut |_| {}).await {
        Err(e) => e.to_string(),
        Ok(done) => format!("{:?}: {:?}", done.state, done.error),
    };
    assert!(
        error.contains(&format!("column `amount` changed under the run {change}")),
        "{kind:?}: {error}"
    );
    for id in ["a", "b"] {
        let m = s.mapping(id).await;
        assert_ne!(m.status, MappingStatus::Mapped, "{id}: {m:?}");
    }
    s.syncd(&["runs", "resume", &run_id, "--workflows", "."]);
    let a = s.mapping("a").await;
    assert!(
        a.status == MappingStatus::Failed
            && a.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("1.2345 has 4 digits after the point"),
        "{a:?}"
    );
    let b = s.mapping("b").await;
    assert_eq!(b.status, MappingStatus::Mapped, "{b:?}");
    s.drop().await;
}

/// A reviewer's decision is held to the same rule as a page: written to a
/// column whose type changed after the run bound it, it is not recorded
/// as applied; the resume applies it again against the new type (which
/// cannot hold it, so it goes back to the reviewer).
#[tokio::test]
async fn a_decision_written_to_a_column_altered_under_the_run_is_not_recorded() {
    let ddl =
        "CREATE TABLE ledger (id text PRIMARY KEY, amount numeric(12,4), updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Postgres, ddl, Kind::Postgres, ddl).await else {
        return;
    };
    s.both_ways(Some("manual"));
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 1.0000, now() - interval '1 hour')")
        .await;
    s.run(&[]);
    s.source
        .exec("UPDATE ledger SET amount = 1.1111, updated_at = now()")
        .await;
    s.target
        .exec("UPDATE ledger SET amount = 2.22, updated_at = now()")
        .await;
    let store = s.store(MappingCache::local()).await;
    let job = s.job(&store).await;
    let run = job.start("test").await.unwrap();
    let run_id = run.id.to_string();
    let parked = job.execute(run, &mut |_| {}).await.unwrap();
    assert_eq!(parked.state, syncd_engine::run::RunState::Suspended, "{parked:?}");
    // `syncd run` meanwhile says that no new run started.
    let said = s.attempt(&[], &[]).stderr;
    assert!(
        said.contains(&format!("run {run_id} is suspended")) && said.contains("no new run starts"),
        "{said}"
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
    // Bound (by `job`) as numeric(12,4); altered before the decision is
    // written.
    s.target
        .exec("ALTER TABLE ledger ALTER amount TYPE numeric(12,2)")
        .await;
    s.syncd(&[
        "conflicts",
        "resolve",
        &conflict.id.to_string(),
        "--take",
        "source",
        "--by",
        "ann",
    ]);
    let run = job.start("test").await.unwrap();
    let error = match job.execute(run, &mut |_| {}).await {
        Err(e) => e.to_string(),
        Ok(done) => format!("{:?}: {:?}", done.state, done.error),
    };
    assert!(
        error.contains("column `amount` changed under the run (bound as numeric(12,4), now numeric(12,2))"),
        "{error}"
    );
    // Not recorded: the mapping's base still holds the values before the
    // conflict, and the decision waits to be applied.
    let m = s.mapping("a").await;
    assert!(
        m.base
            .as_ref()
            .is_some_and(|b| !format!("{b:?}").contains("1.1111")),
        "{m:?}"
    );
    let resumed = s.syncd(&["runs", "resume", &run_id, "--workflows", "."]);
    assert!(resumed.contains("suspended"), "{resumed}");
    let again = store
        .list_conflicts(&syncd_store::ConflictFilter {
            status: Some(syncd_core::conflict::ConflictStatus::Pending),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "parked again for the reviewer: {again:?}");
    s.drop().await;
}

/// Change times kept as Unix seconds get the lookback too: an edit stamped
/// with the second the scan stopped at, on a row of smaller id (as a
/// transaction committed late leaves it), is read by the next run.
#[tokio::test]
async fn an_edit_in_the_last_second_of_an_epoch_cursor_is_read() {
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER)";
    let Some(s) = Setup::new(Kind::Sqlite, ddl, Kind::Sqlite, ddl).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', unixepoch() - 3600), ('c', 'c0', unixepoch())")
        .await;
    s.run(&[]);
    s.source
        .exec("UPDATE ledger SET name = 'a1', updated_at = (SELECT updated_at FROM ledger WHERE id = 'c') WHERE id = 'a'")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "updated"), 1, "{}", ran.stdout);
    assert_eq!(s.target_texts("name").await, ["a1", "c0"]);
    s.drop().await;
}

/// Writes are stamped as the table stamps its own rows, so that an edit
/// the application makes later orders after them: Unix seconds in a SQLite
/// `INTEGER` column (text would order after every number), a SQLite text
/// time with an offset of its own, and a PostgreSQL text column written
/// with a space (a `T` orders after it).
#[tokio::test]
async fn writes_are_stamped_as_the_table_stamps_its_rows() {
    let source = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)";
    let cases = [
        (
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER DEFAULT (unixepoch()))",
            "INSERT INTO ledger (id, name) VALUES ('own', 'own')",
            "SELECT typeof(updated_at) || ':' || (updated_at > unixepoch() - 600) FROM ledger WHERE id <> 'own'",
            "integer:1",
        ),
        (
            // JavaScript's `Date.now()`: milliseconds.
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER)",
            "INSERT INTO ledger VALUES ('own', 'own', CAST(unixepoch('subsec') * 1000 AS INTEGER))",
            "SELECT typeof(updated_at) || ':' || (updated_at > (unixepoch() - 600) * 1000) FROM ledger WHERE id <> 'own'",
            "integer:1",
        ),
        (
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)",
            "INSERT INTO ledger VALUES ('own', 'own', strftime('%Y-%m-%dT%H:%M:%S-05:00', 'now', '-5 hours'))",
            "SELECT substr(updated_at, 11, 1) || substr(updated_at, -6) FROM ledger WHERE id <> 'own'",
            "T-05:00",
        ),
        (
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at text)",
            "INSERT INTO ledger VALUES ('own', 'own', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))",
            "SELECT substr(updated_at, 11, 1) || (updated_at > to_char(now() AT TIME ZONE 'UTC' - interval '10 minutes', \
             'YYYY-MM-DD HH24:MI:SS'))::text FROM ledger WHERE id <> 'own'",
            " true",
        ),
    ];
    for (kind, ddl, own, stamps, expected) in cases {
        let Some(s) = Setup::new(Kind::Sqlite, source, kind, ddl).await else {
            continue;
        };
        s.target.exec(own).await;
        s.source
            .exec("INSERT INTO ledger VALUES ('a', 'a', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
            .await;
        let ran = s.run(&[]);
        assert_eq!(ran.counter("product", "created"), 1, "{kind:?}: {}", ran.stdout);
        let got: Vec<String> = match kind {
            Kind::Postgres => sqlx::query_scalar(stamps)
                .fetch_all(s.target.pg_pool().unwrap())
                .await
                .unwrap(),
            _ => sqlx::query_scalar(stamps)
                .fetch_all(s.target.sqlite_pool().unwrap())
                .await
                .unwrap(),
        };
        assert_eq!(got, [expected], "{kind:?}");
        s.drop().await;
    }
}

/// A table stamped in milliseconds (`Date.now()`) holds times, not years
/// past 10000: `last_write_wins` took its side's edit over a later one of
/// the other system, every time.
#[tokio::test]
async fn a_change_time_in_milliseconds_is_compared_as_the_time_it_is() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(Some("last_write_wins"));
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', now() - interval '1 hour')")
        .await;
    s.target
        .exec(
            "INSERT INTO ledger VALUES ('own', 'own', CAST(unixepoch('subsec') * 1000 AS INTEGER) - 3600000)",
        )
        .await;
    s.run(&[]);
    // The ERP's edit ten minutes ago; the CRM's, later, now.
    s.target
        .exec("UPDATE ledger SET name = 'erp', updated_at = CAST(unixepoch('subsec') * 1000 AS INTEGER) - 600000 WHERE id <> 'own'")
        .await;
    s.source
        .exec("UPDATE ledger SET name = 'crm', updated_at = now() WHERE id = 'a'")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "conflicts"), 1, "{}", ran.stdout);
    assert_eq!(s.target_texts("name").await, ["crm", "own"], "{}", ran.stdout);
    let crm: Vec<String> = sqlx::query_scalar("SELECT name FROM ledger ORDER BY id")
        .fetch_all(s.source.pg_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(crm, ["crm", "own"]);
    s.drop().await;
}

/// A day far off as a change time (`9999-12-31`, a sentinel for "never
/// expires") held the scan's cursor there: every later edit was never read.
/// A day is moved back like any time the cursor passes, to the day before
/// the bound's (every row edited that day shares its stamp).
#[tokio::test]
async fn a_change_time_of_a_day_far_off_does_not_hold_the_scan() {
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let Some(s) = Setup::new(kind, ddl, Kind::Sqlite, ddl).await else {
            continue;
        };
        s.source
            .exec(
                "INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z'), ('b', 'b0', '2026-01-01'), \
                 ('z', 'z0', '9999-12-31')",
            )
            .await;
        let first = s.run(&[]);
        assert_eq!(
            first.counter("product", "created"),
            3,
            "{kind:?}: {}",
            first.stdout
        );
        let now = chrono::Utc::now();
        s.source
            .exec(&format!(
                "UPDATE ledger SET name = 'a1', updated_at = '{}' WHERE id = 'a'",
                now.format("%Y-%m-%dT%H:%M:%SZ")
            ))
            .await;
        s.source
            .exec(&format!(
                "UPDATE ledger SET name = 'b1', updated_at = '{}' WHERE id = 'b'",
                now.format("%Y-%m-%d")
            ))
            .await;
        let second = s.run(&[]);
        assert_eq!(
            second.counter("product", "updated"),
            2,
            "{kind:?}: {}",
            second.stdout
        );
        assert_eq!(s.target_texts("name").await, ["a1", "b1", "z0"], "{kind:?}");
        s.drop().await;
    }
}

/// PostgreSQL pads an id in a `character(40)` column and reads it back
/// padded: syncd recorded the 36 characters it wrote, found neither row
/// again (edits skipped, both mappings unlinked as gone), and in both
/// directions copied them back into the source as new records.
#[tokio::test]
async fn ids_a_padded_column_gives_back_are_recorded_as_it_reads_them() {
    let source = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let target =
        "CREATE TABLE ledger (id character(40) PRIMARY KEY, name text, updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, source, Kind::Postgres, target).await else {
        return;
    };
    s.both_ways(None);
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z'), ('b', 'b0', '2026-01-01T10:00:00Z')")
        .await;
    let first = s.run(&[]);
    assert_eq!(first.counter("product", "created"), 2, "{}", first.stdout);
    assert_eq!(first.writes_both_ways("product"), 2, "{}", first.stdout);
    s.source
        .exec(&format!(
            "UPDATE ledger SET name = 'a1', updated_at = '{}' WHERE id = 'a'",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ))
        .await;
    let second = s.run(&[]);
    assert_eq!(second.counter("product", "updated"), 1, "{}", second.stdout);
    assert_eq!(second.writes_both_ways("product"), 1, "{}", second.stdout);
    assert_eq!(s.target_texts("name").await, ["a1", "b0"]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(s.source.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(rows, 2, "no copy back into the source");
    assert_eq!(s.mapping("a").await.status, MappingStatus::Mapped);
    s.drop().await;
}

/// Tenants sharing tables whose values differ only in case: a tenant
/// column compared in its own collation (SQLite's `NOCASE`, a PostgreSQL
/// nondeterministic collation) gave tenant `t1` the rows of `T1`, and
/// wrote `T1`'s rows with `t1`'s edits.
#[tokio::test]
async fn a_tenant_column_that_folds_case_keeps_tenants_apart() {
    let Some(s) = Setup::new(
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, tenant TEXT COLLATE NOCASE NOT NULL, name TEXT, \
         updated_at TEXT NOT NULL)",
        Kind::Postgres,
        "CREATE COLLATION folded (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
         CREATE TABLE ledger (id text PRIMARY KEY, tenant text COLLATE folded NOT NULL, name text, \
         updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.edit(|t| {
        t.replace("[[entities]]", "[[entities]]\ntenant_column = \"tenant\"")
            .replace("[tenants.t1]", "[tenants.t1]\n[tenants.T1]")
    });
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('a', 't1', 'mine', '2026-01-01T10:00:00Z'), \
             ('b', 'T1', 'theirs', '2026-01-01T10:00:00Z')",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "read"), 1, "{}", ran.stdout);
    let held: Vec<(String, String)> = sqlx::query_as("SELECT tenant, name FROM ledger")
        .fetch_all(s.target.pg_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(held, [("t1".to_owned(), "mine".to_owned())]);
    // The other tenant's row in the target, as its own run would leave
    // it: `t1`'s runs neither read it nor write it.
    s.target
        .exec("INSERT INTO ledger VALUES ('x', 'T1', 'theirs', now() - interval '1 hour')")
        .await;
    s.source
        .exec("UPDATE ledger SET name = 'mine2', updated_at = '2026-02-01T10:00:00Z' WHERE id = 'a'")
        .await;
    let again = s.run(&[]);
    assert_eq!(again.counter("product", "updated"), 1, "{}", again.stdout);
    let held: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant, name FROM ledger ORDER BY tenant COLLATE \"C\"")
            .fetch_all(s.target.pg_pool().unwrap())
            .await
            .unwrap();
    assert_eq!(
        held,
        [
            ("T1".to_owned(), "theirs".to_owned()),
            ("t1".to_owned(), "mine2".to_owned())
        ]
    );
    let source: Vec<String> = sqlx::query_scalar("SELECT name FROM ledger ORDER BY id")
        .fetch_all(s.source.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(source, ["mine2", "theirs"]);
    s.drop().await;
}

/// A row that cannot be read, failed by the retry pass and met again by
/// the scan (its change time inside the lookback), is one failure of the
/// run: it was counted read twice and failed twice.
#[tokio::test]
async fn a_row_failed_by_the_retry_pass_is_not_failed_again_by_the_scan() {
    let Some(s) = Setup::new(
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, ok TEXT, updated_at TEXT NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, ok boolean, updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(&format!(
            "INSERT INTO ledger VALUES ('a', 'yes', '{0}'), ('b', 'true', '{0}')",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ))
        .await;
    let first = s.run(&[]);
    assert_eq!(
        (
            first.counter("product", "created"),
            first.counter("product", "failed")
        ),
        (1, 1),
        "{}",
        first.stdout
    );
    let second = s.run(&[]);
    assert_eq!(
        (
            second.counter("product", "read"),
            second.counter("product", "failed"),
            second.counter("product", "skipped"),
            second.counter("product", "unchanged"),
        ),
        (3, 1, 1, 1),
        "{}",
        second.stdout
    );
    s.drop().await;
}

/// Text that reads as a number only by dropping what it says: a string of
/// bits (`00000101`, five, became one hundred and one) and text in a SQLite
/// column declared without a type (`007`, ` 12 `, `1e3`) arrived in a
/// number column changed, and every later run said unchanged.
#[tokio::test]
async fn bits_and_untyped_text_are_not_read_as_the_numbers_they_resemble() {
    let cases = [
        (
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, v bit(8), updated_at timestamptz NOT NULL)",
            "INSERT INTO ledger VALUES ('a', B'00000101', now()), ('b', B'10000000', now()), ('c', NULL, now())",
            "a string of bits",
        ),
        (
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, v, updated_at TEXT NOT NULL)",
            "INSERT INTO ledger VALUES ('a', '007', '2026-01-01T10:00:00Z'), ('b', ' 12 ', '2026-01-01T10:00:00Z'), \
             ('c', 12, '2026-01-01T10:00:00Z'), ('d', '1e3', '2026-01-01T10:00:00Z')",
            "text a number would not give back",
        ),
    ];
    for (kind, ddl, rows, why) in cases {
        let Some(s) = Setup::new(
            kind,
            ddl,
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, v numeric, updated_at timestamptz NOT NULL)",
        )
        .await
        else {
            continue;
        };
        s.source.exec(rows).await;
        let ran = s.run(&[]);
        let failed = ran.counter("product", "failed");
        assert_eq!(
            (ran.counter("product", "created"), failed),
            (1, ran.counter("product", "read") - 1),
            "{kind:?}: {}",
            ran.stdout
        );
        let m = s.mapping("a").await;
        assert!(
            m.status == MappingStatus::Failed && m.last_error.as_deref().unwrap_or_default().contains(why),
            "{kind:?}: {m:?}"
        );
        s.drop().await;
    }
}

/// PostgreSQL gives a `character(5)` value back padded (`ab   `): the first
/// bidirectional run wrote the padding back over the source's `ab`, and
/// MariaDB's `CHAR(5)` (which drops it) failed the record on every run.
/// Such a column is read without its padding; text that ends in a space
/// cannot be told from it, and fails its record.
#[tokio::test]
async fn a_fixed_width_postgresql_column_is_read_without_its_padding() {
    let pg = "CREATE TABLE ledger (id text PRIMARY KEY, code character(5), updated_at timestamptz NOT NULL)";
    let cases = [
        (
            Kind::Sqlite,
            "CREATE TABLE ledger (id TEXT PRIMARY KEY, code TEXT, updated_at TEXT NOT NULL)",
        ),
        (
            Kind::Mariadb,
            "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, code CHAR(5), updated_at DATETIME(6) NOT NULL)",
        ),
    ];
    for (kind, ddl) in cases {
        let Some(s) = Setup::new(kind, ddl, Kind::Postgres, pg).await else {
            continue;
        };
        s.both_ways(None);
        let stamp = "2026-01-01 10:00:00";
        s.source
            .exec(&format!(
                "INSERT INTO ledger VALUES ('a', 'ab', '{stamp}'), ('b', 'abcde', '{stamp}')"
            ))
            .await;
        let first = s.run(&[]);
        assert_eq!(first.writes_both_ways("product"), 2, "{kind:?}: {}", first.stdout);
        let second = s.run(&[]);
        assert_eq!(
            second.writes_both_ways("product"),
            0,
            "{kind:?}: {}",
            second.stdout
        );
        assert_eq!(
            second.counter("product", "failed"),
            0,
            "{kind:?}: {}",
            second.stdout
        );
        // Edited on PostgreSQL's side: comes back without the padding.
        s.target
            .exec("UPDATE ledger SET code = 'xy', updated_at = now() WHERE code = 'ab'")
            .await;
        let third = s.run(&[]);
        assert_eq!(third.writes_both_ways("product"), 1, "{kind:?}: {}", third.stdout);
        let codes: Vec<Value> = s
            .source
            .dump("ledger")
            .await
            .iter()
            .map(|r| r["code"].clone())
            .collect();
        assert_eq!(codes, ["xy", "abcde"], "{kind:?}");
        s.drop().await;
    }
    // A space of its own at the end cannot be kept apart from the padding.
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, code TEXT, updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, ddl, Kind::Postgres, pg).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'ab ', '2026-01-01T10:00:00Z')")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "failed"), 1, "{}", ran.stdout);
    let m = s.mapping("a").await;
    assert!(
        m.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("ends with a space"),
        "{m:?}"
    );
    s.drop().await;
}

/// A source id holding a NUL: with PostgreSQL as the state store the run
/// failed with PostgreSQL's words and no record named, left rows written
/// without mappings, and every later run failed as it began (the
/// reservation replayed the id). The row fails alone, on either store.
#[tokio::test]
async fn an_id_holding_a_nul_fails_its_row_and_stops_nothing() {
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    for postgres_store in [false, true] {
        let Some(s) = Setup::new(
            Kind::Sqlite,
            ddl,
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
        )
        .await
        else {
            return;
        };
        let store = if postgres_store {
            let Some(schema) = support::PgSchema::create().await else {
                return;
            };
            Some(schema)
        } else {
            None
        };
        let env: Vec<(&str, &str)> = store
            .as_ref()
            .map(|p| ("SYNCD_DATABASE_URL", p.url.as_str()))
            .into_iter()
            .collect();
        s.source
            .exec(
                "INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z'), \
                 (CAST(X'6E0031' AS TEXT), 'nul', '2026-01-01T10:00:01Z'), ('c', 'c0', '2026-01-01T10:00:02Z'), \
                 ('d', 'd0', '2026-01-01T10:00:03Z')",
            )
            .await;
        let first = s.run_with(&["--page-size", "2"], &env);
        assert_eq!(
            (
                first.counter("product", "created"),
                first.counter("product", "failed")
            ),
            (3, 1),
            "store on PostgreSQL {postgres_store}: {}",
            first.stdout
        );
        assert!(
            first.stderr.contains("its id holds a NUL character"),
            "{}",
            first.stderr
        );
        assert_eq!(s.target_texts("name").await, ["a0", "c0", "d0"]);
        s.run_with(&["--page-size", "2"], &env);
        if let Some(store) = store {
            store.drop().await;
        }
        s.drop().await;
    }
}

/// MariaDB ignores what an `UPDATE … JOIN` writes to a generated column:
/// an edit made on the other side was counted updated, and the next run
/// copied the generated value back over it. Such a write is refused.
#[tokio::test]
async fn a_write_a_generated_column_ignores_is_refused() {
    let Some(s) = Setup::new(
        Kind::Mariadb,
        "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, v INT, g INT AS (v * 2) VIRTUAL, \
         updated_at DATETIME(6) NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, v integer, g integer, updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(None);
    s.source
        .exec("INSERT INTO ledger (id, v, updated_at) VALUES ('a', 3, '2026-01-01 10:00:00'), ('b', 4, '2026-01-01 10:00:00')")
        .await;
    let first = s.run(&[]);
    assert_eq!(first.counter("product", "created"), 2, "{}", first.stdout);
    // Both edited on PostgreSQL's side: `a` in a column MariaDB computes.
    s.target
        .exec("UPDATE ledger SET g = 100, updated_at = now() WHERE v = 3")
        .await;
    s.target
        .exec("UPDATE ledger SET v = 5, g = 10, updated_at = now() WHERE v = 4")
        .await;
    let second = s.run(&[]);
    let backward: Vec<Vec<&str>> = second
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.get(2) == Some(&"backward"))
        .collect();
    // (read created updated unchanged parked failed …)
    assert_eq!((backward[0][6], backward[0][9]), ("1", "1"), "{}", second.stdout);
    let a = s.mapping("a").await;
    assert!(
        a.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("`g` is generated by the database"),
        "{a:?}"
    );
    let held: Vec<Value> = s
        .source
        .dump("ledger")
        .await
        .iter()
        .map(|r| r["v"].clone())
        .collect();
    assert_eq!(held, [serde_json::json!(3), serde_json::json!(5)]);
    s.drop().await;
}

/// Bytes into a SQLite `BLOB` column arrive as bytes: a `bytea` was stored
/// there as the text of its hex (`typeof` text), and bytes the application
/// wrote into that column failed their record on every run.
#[tokio::test]
async fn bytes_cross_between_a_bytea_and_a_sqlite_blob_as_bytes() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, data bytea, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, data BLOB, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(None);
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('a', '\\x0102ff', now() - interval '1 hour'), \
             ('b', '\\x', now() - interval '1 hour'), ('c', NULL, now() - interval '1 hour')",
        )
        .await;
    let first = s.run(&[]);
    assert_eq!(first.writes_both_ways("product"), 3, "{}", first.stdout);
    let held = || async {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT typeof(data), iif(data IS NULL, NULL, hex(data)) FROM ledger ORDER BY 1, 2",
        )
        .fetch_all(s.target.sqlite_pool().unwrap())
        .await
        .unwrap();
        rows
    };
    assert_eq!(
        held().await,
        [
            ("blob".to_owned(), Some(String::new())),
            ("blob".to_owned(), Some("0102FF".to_owned())),
            ("null".to_owned(), None),
        ]
    );
    let second = s.run(&[]);
    assert_eq!(second.writes_both_ways("product"), 0, "{}", second.stdout);
    s.target
        .exec(&format!(
            "UPDATE ledger SET data = X'00FF', updated_at = '{}' WHERE hex(data) = '0102FF'",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ))
        .await;
    let third = s.run(&[]);
    assert_eq!(third.writes_both_ways("product"), 1, "{}", third.stdout);
    let crm: Vec<Option<String>> = sqlx::query_scalar("SELECT encode(data, 'hex') FROM ledger ORDER BY id")
        .fetch_all(s.source.pg_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(crm, [Some("00ff".to_owned()), Some(String::new()), None]);
    s.drop().await;
}

/// Change times kept as integers in PostgreSQL and MariaDB (Unix seconds,
/// or `Date.now()`'s milliseconds): syncd stamps its writes in the
/// table's unit, so that the application's later edits order after them.
#[tokio::test]
async fn integer_change_times_are_stamped_in_the_tables_unit_on_every_database() {
    let source = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let cases = [
        (
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at bigint NOT NULL)",
            "INSERT INTO ledger VALUES ('own', 'own', (extract(epoch from now()) * 1000)::bigint)",
            1_000,
        ),
        (
            Kind::Postgres,
            "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at integer NOT NULL)",
            "INSERT INTO ledger VALUES ('own', 'own', extract(epoch from now())::integer)",
            1,
        ),
        (
            Kind::Mariadb,
            "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, name TEXT, updated_at BIGINT NOT NULL)",
            "INSERT INTO ledger VALUES ('own', 'own', CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))",
            1_000,
        ),
    ];
    for (kind, ddl, own, units) in cases {
        let Some(s) = Setup::new(Kind::Sqlite, source, kind, ddl).await else {
            continue;
        };
        s.target.exec(own).await;
        s.source
            .exec("INSERT INTO ledger VALUES ('a', 'a', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
            .await;
        let ran = s.run(&[]);
        assert_eq!(ran.counter("product", "created"), 1, "{kind:?}: {}", ran.stdout);
        let stamps: Vec<i64> = s
            .target
            .dump("ledger")
            .await
            .iter()
            .filter(|r| r["name"] == "a")
            .map(|r| r["updated_at"].as_i64().unwrap_or_else(|| panic!("{r}")))
            .collect();
        let now = chrono::Utc::now().timestamp() * units;
        assert!(
            stamps.len() == 1 && (now - 600 * units..=now + units).contains(&stamps[0]),
            "{kind:?} {units}: {stamps:?} against {now}"
        );
        s.drop().await;
    }
}

/// An entity renamed in the definition has a scope of its own, with no
/// mappings: its run took every record for new and copied each (10,458
/// contacts doubled on both sides of a bidirectional integration, and the
/// run said succeeded). No run starts until the operator says which it is.
#[tokio::test]
async fn an_entity_renamed_in_the_definition_starts_no_run_that_would_copy_its_records() {
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, ddl, Kind::Sqlite, ddl).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z'), ('b', 'b0', '2026-01-01T10:00:00Z')")
        .await;
    s.run(&[]);
    let path = s.dir.0.join("exact.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    s.edit(|t| t.replace("name = \"product\"", "name = \"item\""));
    let out = s.attempt(&[], &[]);
    let stderr = &out.stderr;
    assert!(!out.ok, "{stderr}");
    assert!(
        stderr.contains("mappings of tenant `t1`'s entity `product`")
            && stderr.contains("entity `item` has none yet")
            && stderr.contains("retired_entities = [\"product\"]"),
        "{stderr}"
    );
    assert_eq!(s.target.dump("ledger").await.len(), 2, "nothing copied");
    // Named back: synced as before, nothing written.
    std::fs::write(&path, &toml).unwrap();
    let again = s.run(&[]);
    assert_eq!(again.counter("product", "created"), 0, "{}", again.stdout);
    // Retired on purpose: the new entity is synced as a new one.
    s.edit(|t| {
        t.replace("name = \"product\"", "name = \"item\"").replace(
            "name = \"exact\"",
            "name = \"exact\"\nretired_entities = [\"product\"]",
        )
    });
    let retired = s.run(&[]);
    assert_eq!(retired.counter("item", "created"), 2, "{}", retired.stdout);
    s.drop().await;
}

/// A target record deleted, its deletion carried to the source
/// (`propagate`), then undeleted: it was skipped by every run after, its
/// mapping saying both were gone while it lived. It is created anew in the
/// source, as a source record back is in the target.
#[tokio::test]
async fn a_target_record_undeleted_after_its_delete_was_propagated_comes_back_to_the_source() {
    let source = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let target = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, deleted INTEGER NOT NULL DEFAULT 0, \
                  updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, source, Kind::Sqlite, target).await else {
        return;
    };
    s.both_ways(None);
    s.edit(|t| {
        t.replace(
            "table = \"ledger\"",
            "table = \"ledger\"\ndeleted_column = { target = \"deleted\" }\non_target_delete = \"propagate\"\n\
             delete_brake = { percent = 100, max = 100 }",
        )
    });
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z'), ('b', 'b0', '2026-01-01T10:00:00Z')")
        .await;
    s.run(&[]);
    let now = || chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    s.target
        .exec(&format!(
            "UPDATE ledger SET deleted = 1, updated_at = '{}' WHERE name = 'a0'",
            now()
        ))
        .await;
    s.run(&[]);
    let names = |db: &'static str| {
        let s = &s;
        async move {
            let rows = match db {
                "source" => s.source.dump("ledger").await,
                _ => s.target.dump("ledger").await,
            };
            let mut names: Vec<String> = rows
                .iter()
                .filter(|r| r.get("deleted").is_none_or(|d| d == 0))
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names("source").await, ["b0"], "the delete went to the source");
    s.target
        .exec(&format!(
            "UPDATE ledger SET deleted = 0, name = 'a1', updated_at = '{}' WHERE name = 'a0'",
            now()
        ))
        .await;
    let back = s.run(&[]);
    assert_eq!(names("source").await, ["a1", "b0"], "{}", back.stdout);
    assert_eq!(names("target").await, ["a1", "b0"]);
    let again = s.run(&[]);
    assert_eq!(again.writes_both_ways("product"), 0, "{}", again.stdout);
    assert_eq!(s.source.dump("ledger").await.len(), 2, "one copy");
    s.drop().await;
}

/// A source column renamed while a run waits to read the table (its
/// binding made before): PostgreSQL's row, read whole, lacks the column,
/// and its values were read as NULL and written over the target's, the run
/// saying succeeded. The run fails now, naming the column, and the target
/// keeps its values.
#[tokio::test]
async fn a_column_renamed_while_a_run_reads_fails_the_run_instead_of_writing_nulls() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', now() - interval '1 hour'), ('b', 'b0', now() - interval '1 hour')")
        .await;
    s.run(&[]);
    s.source
        .exec("UPDATE ledger SET name = name || '!', updated_at = now()")
        .await;
    let SystemDb::Postgres { schema } = &s.source else {
        unreachable!()
    };
    // The table held while the run binds it and then waits to read it.
    let mut lock = schema.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .current_dir(&s.dir.0)
        .args(["run", "exact.toml", "--tenant", "t1"])
        .env("SYNCD_DATABASE_URL", s.dir.sqlite_url("state.db"))
        .env_remove("SYNCD_REDIS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        // (An operator finds the waiting statement by its connection's name.)
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%ledger%' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&schema.pool)
        .await
        .unwrap();
        if !waiting.is_empty() {
            assert_eq!(waiting, ["syncd: system src"]);
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the run never read the table"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sqlx::query("ALTER TABLE ledger RENAME COLUMN name TO full_name")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock.commit().await.unwrap();
    let out = run.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("has no column `name` any more: renamed or dropped while the run read it"),
        "{stderr}"
    );
    assert_eq!(
        s.target_texts("name").await,
        ["a0", "b0"],
        "the target keeps its values"
    );
    s.drop().await;
}

/// A system that refuses every write to syncd's credentials (a SQLite
/// database opened read-only, PostgreSQL's `permission denied`, MySQL's
/// `command denied`): each record was failed alone, and the run said
/// succeeded, exit code 0. The run fails now, saying why.
#[tokio::test]
async fn a_system_that_refuses_every_write_fails_the_run() {
    let table = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, table, Kind::Sqlite, table).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z')")
        .await;
    s.run(&[]);
    let url = s.target.url();
    s.edit(|t| t.replace(&format!("url = \"{url}\""), &format!("url = \"{url}?mode=ro\"")));
    s.source
        .exec(
            "UPDATE ledger SET name = 'a1', updated_at = '2026-01-02T10:00:00Z'; \
               INSERT INTO ledger VALUES ('b', 'b0', '2026-01-02T10:00:00Z')",
        )
        .await;
    let ran = s.attempt(&[], &[("SYNCD_RETRY_FOR", "1s")]);
    assert!(!ran.ok, "{}", ran.stdout);
    assert!(ran.stderr.contains("readonly database"), "{}", ran.stderr);
    assert!(ran.stdout.contains(" failed"), "{}", ran.stdout);
    s.drop().await;
}

/// syncd's PostgreSQL login: a record a row-level security policy refuses
/// fails alone (the policy's refusal shares the code of a missing
/// privilege), while a table the login may no longer write fails the run
/// (every record was failed alone, and the run said succeeded).
#[tokio::test]
async fn a_postgres_login_refused_writes_fails_the_run_and_a_policy_fails_its_record() {
    let Some(s) = Setup::new(
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    let SystemDb::Postgres { schema } = &s.target else {
        unreachable!()
    };
    let role = format!("{}_writer", schema.name);
    s.target
        .exec(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {0} TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON ledger TO {role}; \
             ALTER TABLE ledger ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY writes ON ledger TO {role} USING (true) WITH CHECK (name <> 'refused')",
            schema.name
        ))
        .await;
    let url = s.target.url();
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    s.edit(|t| t.replace(&format!("url = \"{url}\""), &format!("url = \"{as_role}\"")));
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('ok', 'fine', '2026-01-01T10:00:00Z'), \
             ('no', 'refused', '2026-01-01T10:00:00Z')",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    assert_eq!(ran.counter("product", "failed"), 1, "{}", ran.stdout);
    let why = s.mapping("no").await.last_error.unwrap_or_default();
    assert!(why.contains("row-level security"), "{why}");
    s.target
        .exec(&format!("REVOKE INSERT, UPDATE ON ledger FROM {role}"))
        .await;
    s.source
        .exec("INSERT INTO ledger VALUES ('later', 'fine too', '2026-01-02T10:00:00Z')")
        .await;
    let refused = s.attempt(&[], &[("SYNCD_RETRY_FOR", "1s")]);
    assert!(!refused.ok, "{}", refused.stdout);
    assert!(refused.stderr.contains("permission denied"), "{}", refused.stderr);
    let rows = s.target.dump("ledger").await;
    assert_eq!(rows.len(), 1);
    s.target
        .exec(&format!(
            "DROP POLICY writes ON ledger; REVOKE ALL ON ledger FROM {role}; \
                        REVOKE USAGE ON SCHEMA {0} FROM {role}",
            schema.name
        ))
        .await;
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&schema.pool)
        .await
        .unwrap();
    s.drop().await;
}

/// A crash between a create and its commit leaves the create's mapping
/// `pending`; the source record was then deleted. The retry pass read
/// nothing for it, every run after: the target kept the copy the create
/// made (a record the source no longer has), and the mapping stayed
/// pending. The copy is now handed to the delete step, which deletes it
/// (`on_source_delete = "delete"`); a create that never happened fails its
/// mapping, saying so, and nothing is created.
#[tokio::test]
async fn a_create_cut_short_by_a_crash_whose_source_is_deleted_after_leaves_no_copy() {
    let table = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, table, Kind::Sqlite, table).await else {
        return;
    };
    s.edit(|t| {
        t.replace(
            "table = \"ledger\"",
            "table = \"ledger\"\non_source_delete = \"delete\"\ndelete_brake = { percent = 100, max = 100 }",
        )
    });
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('kept', 'k', '2026-01-01T10:00:00Z'), ('copied', 'c', '2026-01-01T10:00:00Z'), \
             ('never', 'n', '2026-01-01T10:00:00Z')",
        )
        .await;
    s.run(&[]);
    // The state a crash leaves: `copied` created in the target, `never` not
    // yet, and neither mapping confirmed.
    let never_id = s.mapping("never").await.target_id.unwrap();
    s.target
        .exec(&format!("DELETE FROM ledger WHERE id = '{never_id}'"))
        .await;
    let state = sqlx::SqlitePool::connect(&s.dir.sqlite_url("state.db"))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE id_mappings SET status = 'pending', base = NULL, idempotency_key = 'fwd:' || target_id \
         WHERE source_id IN ('copied', 'never')",
    )
    .execute(&state)
    .await
    .unwrap();
    state.close().await;
    s.source.exec("DELETE FROM ledger WHERE id <> 'kept'").await;
    let ran = s.run(&[]);
    let names: Vec<Value> = s
        .target
        .dump("ledger")
        .await
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [Value::from("k")], "{}", ran.stdout);
    assert_eq!(s.mapping("copied").await.status, MappingStatus::Stale);
    let never = s.mapping("never").await;
    assert_eq!(never.status, MappingStatus::Failed);
    assert!(
        never
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("the source record is gone since this create was tried"),
        "{never:?}"
    );
    let again = s.run(&[]);
    assert_eq!(again.writes("product"), 0, "{}", again.stdout);
    assert_eq!(s.target.dump("ledger").await.len(), 1);
    s.drop().await;
}

/// A merge rule naming a field that is not synced (`nmae` for `name`):
/// `syncd check` can only warn without connecting, and `syncd run` ran,
/// settling that field's conflicts by the default rule without a word.
/// The run stops before writing anything, naming the rule and the fields.
#[tokio::test]
async fn a_merge_rule_on_a_field_that_is_not_synced_stops_the_run() {
    let table = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, table, Kind::Sqlite, table).await else {
        return;
    };
    s.both_ways(Some("merge"));
    s.edit(|t| {
        t.replace(
            "[tenants.t1]",
            "[entities.merge]\nnmae = \"source\"\n\n[tenants.t1]",
        )
    });
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z')")
        .await;
    let ran = s.attempt(&[], &[]);
    assert!(!ran.ok, "{}", ran.stdout);
    assert!(
        ran.stderr
            .contains("field `merge.nmae`: a merge rule on `nmae`, which is not a field both systems have")
            && ran.stderr.contains("synced: ")
            && ran.stderr.contains("name"),
        "{}",
        ran.stderr
    );
    assert_eq!(s.target.dump("ledger").await, Vec::<Value>::new());
    s.drop().await;
}

/// A SQLite table syncd first wrote into held only syncd's stamps (a
/// `T`), and its cursor was saved so; the application then stamped its
/// own edits with `datetime('now')` (a space). As text a space orders
/// before a `T`, so every row stamped that day came before the cursor:
/// an edit and a new row were never read, run after run. The cursor is
/// compared in the layout the table writes.
#[tokio::test]
async fn rows_stamped_with_datetime_now_after_syncd_wrote_the_table_are_read() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(None);
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', now() - interval '1 hour')")
        .await;
    s.run(&[]);
    assert_eq!(s.target_texts("name").await, ["a0"]);
    s.target
        .exec(
            "UPDATE ledger SET name = 'a1', updated_at = datetime('now'); \
             INSERT INTO ledger VALUES ('t2', 'new', datetime('now'))",
        )
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.writes_both_ways("product"), 2, "{}", ran.stdout);
    let mut names: Vec<String> = s
        .source
        .dump("ledger")
        .await
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a1", "new"]);
    let again = s.run(&[]);
    assert_eq!(again.writes_both_ways("product"), 0, "{}", again.stdout);
    s.drop().await;
}

/// A record whose counterpart was deleted, and then itself deleted by
/// syncd (`propagate` from the target, `delete` from the source), inserted
/// again under its id on its side: it was skipped by every run after, the
/// mapping saying both were gone while it lived on one side only. Either
/// way it is created anew on the other side, once.
#[tokio::test]
async fn a_record_inserted_again_after_both_were_deleted_is_created_anew() {
    let table = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, table, Kind::Sqlite, table).await else {
        return;
    };
    s.both_ways(None);
    s.edit(|t| {
        t.replace(
            "table = \"ledger\"",
            "table = \"ledger\"\non_source_delete = \"delete\"\non_target_delete = \"propagate\"\n\
             reconcile_every = \"0s\"\ndelete_brake = { percent = 100, max = 100 }",
        )
    });
    let now = || chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    s.source
        .exec("INSERT INTO ledger VALUES ('s1', 'from the source', '2026-01-01T10:00:00Z')")
        .await;
    s.target
        .exec("INSERT INTO ledger VALUES ('t1', 'from the target', '2026-01-01T10:00:00Z')")
        .await;
    s.run(&[]);
    let names = |rows: Vec<Value>| {
        let mut names: Vec<String> = rows
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let both = ["from the source", "from the target"];
    assert_eq!(names(s.target.dump("ledger").await), both);
    // s1's copy deleted in the target (carried to the source: s1 goes);
    // t1's copy deleted in the source (carried to the target: t1 goes).
    s.target.exec("DELETE FROM ledger WHERE id <> 't1'").await;
    s.source.exec("DELETE FROM ledger WHERE id <> 's1'").await;
    s.run(&[]);
    assert_eq!(s.source.dump("ledger").await, Vec::<Value>::new());
    assert_eq!(s.target.dump("ledger").await, Vec::<Value>::new());
    // Both ids inserted again by their applications.
    s.source
        .exec(&format!(
            "INSERT INTO ledger VALUES ('s1', 'from the source', '{}')",
            now()
        ))
        .await;
    s.target
        .exec(&format!(
            "INSERT INTO ledger VALUES ('t1', 'from the target', '{}')",
            now()
        ))
        .await;
    let back = s.run(&[]);
    assert_eq!(back.writes_both_ways("product"), 2, "{}", back.stdout);
    assert_eq!(names(s.source.dump("ledger").await), both, "{}", back.stdout);
    assert_eq!(names(s.target.dump("ledger").await), both);
    let again = s.run(&[]);
    assert_eq!(again.writes_both_ways("product"), 0, "{}", again.stdout);
    assert_eq!(s.source.dump("ledger").await.len(), 2, "one copy each");
    s.drop().await;
}

/// The id a create derives from its record's id was taken: `a` was
/// created in the target as V, V deleted there and the delete carried to
/// the source, V undeleted and created anew in the source under another
/// id; then the source application reused the id `a` for a new record.
/// Its create derived V again and was written over V, an unrelated record
/// (its values lost on both sides), and every run after failed on the ID
/// map's unique key. It is created under an id of its own now.
#[tokio::test]
async fn a_new_record_reusing_a_deleted_records_id_is_not_written_over_another() {
    let source = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT NOT NULL)";
    let target = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, deleted INTEGER NOT NULL DEFAULT 0, \
                  updated_at TEXT NOT NULL)";
    let Some(s) = Setup::new(Kind::Sqlite, source, Kind::Sqlite, target).await else {
        return;
    };
    s.both_ways(None);
    s.edit(|t| {
        t.replace(
            "table = \"ledger\"",
            "table = \"ledger\"\ndeleted_column = { target = \"deleted\" }\non_target_delete = \"propagate\"\n\
             delete_brake = { percent = 100, max = 100 }",
        )
    });
    let now = || chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a0', '2026-01-01T10:00:00Z'), ('b', 'b0', '2026-01-01T10:00:00Z')")
        .await;
    s.run(&[]);
    s.target
        .exec(&format!(
            "UPDATE ledger SET deleted = 1, updated_at = '{}' WHERE name = 'a0'",
            now()
        ))
        .await;
    s.run(&[]);
    s.target
        .exec(&format!(
            "UPDATE ledger SET deleted = 0, name = 'a1', updated_at = '{}' WHERE name = 'a0'",
            now()
        ))
        .await;
    s.run(&[]);
    // The source application reuses the id of the record it deleted.
    s.source
        .exec(&format!("INSERT INTO ledger VALUES ('a', 'new', '{}')", now()))
        .await;
    let reused = s.run(&[]);
    assert_eq!(reused.counter("product", "created"), 1, "{}", reused.stdout);
    assert_eq!(reused.counter("product", "failed"), 0, "{}", reused.stdout);
    let names = |rows: Vec<Value>| {
        let mut names: Vec<String> = rows
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(s.target.dump("ledger").await), ["a1", "b0", "new"]);
    assert_eq!(names(s.source.dump("ledger").await), ["a1", "b0", "new"]);
    let again = s.run(&[]);
    assert_eq!(again.writes_both_ways("product"), 0, "{}", again.stdout);
    assert_eq!(again.counter("product", "failed"), 0, "{}", again.stdout);
    s.drop().await;
}

/// A midnight written into a SQLite `DATE` column, read back as its day,
/// was taken for an edit there and failed the record in both directions
/// on every run after the first.
#[tokio::test]
async fn a_midnight_kept_as_a_day_reads_back_as_the_same_time() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, due timestamptz, updated_at timestamptz NOT NULL)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, due DATE, updated_at TEXT NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(None);
    s.source
        .exec("INSERT INTO ledger VALUES ('a', '2024-01-05 00:00:00+00', now() - interval '1 hour')")
        .await;
    let first = s.run(&[]);
    assert_eq!(first.writes_both_ways("product"), 1, "{}", first.stdout);
    assert_eq!(s.target_texts("due").await, ["2024-01-05"]);
    for _ in 0..2 {
        let again = s.run(&[]);
        assert_eq!(again.writes_both_ways("product"), 0, "{}", again.stdout);
        assert_eq!(again.counter("product", "failed"), 0, "{}", again.stdout);
    }
    s.drop().await;
}

/// References between PostgreSQL `character(n)` ids, both ways: a
/// reference is an id and keeps its padding as the ID map keeps ids (read
/// without it, it matched no mapping; written, it was refused for its
/// trailing spaces).
#[tokio::test]
async fn references_between_padded_ids_are_translated_both_ways() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id character(10) PRIMARY KEY, name text, parent_id character(10), \
         updated_at timestamptz NOT NULL)",
        Kind::Postgres,
        "CREATE TABLE ledger (id character(40) PRIMARY KEY, name text, parent_id character(40), \
         updated_at timestamptz NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(None);
    s.edit(|t| {
        t.replace(
            "name = \"product\"\ntable = \"ledger\"\n",
            "name = \"account\"\ntable = \"ledger\"\n[entities.fields]\nparent_id = { references = \"account\" }\n",
        )
    });
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('p', 'parent', NULL, now() - interval '1 hour'), \
             ('c', 'child', 'p', now() - interval '1 hour')",
        )
        .await;
    let first = s.run(&[]);
    assert_eq!(first.counter("account", "created"), 2, "{}", first.stdout);
    assert_eq!(first.counter("account", "failed"), 0, "{}", first.stdout);
    let linked: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.name, p.name FROM ledger c LEFT JOIN ledger p ON p.id = c.parent_id ORDER BY 1",
    )
    .fetch_all(s.target.pg_pool().unwrap())
    .await
    .unwrap();
    assert_eq!(
        linked,
        [
            ("child".to_owned(), Some("parent".to_owned())),
            ("parent".to_owned(), None)
        ]
    );
    let again = s.run(&[]);
    assert_eq!(again.writes_both_ways("account"), 0, "{}", again.stdout);
    assert_eq!(again.counter("account", "failed"), 0, "{}", again.stdout);
    s.drop().await;
}

/// A `jsonb` document that is JSON's `null` arrived as SQL NULL (no
/// value), and every run after said unchanged. Its row fails, saying so;
/// SQL NULL and other documents sync as before.
#[tokio::test]
async fn a_document_that_is_json_null_is_not_taken_for_no_value() {
    let pg = "CREATE TABLE ledger (id text PRIMARY KEY, doc jsonb, updated_at timestamptz NOT NULL)";
    let Some(s) = Setup::new(Kind::Postgres, pg, Kind::Postgres, pg).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'null', now()), ('b', NULL, now()), ('c', '[null]', now())")
        .await;
    let ran = s.run(&[]);
    assert_eq!(
        (
            ran.counter("product", "created"),
            ran.counter("product", "failed")
        ),
        (2, 1),
        "{}",
        ran.stdout
    );
    let m = s.mapping("a").await;
    assert!(
        m.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("the document is JSON's `null`"),
        "{m:?}"
    );
    assert_eq!(Setup::pg_text(&s.target, "doc").await, ["()", "([null])"]);
    s.drop().await;
}

/// A time of day PostgreSQL writes `10:30:00.5` and MariaDB's `TIME(6)`
/// `10:30:00.500000` is one value: synced both ways, runs with no edits
/// write nothing (they wrote both sides on every run).
#[tokio::test]
async fn a_time_of_day_reads_alike_from_postgresql_and_mariadb() {
    let Some(s) = Setup::new(
        Kind::Postgres,
        "CREATE TABLE ledger (id text PRIMARY KEY, at time, updated_at timestamptz NOT NULL)",
        Kind::Mariadb,
        "CREATE TABLE ledger (id VARCHAR(64) PRIMARY KEY, at TIME(6), updated_at DATETIME(6) NOT NULL)",
    )
    .await
    else {
        return;
    };
    s.both_ways(None);
    s.source
        .exec("INSERT INTO ledger VALUES ('a', '10:30:00', now()), ('b', '10:30:00.5', now()), ('c', NULL, now())")
        .await;
    let first = s.run(&[]);
    assert_eq!(first.counter("product", "created"), 3, "{}", first.stdout);
    for run in 2..=3 {
        let again = s.run(&[]);
        assert_eq!(
            again.writes_both_ways("product"),
            0,
            "run {run}: {}",
            again.stdout
        );
    }
    s.drop().await;
}

/// Runs the definition of `s` once through `store`.
async fn run_through(s: &Setup, store: &std::sync::Arc<Store>) -> syncd_store::RunRow {
    let job = s.job(store).await;
    let run = job.start("test").await.unwrap();
    job.execute(run, &mut |_| {}).await.unwrap()
}

/// Two processes on one state store, each with its mapping cache (a worker
/// and an operator's `syncd run`, each with its in-process cache; or two
/// with Redis under two prefixes, as after a lost update): a mapping the
/// other changed is read as the store holds it. A worker that cached a
/// record's create as failed skipped every later edit of it as "not
/// settled yet", while each run said succeeded.
#[tokio::test]
async fn a_mapping_another_process_changed_is_read_as_the_store_holds_it() {
    another_process_changed_a_mapping([MappingCache::local(), MappingCache::local()]).await;
    let (Some(a), Some(b)) = (
        support::RedisPrefix::create().await,
        support::RedisPrefix::create().await,
    ) else {
        return;
    };
    let redis = |p: &support::RedisPrefix| MappingCache::redis(&support::redis_url(), &p.prefix).unwrap();
    another_process_changed_a_mapping([redis(&a), redis(&b)]).await;
}

async fn another_process_changed_a_mapping([worker, operator]: [MappingCache; 2]) {
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, status TEXT, updated_at TEXT)";
    let Some(s) = Setup::new(Kind::Sqlite, ddl, Kind::Sqlite, ddl).await else {
        return;
    };
    let path = s.dir.0.join("exact.toml");
    let definition = std::fs::read_to_string(&path)
        .unwrap()
        .replace("direction = \"one_way\"", "direction = \"bidirectional\"")
        .replace(
            "connector = \"sql\"\n",
            "connector = \"sql\"\nlookback = \"0s\"\n",
        );
    std::fs::write(&path, definition).unwrap();
    let (worker, operator) = (s.store(worker).await, s.store(operator).await);
    s.target
        .exec("CREATE TRIGGER not_yet BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'not yet'); END")
        .await;
    s.source
        .exec("INSERT INTO ledger VALUES ('s1', 'one', 'open', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
        .await;
    run_through(&s, &worker).await;
    assert_eq!(s.mapping("s1").await.status, MappingStatus::Failed);
    s.target.exec("DROP TRIGGER not_yet").await;
    run_through(&s, &operator).await;
    assert_eq!(s.mapping("s1").await.status, MappingStatus::Mapped);
    s.target
        .exec("UPDATE ledger SET status = 'closed', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
        .await;
    let done = run_through(&s, &worker).await;
    assert_eq!(done.state, syncd_core::run::RunState::Succeeded);
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM ledger")
        .fetch_all(s.source.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(statuses, ["closed"], "the target's edit reaches the source");
    s.drop().await;
}

/// A field synced from now on (a column added to the target that the
/// source has) reaches the records synced before, not only those that
/// change later: the next run reads every record again, once.
#[tokio::test]
async fn a_field_added_later_reaches_every_record_synced_before() {
    let Some(s) = Setup::new(
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, email TEXT, updated_at TEXT)",
        Kind::Sqlite,
        "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)",
    )
    .await
    else {
        return;
    };
    s.source
        .exec(
            "INSERT INTO ledger VALUES ('a', 'Ada', 'ada@x', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')), \
             ('b', 'Bob', 'bob@x', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour'))",
        )
        .await;
    assert_eq!(s.run(&[]).counter("product", "created"), 2);
    s.target.exec("ALTER TABLE ledger ADD COLUMN email TEXT").await;
    let widened = s.run(&[]);
    assert_eq!(widened.counter("product", "updated"), 2, "{}", widened.stdout);
    assert_eq!(s.target_texts("email").await, ["ada@x", "bob@x"]);
    // Once: the run after reads nothing again.
    let after = s.run(&[]);
    assert_eq!(after.counter("product", "read"), 0, "{}", after.stdout);
    s.drop().await;
}

/// A cursor an earlier version saved on a change time the scan no longer
/// reaches (text such as `now`, read apart now) starts the scan over once,
/// instead of ending every scan there while runs say succeeded.
#[tokio::test]
async fn a_cursor_saved_on_text_that_is_no_time_starts_the_scan_over() {
    let ddl = "CREATE TABLE ledger (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)";
    let Some(s) = Setup::new(Kind::Sqlite, ddl, Kind::Sqlite, ddl).await else {
        return;
    };
    s.source
        .exec("INSERT INTO ledger VALUES ('a', 'a', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour'))")
        .await;
    s.run(&[]);
    // As an earlier version left it, on a row whose time was `now`.
    let state = sqlx::SqlitePool::connect(&s.dir.sqlite_url("state.db"))
        .await
        .unwrap();
    let saved = sqlx::query("UPDATE sync_cursors SET cursor = '{\"updated_at\":\"now\",\"id\":\"w1\"}'")
        .execute(&state)
        .await
        .unwrap();
    assert_eq!(saved.rows_affected(), 1);
    state.close().await;
    s.source
        .exec("INSERT INTO ledger VALUES ('n1', 'new', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
        .await;
    let ran = s.run(&[]);
    assert_eq!(ran.counter("product", "created"), 1, "{}", ran.stdout);
    s.drop().await;
}
