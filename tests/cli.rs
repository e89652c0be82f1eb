//! The `syncd` verbs run as the built binary: what they print, on which
//! stream, and the exit status scripts branch on (0 success, 1 input
//! refused, 2 bad command line). `plan` and `check`; and the operator verbs
//! with a token, which see only the token's tenant, as the API does.

use syncd_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const DEMO: &str = "workflows/crm-to-erp.toml";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("syncd-cli-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// Writes `text` to `name` (which may contain directories).
    fn write(&self, name: &str, text: &str) -> &Self {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a run of the binary printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `syncd args...` in `dir`.
fn syncd(dir: &Path, args: &[&str]) -> Run {
    syncd_env(dir, args, &[])
}

/// Runs `syncd args...` in `dir` with `env` set; `SYNCD_TOKEN` comes only
/// from `env`.
fn syncd_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(args)
        .current_dir(dir)
        .env_remove("SYNCD_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("the syncd binary runs");
    let run = Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    };
    // Every step table a verb prints accounts for every record read.
    support::assert_table_accounted(&run.stdout);
    run
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A workflow over accounts, contacts and orders with no partner (so it plans
/// with the built-in graph); `extra` is appended.
fn workflow(extra: &str) -> String {
    format!(
        r#"
name = "crm-to-erp"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"

[systems.erp]
connector = "sql"

[[entities]]
name = "account"
table = "accounts"

[[entities]]
name = "contact"
table = "contacts"

[entities.fields]
account_id = {{ references = "account" }}

[[entities]]
name = "order"
table = "orders"

[entities.fields]
account_id = {{ references = "account" }}
{extra}
"#
    )
}

// --- plan --graph ---------------------------------------------------------------

#[test]
fn plan_graph_prints_the_stages() {
    let dir = TempDir::new();
    dir.write(
        "graph.toml",
        "[entities]\nproduct = []\norder = [\"account\"]\naccount = []\norder_line = [\"order\", \"product\"]\n",
    );
    let run = syncd(&dir.0, &["plan", "--graph", "graph.toml"]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "stage 1: account, product\nstage 2: order\nstage 3: order_line\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn plan_graph_with_a_cycle_prints_the_cycle_and_fails() {
    let dir = TempDir::new();
    dir.write(
        "graph.toml",
        "[entities]\naccount = []\norder = [\"account\", \"invoice\"]\ninvoice = [\"order\"]\n",
    );
    let run = syncd(&dir.0, &["plan", "--graph", "graph.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "", "no stage is printed when planning fails");
    assert!(run.stderr.contains("cycle"), "{}", run.stderr);
    assert!(
        run.stderr.contains("invoice -> order -> invoice"),
        "{}",
        run.stderr
    );
}

#[test]
fn plan_graph_of_a_missing_file_fails_naming_it() {
    let dir = TempDir::new();
    let run = syncd(&dir.0, &["plan", "--graph", "nope.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(run.stderr.starts_with("nope.toml: cannot read"), "{}", run.stderr);
}

// --- plan WORKFLOW -------------------------------------------------------------------

#[test]
fn plan_the_demo() {
    let run = syncd(repo(), &["plan", DEMO]);
    assert_eq!(run.stderr, "");
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout.lines().next().unwrap().starts_with("stage 1: "),
        "{}",
        run.stdout
    );
    for line in run.stdout.lines() {
        assert!(
            line.starts_with("stage ") || line.starts_with("deferred: "),
            "{line}"
        );
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_description(
        "syncd plan workflows/crm-to-erp.toml: the demo planned with the acme-saas partner graph",
    );
    settings.bind(|| insta::assert_snapshot!("plan_demo", run.stdout));
}

#[test]
fn plan_with_a_partner_graph_from_the_command_line() {
    // The workflow names no partner; `--partner flat` makes contacts and
    // orders independent of each other.
    let dir = TempDir::new();
    dir.write("integration.toml", &workflow(""));
    dir.write(
        "partners/flat.toml",
        "extends = \"default\"\n[entities]\norder = [\"account\"]\n",
    );

    let run = syncd(&dir.0, &["plan", "integration.toml"]);
    assert_eq!(
        run.stdout,
        "stage 1: account\nstage 2: contact\nstage 3: order\n\
         deferred: account -> account (written first, reference patched once its target exists)\n"
    );
    let run = syncd(&dir.0, &["plan", "integration.toml", "--partner", "flat"]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "stage 1: account\nstage 2: contact, order\n\
         deferred: account -> account (written first, reference patched once its target exists)\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn plan_with_a_missing_partner_file_fails() {
    let run = syncd(repo(), &["plan", DEMO, "--partner", "no-such-partner"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("cannot read the graph of partner `no-such-partner`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("workflows/partners/no-such-partner.toml"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_partner_named_in_the_workflow_without_a_graph_file_uses_the_default() {
    let dir = TempDir::new();
    dir.write(
        "integration.toml",
        &format!("partner = \"newco\"\n{}", workflow("")),
    );
    let run = syncd(&dir.0, &["plan", "integration.toml"]);
    assert_eq!(run.stderr, "");
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout
            .starts_with("stage 1: account\nstage 2: contact\nstage 3: order\n")
    );
    // Once other partners here have graphs, a missing one is a misspelt
    // name until its file says it keeps the default.
    dir.write("partners/newcorp.toml", "extends = \"default\"\n");
    let misspelt = syncd(&dir.0, &["check", "integration.toml"]);
    assert_eq!(misspelt.code, Some(1));
    assert!(
        misspelt
            .stderr
            .contains("cannot read the graph of partner `newco`")
            && misspelt
                .stderr
                .contains("the partners with a graph here are `newcorp`")
            && misspelt.stderr.contains("extends = \"default\""),
        "{}",
        misspelt.stderr
    );
    dir.write("partners/newco.toml", "extends = \"default\"\n");
    assert_eq!(syncd(&dir.0, &["check", "integration.toml"]).code, Some(0));
}

#[test]
fn plan_refuses_a_reference_without_an_edge_before_printing_any_stage() {
    // The built-in graph has no order -> order edge.
    let dir = TempDir::new();
    dir.write(
        "integration.toml",
        &workflow("parent_order_id = { references = \"order\" }"),
    );
    let run = syncd(&dir.0, &["plan", "integration.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(!run.stderr.contains("stage"), "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "integration.toml: entity `order`, field `parent_order_id`: references `order` but the \
         dependency graph has no edge order -> order\n"
    );
}

#[test]
fn plan_without_a_workflow_or_graph_is_a_usage_error() {
    let run = syncd(repo(), &["plan"]);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stdout, "");
    let run = syncd(
        repo(),
        &["plan", DEMO, "--graph", "workflows/graphs/default.toml"],
    );
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stdout, "");
}

// --- check -------------------------------------------------------------------------------

#[test]
fn check_the_demo() {
    let run = syncd(repo(), &["check", DEMO]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "workflows/crm-to-erp.toml: ok: integration `crm-to-erp`, 5 entity types, 2 tenants\n"
    );
    assert_eq!(run.code, Some(0));
}

#[test]
fn check_prints_every_error() {
    let dir = TempDir::new();
    dir.write(
        "broken.toml",
        r#"
name = "broken"
schedule = "every day"
source = "crm"
target = "erp"

[systems.crm]
connector = "ftp"

[[entities]]
name = "order"
strategy = "by_hand"

[entities.fields]
account_id = { references = "account" }
"#,
    );
    let run = syncd(&dir.0, &["check", "broken.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    // One error a line, each starting with the file (the cron crate's own
    // message runs over several lines, so count only those), then a count.
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("broken.toml: ") || l.ends_with(" found"))
        .collect();
    assert_eq!(lines.len(), 6, "{}", run.stderr);
    assert_eq!(run.stderr.lines().last(), Some("5 errors found"));
    let expected = [
        "broken.toml: field `schedule`: bad cron expression `every day`",
        "broken.toml: field `systems.crm.connector`: unknown connector `ftp`",
        "broken.toml: field `target`: unknown system `erp`",
        "broken.toml: entity `order`, field `strategy`: unknown strategy `by_hand`",
        "broken.toml: entity `order`, field `account_id`: references unknown entity type `account`",
        "5 errors found",
    ];
    for (line, prefix) in lines.iter().zip(expected) {
        assert!(line.starts_with(prefix), "{line}\ndoes not start with\n{prefix}");
    }
}

#[test]
fn check_reports_a_reference_without_an_edge() {
    let dir = TempDir::new();
    dir.write(
        "integration.toml",
        &workflow("parent_order_id = { references = \"order\" }"),
    );
    let run = syncd(&dir.0, &["check", "integration.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "integration.toml: entity `order`, field `parent_order_id`: references `order` but the \
         dependency graph has no edge order -> order\n1 error found\n"
    );
}

#[test]
fn check_reports_a_cycle_in_the_partner_graph() {
    let dir = TempDir::new();
    dir.write(
        "integration.toml",
        &format!("partner = \"loopy\"\n{}", workflow("")),
    );
    dir.write(
        "partners/loopy.toml",
        "extends = \"default\"\n[entities]\naccount = [\"order\"]\n",
    );
    let run = syncd(&dir.0, &["check", "integration.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .starts_with("integration.toml: error: dependency cycle: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("account -> order -> account"),
        "{}",
        run.stderr
    );
}

// --- operator verbs with a token -------------------------------------------------------

/// A SQLite state store with tenants `a` and `b` (crates/test-support/src/tenants.rs)
/// and tokens for tenant `a` and for an admin.
struct Operators {
    dir: support::TempDir,
    db: String,
    /// (run, conflict) of each tenant.
    a: (String, String),
    b: (String, String),
    token_a: String,
    admin: String,
}

impl Operators {
    fn new() -> Operators {
        use syncd_store::{Principal, Store, StoreConfig};
        let dir = support::TempDir::new("cli-tokens");
        let db = dir.sqlite_url("state.db");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (ids, token_a, admin) = runtime.block_on(async {
            let cache = syncd_store::cache::MappingCache::local();
            let store = Store::connect(&StoreConfig::new(&db), cache).await.unwrap();
            let ids = support::tenants::seed(&store).await;
            let token_a = store.create_token(&Principal::Tenant("a".into())).await;
            let admin = store.create_token(&Principal::Admin).await;
            (ids, token_a.unwrap(), admin.unwrap())
        });
        let [(run_a, conflict_a), (run_b, conflict_b)] = ids.map(|(r, c)| (r.to_string(), c.to_string()));
        Operators {
            dir,
            db,
            a: (run_a, conflict_a),
            b: (run_b, conflict_b),
            token_a,
            admin,
        }
    }

    /// `syncd args...` on this store, with `env` set.
    fn syncd(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = vec![("SYNCD_DATABASE_URL", self.db.as_str())];
        all.extend_from_slice(env);
        syncd_env(&self.dir.0, args, &all)
    }

    /// `syncd args... --token TOKEN` on this store.
    fn with(&self, token: &str, args: &[&str]) -> Run {
        let mut args = args.to_vec();
        args.extend(["--token", token]);
        self.syncd(&args, &[])
    }
}

/// Operators copy the start of an id, as of a git commit: a run or a
/// conflict is found by its first 4 or more characters when they name one
/// of those the caller may see, and refused naming why otherwise.
#[test]
fn runs_and_conflicts_are_found_by_the_start_of_their_id() {
    let o = Operators::new();
    let ((run_a, conflict_a), (run_b, _)) = (&o.a, &o.b);
    // Both runs' ids start with `5eed`, both conflicts' with `c0f1`: a's
    // token sees one of each, no token both.
    let found = [
        o.with(&o.token_a, &["runs", "show", "5eed"]),
        o.with(&o.token_a, &["runs", "show", &run_a[..8].to_uppercase()]),
        o.syncd(&["runs", "show", &run_b[..13]], &[]),
        o.with(&o.token_a, &["conflicts", "show", "c0f1"]),
    ];
    for (run, id) in found.iter().zip([run_a, run_a, run_b, conflict_a]) {
        assert_eq!((run.code, run.stderr.as_str()), (Some(0), ""), "{}", run.stdout);
        assert!(run.stdout.contains(id.as_str()), "{}", run.stdout);
    }
    let refused = [
        (
            o.syncd(&["runs", "show", "5eed"], &[]),
            "error: more than one run id starts with `5eed`: give more of it",
        ),
        (
            o.syncd(
                &["conflicts", "resolve", "c0f1", "--take", "source", "--by", "ann"],
                &[],
            ),
            "error: more than one conflict id starts with `c0f1`: give more of it",
        ),
        (
            o.with(&o.token_a, &["runs", "cancel", &run_b[..13]]),
            &format!("error: no run id starts with `{}`", &run_b[..13]),
        ),
        (
            o.syncd(&["runs", "show", "5ee"], &[]),
            "error: `5ee` is not a run id (give the whole id, or its first 4 or more characters)",
        ),
        (
            o.syncd(&["conflicts", "show", "c0f1%"], &[]),
            "error: `c0f1%` is not a conflict id (give the whole id, or its first 4 or more characters)",
        ),
    ];
    for (run, message) in refused {
        assert_eq!(
            (run.code, run.stderr.trim_end()),
            (Some(1), message),
            "{}",
            run.stdout
        );
    }
    // Nothing was decided or cancelled by the refused ones.
    let b = o.syncd(&["runs", "show", run_b], &[]);
    assert!(b.stdout.contains("state       suspended"), "{}", b.stdout);
    assert!(b.stdout.contains("pending conflicts: 1"), "{}", b.stdout);
}

#[test]
fn a_tenant_token_sees_only_its_tenant_on_the_command_line() {
    let o = Operators::new();
    let ((run_a, conflict_a), (run_b, conflict_b)) = (&o.a, &o.b);

    // Listings show none of b's, whether the token comes from --token or
    // from SYNCD_TOKEN.
    for runs in [
        o.with(&o.token_a, &["runs", "list"]),
        o.syncd(&["runs", "list"], &[("SYNCD_TOKEN", &o.token_a)]),
    ] {
        assert_eq!((runs.code, runs.stderr.as_str()), (Some(0), ""));
        assert!(runs.stdout.contains(run_a.as_str()), "{}", runs.stdout);
        assert!(!runs.stdout.contains(run_b.as_str()), "{}", runs.stdout);
    }
    let conflicts = o.with(&o.token_a, &["conflicts", "list", "--status", "all"]);
    assert_eq!(conflicts.code, Some(0), "{}", conflicts.stderr);
    assert!(conflicts.stdout.contains(conflict_a.as_str()));
    assert!(!conflicts.stdout.contains(conflict_b.as_str()));
    let scope = ["--integration", "crm-to-erp", "--entity", "order"];
    let pending = o.with(
        &o.token_a,
        &[&["mappings", "list"], &scope[..], &["--status", "pending"]].concat(),
    );
    assert_eq!(pending.code, Some(0), "{}", pending.stderr);
    assert!(pending.stdout.contains("a-O-1") && !pending.stdout.contains("b-O-1"));
    // The default is the failed ones: none here, which an empty table
    // alone would not say.
    let failed = o.with(&o.token_a, &[&["mappings", "list"], &scope[..]].concat());
    assert_eq!(failed.code, Some(0), "{}", failed.stderr);
    assert_eq!(
        failed.stderr,
        "(no failed mappings of `order`; --status pending, mapped, failed or stale lists others)\n"
    );

    // b's run and conflict are not found, exactly like ones that do not
    // exist, and nothing of b's changes.
    let missing = uuid::Uuid::new_v4().to_string();
    let verbs: [(&[&str], &str, &str, &str); 5] = [
        (&["runs", "show"], run_b, "run", ""),
        (&["runs", "cancel"], run_b, "run", ""),
        (&["runs", "resume"], run_b, "run", ""),
        (&["conflicts", "show"], conflict_b, "conflict", ""),
        (&["conflicts", "resolve"], conflict_b, "conflict", "take"),
    ];
    for (verb, id, what, take) in verbs {
        for id in [id, missing.as_str()] {
            let mut args = [verb, &[id]].concat();
            if !take.is_empty() {
                args.extend(["--take", "source", "--by", "mallory"]);
            }
            let run = o.with(&o.token_a, &args);
            assert_eq!(run.code, Some(1), "{args:?}");
            assert_eq!(run.stderr, format!("error: no {what} {id}\n"), "{args:?}");
            assert_eq!(run.stdout, "", "{args:?}");
        }
    }
    let lookup = |id: &str| {
        o.with(
            &o.token_a,
            &[&["mappings", "lookup"], &scope[..], &["--source-id", id]].concat(),
        )
    };
    let foreign = lookup("b-O-1");
    assert_eq!(foreign.code, Some(1));
    assert_eq!(
        foreign.stderr,
        "no mapping for source id `b-O-1` of order in integration `crm-to-erp` for tenant `a`\n"
    );
    let own = lookup("a-O-1");
    assert_eq!(own.code, Some(0), "{}", own.stderr);
    assert!(own.stdout.contains("a-T-1"), "{}", own.stdout);
    // An entity type the store holds nothing of is said to be so.
    let plural = o.with(
        &o.token_a,
        &[
            "mappings",
            "lookup",
            "--integration",
            "crm-to-erp",
            "--entity",
            "orders",
            "--source-id",
            "a-O-1",
        ],
    );
    assert_eq!(plural.code, Some(1));
    assert!(
        plural
            .stderr
            .contains("this store holds no mapping of entity `orders` there at all; it holds some of: order"),
        "{}",
        plural.stderr
    );
    let b_run = o.syncd(&["runs", "show", run_b], &[]);
    assert!(b_run.stdout.contains("state       suspended"), "{}", b_run.stdout);
    let b_conflict = o.syncd(&["conflicts", "show", conflict_b], &[]);
    assert!(
        b_conflict.stdout.contains("status pending"),
        "{}",
        b_conflict.stdout
    );

    // Naming another tenant with a tenant's token is refused outright.
    for args in [
        &["runs", "list", "--tenant", "b"][..],
        &[
            &["mappings", "lookup"],
            &scope[..],
            &["--source-id", "b-O-1", "--tenant", "b"],
        ]
        .concat(),
    ] {
        let run = o.with(&o.token_a, args);
        assert_eq!(run.code, Some(1), "{args:?}");
        assert_eq!(
            run.stderr,
            "error: --tenant: tenant `b` is not the token's tenant\n"
        );
    }

    // Its own objects work; an admin's token and no token see every tenant.
    let show = o.with(&o.token_a, &["runs", "show", run_a]);
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    assert!(show.stdout.contains("pending conflicts: 1"), "{}", show.stdout);
    for runs in [
        o.with(&o.admin, &["runs", "list"]),
        o.syncd(&["runs", "list"], &[]),
    ] {
        assert!(runs.stdout.contains(run_a.as_str()) && runs.stdout.contains(run_b.as_str()));
    }
    // A mapping lives in one tenant: without a tenant's token, name it.
    for run in [
        o.with(
            &o.admin,
            &[&["mappings", "lookup"], &scope[..], &["--source-id", "b-O-1"]].concat(),
        ),
        o.syncd(
            &[&["mappings", "list"], &scope[..], &["--status", "pending"]].concat(),
            &[],
        ),
    ] {
        assert_eq!(run.code, Some(1));
        assert_eq!(
            run.stderr,
            "error: name the tenant: --tenant T, or a tenant's --token\n"
        );
    }
}

#[test]
fn a_wrong_token_is_refused() {
    let o = Operators::new();
    let unknown = "error: --token or SYNCD_TOKEN: unknown token; tokens come from `syncd tokens \
                   create` on this store\n";
    let long = "x".repeat(201);
    let refused = [
        (o.with("syncd_not_a_token", &["runs", "list"]), unknown),
        (o.with(&long, &["runs", "show", &o.a.0]), unknown),
        (
            o.syncd(&["conflicts", "list"], &[("SYNCD_TOKEN", "syncd_nope")]),
            unknown,
        ),
        (
            o.with(
                "syncd_nope",
                &[
                    "mappings",
                    "lookup",
                    "--integration",
                    "i",
                    "--entity",
                    "e",
                    "--source-id",
                    "x",
                ],
            ),
            unknown,
        ),
        (
            o.with("  ", &["runs", "list"]),
            "error: --token or SYNCD_TOKEN is empty\n",
        ),
    ];
    for (run, message) in refused {
        assert_eq!(run.code, Some(1));
        assert_eq!(run.stderr, message);
        assert_eq!(run.stdout, "", "nothing is shown");
    }
}

#[test]
fn runs_resume_applies_a_review_on_the_command_line() {
    use support::systems::{Kind, SystemDb, ts, workflow_toml};
    let dir = support::TempDir::new("cli-resume");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (source, target) = runtime.block_on(async {
        let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
        let row = serde_json::json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": ts(0)});
        source.insert("accounts", &[row]).await;
        (source, target)
    });
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "manual")],
    );
    std::fs::create_dir_all(dir.0.join("workflows")).unwrap();
    std::fs::write(dir.0.join("workflows/e2e.toml"), toml).unwrap();
    let db = dir.sqlite_url("state.db");
    let env = [("SYNCD_DATABASE_URL", db.as_str())];
    let syncd = |args: &[&str]| syncd_env(&dir.0, args, &env);
    let token = |args: &[&str]| {
        let created = syncd(&[&["tokens", "create", "--tenant"][..], args].concat());
        assert_eq!(created.code, Some(0), "{}", created.stderr);
        created.stdout.trim().to_owned()
    };
    // t2 has no definition here: a typo, unless forced.
    let refused = syncd(&["tokens", "create", "--tenant", "t2"]);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused
            .stderr
            .contains("no definition in workflows names tenant `t2`"),
        "{}",
        refused.stderr
    );
    let (t1, t2) = (token(&["t1"]), token(&["t2", "--force"]));

    assert_eq!(
        syncd(&["run", "workflows/e2e.toml", "--tenant", "t1"]).code,
        Some(0)
    );
    runtime.block_on(async {
        let now = syncd_connect::format_time(chrono::Utc::now());
        source
            .exec(&format!(
                "UPDATE accounts SET name = 'Acme S', updated_at = '{now}'"
            ))
            .await;
        target
            .exec(&format!(
                "UPDATE customers SET customer_name = 'Acme T', updated_at = '{now}'"
            ))
            .await;
    });
    let suspended = syncd(&["run", "workflows/e2e.toml", "--tenant", "t1"]);
    let run = suspended
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.strip_suffix(" suspended"))
        .unwrap_or_else(|| panic!("{}", suspended.stdout))
        .to_owned();
    let resume = |token: &str| {
        syncd(&[
            "runs",
            "resume",
            &run,
            "--workflows",
            "workflows",
            "--token",
            token,
        ])
    };

    // Another tenant's token does not find it; a pending conflict refuses it.
    let other = resume(&t2);
    assert_eq!(
        (other.code, other.stderr),
        (Some(1), format!("error: no run {run}\n"))
    );
    let early = resume(&t1);
    assert_eq!(early.code, Some(1));
    assert_eq!(
        early.stderr,
        format!("error: run {run} cannot be resumed: 1 of its conflicts still wait for a reviewer\n")
    );

    let listed = syncd(&["conflicts", "list", "--token", &t1]);
    let conflict = listed
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let values = r#"{"name": "Acme Reviewed"}"#;
    let resolved = syncd(&[
        "conflicts",
        "resolve",
        &conflict,
        "--values",
        values,
        "--by",
        "reviewer-1",
        "--token",
        &t1,
    ]);
    assert_eq!(resolved.code, Some(0), "{}", resolved.stderr);
    assert!(
        resolved
            .stdout
            .contains("a running `syncd worker` resumes it, or `syncd runs resume"),
        "{}",
        resolved.stdout
    );
    // What became of the decision: nothing yet, then applied by the run.
    let outcome = || {
        let shown = syncd(&["conflicts", "show", &conflict, "--token", &t1]);
        shown
            .stdout
            .lines()
            .find(|l| l.starts_with("outcome "))
            .map(str::to_owned)
    };
    assert_eq!(
        outcome().as_deref(),
        Some("outcome waiting for a run to apply it")
    );

    let done = resume(&t1);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stdout.contains(&format!("run {run} succeeded")),
        "{}",
        done.stdout
    );
    runtime.block_on(async {
        assert_eq!(source.dump("accounts").await[0]["name"], "Acme Reviewed");
        assert_eq!(
            target.dump("customers").await[0]["customer_name"],
            "Acme Reviewed"
        );
    });
    assert_eq!(outcome().as_deref(), Some("outcome applied"));
    let again = resume(&t1);
    assert_eq!(again.code, Some(1));
    assert_eq!(
        again.stderr,
        format!(
            "error: run {run} cannot be resumed: it is succeeded; only a planned, running, \
             suspended or failed run can be resumed\n"
        )
    );
}

/// `syncd runs list | head`: a reader that goes away ends the verb as it
/// ends any Unix tool (SIGPIPE, 141 in a shell), never with a panic.
#[cfg(target_os = "linux")]
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.0.join("state.db").display());
    for args in [&["runs", "list"][..], &["plan", "--graph", "graph.toml"][..]] {
        dir.write(
            "graph.toml",
            "[entities]\naccount = []\ncontact = [\"account\"]\n",
        );
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(args)
            .current_dir(&dir.0)
            .env("SYNCD_DATABASE_URL", &url)
            .stdout(writer)
            .output()
            .expect("the syncd binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        // SIGPIPE is 13 on Linux.
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

/// A password in a system's or the store's URL is never printed, not even
/// in the error that says the database cannot be reached.
#[test]
fn passwords_in_urls_are_not_printed() {
    let dir = TempDir::new();
    // Nothing listens on port 1.
    let secret_url = "postgres://postgres:TopSecret@127.0.0.1:1/test";
    dir.write(
        "workflows/leak.toml",
        &format!(
            r#"name = "leak"
source = "src"
target = "dst"
[systems.src]
connector = "sql"
url = "{secret_url}"
[systems.dst]
connector = "sql"
url = "sqlite://dst.db"
[[entities]]
name = "product"
table = "ledger"
[tenants.t1]
"#
        ),
    );
    let state = format!("sqlite://{}", dir.0.join("state.db").display());
    let runs = [
        syncd_env(
            &dir.0,
            &["run", "workflows/leak.toml", "--tenant", "t1"],
            &[("SYNCD_DATABASE_URL", state.as_str())],
        ),
        // (A port out of range fails at once; an unreachable store takes
        // the pool's 30 s to give up, and prints the same way.)
        syncd_env(
            &dir.0,
            &["runs", "list"],
            &[(
                "SYNCD_DATABASE_URL",
                "postgres://postgres:TopSecret@127.0.0.1:99999/test",
            )],
        ),
        syncd_env(
            &dir.0,
            &["runs", "list"],
            &[
                ("SYNCD_DATABASE_URL", state.as_str()),
                ("SYNCD_REDIS_URL", "redis://:TopSecret@127.0.0.1:1 bad"),
            ],
        ),
    ];
    for run in &runs {
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains("TopSecret"), "{all}");
    }
    assert_ne!(runs[0].code, Some(0), "{}", runs[0].stderr);
    assert!(
        runs[0]
            .stderr
            .contains("postgres://postgres:***@127.0.0.1:1/test"),
        "{}",
        runs[0].stderr
    );
    assert_ne!(runs[1].code, Some(0));
}

/// Tokens have a lifecycle: listed without their secret, revoked or
/// expired and then refused at once, by the API and by the CLI.
#[test]
fn tokens_are_listed_revoked_and_expire() {
    let dir = TempDir::new();
    dir.write(
        "workflows/w.toml",
        r#"name = "w"
source = "a"
target = "b"
[systems.a]
connector = "sql"
url = "sqlite://a.db"
[systems.b]
connector = "sql"
url = "sqlite://b.db"
[[entities]]
name = "product"
table = "ledger"
[tenants.acme]
"#,
    );
    let db = format!("sqlite://{}", dir.0.join("state.db").display());
    let env = [("SYNCD_DATABASE_URL", db.as_str())];
    let syncd = |args: &[&str]| syncd_env(&dir.0, args, &env);
    let create = |args: &[&str]| {
        let created = syncd(&[&["tokens", "create"][..], args].concat());
        assert_eq!(created.code, Some(0), "{}", created.stderr);
        created.stdout.trim().to_owned()
    };
    let kept = create(&["--tenant", "acme"]);
    let doomed = create(&["--tenant", "acme"]);
    let brief = create(&["--tenant", "acme", "--expires-in", "1s"]);
    let admin = create(&["--admin"]);
    // A token expired as it is created is refused, and none is stored.
    let held = syncd(&["tokens", "list"]);
    let zero = syncd(&["tokens", "create", "--tenant", "acme", "--expires-in", "0s"]);
    assert_eq!(zero.code, Some(1), "{}", zero.stderr);
    assert_eq!(zero.stdout, "", "no token printed");
    assert!(
        zero.stderr.contains(
            "error: --expires-in `0s`: the token would be expired as it is created; give a positive \
             interval (`12h`, `30d`), or none for a token valid until revoked"
        ),
        "{}",
        zero.stderr
    );
    assert_eq!(syncd(&["tokens", "list"]).stdout, held.stdout);

    // The API and the CLI take each of them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = runtime.block_on(async {
        let store = syncd_store::Store::connect(
            &syncd_store::StoreConfig::new(&db),
            syncd_store::cache::MappingCache::disabled(),
        )
        .await
        .unwrap();
        support::http::serve(std::sync::Arc::new(store)).await
    });
    let api = |token: &str| {
        runtime.block_on(support::http::request(
            addr,
            "GET",
            "/api/runs",
            Some(token),
            None,
        ))
    };
    for token in [&kept, &doomed, &brief, &admin] {
        assert_eq!(api(token).0, 200, "{token}");
    }

    let listed = syncd(&["tokens", "list"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    for token in [&kept, &doomed, &brief, &admin] {
        assert!(
            !listed.stdout.contains(token.as_str()),
            "the secret is never shown"
        );
        assert!(listed.stdout.contains(&token[..14]), "{}", listed.stdout);
    }
    assert!(listed.stdout.contains("(admin)"));
    let line_of = |out: &str, token: &str| out.lines().find(|l| l.contains(&token[..14])).unwrap().to_owned();
    let last_used = line_of(&listed.stdout, &kept)
        .split_whitespace()
        .nth(4)
        .unwrap()
        .to_owned();
    assert_ne!(last_used, "-", "last used is noted: {}", listed.stdout);

    let revoked = syncd(&["tokens", "revoke", &doomed[..14]]);
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for (token, why) in [(&doomed, "was revoked at"), (&brief, "expired at")] {
        let (status, body) = api(token);
        assert_eq!(status, 401, "{token}");
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
        let cli = syncd_env(
            &dir.0,
            &["runs", "list"],
            &[
                ("SYNCD_DATABASE_URL", db.as_str()),
                ("SYNCD_TOKEN", token.as_str()),
            ],
        );
        assert_eq!(cli.code, Some(1));
        assert!(cli.stderr.contains(why), "{}", cli.stderr);
    }
    assert_eq!(api(&kept).0, 200, "the other tokens still work");
    let listed = syncd(&["tokens", "list"]);
    // (holder, id, then the revocation time: no longer `-`)
    assert_ne!(
        line_of(&listed.stdout, &doomed).split_whitespace().rev().nth(2),
        Some("-"),
        "{}",
        listed.stdout
    );
    let missing = syncd(&["tokens", "revoke", "syncd_00000000"]);
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("no token `syncd_00000000`"),
        "{}",
        missing.stderr
    );
}

/// `syncd check` and `syncd run` refuse a definition whose two tenants
/// resolve a system to the same database, naming both; with a URL of its
/// own for the second tenant it passes.
#[test]
fn tenants_on_one_database_are_refused_by_check_and_run() {
    let dir = support::TempDir::new("cli-trap");
    let db = dir.0.join("same.db");
    let text = format!(
        r#"name = "trap"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"
url = "sqlite://{db}"

[systems.erp]
connector = "sql"
url = "sqlite://{db}"

[[entities]]
name = "account"
source_table = "a"
target_table = "b"

[entities.fields]
name = "name"

[tenants.acme]

[tenants.globex]
"#,
        db = db.display()
    );
    let file = dir.0.join("trap.toml");
    std::fs::write(&file, &text).unwrap();
    let state = format!("sqlite://{}", dir.0.join("syncd.db").display());
    for args in [vec!["check"], vec!["run", "--tenant", "acme"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(&args[..1])
            .arg(&file)
            .args(&args[1..])
            .env("SYNCD_DATABASE_URL", &state)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} passed: {stderr}");
        assert!(
            stderr.contains("tenants `acme` and `globex` both sync system `crm`"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("system `erp`"), "{args:?}: {stderr}");
    }
    assert!(!db.exists(), "nothing was created or written");
    let apart = text.replace(
        "[tenants.globex]\n",
        &format!(
            "[tenants.globex]\nurls = {{ crm = \"sqlite://{0}/g-crm.db\", erp = \"sqlite://{0}/g-erp.db\" }}\n",
            dir.0.display()
        ),
    );
    std::fs::write(&file, apart).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `syncd demo` in `dir` as a new user does (its default folder
/// name, no state store of their own); returns what it printed.
fn demo_in(dir: &support::TempDir) -> String {
    let demo = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .current_dir(&dir.0)
        .args(["demo", "--dir", "demo-data"])
        .env_remove("SYNCD_DATABASE_URL")
        .env_remove("SYNCD_REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert!(
        demo.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    stdout
}

/// A new user follows the commands the demo prints at its end, verbatim, in
/// a fresh folder: they decide every parked conflict and finish the run
/// (the definition they resume with is written by the demo).
#[test]
fn the_demos_closing_commands_work_as_printed() {
    let dir = support::TempDir::new("demo-follow");
    let stdout = demo_in(&dir);
    // The definition it wrote reaches both tenants' systems, apart.
    let checked = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .current_dir(&dir.0)
        .args(["check", "--connect", "demo-data/workflows/crm-to-erp.toml"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        said.contains("2 tenants, every system reached and checked"),
        "{said}"
    );
    let (_, commands) = stdout
        .split_once("To decide them and finish the run:")
        .unwrap_or_else(|| panic!("no closing commands: {stdout}"));
    let mut env: Vec<(String, String)> = Vec::new();
    let mut resumed = false;
    for line in commands.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((key, value)) = line.strip_prefix("export ").and_then(|kv| kv.split_once('=')) {
            env.push((key.into(), value.into()));
            continue;
        }
        let args = line
            .strip_prefix("cargo run --release -- ")
            .unwrap_or_else(|| panic!("not a command a user can paste: {line}"));
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .current_dir(&dir.0)
            .args(args.split_whitespace())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("SYNCD_REDIS_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        resumed |= args.starts_with("runs resume");
    }
    assert!(resumed, "the commands end with a resume: {commands}");
    let runs = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["runs", "list", "--tenant", "acme"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&runs.stdout);
    let latest = listed.lines().nth(1).unwrap_or_default();
    assert!(latest.contains("succeeded"), "{listed}");
}

/// `syncd check --connect` reaches every tenant's systems and reports, in
/// one pass, everything a run would fail on: a missing table, a missing
/// column, columns whose values cannot meet, a merge rule on a field not
/// synced, a table without an id column (that a reference points into), an
/// idempotency column no index serves in a table created into (`parts` has
/// one; the CRM's `items` is only read), and two tenants on one database —
/// writing nothing.
#[test]
fn check_connect_reports_every_problem_at_once() {
    use support::systems::{Kind, SystemDb};
    let dir = support::TempDir::new("cli-check-connect");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (crm, erp) = runtime.block_on(async {
        let crm = SystemDb::create(Kind::Sqlite, &dir, "crm").await.unwrap();
        let erp = SystemDb::create(Kind::Sqlite, &dir, "erp").await.unwrap();
        crm.exec(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT, active BOOLEAN, updated_at TEXT);
             CREATE TABLE contacts (id TEXT PRIMARY KEY, email TEXT, updated_at TEXT);
             CREATE TABLE orders (id TEXT PRIMARY KEY, account_id TEXT, updated_at TEXT);
             CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, sync_key TEXT, updated_at TEXT);
             CREATE TABLE parts (id TEXT PRIMARY KEY, title TEXT, updated_at TEXT);",
        )
        .await;
        erp.exec(
            "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT, active INTEGER, updated_at TEXT);
             CREATE TABLE sales (order_no TEXT PRIMARY KEY, account_id TEXT, updated_at TEXT);
             CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, sync_key TEXT, updated_at TEXT);
             CREATE TABLE parts (id INTEGER PRIMARY KEY, title TEXT, sync_key TEXT, updated_at TEXT);
             CREATE INDEX parts_by_key ON parts (sync_key, id);",
        )
        .await;
        (crm, erp)
    });
    let definition = format!(
        r#"name = "checked"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"
url = "{crm}"

[systems.erp]
connector = "sql"
url = "{erp}"

[[entities]]
name = "account"
source_table = "accounts"
target_table = "customers"

[entities.fields]
name = "name"
active = "active"
email = {{ source = "name", target = "mail" }}

[entities.merge]
emali = "source"

[[entities]]
name = "contact"
source_table = "contacts"
target_table = "people"

[[entities]]
name = "order"
source_table = "orders"
target_table = "sales"
[entities.fields]
account_id = {{ references = "account" }}

[[entities]]
name = "item"
table = "items"
idempotency_column = "sync_key"

[[entities]]
name = "part"
table = "parts"
idempotency_column = "sync_key"

[tenants.acme]

[tenants.globex]
"#,
        crm = crm.url(),
        erp = erp.url()
    );
    let file = dir.0.join("checked.toml");
    std::fs::write(&file, definition).unwrap();
    let tables = |url: String| {
        runtime.block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let names: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master ORDER BY name")
                .fetch_all(&pool)
                .await
                .unwrap();
            names
        })
    };
    let before = (tables(crm.url()), tables(erp.url()));
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["check", "--connect", "--tenant", "acme"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).replace(&dir.0.display().to_string(), "[DIR]");
    assert_eq!(
        (tables(crm.url()), tables(erp.url())),
        before,
        "nothing was created"
    );
    // Without connecting, `check` can only suspect the rule's field.
    let plain = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stderr);
    assert!(
        plain.contains("warning: ")
            && plain.contains("`merge.emali`")
            && plain.contains("did you mean `email`?"),
        "{plain}"
    );
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_description("syncd check --connect on a definition with one of each problem");
    settings.bind(|| insta::assert_snapshot!("check_connect", said));
}

/// `syncd worker` on the shipped example, as the demo leaves it in a fresh
/// folder, with the schedule made to tick every second: each tenant's runs
/// sync that tenant's own databases. Globex's are synced once and stay as
/// they are over later ticks; acme's (whose run waits for a review) are not
/// touched by globex's runs: nothing is created twice.
#[test]
fn the_worker_on_the_example_keeps_each_tenants_records_apart() {
    let dir = support::TempDir::new("example-worker");
    demo_in(&dir);
    let workflows = dir.0.join("demo-data/workflows");
    let file = workflows.join("crm-to-erp.toml");
    let every_second = std::fs::read_to_string(&file)
        .unwrap()
        .replace("schedule = \"*/15 * * * *\"", "schedule = \"* * * * * *\"");
    assert!(
        every_second.contains("\"* * * * * *\""),
        "the example's schedule line"
    );
    std::fs::write(&file, every_second).unwrap();
    let state = format!("sqlite://{}", dir.0.join("demo-data/syncd.db").display());
    // Rows of every table of the four databases.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let counts = || -> Vec<(String, i64)> {
        runtime.block_on(async {
            let mut out = Vec::new();
            for db in ["crm", "erp", "globex/crm", "globex/erp"] {
                let path = dir.0.join(format!("demo-data/{db}.db"));
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let tables: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                for t in tables {
                    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{t}\""))
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    out.push((format!("{db}.{t}"), n));
                }
                pool.close().await;
            }
            out
        })
    };
    // Globex's runs that have succeeded so far.
    let succeeded = || {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["runs", "list", "--tenant", "globex"])
            .env("SYNCD_DATABASE_URL", &state)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).matches("succeeded").count()
    };
    // Serves until `done` (checked every quarter second, for a minute at
    // most), then stops the worker as an operator does.
    let serve = |done: &dyn Fn() -> bool| {
        let mut worker = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["worker", "--workflows"])
            .arg(&workflows)
            .args(["--poll-ms", "100"])
            .env("SYNCD_DATABASE_URL", &state)
            .env_remove("SYNCD_REDIS_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
        assert!(worker.wait().unwrap().success(), "the worker stops cleanly");
    };
    let after_demo = counts();
    // Globex's first sync, to its end.
    serve(&|| succeeded() >= 1);
    assert!(succeeded() >= 1, "globex's first run succeeded");
    let after_first = counts();
    // Three more ticks' runs.
    let first = succeeded();
    serve(&|| succeeded() >= first + 3);
    assert!(succeeded() >= first + 3, "three more runs");
    let after_more = counts();
    let of = |counts: &[(String, i64)], prefix: &str| -> Vec<(String, i64)> {
        counts
            .iter()
            .filter(|(t, _)| t.starts_with(prefix))
            .cloned()
            .collect()
    };
    // Acme's databases: as the demo left them.
    assert_eq!(of(&after_first, "crm."), of(&after_demo, "crm."));
    assert_eq!(of(&after_first, "erp."), of(&after_demo, "erp."));
    // Globex's: its ERP got its CRM's records, once.
    assert_ne!(
        of(&after_first, "globex/erp."),
        of(&after_demo, "globex/erp."),
        "globex was synced"
    );
    assert_eq!(after_more, after_first, "later ticks create nothing");
}

/// Where the state is, said aloud when it was not given: the default
/// store in the current folder is named on stderr (an operator in the
/// wrong folder would otherwise see "no runs"); `--db` and
/// `SYNCD_DATABASE_URL` choose it silently.
#[test]
fn the_state_store_is_named_when_it_was_not_given() {
    let dir = TempDir::new();
    let list = |db: Option<&str>, env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_syncd"));
        command
            .current_dir(&dir.0)
            .args(["runs", "list"])
            .env_remove("SYNCD_DATABASE_URL");
        if let Some(db) = db {
            command.args(["--db", db]);
        }
        if let Some(env) = env {
            command.env("SYNCD_DATABASE_URL", env);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let said = list(None, None);
    let here = dir.0.join("syncd.db");
    assert!(
        said.contains("state: sqlite://syncd.db (")
            && said.contains(&here.display().to_string())
            && said.contains("--db and SYNCD_DATABASE_URL unset"),
        "{said}"
    );
    assert_eq!(said.matches("state:").count(), 1, "said once: {said}");
    let flagged = dir.0.join("flagged.db");
    let said = list(Some(&format!("sqlite://{}", flagged.display())), None);
    assert!(!said.contains("state:"), "{said}");
    assert!(flagged.exists(), "--db chose the store");
    let said = list(None, Some("sqlite://from-env.db"));
    assert!(!said.contains("state:"), "{said}");
    assert!(dir.0.join("from-env.db").exists());
}

/// `SYNCD_LOG_FORMAT=json`: every line on stderr is one JSON object, the
/// run's events carry its id, tenant and integration, and none has a
/// terminal's colour codes.
#[test]
fn json_logs_are_one_object_a_line_and_carry_the_run() {
    use support::systems::{Kind, SystemDb, crm_rows, workflow_toml};
    let dir = support::TempDir::new("cli-json-logs");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (source, target) = runtime.block_on(async {
        let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
        let (accounts, contacts, orders) = crm_rows(10);
        source.insert("accounts", &accounts).await;
        source.insert("contacts", &contacts).await;
        source.insert("orders", &orders).await;
        (source, target)
    });
    let file = dir.0.join("e2e.toml");
    std::fs::write(
        &file,
        workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]),
    )
    .unwrap();
    let db = dir.sqlite_url("state.db");
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .arg("run")
        .arg(&file)
        .args(["--tenant", "t1", "--db", &db])
        .env("SYNCD_LOG", "info")
        .env("SYNCD_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let run_id = stdout
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .expect("the run id on stdout")
        .to_owned();
    let mut with_run = 0;
    for line in stderr.lines() {
        assert!(!line.contains('\u{1b}'), "a colour code: {line}");
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        let spans = event["spans"].as_array().cloned().unwrap_or_default();
        if let Some(run) = spans.iter().find(|s| s["name"] == "run") {
            assert_eq!(run["run_id"], run_id.as_str(), "{line}");
            assert_eq!(run["tenant"], "t1", "{line}");
            assert_eq!(run["integration"], "e2e", "{line}");
            with_run += 1;
        }
    }
    assert!(with_run > 0, "no event of the run:\n{stderr}");
}

/// At the default filter a warning of a run (a row it cannot read) names
/// the run, its tenant and integration, and the step, as the README says.
#[test]
fn a_warning_at_the_default_level_carries_its_run() {
    use support::systems::{Kind, SystemDb, ts, workflow_toml};
    let dir = support::TempDir::new("cli-warn-spans");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (source, target) = runtime.block_on(async {
        let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
        let row = serde_json::json!({"id": "A-blob", "name": "Blob", "industry": "x", "updated_at": ts(1)});
        source.insert("accounts", &[row]).await;
        source.exec("UPDATE accounts SET industry = x'00ff'").await;
        (source, target)
    });
    let file = dir.0.join("e2e.toml");
    std::fs::write(
        &file,
        workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]),
    )
    .unwrap();
    let db = dir.sqlite_url("state.db");
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .arg("run")
        .arg(&file)
        .args(["--tenant", "t1", "--db", &db])
        .env_remove("SYNCD_LOG")
        .env("SYNCD_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let warned: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["level"] == "WARN")
        .collect();
    assert!(!warned.is_empty(), "{stderr}");
    for event in &warned {
        let spans = event["spans"].as_array().cloned().unwrap_or_default();
        let run = spans
            .iter()
            .find(|s| s["name"] == "run")
            .unwrap_or_else(|| panic!("{event}"));
        assert_eq!(
            (&run["tenant"], &run["integration"]),
            (&serde_json::json!("t1"), &serde_json::json!("e2e"))
        );
        assert!(run["run_id"].is_string(), "{event}");
        let step = spans
            .iter()
            .find(|s| s["name"] == "step")
            .unwrap_or_else(|| panic!("{event}"));
        assert_eq!(step["entity"], "account", "{event}");
    }
}

/// `syncd schedules list` says what the workers fire next, soonest first,
/// and how late an overdue tick is; `--tenant` confines it.
#[test]
fn schedules_list_says_what_fires_next() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.0.join("state.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = syncd_store::Store::connect(
            &syncd_store::StoreConfig::new(&db),
            syncd_store::cache::MappingCache::disabled(),
        )
        .await
        .unwrap();
        let now = chrono::Utc::now();
        store
            .ensure_schedule(
                &"acme".into(),
                &"crm-to-erp".into(),
                "*/15 * * * *",
                now - chrono::Duration::seconds(90),
            )
            .await
            .unwrap();
        store
            .ensure_schedule(
                &"globex".into(),
                &"crm-to-erp".into(),
                "0 * * * *",
                now + chrono::Duration::minutes(30),
            )
            .await
            .unwrap();
    });
    let all = syncd(&dir.0, &["schedules", "list", "--db", &db]);
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    let lines: Vec<&str> = all.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", all.stdout);
    assert!(lines[0].starts_with("tenant"), "{}", all.stdout);
    assert!(
        lines[1].starts_with("acme ") && lines[1].contains("*/15 * * * *"),
        "{}",
        all.stdout
    );
    let late: u64 = lines[1]
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((89..=120).contains(&late), "{}", all.stdout);
    assert!(
        lines[2].starts_with("globex ") && lines[2].ends_with(" -"),
        "{}",
        all.stdout
    );
    let one = syncd(&dir.0, &["schedules", "list", "--db", &db, "--tenant", "globex"]);
    assert_eq!(one.stdout.lines().count(), 2, "{}", one.stdout);
    assert!(!one.stdout.contains("acme"), "{}", one.stdout);
}

/// A definition that names no tenants syncs the same systems for any tenant
/// name. Once it has run for one, another name (a typo) is refused, naming
/// the tenant it ran for, and writes nothing; the first goes on running.
#[test]
fn a_definition_without_tenants_refuses_a_tenant_it_never_ran_for() {
    use support::systems::{Kind, SystemDb, ts, workflow_toml};
    let dir = support::TempDir::new("cli-no-tenants");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (source, target) = runtime.block_on(async {
        let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
        let row = serde_json::json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": ts(0)});
        source.insert("accounts", &[row]).await;
        (source, target)
    });
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[]);
    assert_eq!(toml.matches("[tenants.t1]\n").count(), 1);
    std::fs::create_dir_all(dir.0.join("workflows")).unwrap();
    std::fs::write(
        dir.0.join("workflows/e2e.toml"),
        toml.replace("[tenants.t1]\n", ""),
    )
    .unwrap();
    let db = dir.sqlite_url("state.db");
    let env = [("SYNCD_DATABASE_URL", db.as_str())];
    let run = |tenant: &str| syncd_env(&dir.0, &["run", "workflows/e2e.toml", "--tenant", tenant], &env);
    let first = run("acme");
    assert_eq!(first.code, Some(0), "{}{}", first.stdout, first.stderr);
    let typo = run("acmee");
    assert_eq!(typo.code, Some(1), "{}", typo.stdout);
    assert!(
        typo.stderr.contains(
            "integration `e2e` names no tenants and has run for `acme` only: tenant `acmee` would sync the same \
             systems again"
        ),
        "{}",
        typo.stderr
    );
    let counts = runtime.block_on(async {
        (
            source.dump("accounts").await.len(),
            target.dump("customers").await.len(),
        )
    });
    assert_eq!(counts, (1, 1), "nothing copied");
    assert_eq!(run("acme").code, Some(0));
}

/// A run the mass-deletion brake holds says so when it ends, with what to
/// confirm, and does not send the operator to a review that has nothing
/// in it.
#[test]
fn a_run_held_by_the_brake_says_why_it_waits() {
    use support::systems::{Kind, SystemDb, ts, workflow_toml};
    let dir = support::TempDir::new("cli-brake");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (source, target) = runtime.block_on(async {
        let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
        let rows: Vec<serde_json::Value> = (1..=20)
            .map(|i| serde_json::json!({"id": format!("A-{i}"), "name": "Acme", "industry": "retail", "updated_at": ts(i)}))
            .collect();
        source.insert("accounts", &rows).await;
        (source, target)
    });
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[])
        .replace("[entities.fields]", "reconcile_every = \"0s\"\n[entities.fields]");
    std::fs::write(dir.0.join("e2e.toml"), toml).unwrap();
    let db = dir.sqlite_url("state.db");
    let env = [("SYNCD_DATABASE_URL", db.as_str())];
    let run = || syncd_env(&dir.0, &["run", "e2e.toml", "--tenant", "t1"], &env);
    assert_eq!(run().code, Some(0));
    runtime.block_on(source.exec("DELETE FROM accounts"));
    let held = run();
    assert_eq!(held.code, Some(0), "{}", held.stderr);
    assert!(held.stdout.contains("suspended"), "{}", held.stdout);
    assert!(
        held.stdout.contains("held: ") && held.stdout.contains("syncd runs confirm-deletes"),
        "{}",
        held.stdout
    );
    assert!(
        !held.stdout.contains("conflicts wait for review"),
        "{}",
        held.stdout
    );
    assert_eq!(
        runtime.block_on(target.dump("customers")).len(),
        20,
        "nothing deleted yet"
    );
}

/// A database that refuses the connection is named with the reason, not
/// with the pool's "timed out" that kept none.
#[test]
fn a_refused_connection_says_it_was_refused() {
    let dir = support::TempDir::new("cli-refused");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let toml = support::systems::workflow_toml(
        "e2e",
        "one_way",
        &format!("postgres://postgres@127.0.0.1:{closed}/test"),
        &dir.sqlite_url("target.db"),
        &[],
    );
    std::fs::write(dir.0.join("e2e.toml"), toml).unwrap();
    let checked = syncd(&dir.0, &["check", "--connect", "e2e.toml"]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let said = checked.stderr.to_lowercase();
    assert!(
        said.contains(&format!("127.0.0.1:{closed}")) && said.contains("refused"),
        "{}",
        checked.stderr
    );
    assert!(!said.contains("pool timed out"), "{}", checked.stderr);
}

/// `check --connect` names a reference held in a column of numbers into a
/// table whose records syncd creates with text ids: every contact would
/// fail with "is not an integer" once its account had a UUID there.
#[test]
fn check_connect_names_a_reference_column_that_cannot_hold_the_ids() {
    use support::systems::{Kind, SystemDb, workflow_toml};
    let dir = support::TempDir::new("cli-ref-kinds");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (crm, erp) = runtime.block_on(async {
        let crm = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
        let erp = SystemDb::create(Kind::Sqlite, &dir, "erp").await.unwrap();
        erp.exec(
            "CREATE TABLE customers (id TEXT PRIMARY KEY, customer_name TEXT, industry TEXT, parent_id TEXT, \
             updated_at TEXT NOT NULL);
             CREATE TABLE people (id TEXT PRIMARY KEY, full_name TEXT, email TEXT, customer_id INTEGER, \
             updated_at TEXT NOT NULL);
             CREATE TABLE sales_orders (id TEXT PRIMARY KEY, customer_id TEXT, contact_id TEXT, total REAL, \
             status TEXT, updated_at TEXT NOT NULL);",
        )
        .await;
        (crm, erp)
    });
    std::fs::write(
        dir.0.join("e2e.toml"),
        workflow_toml("e2e", "one_way", &crm.url(), &erp.url(), &[]),
    )
    .unwrap();
    let checked = syncd(&dir.0, &["check", "--connect", "e2e.toml"]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    assert!(
        checked.stderr.contains(
            "entity `contact`, field `account_id`: erp column `customer_id` (INTEGER) holds numbers, but the \
             `account` records it refers to have text ids there"
        ),
        "{}",
        checked.stderr
    );
    assert!(checked.stderr.contains("1 problem found"), "{}", checked.stderr);
}

/// The demo keeps its state in a store of its own: given `--db`, it says so
/// and touches nothing, rather than ignore the flag.
#[test]
fn the_demo_takes_no_db() {
    let dir = support::TempDir::new("cli-demo-db");
    let db = dir.sqlite_url("mine.db");
    let refused = syncd(&dir.0, &["--db", &db, "demo"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(refused.stderr.contains("it takes no --db"), "{}", refused.stderr);
    assert!(!dir.0.join("demo-data").exists() && !dir.0.join("mine.db").exists());
}

/// `check --connect` names an instant column (`timestamptz`) synced into a
/// wall-clock one (`timestamp`): every value would be refused there, as
/// the run that follows shows.
#[test]
fn check_connect_names_instants_synced_into_wall_clock_times() {
    use support::systems::{Kind, SystemDb};
    let dir = support::TempDir::new("cli-wall-clock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some((source, target)) = runtime.block_on(async {
        let source = SystemDb::create(Kind::Postgres, &dir, "source").await?;
        let target = SystemDb::create(Kind::Postgres, &dir, "target").await?;
        source
            .exec(
                "CREATE TABLE events (id text PRIMARY KEY, at timestamptz, updated_at timestamptz NOT NULL)",
            )
            .await;
        target
            .exec("CREATE TABLE events (id text PRIMARY KEY, at timestamp, updated_at timestamptz NOT NULL)")
            .await;
        source
            .exec("INSERT INTO events VALUES ('e1', now(), now())")
            .await;
        Some((source, target))
    }) else {
        return;
    };
    let toml = format!(
        "name = \"e2e\"\nsource = \"a\"\ntarget = \"b\"\n[systems.a]\nconnector = \"sql\"\nurl = \"{}\"\n\
         [systems.b]\nconnector = \"sql\"\nurl = \"{}\"\n[[entities]]\nname = \"event\"\ntable = \"events\"\n\
         [tenants.t1]\n",
        source.url(),
        target.url()
    );
    std::fs::write(dir.0.join("e2e.toml"), toml).unwrap();
    let checked = syncd(&dir.0, &["check", "--connect", "e2e.toml"]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    assert!(
        checked.stderr.contains(
            "entity `event`, field `at`: b column `at` (timestamp without time zone) holds wall-clock times"
        ),
        "{}",
        checked.stderr
    );
    let db = dir.sqlite_url("state.db");
    let ran = syncd(&dir.0, &["--db", &db, "run", "e2e.toml", "--tenant", "t1"]);
    assert!(
        ran.stdout.contains("records failed: 1 event (forward)"),
        "{}{}",
        ran.stdout,
        ran.stderr
    );
    runtime.block_on(async {
        source.drop().await;
        target.drop().await;
    });
}

/// A definition copied beside its original and not renamed: the worker
/// served one of the two without a word (the copy, which sorts first),
/// and the other's schedule and systems never ran. It now serves the file
/// named after the integration and says which one it leaves out, and why.
#[test]
fn a_worker_names_a_second_definition_of_the_same_integration() {
    let dir = TempDir::new();
    let text = workflow("").replace(
        "[systems.crm]\nconnector = \"sql\"",
        "[systems.crm]\nconnector = \"sql\"\nurl = \"sqlite://crm.db\"",
    );
    let text = text.replace(
        "[systems.erp]\nconnector = \"sql\"",
        "[systems.erp]\nconnector = \"sql\"\nurl = \"sqlite://erp.db\"",
    );
    dir.write("workflows/crm-to-erp.toml", &text)
        .write("workflows/crm-to-erp-copy.toml", &text);
    let state = format!("sqlite://{}/state.db", dir.0.display());
    let mut worker = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .current_dir(&dir.0)
        .args(["worker", "--workflows", "workflows", "--poll-ms", "100"])
        .env("SYNCD_DATABASE_URL", &state)
        .env_remove("SYNCD_REDIS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its output up to the line that says what it serves, then what it
    // said on stderr.
    let mut stdout = std::io::BufReader::new(worker.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("serving") {
        line.clear();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut seen).unwrap();
    assert!(
        seen.contains(
            "error: workflows/crm-to-erp-copy.toml: integration `crm-to-erp` is already defined by \
             workflows/crm-to-erp.toml: left out (give it a name of its own)"
        ),
        "{seen}"
    );
    assert!(seen.contains("serving 1 integration(s) from workflows"), "{seen}");
}

/// A run left `running` by a process that is gone (killed, or its machine)
/// holds no lease: `runs show` says so and how to continue it, where it
/// used to show a run that looked alive.
#[test]
fn runs_show_says_when_no_process_is_executing_a_running_run() {
    use syncd_store::{RunRow, Store, StoreConfig};
    let dir = TempDir::new();
    let db = format!("sqlite://{}/state.db", dir.0.display());
    let id = uuid::Uuid::new_v4();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::connect(&StoreConfig::new(&db), syncd_store::cache::MappingCache::local())
            .await
            .unwrap();
        let now = chrono::Utc::now();
        let run = RunRow {
            id,
            tenant_id: "t1".into(),
            integration_id: "crm-to-erp".into(),
            state: syncd_engine::run::RunState::Running,
            plan: serde_json::json!({"stages": []}),
            trigger: "manual".into(),
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        store.create_run(&run, &[]).await.unwrap();
    });
    let shown = syncd_env(
        &dir.0,
        &["runs", "show", &id.to_string()],
        &[("SYNCD_DATABASE_URL", &db)],
    );
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert!(shown.stdout.contains("state       running"), "{}", shown.stdout);
    assert!(
        shown.stdout.contains(&format!(
            "lease       none: no process is executing it; a worker serving its definition continues it, or \
             `syncd runs resume {id} --workflows DIR` does here"
        )),
        "{}",
        shown.stdout
    );
}

/// A PostgreSQL state store whose URL names a schema that does not exist
/// failed with the migration's "no schema has been selected to create
/// in": it names the search path now, and what to do.
#[test]
fn a_state_store_naming_a_schema_that_does_not_exist_says_so() {
    let dir = support::TempDir::new("cli-no-schema");
    let base = support::postgres_url();
    let joiner = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{joiner}options=-csearch_path%3Dsyncd_no_such_schema_here");
    let run = syncd(&dir.0, &["--db", &url, "runs", "list"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "its search path (syncd_no_such_schema_here) names no schema that exists in that database: create \
             it (CREATE SCHEMA ...), or name another in the URL"
        ),
        "{}",
        run.stderr
    );
}
