//! The fake SaaS API that the HTTP connector is tested against behaves like
//! a real one, seen through a raw HTTP client: pages and cursors cover every
//! record once, an idempotency key creates once, validation and auth fail
//! with their messages, an injected drop reaches the client as a broken
//! connection rather than a response, and requests are counted per second
//! against the rate limit.

use syncd_test_support as support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use support::http::{Reply, exchange};
use support::saas::{Collection, Faults, Pagination, SaasConfig, SaasServer};

async fn call(
    server: &SaasServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let body = body.map(|b| b.to_string());
    exchange(
        server.addr(),
        method,
        path,
        headers,
        body.as_deref().map(str::as_bytes),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn get(server: &SaasServer, path: &str) -> Reply {
    call(server, "GET", path, &[], None).await
}

fn message(reply: &Reply) -> &str {
    reply.body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {reply:?}"))
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every id of a list, page after page, following the collection's style;
/// `query` is added to every request.
async fn list_all(
    server: &SaasServer,
    collection: &str,
    style: Pagination,
    size: usize,
    query: &str,
) -> Vec<String> {
    list_with(server, collection, style, size, query, |_, _| {}).await
}

/// Like `list_all`, calling `between(server, page_number)` after each page.
async fn list_with(
    server: &SaasServer,
    collection: &str,
    style: Pagination,
    size: usize,
    query: &str,
    mut between: impl FnMut(&SaasServer, usize),
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 1.. {
        let path = match style {
            Pagination::Page => format!("/{collection}?page={page}&per_page={size}{query}"),
            Pagination::Cursor => match &cursor {
                None => format!("/{collection}?limit={size}{query}"),
                Some(c) => format!("/{collection}?limit={size}&cursor={c}{query}"),
            },
        };
        let reply = get(server, &path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let data = reply.body["data"].as_array().unwrap();
        assert!(data.len() <= size);
        seen.extend(ids(data));
        between(server, page);
        let more = match style {
            Pagination::Page => {
                assert_eq!(reply.body["page"], page);
                reply.body["has_more"].as_bool().unwrap()
            }
            Pagination::Cursor => {
                cursor = reply.body["next_cursor"].as_str().map(str::to_owned);
                cursor.is_some()
            }
        };
        if !more {
            break;
        }
    }
    seen
}

fn server_config(collections: Vec<Collection>) -> SaasConfig {
    SaasConfig {
        collections,
        max_page_size: 10,
        ..SaasConfig::default()
    }
}

#[tokio::test]
async fn pages_and_cursors_cover_every_record_once_with_updated_since() {
    let server = SaasServer::start(server_config(vec![
        Collection::new("contacts", Pagination::Page),
        Collection::new("deals", Pagination::Cursor),
    ]))
    .await;
    for (collection, style) in [("contacts", Pagination::Page), ("deals", Pagination::Cursor)] {
        let inserted: Vec<Value> = (0..35)
            .map(|i| server.insert(collection, json!({ "n": i })))
            .collect();
        let all = ids(&inserted);
        for size in [1, 7, 10] {
            assert_eq!(
                list_all(&server, collection, style, size, "").await,
                all,
                "{collection} by {size}"
            );
        }
        // Sizes above the maximum are cut to it.
        let page = get(&server, &format!("/{collection}?per_page=50&limit=50")).await;
        assert_eq!(page.body["data"].as_array().unwrap().len(), 10);

        let since = inserted[12]["updated_at"].as_str().unwrap();
        let query = format!("&updated_since={since}");
        assert_eq!(list_all(&server, collection, style, 7, &query).await, all[12..]);
        // An edit moves a record to the end of the change feed.
        server.update_direct(collection, &all[3], json!({ "n": -1 }));
        let mut expected = all[12..].to_vec();
        expected.push(all[3].clone());
        assert_eq!(list_all(&server, collection, style, 7, &query).await, expected);
    }
}

#[tokio::test]
async fn a_cursor_stays_valid_while_records_change() {
    let server = SaasServer::start(server_config(vec![Collection::new("deals", Pagination::Cursor)])).await;
    let all: Vec<String> = (0..20)
        .map(|i| {
            server.insert("deals", json!({ "n": i }))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let seen = list_with(&server, "deals", Pagination::Cursor, 5, "", |server, page| {
        if page == 1 {
            server.update_direct("deals", &all[2], json!({ "n": "seen, then edited" }));
            server.update_direct("deals", &all[12], json!({ "n": "edited before it was seen" }));
            server.delete_direct("deals", &all[5]);
            server.delete_direct("deals", &all[7]);
        }
    })
    .await;
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &seen {
        *times.entry(id).or_default() += 1;
    }
    for (i, id) in all.iter().enumerate() {
        let expected = match i {
            2 => 2,
            5 | 7 => 0,
            _ => 1,
        };
        assert_eq!(
            times.get(id.as_str()).copied().unwrap_or(0),
            expected,
            "{id} in {seen:?}"
        );
    }
    assert_eq!(seen[seen.len() - 2..], [all[2].clone(), all[12].clone()]);
}

#[tokio::test]
async fn records_get_server_ids_and_increasing_stamps() {
    let server = SaasServer::start(server_config(vec![Collection::new("contacts", Pagination::Page)])).await;
    let body = json!({ "id": "mine", "updated_at": "2000-01-01T00:00:00Z", "external_id": "x-1" });
    let created = call(&server, "POST", "/contacts", &[], Some(body)).await;
    assert_eq!(created.status, 201);
    let first = created.body["data"].clone();
    assert_eq!(first["id"], "con_000001");
    let stamp = first["updated_at"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.6fZ").is_ok() && stamp.len() == 27
    );
    server.insert("contacts", json!({ "external_id": "x-2" }));

    let patched = call(
        &server,
        "PATCH",
        "/contacts/con_000001",
        &[],
        Some(json!({ "external_id": null })),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["data"]["external_id"], Value::Null);
    assert!(patched.body["data"]["updated_at"].as_str().unwrap() > stamp);

    let found = get(&server, "/contacts?external_id=x-2").await;
    assert_eq!(ids(found.body["data"].as_array().unwrap()), ["con_000002"]);
    assert_eq!(
        get(&server, "/contacts/con_000002").await.body["data"]["external_id"],
        "x-2"
    );

    assert_eq!(
        call(&server, "DELETE", "/contacts/con_000002", &[], None)
            .await
            .status,
        204
    );
    for (method, path, status, text) in [
        ("GET", "/contacts/con_000002", 404, "no such record"),
        ("DELETE", "/contacts/con_000002", 404, "no such record"),
        ("PATCH", "/contacts/con_000002", 404, "no such record"),
        ("GET", "/leads", 404, "no such collection"),
        (
            "GET",
            "/contacts?updated_since=yesterday",
            400,
            "updated_since: not an RFC 3339 time",
        ),
        ("GET", "/contacts?page=0", 400, "page: must be a positive integer"),
    ] {
        let body = (method == "PATCH").then(|| json!({}));
        let reply = call(&server, method, path, &[], body).await;
        assert_eq!((reply.status, message(&reply)), (status, text), "{method} {path}");
    }
    let reply = call(&server, "POST", "/contacts", &[], Some(json!([1, 2]))).await;
    assert_eq!(
        (reply.status, message(&reply)),
        (400, "body: must be a JSON object")
    );
    assert_eq!(server.records("contacts").len(), 1);
}

#[tokio::test]
async fn a_repeated_idempotency_key_creates_once() {
    let server = SaasServer::start(server_config(vec![
        Collection::new("contacts", Pagination::Page),
        Collection::new("deals", Pagination::Cursor),
    ]))
    .await;
    let create = |collection: &'static str, key: &'static str, name: &'static str| {
        let server = &server;
        async move {
            let path = format!("/{collection}");
            call(
                server,
                "POST",
                &path,
                &[("Idempotency-Key", key)],
                Some(json!({ "name": name })),
            )
            .await
        }
    };
    let first = create("contacts", "k1", "Ada").await;
    let again = create("contacts", "k1", "Ada").await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    let other = create("contacts", "k2", "Grace").await;
    assert_ne!(other.body["data"]["id"], first.body["data"]["id"]);
    // Keys are per collection.
    assert_eq!(
        create("deals", "k1", "Big deal").await.body["data"]["id"],
        "dea_000001"
    );
    assert_eq!(server.creates_performed(), 3);
    assert_eq!(server.records("contacts").len(), 2);
}

#[tokio::test]
async fn invalid_records_are_refused_with_the_field_and_the_reason() {
    let contacts = Collection {
        required: vec!["name".into()],
        must_contain: vec![("email".into(), "@".into())],
        ..Collection::new("contacts", Pagination::Page)
    };
    let server = SaasServer::start(server_config(vec![contacts])).await;
    for (body, expected) in [
        (json!({ "email": "a@b" }), Some("name: is required")),
        (json!({ "name": null }), Some("name: is required")),
        (
            json!({ "name": "Ada", "email": "ada.example" }),
            Some("email: must contain \"@\""),
        ),
        (json!({ "name": "Ada", "email": 7 }), None),
        (json!({ "name": "Ada", "email": "ada@example" }), None),
    ] {
        let reply = call(&server, "POST", "/contacts", &[], Some(body.clone())).await;
        match expected {
            Some(text) => assert_eq!((reply.status, message(&reply)), (422, text), "{body}"),
            None => assert_eq!(reply.status, 201, "{body}: {reply:?}"),
        }
    }
    let before = server.records("contacts");
    let reply = call(
        &server,
        "PATCH",
        "/contacts/con_000001",
        &[],
        Some(json!({ "name": null })),
    )
    .await;
    assert_eq!((reply.status, message(&reply)), (422, "name: is required"));
    assert_eq!(server.records("contacts"), before);
    assert_eq!(server.creates_performed(), 2);
}

#[tokio::test]
async fn requests_without_the_bearer_token_are_refused() {
    let server = SaasServer::start(SaasConfig {
        token: Some("s3cret".into()),
        ..server_config(vec![Collection::new("contacts", Pagination::Page)])
    })
    .await;
    for (headers, status) in [
        (&[][..], 401),
        (&[("Authorization", "Bearer wrong")][..], 401),
        (&[("Authorization", "s3cret")][..], 401),
        (&[("Authorization", "Bearer s3cret")][..], 200),
    ] {
        let reply = call(&server, "GET", "/contacts", headers, None).await;
        assert_eq!(reply.status, status, "{headers:?}");
        if status == 401 {
            assert_eq!(message(&reply), "invalid or missing bearer token");
        }
    }
    assert_eq!(server.requests(), 4);
}

#[tokio::test]
async fn an_injected_drop_is_a_broken_connection_and_half_of_them_happen_after_the_create() {
    let server = SaasServer::start(SaasConfig {
        faults: Faults {
            p_drop: 1.0,
            ..Faults::default()
        },
        seed: 7,
        ..server_config(vec![Collection::new("contacts", Pagination::Page)])
    })
    .await;
    let keys: Vec<String> = (0..20).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        let body = json!({ "name": key }).to_string();
        let headers = [("Idempotency-Key", key.as_str())];
        let outcome = exchange(
            server.addr(),
            "POST",
            "/contacts",
            &headers,
            Some(body.as_bytes()),
        )
        .await;
        let error = outcome.expect_err("a dropped request gets no response");
        assert!(error.contains("after 0 bytes"), "{error}");
    }
    let performed = server.creates_performed();
    assert!(
        (3..=17).contains(&performed),
        "{performed} of 20 drops came after the create"
    );

    // Retrying with the same keys creates each record exactly once.
    server.set_faults(Faults::default());
    for key in &keys {
        let reply = call(
            &server,
            "POST",
            "/contacts",
            &[("Idempotency-Key", key)],
            Some(json!({ "name": key })),
        )
        .await;
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body["data"]["name"], key.as_str());
    }
    assert_eq!(server.records("contacts").len(), 20);
    assert_eq!(server.creates_performed(), 20);
}

#[tokio::test]
async fn injected_errors_change_nothing_and_come_at_their_rates() {
    let server = SaasServer::start(SaasConfig {
        faults: Faults {
            p_5xx: 1.0,
            ..Faults::default()
        },
        retry_after_secs: 7,
        ..server_config(vec![Collection::new("contacts", Pagination::Page)])
    })
    .await;
    let reply = call(&server, "POST", "/contacts", &[], Some(json!({}))).await;
    assert_eq!((reply.status, message(&reply)), (503, "injected failure"));
    server.set_faults(Faults {
        p_429: 1.0,
        ..Faults::default()
    });
    let reply = call(&server, "POST", "/contacts", &[], Some(json!({}))).await;
    assert_eq!((reply.status, reply.header("retry-after")), (429, Some("7")));
    assert_eq!(server.creates_performed(), 0);

    server.set_faults(Faults {
        p_5xx: 0.2,
        p_429: 0.1,
        p_drop: 0.0,
    });
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    for _ in 0..300 {
        *statuses
            .entry(get(&server, "/contacts").await.status)
            .or_default() += 1;
    }
    assert!((40..=80).contains(&statuses[&503]), "{statuses:?}");
    assert!((15..=45).contains(&statuses[&429]), "{statuses:?}");
    assert_eq!(statuses.values().sum::<u32>(), 300);
}

#[tokio::test]
async fn every_request_counts_against_the_limit_of_its_second() {
    let server = SaasServer::start(SaasConfig {
        rate_limit: Some(3),
        retry_after_secs: 2,
        ..server_config(vec![Collection::new("contacts", Pagination::Page)])
    })
    .await;
    // Well inside the server's first second.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = get(&server, "/contacts").await;
        if reply.status == 429 {
            assert_eq!(reply.header("retry-after"), Some("2"));
            assert_eq!(message(&reply), "rate limit exceeded");
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(server.per_second_counts(), [5]);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&server, "/contacts").await.status, 200);
    assert_eq!(server.per_second_counts(), [5, 1]);
    assert_eq!(server.requests(), 6);
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_but_keeps_its_records() {
    let server = SaasServer::start(server_config(vec![Collection::new("contacts", Pagination::Page)])).await;
    server.insert("contacts", json!({ "name": "Ada" }));
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err());
    assert_eq!(server.records("contacts").len(), 1);
}
