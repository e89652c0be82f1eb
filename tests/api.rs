//! The HTTP API: tenant-scoped tokens see only their tenant's runs,
//! conflicts and mappings; hostile requests get 4xx JSON errors, never a
//! 5xx, and change nothing.

use syncd_test_support as support;

use support::http::request;

use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use support::TempDir;
use syncd_core::conflict::ConflictStatus;
use syncd_engine::run::RunState;
use syncd_store::cache::MappingCache;
use syncd_store::{Principal, RunFilter, Store, StoreConfig};
use uuid::Uuid;

struct Api {
    addr: SocketAddr,
    store: Arc<Store>,
    _dir: TempDir,
}

/// A store with one suspended run, one pending conflict and one mapping for
/// each of tenants `a` and `b`, served on a random port.
async fn serve() -> (Api, [(Uuid, Uuid); 2]) {
    let dir = TempDir::new("api");
    let store = Arc::new(
        Store::connect(
            &StoreConfig::new(dir.sqlite_url("state.db")),
            MappingCache::local(),
        )
        .await
        .unwrap(),
    );
    let ids = support::tenants::seed(&store).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = syncd_engine::api::router(store.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (
        Api {
            addr,
            store,
            _dir: dir,
        },
        ids,
    )
}

#[tokio::test]
async fn a_tenant_token_sees_only_its_tenant() {
    let (api, [(run_a, conflict_a), (run_b, conflict_b)]) = serve().await;
    let token_a = api
        .store
        .create_token(&Principal::Tenant("a".into()))
        .await
        .unwrap();
    let admin = api.store.create_token(&Principal::Admin).await.unwrap();
    let get = |path: String, token: String| async move {
        request(api.addr, "GET", &path, Some(&token), None).await
    };

    let (status, body) = get("/api/runs".into(), token_a.clone()).await;
    assert_eq!(status, 200);
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], json!(run_a));
    let (_, body) = get("/api/conflicts".into(), token_a.clone()).await;
    let conflicts = body["conflicts"].as_array().unwrap();
    assert_eq!((conflicts.len(), &conflicts[0]["id"]), (1, &json!(conflict_a)));

    // Tenant b's objects answer 404, exactly like ones that do not exist.
    for path in [
        format!("/api/runs/{run_b}"),
        format!("/api/conflicts/{conflict_b}"),
        format!("/api/runs/{}", Uuid::new_v4()),
        "/api/mappings?integration=crm-to-erp&entity=order&source_id=b-O-1".into(),
        "/api/mappings?tenant=b&integration=crm-to-erp&entity=order&source_id=b-O-1".into(),
    ] {
        let (status, body) = get(path.clone(), token_a.clone()).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    for path in [
        format!("/api/runs/{run_b}/cancel"),
        format!("/api/conflicts/{conflict_b}/resolve"),
    ] {
        let body = br#"{"take": "source", "by": "mallory"}"#;
        let (status, _) = request(api.addr, "POST", &path, Some(&token_a), Some(body)).await;
        assert_eq!(status, 404, "{path}");
    }
    // ... and nothing of tenant b changed.
    let b = api.store.load_run(None, run_b).await.unwrap().unwrap();
    assert_eq!(b.state, RunState::Suspended);
    let c = api.store.load_conflict(None, conflict_b).await.unwrap().unwrap();
    assert_eq!(c.status, ConflictStatus::Pending);

    // Its own objects work.
    let (status, body) = get(format!("/api/runs/{run_a}"), token_a.clone()).await;
    assert_eq!((status, body["pending_conflicts"].as_u64()), (200, Some(1)));
    let (status, body) = get(
        "/api/mappings?integration=crm-to-erp&entity=order&source_id=a-O-1".into(),
        token_a.clone(),
    )
    .await;
    assert_eq!((status, &body["mapping"]["target_id"]), (200, &json!("a-T-1")));
    let body = br#"{"take": "target", "by": "reviewer-1"}"#;
    let (status, body) = request(
        api.addr,
        "POST",
        &format!("/api/conflicts/{conflict_a}/resolve"),
        Some(&token_a),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conflict"]["resolution"], json!({"status": "invoiced"}));
    assert_eq!(body["conflict"]["resolved_by"], "reviewer-1");
    let (status, _) = request(
        api.addr,
        "POST",
        &format!("/api/conflicts/{conflict_a}/resolve"),
        Some(&token_a),
        Some(br#"{"take": "source", "by": "x"}"#),
    )
    .await;
    assert_eq!(status, 409, "a decided conflict stays decided");

    // An admin token sees both tenants.
    let (_, body) = get("/api/runs".into(), admin.clone()).await;
    assert_eq!(body["runs"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_operators_resume_is_handed_to_the_workers() {
    let (api, [(run_a, conflict_a), (run_b, _)]) = serve().await;
    let token = api
        .store
        .create_token(&Principal::Tenant("a".into()))
        .await
        .unwrap();
    let resume = |run: String| {
        let token = token.clone();
        async move {
            request(
                api.addr,
                "POST",
                &format!("/api/runs/{run}/resume"),
                Some(&token),
                None,
            )
            .await
        }
    };
    let state = |run| {
        let store = api.store.clone();
        async move { store.load_run(None, run).await.unwrap().unwrap().state }
    };

    // Another tenant's run, a missing one and a malformed id: 404.
    for run in [run_b.to_string(), Uuid::new_v4().to_string(), "x';--".into()] {
        let (status, body) = resume(run.clone()).await;
        assert_eq!(status, 404, "{run}: {body}");
        assert_eq!(body["error"], "run not found");
    }
    assert_eq!(state(run_b).await, RunState::Suspended);
    let (status, body) = request(api.addr, "POST", &format!("/api/runs/{run_a}/resume"), None, None).await;
    assert_eq!((status, &body["error"]), (401, &json!("missing bearer token")));

    // A conflict still waits for a reviewer: 409, nothing changes.
    let (status, body) = resume(run_a.to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        json!(format!(
            "run {run_a} cannot be resumed: 1 of its conflicts still wait for a reviewer"
        ))
    );
    let decided = request(
        api.addr,
        "POST",
        &format!("/api/conflicts/{conflict_a}/resolve"),
        Some(&token),
        Some(br#"{"take": "source", "by": "reviewer-1"}"#),
    )
    .await;
    assert_eq!(decided.0, 200, "{}", decided.1);

    // Decided: handed to the workers, which make the transition.
    let (status, body) = resume(run_a.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["run"]["id"], json!(run_a));
    assert_eq!(body["run"]["state"], "suspended");
    assert_eq!(body["message"], "a worker resumes the run");

    // A worker is executing it: 409.
    let run = api.store.load_run(None, run_a).await.unwrap().unwrap();
    assert!(
        api.store
            .claim_lease(&run, "worker-x", std::time::Duration::from_secs(30))
            .await
            .unwrap()
    );
    let (status, body) = resume(run_a.to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        json!(format!(
            "run {run_a} cannot be resumed: worker `worker-x` is executing it"
        ))
    );
    api.store
        .release_lease(&syncd_store::Lease {
            run_id: run_a,
            worker_id: "worker-x".into(),
        })
        .await
        .unwrap();

    // A finished run: 409.
    api.store
        .transition_run(&run, syncd_engine::run::RunEvent::Cancel, None)
        .await
        .unwrap();
    let (status, body) = resume(run_a.to_string()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        json!(format!(
            "run {run_a} cannot be resumed: it is cancelled; only a planned, running, \
             suspended or failed run can be resumed"
        ))
    );
    assert_eq!(state(run_a).await, RunState::Cancelled);
}

#[tokio::test]
async fn tokens_are_checked_before_anything_else() {
    let (api, _) = serve().await;
    let long = "x".repeat(201);
    for (token, error) in [
        (None, "missing bearer token"),
        (Some(""), "missing bearer token"),
        (Some("   "), "missing bearer token"),
        (Some("syncd_not_a_token"), "unknown token"),
        (Some(long.as_str()), "unknown token"),
    ] {
        let (status, body) = request(api.addr, "GET", "/api/runs", token, None).await;
        assert_eq!((status, &body["error"]), (401, &json!(error)), "{token:?}");
    }
    // The scheme's name is case-insensitive (RFC 7235); another scheme
    // carries no bearer token.
    let token = api
        .store
        .create_token(&Principal::Tenant("a".into()))
        .await
        .unwrap();
    for (scheme, status) in [("bearer", 200), ("BEARER", 200), ("Bearer", 200), ("Basic", 401)] {
        let authorization = format!("{scheme} {token}");
        let reply = support::http::exchange(
            api.addr,
            "GET",
            "/api/runs",
            &[("Authorization", &authorization)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(reply.status, status, "{scheme}: {}", reply.body);
    }
}

/// A decision that is not one says what is wrong with it, and the
/// conflict still waits.
#[tokio::test]
async fn a_malformed_decision_says_what_is_wrong() {
    let (api, [(_, conflict_a), _]) = serve().await;
    let token = api
        .store
        .create_token(&Principal::Tenant("a".into()))
        .await
        .unwrap();
    let resolve = format!("/api/conflicts/{conflict_a}/resolve");
    for (body, error) in [
        (
            r#"{"take": "left", "by": "x"}"#,
            "unknown side `left` in `take`: take `source` or `target`",
        ),
        (
            r#"{"take": "source", "values": {"status": "x"}, "by": "x"}"#,
            "give `take` (source or target) or `values`, not both",
        ),
        (r#"{"by": "x"}"#, "give `take` (source or target) or `values`"),
    ] {
        let (status, reply) = request(api.addr, "POST", &resolve, Some(&token), Some(body.as_bytes())).await;
        assert_eq!((status, &reply["error"]), (400, &json!(error)), "{body}");
    }
    let c = api.store.load_conflict(None, conflict_a).await.unwrap().unwrap();
    assert_eq!(c.status, ConflictStatus::Pending);
}

#[tokio::test]
async fn hostile_requests_get_4xx_and_change_nothing() {
    let (api, [(run_a, conflict_a), _]) = serve().await;
    let token = api
        .store
        .create_token(&Principal::Tenant("a".into()))
        .await
        .unwrap();
    let before = (
        api.store
            .list_runs(&RunFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap(),
        api.store.load_conflict(None, conflict_a).await.unwrap(),
    );
    let huge = vec![b'x'; 200 * 1024];
    let resolve = format!("/api/conflicts/{conflict_a}/resolve");
    let resume = format!("/api/runs/{run_a}/resume");
    let bodies: Vec<&[u8]> = vec![
        b"{",
        b"not json",
        b"[]",
        b"null",
        br#"{"take": "source"}"#,
        br#"{"take": "both", "by": "x"}"#,
        br#"{"take": "source", "values": {"status": "x"}, "by": "x"}"#,
        br#"{"take": "source", "by": "x", "extra": 1}"#,
        br#"{"values": {"no_such_field": 1}, "by": "x"}"#,
        br#"{"values": {"total": 1}, "by": "x"}"#,
        br#"{"take": "source", "by": ""}"#,
        br#"{"take": 7, "by": "x"}"#,
        "{\"take\": \"source\", \"by\": \"x\u{0}\"".as_bytes(),
        &huge,
    ];
    let paths = [
        "/api/runs/'%20OR%201=1--".to_owned(),
        "/api/runs/..%2F..%2Fetc%2Fpasswd".into(),
        "/api/conflicts/%00".into(),
        format!("/api/runs/{run_a}x"),
        "/api/runs?state=%27%20OR%20%271%27=%271".into(),
        "/api/runs?limit=-1".into(),
        "/api/runs?limit=99999999999999999999".into(),
        "/api/runs?unknown=1".into(),
        "/api/conflicts?status=maybe".into(),
        "/api/conflicts?run=not-a-uuid".into(),
        "/api/mappings?integration=x".into(),
        "/api/mappings?integration=x&entity=y&source_id=a&target_id=b".into(),
        "/api/mappings?integration=*&entity=%25&source_id=%27".into(),
        "/nope".into(),
        "/api/../healthz".into(),
    ];
    let tokens: [Option<&str>; 5] = [
        None,
        Some(""),
        Some("syncd_wrong"),
        Some("' OR 1=1 --"),
        Some(&token),
    ];
    let mut sent = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    while sent < 1000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let t = tokens[(rng % 5) as usize];
        let (status, body) = if rng.is_multiple_of(3) {
            let b = bodies[(rng >> 8) as usize % bodies.len()];
            // A run with a pending conflict refuses a resume.
            let path = if rng.is_multiple_of(2) { &resolve } else { &resume };
            request(api.addr, "POST", path, t, Some(b)).await
        } else {
            let p = &paths[(rng >> 8) as usize % paths.len()];
            request(api.addr, "GET", p, t, None).await
        };
        assert!((200..500).contains(&status), "status {status}: {body}");
        if status >= 400 {
            assert!(body["error"].is_string(), "errors are JSON: {status} {body}");
        }
        sent += 1;
    }
    let after = (
        api.store
            .list_runs(&RunFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap(),
        api.store.load_conflict(None, conflict_a).await.unwrap(),
    );
    assert_eq!(before.0, after.0);
    assert_eq!(before.1, after.1, "the conflict is still pending and untouched");
    let (status, body) = request(api.addr, "GET", "/healthz", None, None).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
}

#[tokio::test]
async fn the_review_page_is_served_without_data() {
    let (api, _) = serve().await;
    let (status, body) = request(api.addr, "GET", "/review", None, None).await;
    assert_eq!(status, 200);
    let html = body.as_str().unwrap();
    assert!(
        html.contains("Conflicts to review") && html.contains(r#"<script src="/review.js">"#),
        "{html}"
    );
    assert!(!html.contains("a-O-1"), "no tenant data without a token");
    let (status, script) = request(api.addr, "GET", "/review.js", None, None).await;
    assert_eq!(status, 200);
    assert!(script.as_str().unwrap().contains("/api/conflicts"));
}

/// The page that decides conflicts runs only its own script and style,
/// talks only to this API, cannot be framed (clickjacking), sends no
/// referrer, and keeps the token for the tab only.
#[tokio::test]
async fn the_review_page_is_served_with_a_strict_policy() {
    let (api, _) = serve().await;
    for (path, kind) in [
        ("/review", "text/html"),
        ("/review.js", "text/javascript"),
        ("/review.css", "text/css"),
    ] {
        let reply = support::http::exchange(api.addr, "GET", path, &[], None)
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.header("content-type").unwrap().starts_with(kind), "{path}");
        let policy = reply.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"), "{path}");
    }
    let (_, html) = request(api.addr, "GET", "/review", None, None).await;
    assert!(!html.as_str().unwrap().contains("<script>"), "no inline script");
    let (_, script) = request(api.addr, "GET", "/review.js", None, None).await;
    let script = script.as_str().unwrap();
    assert!(script.contains(r#"sessionStorage.setItem("syncd.token""#));
    assert!(!script.contains(r#"localStorage.setItem("syncd.token""#));
}

/// `POST /api/runs` plans a run that a worker then executes, confined to
/// the token's tenant; `GET /api/schedules` says what fires next, of the
/// token's tenant only.
#[tokio::test]
async fn a_run_started_through_the_api_is_executed_by_a_worker() {
    use support::systems::{Kind, SystemDb, crm_rows, workflow_toml};
    use syncd_engine::worker::{Definition, Worker};
    let dir = TempDir::new("api-start");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let (accounts, contacts, orders) = crm_rows(5);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let definition = || Definition {
        workflow: syncd_core::workflow::Workflow::parse("e2e.toml", &toml).unwrap(),
        graph: syncd_core::plan::DependencyGraph::builtin_default(),
    };
    let store = Arc::new(
        Store::connect(
            &StoreConfig::new(dir.sqlite_url("state.db")),
            MappingCache::local(),
        )
        .await
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // An integration that names no tenants: an operator's alone.
    let untenanted = Definition {
        workflow: syncd_core::workflow::Workflow::parse(
            "ops.toml",
            &toml
                .replace("name = \"e2e\"", "name = \"ops\"")
                .replace("[tenants.t1]", ""),
        )
        .unwrap(),
        graph: syncd_core::plan::DependencyGraph::builtin_default(),
    };
    let app = syncd_engine::api::router_with(store.clone(), vec![definition(), untenanted]);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let t1 = store.create_token(&Principal::Tenant("t1".into())).await.unwrap();
    let t2 = store.create_token(&Principal::Tenant("t2".into())).await.unwrap();
    let admin = store.create_token(&Principal::Admin).await.unwrap();
    let start = |token: String, body: serde_json::Value| async move {
        let body = body.to_string();
        request(addr, "POST", "/api/runs", Some(&token), Some(body.as_bytes())).await
    };

    // Another tenant's token: the integration does not exist for it.
    for (token, body) in [
        (t2.clone(), json!({"integration": "e2e"})),
        (t1.clone(), json!({"integration": "e2e", "tenant": "t2"})),
        (t1.clone(), json!({"integration": "nope"})),
        (t1.clone(), json!({"integration": "ops"})),
    ] {
        let (status, reply) = start(token, body.clone()).await;
        assert_eq!(
            (status, &reply["error"]),
            (404, &json!("integration not found")),
            "{body}"
        );
    }
    let (status, reply) = start(admin.clone(), json!({"integration": "e2e"})).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        store
            .list_runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );

    let (status, reply) = start(t1.clone(), json!({"integration": "e2e"})).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["run"]["state"], "planned");
    assert_eq!(reply["run"]["trigger"], "api");
    let run_id: Uuid = serde_json::from_value(reply["run"]["id"].clone()).unwrap();
    // One at a time: the active run is named.
    let (status, reply) = start(admin.clone(), json!({"integration": "e2e", "tenant": "t1"})).await;
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains(&run_id.to_string()),
        "{reply}"
    );

    let worker = Worker {
        store: store.clone(),
        definitions: vec![definition()],
        options: syncd_engine::run::executor::Options::default(),
        poll: std::time::Duration::from_millis(50),
        clock: Arc::new(syncd_core::clock::SystemClock),
    };
    assert!(
        worker.execute_one().await.unwrap(),
        "the worker takes the planned run"
    );
    let run = store.load_run(None, run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    assert_eq!(target.dump("customers").await.len(), 5);
    assert_eq!(target.dump("sales_orders").await.len(), 15);

    // Schedules: each token sees its own tenant's.
    let soon = chrono::Utc::now() + chrono::Duration::minutes(5);
    store
        .ensure_schedule(&"t1".into(), &"e2e".into(), "*/5 * * * *", soon)
        .await
        .unwrap();
    store
        .ensure_schedule(&"t2".into(), &"other".into(), "0 * * * *", soon)
        .await
        .unwrap();
    let schedules = |token: String| async move {
        let (status, reply) = request(addr, "GET", "/api/schedules", Some(&token), None).await;
        assert_eq!(status, 200, "{reply}");
        reply["schedules"].as_array().unwrap().clone()
    };
    // The API's /metrics covers every tenant: an admin token's only.
    let (status, reply) = request(addr, "GET", "/metrics", Some(&t2), None).await;
    assert_eq!(status, 403, "{reply}");
    let (status, reply) = request(addr, "GET", "/metrics", Some(&admin), None).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        reply
            .as_str()
            .unwrap()
            .contains(r#"syncd_runs{state="succeeded"} 1"#),
        "{reply}"
    );
    let own = schedules(t1).await;
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(
        (&own[0]["tenant"], &own[0]["integration"]),
        (&json!("t1"), &json!("e2e"))
    );
    assert_eq!(own[0]["cron"], "*/5 * * * *");
    assert_eq!(own[0]["late_seconds"], 0.0);
    assert_eq!(schedules(admin).await.len(), 2);
}
