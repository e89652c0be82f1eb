//! The `syncd plan` and `syncd check` verbs, run as the built binary: what
//! they print, on which stream, and the exit status scripts branch on
//! (0 success, 1 input refused, 2 bad command line).

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
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the syncd binary runs");
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
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
