//! Integration definitions and dependency-graph files: what a user who gets
//! one wrong is told (MISSION §3, §8). Every message names the file, the
//! entity and the field where there is one, and every error in a definition
//! is reported, not only the first.

use syncd_core::conflict::{FieldRule, Strategy};
use syncd_core::plan::DependencyGraph;
use syncd_core::record::Direction;
use syncd_core::workflow::{self, ConnectorKind, DefinitionErrors, HttpAuth, Pagination, Workflow};

const FILE: &str = "workflows/shop-to-warehouse.toml";

/// A valid definition; each test breaks it in one place.
const VALID: &str = r#"
name = "shop-to-warehouse"
direction = "one_way"
schedule = "0 */6 * * *"
strategy = "source_wins"
source = "shop"
target = "warehouse"

[systems.shop]
connector = "http"
url = "https://shop.example/api"
auth = { bearer_env = "SHOP_TOKEN" }
rate_limit = 10
entities.product = { path = "/products", pagination = "cursor", external_id_field = "sync_key" }
entities.order = { path = "/orders", records = "/items", fields = ["note"] }

[systems.warehouse]
connector = "sql"

[[entities]]
name = "product"
table = "products"
strategy = "merge"

[entities.fields]
sku = "sku"
title = { source = "name", target = "title" }

[entities.merge]
title = "source"

[[entities]]
name = "order"
source_table = "orders"
target_table = "shipments"

[entities.fields]
status = "status"

[tenants.acme]
strategy = "target_wins"
schedule = "30 2 * * *"
"#;

/// `VALID` with `from` replaced by `to` (which must occur exactly once).
fn valid_with(from: &str, to: &str) -> String {
    assert_eq!(
        VALID.matches(from).count(),
        1,
        "`{from}` must occur once in VALID"
    );
    VALID.replacen(from, to, 1)
}

fn errors(text: &str) -> DefinitionErrors {
    match Workflow::parse(FILE, text) {
        Ok(wf) => panic!("expected errors, parsed {wf:?}"),
        Err(e) => e,
    }
}

/// Parses `text` and compares the errors, one line each, with `expect`.
fn check(text: &str, expect: &[&str]) {
    let e = errors(text);
    let got: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(got, expect);
    assert_eq!(e.to_string(), expect.join("\n"));
}

#[test]
fn the_valid_definition_parses() {
    let wf = Workflow::parse(FILE, VALID).unwrap();
    assert_eq!(wf.file, FILE);
    assert_eq!(wf.name.as_str(), "shop-to-warehouse");
    assert_eq!(wf.direction, Direction::OneWay);
    assert_eq!(wf.schedule.as_ref().unwrap().expression, "0 */6 * * *");
    assert_eq!(wf.strategy, Some(Strategy::SourceWins));
    assert_eq!(
        (
            wf.source.name.as_str(),
            wf.source.connector,
            wf.source.url.as_deref()
        ),
        ("shop", ConnectorKind::Http, Some("https://shop.example/api"))
    );
    assert_eq!(
        (wf.target.name.as_str(), wf.target.connector),
        ("warehouse", ConnectorKind::Sql)
    );
    let product = wf.entity("product").unwrap();
    assert_eq!(
        (product.source_table.as_str(), product.target_table.as_str()),
        ("products", "products")
    );
    assert_eq!(product.strategy, Some(Strategy::Merge));
    assert_eq!(product.merge.get("title"), Some(&FieldRule::Source));
    let title = product.fields.iter().find(|f| f.cdm == "title").unwrap();
    assert_eq!((title.source.as_str(), title.target.as_str()), ("name", "title"));
    let order = wf.entity("order").unwrap();
    assert_eq!(
        (order.source_table.as_str(), order.target_table.as_str()),
        ("orders", "shipments")
    );
    let acme = &wf.tenants[&"acme".into()];
    assert_eq!(acme.strategy, Some(Strategy::TargetWins));
    assert_eq!(acme.schedule.as_ref().unwrap().expression, "30 2 * * *");

    // The HTTP system: credentials by environment variable, the defaults a
    // typical REST API matches, and what each collection overrides.
    let http = wf.source.http.as_ref().expect("an HTTP system has HTTP settings");
    assert_eq!(
        http.auth,
        HttpAuth::Bearer {
            env: "SHOP_TOKEN".into()
        }
    );
    assert_eq!(http.rate_limit, Some(10.0));
    assert_eq!((http.retries, http.concurrency), (8, 8));
    let products = &http.resources["product"];
    assert_eq!(products.path, "/products");
    assert_eq!(products.item_path, "/products/{id}");
    assert!(matches!(&products.pagination, Pagination::Cursor { next, .. } if next == "/next_cursor"));
    assert_eq!(products.external_id_field.as_deref(), Some("sync_key"));
    let orders = &http.resources["order"];
    assert_eq!(
        (orders.records.as_str(), orders.record.as_str()),
        ("/items", "/data")
    );
    assert!(matches!(&orders.pagination, Pagination::Page { page_param, .. } if page_param == "page"));
    assert_eq!(orders.fields, ["note"]);
    assert!(wf.target.http.is_none());
}

#[test]
fn http_systems_say_where_each_entity_lives_and_keep_secrets_out() {
    // A collection missing, a malformed one, and settings no HTTP system has.
    let text = valid_with(
        r#"entities.order = { path = "/orders", records = "/items", fields = ["note"] }"#,
        r#"entities.invoice = { path = "invoices" }"#,
    )
    .replacen(
        r#"pagination = "cursor""#,
        r#"pagination = "offset", records = "data", item_path = "/products/one""#,
        1,
    );
    check(
        &text,
        &[
            &format!(
                "{FILE}: entity `invoice`, field `systems.shop.entities`: the integration syncs no entity type of this name"
            ),
            &format!(
                "{FILE}: field `systems.shop.entities.product.item_path`: `/products/one` has no `{{id}}` for the record's id"
            ),
            &format!(
                "{FILE}: field `systems.shop.entities.product.pagination`: unknown pagination `offset` (expected page or cursor)"
            ),
            &format!(
                "{FILE}: field `systems.shop.entities.product.records`: `data` is not a JSON pointer (it starts with `/`, e.g. `/data`; empty for the whole body)"
            ),
            &format!(
                "{FILE}: entity `order`, field `systems.shop.entities.order`: system `shop` is an HTTP system: say where this entity type's records are (`path`)"
            ),
        ],
    );
    // Settings that cannot work: a path without `/`, no time to answer,
    // and a setting of the other pagination.
    let text = valid_with("rate_limit = 10", "rate_limit = 10\ntimeout = \"0s\"").replacen(
        r#"pagination = "cursor", external_id_field = "sync_key""#,
        r#"pagination = "cursor", external_id_field = "sync_key", item_path = "products/{id}", has_more = "/more""#,
        1,
    );
    check(
        &text,
        &[
            &format!("{FILE}: field `systems.shop.timeout`: a request needs some time (above 0)"),
            &format!(
                "{FILE}: field `systems.shop.entities.product.item_path`: `products/{{id}}` is not a path (it starts with `/`)"
            ),
            &format!(
                "{FILE}: field `systems.shop.entities.product.has_more`: `has_more` is a setting of the other \
                 pagination (this collection pages by cursor)"
            ),
        ],
    );
    // A token in the file is refused: only the name of a variable is taken.
    let e = errors(&valid_with(
        r#"auth = { bearer_env = "SHOP_TOKEN" }"#,
        r#"auth = { token = "sk_live_123" }"#,
    ));
    assert!(e.to_string().contains("unknown field `token`"), "{e}");
    check(
        &valid_with(
            r#"auth = { bearer_env = "SHOP_TOKEN" }"#,
            r#"auth = { header = "X-Api-Key" }"#,
        ),
        &[&format!(
            "{FILE}: field `systems.shop.auth`: give `bearer_env = \"VAR\"`, or `header = \"X-Api-Key\"` with \
             `env = \"VAR\"`: secrets are read from the environment, never from the definition"
        )],
    );
    // Per-tenant credentials: only for an HTTP system that has some.
    let mut text = VALID.to_owned();
    text.push_str("auth_env = { shop = \"ACME_SHOP_TOKEN\", warehouse = \"ACME_WH\" }\n");
    check(
        &text,
        &[&format!(
            "{FILE}: field `tenants.acme.auth_env`: `warehouse` is not an HTTP system with `auth`: there are no \
             credentials to override"
        )],
    );
    let wf = Workflow::parse(FILE, &text.replace(", warehouse = \"ACME_WH\"", "")).unwrap();
    let shop = wf.system_for(&"acme".into(), &wf.source);
    assert_eq!(
        shop.http.unwrap().auth,
        HttpAuth::Bearer {
            env: "ACME_SHOP_TOKEN".into()
        }
    );
    check(
        &valid_with("rate_limit = 10", "rate_limit = 0"),
        &[&format!(
            "{FILE}: field `systems.shop.rate_limit`: 0 is not a rate (requests per second, above 0)"
        )],
    );
    check(
        &valid_with(
            "[systems.warehouse]\nconnector = \"sql\"\n",
            "[systems.warehouse]\nconnector = \"sql\"\nrate_limit = 5\n",
        ),
        &[&format!(
            "{FILE}: field `systems.warehouse`: auth, rate_limit, timeout, retries, backoff, concurrency, \
             numbers and entities are settings of HTTP systems (connector = \"http\")"
        )],
    );
    // How the API keeps numbers: as doubles unless said.
    let numbers = |text: &str| {
        let wf = Workflow::parse(FILE, text).unwrap();
        wf.system_for(&"acme".into(), &wf.source)
            .http
            .unwrap()
            .exact_numbers
    };
    assert!(!numbers(VALID));
    assert!(!numbers(&valid_with(
        "rate_limit = 10",
        "rate_limit = 10\nnumbers = \"double\""
    )));
    assert!(numbers(&valid_with(
        "rate_limit = 10",
        "rate_limit = 10\nnumbers = \"exact\""
    )));
    check(
        &valid_with("rate_limit = 10", "rate_limit = 10\nnumbers = \"decimal\""),
        &[&format!(
            "{FILE}: field `systems.shop.numbers`: `decimal` is not how an API keeps numbers: \"double\" (the \
             default: numbers a double would change are refused) or \"exact\" (every number as sent)"
        )],
    );
}

// --- one error at a time -----------------------------------------------------------

#[test]
fn unknown_strategy() {
    let expected = "unknown strategy `newest` (expected one of: source_wins, target_wins, \
                    last_write_wins, merge, manual)";
    check(
        &valid_with(r#"strategy = "source_wins""#, r#"strategy = "newest""#),
        &[&format!("{FILE}: field `strategy`: {expected}")],
    );
    check(
        &valid_with(r#"strategy = "merge""#, r#"strategy = "newest""#),
        &[&format!("{FILE}: entity `product`, field `strategy`: {expected}")],
    );
    check(
        &valid_with(r#"strategy = "target_wins""#, r#"strategy = "newest""#),
        &[&format!("{FILE}: field `tenants.acme.strategy`: {expected}")],
    );
    check(
        &valid_with(
            "[tenants.acme]\n",
            "[tenants.acme]\nstrategies = { order = \"newest\" }\n",
        ),
        &[&format!(
            "{FILE}: entity `order`, field `tenants.acme.strategies`: {expected}"
        )],
    );
}

#[test]
fn unknown_merge_rule() {
    check(
        &valid_with(r#"title = "source""#, r#"title = "longest""#),
        &[&format!(
            "{FILE}: entity `product`, field `merge.title`: unknown merge rule `longest` \
             (expected one of: newer, source, target)"
        )],
    );
}

#[test]
fn unknown_direction() {
    check(
        &valid_with(r#"direction = "one_way""#, r#"direction = "both""#),
        &[&format!(
            "{FILE}: field `direction`: unknown direction `both` (expected one_way or bidirectional)"
        )],
    );
}

#[test]
fn reference_to_an_entity_the_integration_does_not_define() {
    check(
        &valid_with(
            "status = \"status\"\n",
            "status = \"status\"\nproduct_id = { references = \"prodcut\" }\n",
        ),
        &[&format!(
            "{FILE}: entity `order`, field `product_id`: references unknown entity type `prodcut` \
             (not defined in this integration)"
        )],
    );
}

#[test]
fn tenant_override_for_an_entity_the_integration_does_not_sync() {
    check(
        &valid_with(
            "[tenants.acme]\n",
            "[tenants.acme]\nstrategies = { invoice = \"manual\" }\n",
        ),
        &[&format!(
            "{FILE}: entity `invoice`, field `tenants.acme.strategies`: tenant `acme` overrides \
             the strategy of an entity type this integration does not sync"
        )],
    );
}

#[test]
fn bad_cron_expression() {
    let e = errors(&valid_with(
        r#"schedule = "0 */6 * * *""#,
        r#"schedule = "every 6 hours""#,
    ));
    assert_eq!(e.0.len(), 1, "{e}");
    let message = e.0[0].to_string();
    assert!(
        message.starts_with(&format!(
            "{FILE}: field `schedule`: bad cron expression `every 6 hours`: "
        )),
        "{message}"
    );

    // Five fields parse as minute precision; a minute of 61 does not exist.
    let e = errors(&valid_with(
        r#"schedule = "30 2 * * *""#,
        r#"schedule = "61 2 * * *""#,
    ));
    assert_eq!(e.0.len(), 1, "{e}");
    let message = e.0[0].to_string();
    assert!(
        message.starts_with(&format!(
            "{FILE}: field `tenants.acme.schedule`: bad cron expression `61 2 * * *`: "
        )),
        "{message}"
    );
}

/// A schedule with a field missing (`*/15 * * *`) was said to be a bad
/// cron expression ending in a bare `^`: it says how many fields it has
/// and how many a schedule takes.
#[test]
fn a_schedule_with_a_field_missing_says_how_many_it_takes() {
    let e = errors(&valid_with(
        r#"schedule = "0 */6 * * *""#,
        r#"schedule = "*/15 * * *""#,
    ));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        e.0[0].to_string(),
        format!(
            "{FILE}: field `schedule`: bad cron expression `*/15 * * *`: 4 fields; a schedule has five (minute, \
             hour, day of the month, month, day of the week: `*/15 * * * *`), or six and seven with seconds first \
             and years last"
        )
    );
}

#[test]
fn cron_expressions_take_five_six_or_seven_fields() {
    for schedule in ["*/15 * * * *", "0 */15 * * * *", "0 0 3 * * Mon 2030"] {
        let text = valid_with(r#"schedule = "0 */6 * * *""#, &format!("schedule = {schedule:?}"));
        let wf = Workflow::parse(FILE, &text).unwrap_or_else(|e| panic!("{schedule}: {e}"));
        assert_eq!(wf.schedule.unwrap().expression, schedule);
    }
}

#[test]
fn entity_defined_twice() {
    check(
        &format!("{VALID}\n[[entities]]\nname = \"product\"\ntable = \"items\"\n"),
        &[&format!("{FILE}: entity `product`: entity type is defined twice")],
    );
}

#[test]
fn entity_without_table_or_field_map() {
    check(
        &format!("{VALID}\n[[entities]]\nname = \"invoice\"\nstrategy = \"manual\"\n"),
        &[
            &format!(
                "{FILE}: entity `invoice`, field `systems.shop.entities.invoice`: system `shop` is an HTTP \
                 system: say where this entity type's records are (`path`)"
            ),
            &format!(
                "{FILE}: entity `invoice`: entity has neither a table nor a field map (give `table`, \
                 `source_table`/`target_table` or [entities.fields])"
            ),
        ],
    );
}

#[test]
fn unknown_system() {
    check(
        &valid_with(r#"source = "shop""#, r#"source = "shopify""#),
        &[&format!(
            "{FILE}: field `source`: unknown system `shopify` (declared under [systems]: shop, warehouse)"
        )],
    );
    check(
        &valid_with(r#"target = "warehouse""#, r#"target = "wms""#),
        &[&format!(
            "{FILE}: field `target`: unknown system `wms` (declared under [systems]: shop, warehouse)"
        )],
    );
}

#[test]
fn no_systems_declared() {
    let shop_start = VALID.find("[systems.shop]").unwrap();
    let shop_end = VALID.find("[systems.warehouse]").unwrap();
    let text = format!("{}{}", &VALID[..shop_start], &VALID[shop_end..]).replacen(
        "[systems.warehouse]\nconnector = \"sql\"\n",
        "",
        1,
    );
    check(
        &text,
        &[
            &format!("{FILE}: field `source`: unknown system `shop` (declared under [systems]: none)"),
            &format!("{FILE}: field `target`: unknown system `warehouse` (declared under [systems]: none)"),
        ],
    );
}

#[test]
fn unknown_connector_kind() {
    check(
        &valid_with(r#"connector = "http""#, r#"connector = "ftp""#),
        &[&format!(
            "{FILE}: field `systems.shop.connector`: unknown connector `ftp` (expected sql or http)"
        )],
    );
}

/// A file TOML (or serde) refused: one error, naming the file first, then
/// the line and what is wrong there.
fn assert_toml_error(e: &DefinitionErrors, file: &str, line: usize, mentions: &str) {
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].file, file);
    let message = e.to_string();
    assert!(message.starts_with(&format!("{file}:")), "{message}");
    assert!(
        message.contains(&format!("TOML parse error at line {line},")),
        "{message}"
    );
    assert!(message.contains(mentions), "{message}");
}

#[test]
fn unknown_and_missing_keys_name_the_file_and_the_key() {
    let text = valid_with("table = \"products\"", "tabel = \"products\"");
    assert_toml_error(&errors(&text), FILE, 22, "unknown field `tabel`");
    let e = errors(&valid_with("source = \"shop\"\n", ""));
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.to_string().starts_with(&format!("{FILE}:")), "{e}");
    assert!(e.to_string().contains("missing field `source`"), "{e}");
}

#[test]
fn toml_syntax_error_names_the_file_and_the_line() {
    let text = valid_with(r#"name = "shop-to-warehouse""#, r#"name = "shop-to-warehouse"#);
    assert_toml_error(&errors(&text), FILE, 2, "shop-to-warehouse");
}

// --- several errors at once ------------------------------------------------------------

#[test]
fn every_error_of_a_definition_is_reported() {
    let text = r#"
name = "broken"
schedule = "every day"
strategy = "newest"
source = "shop"
target = "wms"

[systems.shop]
connector = "ftp"

[[entities]]
name = "order"
strategy = "by_hand"

[entities.fields]
account_id = { references = "account" }

[[entities]]
name = "order"
table = "orders"

[[entities]]
name = "invoice"

[tenants.acme]
schedule = "25 * * * *"
strategies = { order = "manual", payment = "manual" }
"#;
    let e = errors(text);
    let got: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    let expected_prefixes = [
        format!("{FILE}: field `schedule`: bad cron expression `every day`: "),
        format!("{FILE}: field `strategy`: unknown strategy `newest` "),
        format!("{FILE}: field `systems.shop.connector`: unknown connector `ftp` "),
        format!("{FILE}: field `target`: unknown system `wms` "),
        format!("{FILE}: entity `order`, field `strategy`: unknown strategy `by_hand` "),
        format!("{FILE}: entity `order`, field `account_id`: references unknown entity type `account` "),
        format!("{FILE}: entity `order`: entity type is defined twice"),
        format!("{FILE}: entity `invoice`: entity has neither a table nor a field map "),
        format!("{FILE}: entity `payment`, field `tenants.acme.strategies`: tenant `acme` overrides "),
    ];
    assert_eq!(got.len(), expected_prefixes.len(), "{got:#?}");
    for (line, prefix) in got.iter().zip(&expected_prefixes) {
        assert!(
            line.starts_with(prefix.as_str()),
            "{line}\ndoes not start with\n{prefix}"
        );
    }
}

// --- references against the dependency graph ---------------------------------------------

/// Contacts reference accounts; an order references its account and, in
/// `extra`, whatever the test adds.
fn with_references(extra: &str) -> Workflow {
    let text = format!(
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

[entities.fields]
parent_id = {{ references = "account" }}

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
    );
    Workflow::parse(FILE, &text).unwrap()
}

#[test]
fn references_with_their_edges_plan_within_the_graph() {
    let wf = with_references("");
    let graph = wf.graph_within(&DependencyGraph::builtin_default()).unwrap();
    // Types the integration does not sync are dropped from the plan.
    assert!(!graph.contains("invoice"));
    assert_eq!(
        graph.stages().unwrap().to_string(),
        "stage 1: account\nstage 2: contact\nstage 3: order\n\
         deferred: account -> account (written first, reference patched once its target exists)\n"
    );
}

/// An entity type the dependency graph does not name is synced (in the
/// first stage, depending on nothing), not left out of the plan: a run
/// that skipped it would succeed with nothing of it synced.
#[test]
fn an_entity_type_the_graph_does_not_name_is_planned() {
    let wf = with_references("[[entities]]\nname = \"blob\"\ntable = \"blobs\"\n");
    let graph = wf.graph_within(&DependencyGraph::builtin_default()).unwrap();
    assert_eq!(
        graph.stages().unwrap().to_string(),
        "stage 1: account, blob\nstage 2: contact\nstage 3: order\n\
         deferred: account -> account (written first, reference patched once its target exists)\n"
    );
}

#[test]
fn reference_without_an_edge_in_the_graph() {
    // The built-in graph has order -> account but no order -> order.
    let wf = with_references("parent_order_id = { references = \"order\" }");
    let e = wf.graph_within(&DependencyGraph::builtin_default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{FILE}: entity `order`, field `parent_order_id`: references `order` but the dependency \
             graph has no edge order -> order"
        )
    );

    // A partner graph that drops edges: every reference missing one is reported.
    let partner = workflow::parse_graph(
        "workflows/partners/flat.toml",
        "extends = \"default\"\n[entities]\ncontact = []\norder = []\n",
    )
    .unwrap();
    let e = with_references("").graph_within(&partner).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{FILE}: entity `contact`, field `account_id`: references `account` but the dependency \
             graph has no edge contact -> account\n\
             {FILE}: entity `order`, field `account_id`: references `account` but the dependency \
             graph has no edge order -> account"
        )
    );
}

// --- partner graph files -------------------------------------------------------------------

const GRAPH_FILE: &str = "workflows/partners/acme-saas.toml";

fn graph(text: &str) -> DependencyGraph {
    workflow::parse_graph(GRAPH_FILE, text).unwrap_or_else(|e| panic!("{e}"))
}

fn plan(graph: &DependencyGraph) -> String {
    graph.stages().unwrap().to_string()
}

#[test]
fn a_bare_graph_has_only_what_it_lists() {
    let g = graph("[entities]\nproduct = []\norder_line = [\"order\", \"product\"]\n");
    // A dependency not listed as a type of its own becomes one.
    assert_eq!(plan(&g), "stage 1: order, product\nstage 2: order_line\n");
    assert_eq!(
        plan(&graph("extends = \"none\"\n[entities]\na = []\n")),
        "stage 1: a\n"
    );
}

#[test]
fn a_partner_graph_extends_the_default() {
    assert_eq!(
        plan(&graph("extends = \"default\"\n")),
        plan(&DependencyGraph::builtin_default())
    );

    // Remove types (with their edges), replace one type's dependencies, add a type.
    let g = graph(
        r#"
extends = "default"
remove = ["invoice", "payment"]

[entities]
order = ["account"]
shipment = ["order"]
"#,
    );
    assert!(!g.contains("invoice") && !g.contains("payment"));
    assert!(g.depends_on("order", "account"));
    assert!(
        !g.depends_on("order", "contact"),
        "order's dependencies are replaced, not added to"
    );
    assert!(g.depends_on("order_line", "order") && g.depends_on("order_line", "product"));
    assert!(g.depends_on("shipment", "order"));
    assert_eq!(
        plan(&g),
        "stage 1: account, product\nstage 2: contact, order\nstage 3: order_line, shipment\n\
         deferred: account -> account (written first, reference patched once its target exists)\n"
    );
}

#[test]
fn the_shipped_partner_graph() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/partners/acme-saas.toml");
    let g = graph(&std::fs::read_to_string(path).unwrap());
    assert!(!g.contains("invoice") && !g.contains("payment"));
    assert!(g.depends_on("order", "account") && !g.depends_on("order", "contact"));
}

#[test]
fn graph_errors_name_the_file() {
    let e = workflow::parse_graph(GRAPH_FILE, "extends = \"standard\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{GRAPH_FILE}: field `extends`: unknown base graph `standard` (expected default or none)")
    );

    let e = workflow::parse_graph(GRAPH_FILE, "[entities]\norder = [\"account\"\n").unwrap_err();
    assert_toml_error(&e, GRAPH_FILE, 2, "order");

    let e = workflow::parse_graph(GRAPH_FILE, "remove = [\"invoice\"]\nedges = []\n").unwrap_err();
    assert_toml_error(&e, GRAPH_FILE, 2, "unknown field `edges`");
}

/// Two tenants whose copies of a system resolve to one URL would each sync
/// the other's records as their own: the definition says so, naming both
/// tenants and the system, unless each has its own URL or the system is
/// shared on purpose.
#[test]
fn two_tenants_on_one_database_are_told_apart_or_refused() {
    let two = |extra: &str| {
        valid_with(
            "[tenants.acme]\n",
            &format!("[tenants.globex]\n{extra}\n[tenants.acme]\n"),
        )
    };
    let with_url = |text: String| {
        text.replace(
            "connector = \"sql\"\n",
            "connector = \"sql\"\nurl = \"postgres://wh:secret@db/warehouse\"\n",
        )
    };
    let env = |var: &str| (var == "GLOBEX_WH").then(|| "postgres://wh@db/globex".to_owned());

    // Both on the system's own URLs: the warehouse and the shop collide.
    let wf = Workflow::parse(FILE, &with_url(two(""))).unwrap();
    let shared = wf.shared_systems(env);
    let names: Vec<(&str, &str, &str)> = shared
        .iter()
        .map(|s| (s.system.as_str(), s.tenants.0.as_str(), s.tenants.1.as_str()))
        .collect();
    assert_eq!(
        names,
        [("shop", "acme", "globex"), ("warehouse", "acme", "globex")]
    );
    let said = wf
        .tenants_apart(Some(&"globex".into()), env)
        .unwrap_err()
        .to_string();
    assert!(
        said.contains("tenants `acme` and `globex` both sync system `warehouse`"),
        "{said}"
    );
    assert!(
        said.contains("postgres://wh:***@db/warehouse"),
        "the password is not shown: {said}"
    );
    assert!(!said.contains("secret"), "{said}");

    // Each tenant its own warehouse (a URL, or one read from the
    // environment), the shop shared on purpose: nothing to say.
    let apart = with_url(two("url_env = { warehouse = \"GLOBEX_WH\" }"))
        .replace("rate_limit = 10\n", "rate_limit = 10\nshared = true\n");
    let wf = Workflow::parse(FILE, &apart).unwrap();
    assert_eq!(wf.shared_systems(env), []);
    wf.tenants_apart(None, env).unwrap();
    // A URL that cannot be resolved is that tenant's own error, not a
    // collision.
    assert_eq!(wf.shared_systems(|_| None), []);
}

/// Tenants calling one API with credentials of their own (`auth_env`) are
/// different accounts of it, not one system shared by mistake.
#[test]
fn tenants_with_their_own_api_credentials_are_apart() {
    let text = valid_with(
        "[tenants.acme]\n",
        "[tenants.globex]\nauth_env = { shop = \"GLOBEX_TOKEN\" }\nurls = { warehouse = \"postgres://db/globex\" }\n\n[tenants.acme]\nurls = { warehouse = \"postgres://db/acme\" }\n",
    );
    let wf = Workflow::parse(FILE, &text).unwrap();
    assert_eq!(wf.shared_systems(|_| None), []);
}

/// How long a system's rows may stay hidden after their time: 60 seconds
/// unless set, any interval, and an error naming the system when it is not
/// one.
#[test]
fn a_system_says_how_late_its_rows_may_become_visible() {
    let wf = Workflow::parse(FILE, VALID).unwrap();
    assert_eq!(wf.source.lookback, workflow::DEFAULT_LOOKBACK);
    assert_eq!(workflow::DEFAULT_LOOKBACK, std::time::Duration::from_secs(60));
    let set = valid_with("connector = \"sql\"", "connector = \"sql\"\nlookback = \"15m\"");
    let wf = Workflow::parse(FILE, &set).unwrap();
    assert_eq!(wf.target.lookback, std::time::Duration::from_secs(900));
    check(
        &valid_with("connector = \"sql\"", "connector = \"sql\"\nlookback = \"soon\""),
        &[&format!(
            "{FILE}: field `systems.warehouse.lookback`: `soon` is not an interval (expected a number and ms, s, \
             m, h or d, e.g. `1d`)"
        )],
    );
}

/// A SQL system's URL with a scheme syncd does not speak (a typo) is named
/// by plain `check`, its password hidden, rather than at the first connect.
#[test]
fn a_sql_url_with_an_unknown_scheme_is_named() {
    check(
        &valid_with(
            "connector = \"sql\"",
            "connector = \"sql\"\nurl = \"postgress://erp:secret@db.example/erp\"",
        ),
        &[&format!(
            "{FILE}: field `systems.warehouse.url`: `postgress://erp:***@db.example/erp` is not a database URL \
             syncd speaks (postgres://, postgresql://, mysql://, mariadb:// or sqlite:)"
        )],
    );
    for good in [
        "postgres://h/db",
        "postgresql://h/db",
        "mysql://h/db",
        "mariadb://h/db",
        "sqlite://x.db",
    ] {
        let text = valid_with(
            "connector = \"sql\"",
            &format!("connector = \"sql\"\nurl = \"{good}\""),
        );
        assert!(Workflow::parse(FILE, &text).is_ok(), "{good}");
    }
}
