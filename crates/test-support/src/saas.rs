//! A fake SaaS REST API on a loopback port, so that the HTTP connector is
//! tested over real HTTP against the things real APIs do to a client:
//! bearer tokens, page- and cursor-style pagination, `updated_since`
//! change feeds, validation errors, idempotency keys, rate limits with
//! `Retry-After`, and injected failures.
//!
//! What it guarantees:
//! - Every record has a server-assigned `id` (`{id_prefix}_{n:06}`, or the
//!   number `n` in a collection with `numeric_ids`) and
//!   `updated_at` (RFC 3339 UTC with microseconds), strictly increasing
//!   across the server, so `(updated_at, id)` orders all changes.
//! - A list is sorted by `(updated_at, id)`; a cursor is that key of the
//!   last record returned (keyset pagination), so it stays valid while
//!   records change: a record changed behind the cursor shows up again
//!   further on, none ahead of it is skipped.
//! - Faults are drawn per received request from a seeded RNG, so a run is
//!   repeatable for a given order of requests. An injected drop closes the
//!   connection before any byte of the response is sent; half of the drops
//!   happen after the operation was performed, which is the case
//!   idempotency keys exist for.
//!
//! The inspection methods (`records`, `insert`, `update_direct`, ...) are
//! synchronous: they take the server's lock for a moment, never across an
//! await, and count no request.

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a collection's list endpoint pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pagination {
    /// `page` (1-based) and `per_page`; answers `page` and `has_more`.
    Page,
    /// `cursor` (opaque, absent = start) and `limit`; answers `next_cursor`
    /// (null on the last page).
    Cursor,
}

/// One collection (`/{name}`) and its validation rules.
#[derive(Clone, Debug)]
pub struct Collection {
    pub name: String,
    /// Ids are `{id_prefix}_{n:06}`.
    pub id_prefix: String,
    pub pagination: Pagination,
    /// Fields that must be present and non-null (422 otherwise).
    pub required: Vec<String>,
    /// `(field, substring)`: 422 when the field is a string without it.
    pub must_contain: Vec<(String, String)>,
    /// Ids are JSON numbers `n` instead (as many APIs' are).
    pub numeric_ids: bool,
}

impl Collection {
    /// A collection without rules whose id prefix is the name's first 3
    /// characters.
    pub fn new(name: impl Into<String>, pagination: Pagination) -> Collection {
        let name = name.into();
        Collection {
            id_prefix: name.chars().take(3).collect(),
            name,
            pagination,
            required: Vec::new(),
            must_contain: Vec::new(),
            numeric_ids: false,
        }
    }
}

/// Fractions of all received requests that fail; they are tried in this
/// order, so a sum above 1 starves the later ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// A 503, the operation not performed.
    pub p_5xx: f64,
    /// A 429 with `Retry-After`, the operation not performed.
    pub p_429: f64,
    /// The connection closed without a response; half of them after the
    /// operation was performed.
    pub p_drop: f64,
}

/// What the server holds and how it misbehaves; `Default` is no token, no
/// collections, no faults, no rate limit, `Retry-After: 1`, pages of 100.
#[derive(Clone, Debug)]
pub struct SaasConfig {
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub collections: Vec<Collection>,
    pub faults: Faults,
    /// Requests per whole second since start; more get a 429.
    pub rate_limit: Option<u32>,
    /// `Retry-After` on every 429.
    pub retry_after_secs: u64,
    /// The default and the largest `per_page` / `limit`.
    pub max_page_size: usize,
    /// Seeds the fault RNG.
    pub seed: u64,
    /// Like many APIs, take no notice of `Idempotency-Key`: a repeated
    /// create creates again unless the client looks first.
    pub ignore_idempotency_keys: bool,
}

impl Default for SaasConfig {
    fn default() -> SaasConfig {
        SaasConfig {
            token: None,
            collections: Vec::new(),
            faults: Faults::default(),
            rate_limit: None,
            retry_after_secs: 1,
            max_page_size: 100,
            seed: 0,
            ignore_idempotency_keys: false,
        }
    }
}

/// The running server. Dropping it (or [`SaasServer::stop`]) stops it.
pub struct SaasServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping the sender is the shutdown signal.
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SaasServer {
    /// Binds `127.0.0.1:0` and serves on a tokio task.
    ///
    /// Panics on two collections of one name.
    pub async fn start(config: SaasConfig) -> SaasServer {
        let mut collections = BTreeMap::new();
        for spec in &config.collections {
            let previous = collections.insert(spec.name.clone(), Records::new(spec.clone()));
            assert!(previous.is_none(), "two collections named {:?}", spec.name);
        }
        let shared = Arc::new(Shared {
            token: config.token,
            ignore_idempotency_keys: config.ignore_idempotency_keys,
            rate_limit: config.rate_limit,
            retry_after_secs: config.retry_after_secs,
            max_page_size: config.max_page_size.max(1),
            started: Instant::now(),
            db: Mutex::new(Db {
                collections,
                faults: config.faults,
                rng: SplitMix64(config.seed),
                last_stamp: None,
                requests: 0,
                per_second: Vec::new(),
                by_kind: BTreeMap::new(),
                touches: Vec::new(),
                creates_performed: 0,
            }),
        });
        let app = Router::new()
            .route("/{collection}", get(list).post(create))
            .route("/{collection}/{id}", get(read).patch(update).delete(remove))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
            .method_not_allowed_fallback(|| async {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            })
            .layer(middleware::from_fn_with_state(shared.clone(), gate))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake SaaS server");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        SaasServer {
            addr,
            shared,
            shutdown: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address, for raw clients.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, closes idle ones and waits (up to a
    /// second) for requests in flight. The inspection methods keep working.
    pub async fn stop(&self) {
        drop(self.shutdown.lock().unwrap().take());
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// The collection's records, sorted by id. Panics on an unknown
    /// collection.
    pub fn records(&self, collection: &str) -> Vec<Value> {
        let db = self.shared.db();
        db.collection(collection)
            .records
            .values()
            .map(|r| Value::Object(r.fields.clone()))
            .collect()
    }

    /// Seeds a record as the SaaS's own data would be (no validation, no
    /// request counted) and returns it with its id and updated_at.
    pub fn insert(&self, collection: &str, fields: Value) -> Value {
        let mut db = self.shared.db();
        let fields = object(fields, "insert");
        db.check_collection(collection);
        db.create(collection, fields)
    }

    /// A person's edit in the SaaS's UI: sets the fields (null sets null),
    /// bumps updated_at, validates nothing. Panics on a missing record.
    pub fn update_direct(&self, collection: &str, id: &str, fields: Value) -> Value {
        let mut db = self.shared.db();
        let fields = object(fields, "update_direct");
        db.check_collection(collection);
        db.update(collection, id, fields)
            .unwrap_or_else(|| panic!("update_direct: no record {collection}/{id}"))
    }

    /// Edits `collection/id` (a new `updated_at`, moving it to the end of
    /// a change listing) when the server receives its `request`th request
    /// (counted from its start), before answering it.
    pub fn touch_at_request(&self, request: u64, collection: &str, id: &str) {
        self.shared
            .db()
            .touches
            .push((request, collection.to_owned(), id.to_owned()));
    }

    /// A person's delete in the SaaS's UI. Panics on a missing record.
    pub fn delete_direct(&self, collection: &str, id: &str) {
        let mut db = self.shared.db();
        let removed = db.collection_mut(collection).records.remove(id);
        assert!(removed.is_some(), "delete_direct: no record {collection}/{id}");
    }

    /// Requests received, whatever their answer.
    pub fn requests(&self) -> u64 {
        self.shared.db().requests
    }

    /// Requests received in each whole second since start (index = second),
    /// up to the last second that had one.
    /// Requests received by method and kind: `GET list`, `GET item`,
    /// `POST list`, `PATCH item`, `DELETE item`.
    pub fn requests_by_kind(&self) -> BTreeMap<String, u64> {
        self.shared.db().by_kind.clone()
    }

    pub fn per_second_counts(&self) -> Vec<u32> {
        self.shared.db().per_second.clone()
    }

    /// Applies to requests received from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.db().faults = faults;
    }

    /// Records created by `POST` (an idempotent replay and `insert` are not
    /// creates).
    pub fn creates_performed(&self) -> u64 {
        self.shared.db().creates_performed
    }
}

/// What the handlers share: the fixed configuration and the data.
struct Shared {
    token: Option<String>,
    ignore_idempotency_keys: bool,
    rate_limit: Option<u32>,
    retry_after_secs: u64,
    max_page_size: usize,
    started: Instant,
    db: Mutex<Db>,
}

impl Shared {
    fn db(&self) -> MutexGuard<'_, Db> {
        // A panicking test must not turn every later lock into a panic too.
        self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn too_many(&self, message: &str) -> Response {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_secs));
        response
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        given
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, value)| scheme.eq_ignore_ascii_case("bearer") && value == token)
    }
}

/// What the fault RNG decided for one request.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    ServerError,
    TooMany,
    DropBefore,
    DropAfter,
}

/// Counts, rate-limits, injects faults and authenticates every request
/// before a handler sees it.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (fault, limited) = {
        let mut db = shared.db();
        db.requests += 1;
        let segments = request.uri().path().trim_matches('/').split('/').count();
        let kind = format!(
            "{} {}",
            request.method(),
            if segments > 1 { "item" } else { "list" }
        );
        *db.by_kind.entry(kind).or_default() += 1;
        // A person's edit that lands while a client is paging.
        if let Some(i) = db.touches.iter().position(|(n, _, _)| *n == db.requests) {
            let (_, collection, id) = db.touches.remove(i);
            db.update(&collection, &id, Map::new());
        }
        let second = shared.started.elapsed().as_secs() as usize;
        if db.per_second.len() <= second {
            db.per_second.resize(second + 1, 0);
        }
        let before = db.per_second[second];
        db.per_second[second] += 1;
        // Drawn for every request, so the faults are fractions of all of them.
        (db.draw(), shared.rate_limit.is_some_and(|n| before >= n))
    };
    if limited {
        return shared.too_many("rate limit exceeded");
    }
    match fault {
        Fault::ServerError => return error(StatusCode::SERVICE_UNAVAILABLE, "injected failure"),
        Fault::TooMany => return shared.too_many("injected rate limit"),
        Fault::DropBefore => return dropped(),
        Fault::None | Fault::DropAfter => {}
    }
    if !shared.authorized(request.headers()) {
        return match fault {
            Fault::DropAfter => dropped(),
            _ => error(StatusCode::UNAUTHORIZED, "invalid or missing bearer token"),
        };
    }
    let response = next.run(request).await;
    if fault == Fault::DropAfter {
        dropped()
    } else {
        response
    }
}

/// A response whose body fails on its first poll: hyper has then only
/// buffered the head, so it closes the connection without sending a byte
/// and the client sees the connection end before a response.
fn dropped() -> Response {
    struct Dropped;
    impl HttpBody for Dropped {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "injected connection drop",
            ))))
        }
    }
    Response::new(Body::new(Dropped))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": { "message": message } }))).into_response()
}

fn data(status: StatusCode, record: Value) -> Response {
    (status, axum::Json(json!({ "data": record }))).into_response()
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path(collection): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "query: malformed");
    };
    let db = shared.db();
    let Some(records) = db.collections.get(&collection) else {
        return error(StatusCode::NOT_FOUND, "no such collection");
    };
    let since = match query
        .get("updated_since")
        .map(|s| DateTime::parse_from_rfc3339(s))
    {
        None => None,
        Some(Ok(since)) => Some(since.with_timezone(&Utc)),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "updated_since: not an RFC 3339 time"),
    };
    let external_id = query.get("external_id");
    let mut matching: Vec<&Stored> = records
        .records
        .values()
        .filter(|r| since.is_none_or(|since| r.stamp >= since))
        .filter(|r| external_id.is_none_or(|wanted| r.external_id_is(wanted)))
        .collect();
    matching.sort_by(|a, b| a.key().cmp(&b.key()));
    match records.spec.pagination {
        Pagination::Page => {
            let page = match positive(&query, "page", 1) {
                Ok(page) => page,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let per_page = match positive(&query, "per_page", shared.max_page_size) {
                Ok(n) => n.min(shared.max_page_size),
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let start = (page - 1).saturating_mul(per_page).min(matching.len());
            let end = start.saturating_add(per_page).min(matching.len());
            json_response(json!({
                "data": matching[start..end].iter().map(|r| &r.fields).collect::<Vec<_>>(),
                "page": page,
                "has_more": end < matching.len(),
            }))
        }
        Pagination::Cursor => {
            let limit = match positive(&query, "limit", shared.max_page_size) {
                Ok(n) => n.min(shared.max_page_size),
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let after = match query.get("cursor").map(|c| decode_cursor(c)) {
                None => None,
                Some(Some(key)) => Some(key),
                Some(None) => return error(StatusCode::BAD_REQUEST, "cursor: invalid"),
            };
            let rest: Vec<&Stored> = matching
                .into_iter()
                .filter(|r| {
                    after
                        .as_ref()
                        .is_none_or(|(stamp, id)| r.key() > (*stamp, id.as_str()))
                })
                .collect();
            let page = &rest[..limit.min(rest.len())];
            let next_cursor = match page.last() {
                Some(last) if rest.len() > page.len() => Value::String(encode_cursor(last)),
                _ => Value::Null,
            };
            json_response(json!({
                "data": page.iter().map(|r| &r.fields).collect::<Vec<_>>(),
                "next_cursor": next_cursor,
            }))
        }
    }
}

fn json_response(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// A positive integer query parameter, or its default when absent; `Err`
/// is the message of a 400.
fn positive(query: &HashMap<String, String>, name: &str, default: usize) -> Result<usize, String> {
    match query.get(name).map(|v| v.parse::<usize>()) {
        None => Ok(default),
        Some(Ok(n)) if n >= 1 => Ok(n),
        Some(_) => Err(format!("{name}: must be a positive integer")),
    }
}

fn encode_cursor(last: &Stored) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", stamp_text(last.stamp), last.id()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (stamp, id) = text.split_once('|')?;
    let stamp = DateTime::parse_from_rfc3339(stamp).ok()?.with_timezone(&Utc);
    Some((stamp, id.to_owned()))
}

async fn read(State(shared): State<Arc<Shared>>, Path((collection, id)): Path<(String, String)>) -> Response {
    let db = shared.db();
    let Some(records) = db.collections.get(&collection) else {
        return error(StatusCode::NOT_FOUND, "no such collection");
    };
    match records.records.get(&id) {
        Some(record) => data(StatusCode::OK, Value::Object(record.fields.clone())),
        None => error(StatusCode::NOT_FOUND, "no such record"),
    }
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut db = shared.db();
    let Some(records) = db.collections.get(&collection) else {
        return error(StatusCode::NOT_FOUND, "no such collection");
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        _ if shared.ignore_idempotency_keys => None,
        None => None,
        Some(Ok(key)) => Some(key.to_owned()),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "Idempotency-Key: not visible ASCII"),
    };
    if let Some(original) = key.as_ref().and_then(|k| records.replies.get(k)) {
        let mut response = data(StatusCode::CREATED, original.clone());
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return response;
    }
    let fields = match body_object(&body) {
        Ok(fields) => fields,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Err(message) = records.spec.validate(&fields) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
    }
    let record = db.create(&collection, fields);
    db.creates_performed += 1;
    if let Some(key) = key {
        db.collection_mut(&collection).replies.insert(key, record.clone());
    }
    data(StatusCode::CREATED, record)
}

async fn update(
    State(shared): State<Arc<Shared>>,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut db = shared.db();
    let Some(records) = db.collections.get(&collection) else {
        return error(StatusCode::NOT_FOUND, "no such collection");
    };
    let Some(existing) = records.records.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such record");
    };
    let patch = match body_object(&body) {
        Ok(patch) => patch,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut merged = existing.fields.clone();
    merged.extend(patch.clone());
    if let Err(message) = records.spec.validate(&merged) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
    }
    let record = db.update(&collection, &id, patch).expect("checked above");
    data(StatusCode::OK, record)
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    Path((collection, id)): Path<(String, String)>,
) -> Response {
    let mut db = shared.db();
    let Some(records) = db.collections.get_mut(&collection) else {
        return error(StatusCode::NOT_FOUND, "no such collection");
    };
    match records.records.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "no such record"),
    }
}

/// The body as a JSON object without the fields only the server sets; `Err`
/// is the message of a 400.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut fields)) => {
            fields.remove("id");
            fields.remove("updated_at");
            Ok(fields)
        }
        Ok(_) => Err("body: must be a JSON object".into()),
        Err(e) => Err(format!("body: not JSON: {e}")),
    }
}

/// The whole data of the server, behind one lock.
struct Db {
    collections: BTreeMap<String, Records>,
    faults: Faults,
    rng: SplitMix64,
    last_stamp: Option<DateTime<Utc>>,
    requests: u64,
    per_second: Vec<u32>,
    /// Requests by method and kind (`GET list`, `GET item`, `POST list`, ...).
    by_kind: BTreeMap<String, u64>,
    /// (request number, collection, id): records edited when that request
    /// arrives, before it is answered.
    touches: Vec<(u64, String, String)>,
    creates_performed: u64,
}

impl Db {
    fn draw(&mut self) -> Fault {
        let u = self.rng.next_f64();
        let Faults { p_5xx, p_429, p_drop } = self.faults;
        let edges = [
            (p_5xx, Fault::ServerError),
            (p_429, Fault::TooMany),
            (p_drop / 2.0, Fault::DropBefore),
            (p_drop / 2.0, Fault::DropAfter),
        ];
        let mut edge = 0.0;
        for (p, fault) in edges {
            edge += p;
            if u < edge {
                return fault;
            }
        }
        Fault::None
    }

    /// Now at microsecond precision, and always later than the last stamp.
    fn next_stamp(&mut self) -> DateTime<Utc> {
        let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now");
        let stamp = match self.last_stamp {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.last_stamp = Some(stamp);
        stamp
    }

    fn check_collection(&self, name: &str) {
        self.collection(name);
    }

    fn collection(&self, name: &str) -> &Records {
        self.collections
            .get(name)
            .unwrap_or_else(|| panic!("the fake SaaS has no collection {name:?}"))
    }

    fn collection_mut(&mut self, name: &str) -> &mut Records {
        self.collections
            .get_mut(name)
            .unwrap_or_else(|| panic!("the fake SaaS has no collection {name:?}"))
    }

    /// Stores a new record of an existing collection and returns it.
    fn create(&mut self, collection: &str, mut fields: Map<String, Value>) -> Value {
        let stamp = self.next_stamp();
        let records = self.collection_mut(collection);
        records.next_n += 1;
        let (id, value) = if records.spec.numeric_ids {
            (records.next_n.to_string(), Value::from(records.next_n))
        } else {
            let id = format!("{}_{:06}", records.spec.id_prefix, records.next_n);
            (id.clone(), Value::String(id))
        };
        fields.insert("id".into(), value);
        fields.insert("updated_at".into(), Value::String(stamp_text(stamp)));
        let record = Value::Object(fields.clone());
        records.records.insert(id, Stored { stamp, fields });
        record
    }

    /// Sets fields of an existing record and bumps its updated_at; `None`
    /// when there is no such record.
    fn update(&mut self, collection: &str, id: &str, patch: Map<String, Value>) -> Option<Value> {
        self.collection(collection).records.get(id)?;
        let stamp = self.next_stamp();
        let record = self.collection_mut(collection).records.get_mut(id)?;
        for (field, value) in patch {
            if field != "id" && field != "updated_at" {
                record.fields.insert(field, value);
            }
        }
        record.stamp = stamp;
        record
            .fields
            .insert("updated_at".into(), Value::String(stamp_text(stamp)));
        Some(Value::Object(record.fields.clone()))
    }
}

/// One collection's records by id, and the replies to its idempotency keys.
struct Records {
    spec: Collection,
    records: BTreeMap<String, Stored>,
    next_n: u64,
    replies: HashMap<String, Value>,
}

impl Records {
    fn new(spec: Collection) -> Records {
        Records {
            spec,
            records: BTreeMap::new(),
            next_n: 0,
            replies: HashMap::new(),
        }
    }
}

impl Collection {
    /// The first rule the record breaks, as `"<field>: <what is wrong>"`.
    fn validate(&self, fields: &Map<String, Value>) -> Result<(), String> {
        for field in &self.required {
            if fields.get(field).is_none_or(Value::is_null) {
                return Err(format!("{field}: is required"));
            }
        }
        for (field, part) in &self.must_contain {
            if let Some(Value::String(value)) = fields.get(field)
                && !value.contains(part.as_str())
            {
                return Err(format!("{field}: must contain {part:?}"));
            }
        }
        Ok(())
    }
}

/// A stored record: its fields (with id and updated_at) and its stamp.
struct Stored {
    stamp: DateTime<Utc>,
    fields: Map<String, Value>,
}

impl Stored {
    fn id(&self) -> &str {
        match &self.fields["id"] {
            Value::Number(n) => n.as_str(),
            id => id.as_str().expect("id is a string or a number"),
        }
    }

    /// The list order.
    fn key(&self) -> (DateTime<Utc>, &str) {
        (self.stamp, self.id())
    }

    fn external_id_is(&self, wanted: &str) -> bool {
        match self.fields.get("external_id") {
            Some(Value::String(s)) => s == wanted,
            Some(Value::Null) | None => false,
            // A number or a boolean matches its JSON text.
            Some(other) => serde_json::from_str::<Value>(wanted).is_ok_and(|w| w == *other),
        }
    }
}

fn stamp_text(stamp: DateTime<Utc>) -> String {
    stamp.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn object(fields: Value, what: &str) -> Map<String, Value> {
    match fields {
        Value::Object(mut fields) => {
            fields.remove("id");
            fields.remove("updated_at");
            fields
        }
        other => panic!("{what}: fields must be a JSON object, not {other}"),
    }
}

/// SplitMix64: tiny, seedable (any seed, 0 included), good enough to draw
/// faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

// --- a CRM synced with this API ----------------------------------------------

/// The integration of [`crm_definition`].
pub const CRM_INTEGRATION: &str = "crm-to-saas";
/// The token [`crm_api`] wants.
pub const TOKEN: &str = "sk_test_4f9a";
/// The variable [`crm_definition`] names for the API token.
pub const TOKEN_VAR: &str = "SAAS_TOKEN";

/// The API's collections: customers and orders page by cursor, people by
/// page number; people need an email with an `@`.
pub fn crm_api(faults: Faults, rate_limit: Option<u32>) -> SaasConfig {
    let mut people = Collection::new("people", Pagination::Page);
    people.must_contain = vec![("email".into(), "@".into())];
    SaasConfig {
        token: Some(TOKEN.into()),
        collections: vec![
            Collection::new("customers", Pagination::Cursor),
            people,
            Collection::new("sales_orders", Pagination::Cursor),
        ],
        faults,
        rate_limit,
        seed: 7,
        ..SaasConfig::default()
    }
}

/// The definition: accounts, contacts and orders of the CRM as customers,
/// people and sales orders of the API, both ways. `system` and `entity`
/// add settings to the API system and to every entity.
pub fn crm_definition(source_url: &str, api_url: &str, system: &str, entity: &str) -> String {
    format!(
        r#"name = "{CRM_INTEGRATION}"
direction = "bidirectional"
source = "crm"
target = "saas"

[systems.crm]
connector = "sql"
url = "{source_url}"

[systems.saas]
connector = "http"
url = "{api_url}"
auth = {{ bearer_env = "{TOKEN_VAR}" }}
backoff = "20ms"
{system}
entities.account = {{ path = "/customers", pagination = "cursor", external_id_field = "external_id" }}
entities.contact = {{ path = "/people", has_more = "/has_more", external_id_field = "external_id" }}
entities.order = {{ path = "/sales_orders", pagination = "cursor", external_id_field = "external_id" }}

[[entities]]
name = "account"
source_table = "accounts"
target_table = "customers"
{entity}
[entities.fields]
name = {{ source = "name", target = "customer_name" }}
industry = "industry"
parent_id = {{ references = "account" }}

[[entities]]
name = "contact"
source_table = "contacts"
target_table = "people"
{entity}
[entities.fields]
name = {{ source = "name", target = "full_name" }}
email = "email"
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}

[[entities]]
name = "order"
source_table = "orders"
target_table = "sales_orders"
{entity}
[entities.fields]
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
contact_id = {{ references = "contact" }}
total = "total"
status = "status"

[tenants.t1]
"#
    )
}
