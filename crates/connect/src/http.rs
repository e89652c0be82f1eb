//! The HTTP/JSON connector: REST APIs as systems.
//!
//! Each entity type is a collection (`[systems.NAME.entities.ENTITY]`):
//! a list endpoint filtered by an `updated since` parameter and paged by
//! page number or cursor, and one endpoint per record for get, update and
//! delete. The client is built to meet real APIs: timeouts, retries with
//! exponential backoff and jitter on network errors, 5xx and 429 (honouring
//! `Retry-After`), a rate limit per system shared by every step of the
//! process, and an `Idempotency-Key` on every create.
//!
//! A list must return records oldest change first (`updated_at`, then id),
//! as APIs built for sync do (a `query` setting can ask for the order). The
//! scan position remembers the listing it is in (a cursor token, or the time
//! a numbered listing went on from), so a long listing is not re-read from
//! its start for every engine page.

use super::{BadRow, ChangePage, ConnectorError, Cursor, IdKind, NewRecord, TableBinding};
use super::{ByIds, format_time, id_text, parse_time};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use syncd_core::record::{Fields, Record};
use syncd_core::workflow::{HttpAuth, HttpResource, HttpSystem, Pagination, SystemDef};

/// An API whose collections are synced.
#[derive(Clone)]
pub struct HttpConnector {
    inner: Arc<Inner>,
}

struct Inner {
    system: String,
    /// The base URL, without a trailing slash.
    base: String,
    client: reqwest::Client,
    auth: Option<(HeaderName, HeaderValue)>,
    /// Where the credentials come from, for messages.
    auth_hint: String,
    limiter: Option<Arc<RateLimiter>>,
    settings: HttpSystem,
    /// Set by the first 401 or 403: later calls fail at once, so that a
    /// wrong token costs one round of requests, not a retry storm.
    refused: Mutex<Option<String>>,
}

/// Paces requests to one system: at most one every `interval`, across every
/// task of the process that calls it.
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<tokio::time::Instant>,
}

/// syncd paces a little under the configured rate, so that the jitter of
/// the network never pushes one of the API's seconds over its limit.
const RATE_MARGIN: f64 = 0.96;

impl RateLimiter {
    /// The limiter of the API at `base` allowing `per_second` requests: one
    /// per process, shared by every connector to it.
    pub fn shared(base: &str, per_second: f64) -> Arc<RateLimiter> {
        type Registry = HashMap<(String, u64), Arc<RateLimiter>>;
        static LIMITERS: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);
        let mut all = LIMITERS.lock().expect("rate limiter registry");
        all.entry((base.to_owned(), per_second.to_bits()))
            .or_insert_with(|| {
                Arc::new(RateLimiter {
                    interval: Duration::from_secs_f64(1.0 / (per_second * RATE_MARGIN)),
                    next: Mutex::new(tokio::time::Instant::now()),
                })
            })
            .clone()
    }

    /// Waits for the next free slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().expect("rate limiter");
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// One attempt's outcome.
enum Sent {
    Final(Reply),
    Transient {
        problem: String,
        wait: Option<Duration>,
        /// Whether the API may have performed the request all the same.
        maybe_done: bool,
    },
}

/// What an API answered, once retries are over: a status that is final.
struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    /// The API's own words for an error: the usual places for a message,
    /// else the body itself.
    fn message(&self) -> String {
        for p in [
            "/error/message",
            "/message",
            "/error",
            "/detail",
            "/errors/0/message",
            "/title",
        ] {
            if let Some(Value::String(s)) = self.body.pointer(p) {
                return s.clone();
            }
        }
        let text = match &self.body {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let text: String = text.chars().take(300).collect();
        if text.is_empty() {
            self.status.to_string()
        } else {
            text
        }
    }
}

/// Where a change scan is, kept in the cursor's `id`: the last record's id,
/// and the listing it came from (its `since` value and the page or cursor
/// token of the page that holds it). `since` is empty once a listing ended:
/// the next scan starts a new one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ScanPos {
    id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<Value>,
}

/// (modification time, id) of a listed record, the order lists are in.
type ListKey = (DateTime<Utc>, String);

fn compare_keys(a: &ListKey, b: &ListKey) -> Ordering {
    a.0.cmp(&b.0)
        .then_with(|| match (a.1.parse::<i64>(), b.1.parse::<i64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.1.cmp(&b.1),
        })
}

/// A value as text for a URL: strings as they are, numbers printed.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One random number in [0, 1), for jitter.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as seconds or as an HTTP date; capped at two minutes.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = v.parse::<f64>() {
        Duration::from_secs_f64(secs.max(0.0))
    } else {
        let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (at - Utc::now()).to_std().unwrap_or_default()
    };
    Some(wait.min(Duration::from_secs(120)))
}

impl HttpConnector {
    /// A connector to the API of `system` at `url`; the credentials are read
    /// from the environment variable the definition names.
    pub fn connect(
        system: &SystemDef,
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<HttpConnector, ConnectorError> {
        let config = |reason: String| ConnectorError::Config {
            system: system.name.clone(),
            reason,
        };
        let settings = system
            .http
            .clone()
            .ok_or_else(|| config("no HTTP settings".into()))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(config(format!(
                "URL `{}` is not an API's address (expected http://... or https://...)",
                super::redacted(url)
            )));
        }
        let secret = |var: &str| {
            env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                config(format!(
                    "the API credentials are read from ${var}, which is not set"
                ))
            })
        };
        let header = |name: &str, value: String| -> Result<(HeaderName, HeaderValue), ConnectorError> {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| config(format!("`{name}` is not an HTTP header name")))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| config("the credentials hold characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            Ok((name, value))
        };
        let (auth, auth_hint) = match &settings.auth {
            HttpAuth::None => (None, "the API's authentication settings".to_owned()),
            HttpAuth::Bearer { env } => (
                Some(header("authorization", format!("Bearer {}", secret(env)?))?),
                format!("the token in ${env}"),
            ),
            HttpAuth::Header { header: name, env } => {
                (Some(header(name, secret(env)?)?), format!("the key in ${env}"))
            }
        };
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(settings.concurrency)
            .user_agent(concat!("syncd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config(format!("cannot build an HTTP client: {e}")))?;
        let base = url.trim_end_matches('/').to_owned();
        let limiter = settings.rate_limit.map(|r| RateLimiter::shared(&base, r));
        Ok(HttpConnector {
            inner: Arc::new(Inner {
                system: system.name.clone(),
                base,
                client,
                auth,
                auth_hint,
                limiter,
                settings,
                refused: Mutex::new(None),
            }),
        })
    }

    /// The system's name in the definition.
    pub fn system(&self) -> &str {
        &self.inner.system
    }

    /// The collection of `entity`.
    /// Whether the collection of `entity` has numeric ids (`id_type`);
    /// `None` when the definition does not say.
    pub fn numeric_ids(&self, entity: &str) -> Option<bool> {
        self.resource(entity).ok().and_then(|r| r.numeric_ids)
    }

    fn resource(&self, entity: &str) -> Result<&HttpResource, ConnectorError> {
        self.inner
            .settings
            .resources
            .get(entity)
            .ok_or_else(|| ConnectorError::Config {
                system: self.inner.system.clone(),
                reason: format!("no collection is configured for entity `{entity}`"),
            })
    }

    /// The fields a collection's records have, as columns: those the
    /// definition lists for it and those its field map names (`named`).
    pub fn columns(&self, entity: &str, named: &[&str]) -> Result<BTreeMap<String, String>, ConnectorError> {
        let r = self.resource(entity)?;
        let own = [
            Some(r.id_field.as_str()),
            Some(r.updated_field.as_str()),
            r.external_id_field.as_deref(),
        ];
        Ok(r.fields
            .iter()
            .map(String::as_str)
            .chain(named.iter().copied())
            .filter(|f| !own.contains(&Some(*f)))
            .map(|f| (f.to_owned(), "json".to_owned()))
            .collect())
    }

    /// The binding of `entity`'s collection: ids are the API's to assign,
    /// and the external-id field finds an interrupted create again.
    pub fn binding(
        &self,
        entity: &str,
        columns: BTreeMap<String, String>,
        fields: Vec<super::FieldColumn>,
        deleted_column: Option<String>,
    ) -> Result<TableBinding, ConnectorError> {
        let r = self.resource(entity)?;
        Ok(TableBinding {
            system: self.inner.system.clone(),
            entity: entity.to_owned(),
            table: r.path.clone(),
            id_kind: IdKind::Assigned,
            fields,
            key_column: r.external_id_field.clone(),
            deleted_column,
            column_types: columns,
        })
    }

    /// Sends one request and classifies the answer: final, or transient
    /// (network errors, 5xx, 408, 429) with the API's `Retry-After`. A 401
    /// or 403 is an error at once, and later calls fail without a request.
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Sent, ConnectorError> {
        let inner = &self.inner;
        if let Some(detail) = inner.refused.lock().expect("refusal").clone() {
            return Err(ConnectorError::Unauthorized {
                system: inner.system.clone(),
                detail,
            });
        }
        if let Some(l) = &inner.limiter {
            l.acquire().await;
        }
        let mut request = inner
            .client
            .request(method.clone(), format!("{}{}", inner.base, path))
            .query(query);
        if let Some((name, value)) = &inner.auth {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Ok(Sent::Transient {
                    problem: format!("{e}"),
                    wait: None,
                    maybe_done: true,
                });
            }
        };
        let status = response.status();
        let wait = retry_after(response.headers());
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            // The answer was cut off: as if never answered.
            Err(e) => {
                return Ok(Sent::Transient {
                    problem: format!("{status}, then the answer broke off: {e}"),
                    wait: None,
                    maybe_done: true,
                });
            }
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let reply = Reply { status, body };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = format!(
                "{status} on {method} {path}: {}; check {}",
                reply.message(),
                inner.auth_hint
            );
            *inner.refused.lock().expect("refusal") = Some(detail.clone());
            return Err(ConnectorError::Unauthorized {
                system: inner.system.clone(),
                detail,
            });
        }
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Ok(Sent::Transient {
                problem: format!("{status}: {}", reply.message()),
                wait,
                // A 429 was not performed; a 5xx or 408 may have been.
                maybe_done: status != StatusCode::TOO_MANY_REQUESTS,
            });
        }
        Ok(Sent::Final(reply))
    }

    /// Waits before attempt `attempt + 1`, or says the call gave up.
    async fn back_off(
        &self,
        attempt: u32,
        method: &Method,
        path: &str,
        problem: &str,
        wait: Option<Duration>,
    ) -> Result<(), ConnectorError> {
        let inner = &self.inner;
        if attempt >= inner.settings.retries {
            return Err(ConnectorError::Unavailable {
                system: inner.system.clone(),
                request: format!("{method} {path}"),
                detail: format!("gave up after {} attempts; last: {problem}", attempt + 1),
            });
        }
        let backoff = inner.settings.backoff.saturating_mul(1 << attempt.min(16));
        let backoff = backoff.min(Duration::from_secs(30)).mul_f64(0.5 + jitter() / 2.0);
        let wait = wait.map_or(backoff, |w| w + backoff.mul_f64(0.1));
        tracing::debug!(system = %inner.system, request = %format!("{method} {path}"), %problem, ?wait, "retrying");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sends one request, retrying transient failures with exponential
    /// backoff and jitter (or the API's `Retry-After`); answers the first
    /// final status.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ConnectorError> {
        let mut attempt = 0u32;
        loop {
            match self.send_once(&method, path, query, body, None).await? {
                Sent::Final(reply) => return Ok(reply),
                Sent::Transient { problem, wait, .. } => {
                    self.back_off(attempt, &method, path, &problem, wait).await?;
                    attempt += 1;
                }
            }
        }
    }

    /// An answer that is neither success nor a record's own fault.
    fn unexpected(&self, method: &str, path: &str, reply: &Reply) -> ConnectorError {
        ConnectorError::Http {
            system: self.inner.system.clone(),
            request: format!("{method} {path}"),
            detail: format!("{}: {}", reply.status, reply.message()),
        }
    }

    /// Runs `calls` with the system's concurrency; answers in order. Calls
    /// finish in any order, so one waiting out a `Retry-After` holds up
    /// only its own slot.
    async fn each<Fut: std::future::Future>(&self, calls: Vec<Fut>) -> Vec<Fut::Output> {
        let mut answers: Vec<(usize, Fut::Output)> = futures_util::stream::iter(
            calls
                .into_iter()
                .enumerate()
                .map(|(i, call)| async move { (i, call.await) }),
        )
        .buffer_unordered(self.inner.settings.concurrency)
        .collect()
        .await;
        answers.sort_unstable_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, a)| a).collect()
    }

    fn item_path(r: &HttpResource, id: &str) -> String {
        r.item_path.replace("{id}", &url_segment(id))
    }

    /// One page of a listing at `at` (a page number or a cursor token).
    async fn list_page(
        &self,
        r: &HttpResource,
        filters: &[(String, String)],
        at: Option<&Value>,
    ) -> Result<(Vec<Value>, Option<Value>), ConnectorError> {
        let mut query: Vec<(String, String)> = r.query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        query.extend(filters.iter().cloned());
        let size = r.page_size.to_string();
        match &r.pagination {
            Pagination::Page {
                page_param,
                size_param,
                ..
            } => {
                let page = at.and_then(Value::as_u64).unwrap_or(1);
                query.push((page_param.clone(), page.to_string()));
                query.push((size_param.clone(), size));
            }
            Pagination::Cursor {
                cursor_param,
                size_param,
                ..
            } => {
                if let Some(token) = at {
                    query.push((cursor_param.clone(), value_text(token)));
                }
                query.push((size_param.clone(), size));
            }
        }
        let mut reply = self.call(Method::GET, &r.path, &query, None).await?;
        if !reply.status.is_success() {
            return Err(self.unexpected("GET", &r.path, &reply));
        }
        let items = match reply.body.pointer_mut(&r.records).map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) => Vec::new(),
            _ => {
                return Err(ConnectorError::Http {
                    system: self.inner.system.clone(),
                    request: format!("GET {}", r.path),
                    detail: format!("the answer has no array of records at `{}`", r.records),
                });
            }
        };
        let next = match &r.pagination {
            Pagination::Page { has_more, .. } => {
                let page = at.and_then(Value::as_u64).unwrap_or(1);
                let more = match has_more {
                    Some(p) => reply.body.pointer(p).and_then(Value::as_bool).unwrap_or(false),
                    None => items.len() >= r.page_size as usize,
                };
                (more && !items.is_empty()).then(|| Value::from(page + 1))
            }
            Pagination::Cursor { next, .. } => match reply.body.pointer(next) {
                Some(Value::String(s)) if !s.is_empty() && !items.is_empty() => {
                    Some(Value::String(s.clone()))
                }
                Some(Value::Number(n)) if !items.is_empty() => Some(Value::Number(n.clone())),
                _ => None,
            },
        };
        Ok((items, next))
    }

    /// The listing key of an item, or why it has none.
    fn key_of(r: &HttpResource, item: &Value) -> Result<ListKey, BadRow> {
        let id = item.get(&r.id_field).and_then(id_text);
        let time = item.get(&r.updated_field).and_then(parse_time);
        match (id, time) {
            (Some(id), Some(t)) => Ok((t, id)),
            (Some(id), None) => Err(BadRow {
                id,
                reason: format!("field `{}` holds no readable time", r.updated_field),
            }),
            (None, _) => Err(BadRow {
                id: String::new(),
                reason: format!("a record without an id in field `{}`", r.id_field),
            }),
        }
    }

    /// An item as a record, each field converted to its kind; a value
    /// that is not of its field's kind makes the item bad.
    fn record_of(b: &TableBinding, item: &Value, key: ListKey) -> Result<Record, BadRow> {
        let mut fields = Fields::new();
        for f in &b.fields {
            let raw = item.get(&f.column).cloned().unwrap_or(Value::Null);
            let v = syncd_core::value::read(f.kind, f.class, raw).map_err(|why| BadRow {
                id: key.1.clone(),
                reason: format!(
                    "system `{}`, {} `{}`: entity `{}`, field `{}`: {why}",
                    b.system, b.table, key.1, b.entity, f.cdm
                ),
            })?;
            fields.insert(f.cdm.clone(), v);
        }
        Ok(Record {
            id: key.1,
            fields,
            modified_at: key.0,
        })
    }

    /// Reads up to `limit` records changed after `after`, oldest first.
    ///
    /// Numbered pages shift when an earlier record changes, so a listing by
    /// page number moves on by time whenever it can: the next request asks
    /// for records changed since the last one taken, from page 1; only a run
    /// of records sharing one time is walked by page number. A listing that
    /// starts anew (the next run) takes again the records that share the
    /// last one's time, in case one arrived after it with a smaller id.
    pub async fn read_changes(
        &self,
        b: &TableBinding,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<ChangePage, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let pos: Option<ScanPos> = after.map(|c| {
            serde_json::from_value(c.id.clone()).unwrap_or(ScanPos {
                id: c.id.clone(),
                ..Default::default()
            })
        });
        let mut last: Option<ListKey> = after.and_then(|c| {
            let pos = pos.as_ref()?;
            Some((parse_time(&c.updated_at)?, id_text(&pos.id)?))
        });
        // Continue the listing the position is in, or start one at the
        // last record's time (inclusive).
        let (mut since, mut at, mut fresh) = match (&pos, after) {
            (Some(p), _) if p.since.is_some() => (p.since.clone(), p.at.clone(), false),
            (_, Some(c)) if !c.updated_at.is_null() => (Some(value_text(&c.updated_at)), None, true),
            _ => (None, None, false),
        };
        let by_page = matches!(r.pagination, Pagination::Page { .. });
        let mut page = ChangePage::default();
        let mut next = after.cloned();
        let mut resuming = at.is_some();
        let mut previous: Option<ListKey> = None;
        let mut advanced = false;
        let mut taken = 0u32;
        loop {
            let filters: Vec<(String, String)> =
                since.iter().map(|s| (r.since_param.clone(), s.clone())).collect();
            let (items, following) = match self.list_page(r, &filters, at.as_ref()).await {
                // A saved cursor token the API no longer takes: start a new
                // listing at the last record's time.
                Err(ConnectorError::Http { .. }) if resuming && !by_page => {
                    tracing::warn!(system = %self.inner.system, entity = %b.entity,
                        "the saved list cursor was refused; listing again from the last change");
                    since = after.map(|c| value_text(&c.updated_at));
                    (at, resuming) = (None, false);
                    continue;
                }
                other => other?,
            };
            let first = items.first().and_then(|i| Self::key_of(r, i).ok());
            // After a change moved records, a numbered page may start after
            // the last record read: step back.
            if resuming
                && let (Some(n), Some(last), Some(first)) = (
                    at.as_ref().and_then(Value::as_u64).filter(|n| *n > 1),
                    &last,
                    &first,
                )
                && compare_keys(first, last) == Ordering::Greater
            {
                at = Some(Value::from(n - 1));
                continue;
            }
            resuming = false;
            // An API that ignores the page or cursor parameter answers the
            // same page again and again.
            let repeated = match (&r.pagination, &at) {
                (Pagination::Page { .. }, Some(_)) => first.is_some() && previous == first,
                (Pagination::Cursor { .. }, Some(token)) => following.as_ref() == Some(token),
                _ => false,
            };
            if repeated {
                return Err(ConnectorError::Http {
                    system: self.inner.system.clone(),
                    request: format!("GET {}", r.path),
                    detail: "the API answered the same page twice: check the collection's `pagination` \
                             settings against the API's parameters"
                        .into(),
                });
            }
            previous = first;
            for item in &items {
                let key = match Self::key_of(r, item) {
                    Ok(k) => k,
                    Err(bad) => {
                        page.bad.push(bad);
                        continue;
                    }
                };
                let seen = last.as_ref().is_some_and(|l| {
                    if fresh {
                        key.0 < l.0 || key == *l
                    } else {
                        compare_keys(&key, l) != Ordering::Greater
                    }
                });
                if seen {
                    continue;
                }
                // The position moves forward only: a record taken again at
                // the start of a new listing leaves it where it was.
                if last
                    .as_ref()
                    .is_none_or(|l| compare_keys(&key, l) == Ordering::Greater)
                {
                    next = Some(Cursor {
                        updated_at: item.get(&r.updated_field).cloned().unwrap_or(Value::Null),
                        id: serde_json::to_value(ScanPos {
                            id: Value::String(key.1.clone()),
                            since: since.clone(),
                            at: at.clone(),
                        })
                        .expect("positions serialize"),
                    });
                    last = Some(key.clone());
                    advanced = true;
                }
                if b.marked_deleted(|c| item.get(c)) {
                    page.deleted.push(key.1.clone());
                } else {
                    match Self::record_of(b, item, key) {
                        Ok(record) => page.records.push(record),
                        Err(bad) => page.bad.push(bad),
                    }
                }
                taken += 1;
                if taken == limit {
                    // The rest of this API page is read again next time,
                    // from the same position, and skipped up to here.
                    page.next = match (advanced, after, &pos) {
                        (false, Some(c), Some(p)) => Some(Cursor {
                            updated_at: c.updated_at.clone(),
                            id: serde_json::to_value(ScanPos {
                                id: p.id.clone(),
                                since: since.clone(),
                                at: at.clone(),
                            })
                            .expect("positions serialize"),
                        }),
                        _ => next,
                    };
                    dedupe(&mut page);
                    return Ok(page);
                }
            }
            fresh = false;
            match following {
                None => break,
                Some(n) => {
                    let moved_on = last.as_ref().filter(|l| {
                        since.as_ref().and_then(|s| parse_time(&Value::String(s.clone()))) < Some(l.0)
                    });
                    match moved_on {
                        // Go on by time, from page 1: numbered pages shift.
                        Some(l) if by_page => {
                            since = Some(
                                next.as_ref()
                                    .map(|c| value_text(&c.updated_at))
                                    .unwrap_or_else(|| format_time(l.0)),
                            );
                            at = None;
                        }
                        _ => at = Some(n),
                    }
                }
            }
        }
        // The listing ended: the next scan starts a new one.
        page.done = true;
        page.next = next.map(|mut c| {
            if let Ok(mut p) = serde_json::from_value::<ScanPos>(c.id.clone()) {
                p.since = None;
                p.at = None;
                c.id = serde_json::to_value(p).expect("positions serialize");
            }
            c
        });
        if page.records.is_empty() && page.deleted.is_empty() && after.is_none() {
            page.next = None;
        }
        dedupe(&mut page);
        Ok(page)
    }

    /// GETs each of `ids`: the items found, and ids gone (404 or 410).
    async fn get_each(&self, r: &HttpResource, ids: &[String]) -> Result<Vec<Option<Value>>, ConnectorError> {
        let answers = self
            .each(
                ids.iter()
                    .map(|id| async move {
                        let path = Self::item_path(r, id);
                        let mut reply = self.call(Method::GET, &path, &[], None).await?;
                        if reply.status == StatusCode::NOT_FOUND || reply.status == StatusCode::GONE {
                            return Ok(None);
                        }
                        if !reply.status.is_success() {
                            return Err(self.unexpected("GET", &path, &reply));
                        }
                        // A record not where the definition says is an
                        // error, never a record that is gone.
                        match reply.body.pointer_mut(&r.record).map(Value::take) {
                            Some(item @ Value::Object(_)) => Ok(Some(item)),
                            _ => Err(self.no_record("GET", &path, r)),
                        }
                    })
                    .collect(),
            )
            .await;
        answers.into_iter().collect()
    }

    /// The records with `ids`; ids that do not exist are absent.
    /// The records with `ids`. A record without a readable update time is
    /// still read (its time the Unix epoch), to be compared by value.
    pub async fn read_by_ids(&self, b: &TableBinding, ids: &[String]) -> Result<ByIds, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let mut found = ByIds::default();
        for item in self.get_each(r, ids).await?.into_iter().flatten() {
            if b.marked_deleted(|c| item.get(c)) {
                continue;
            }
            let key = match Self::key_of(r, &item) {
                Ok(key) => key,
                Err(bad) if !bad.id.is_empty() => (DateTime::UNIX_EPOCH, bad.id),
                Err(bad) => {
                    found.bad.push(bad);
                    continue;
                }
            };
            match Self::record_of(b, &item, key) {
                Ok(record) => found.records.push(record),
                Err(bad) => found.bad.push(bad),
            }
        }
        Ok(found)
    }

    /// Which of `ids` exist and are not marked deleted.
    pub async fn present(&self, b: &TableBinding, ids: &[String]) -> Result<HashSet<String>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let found = self.get_each(r, ids).await?;
        Ok(ids
            .iter()
            .zip(found)
            .filter(|(_, item)| item.as_ref().is_some_and(|i| !b.marked_deleted(|c| i.get(c))))
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// The body of a create or update: the fields under their API names.
    fn body_of(b: &TableBinding, fields: &Fields) -> serde_json::Map<String, Value> {
        b.fields
            .iter()
            .filter_map(|f| fields.get(&f.cdm).map(|v| (f.column.clone(), v.clone())))
            .collect()
    }

    /// The id of the record created earlier with `key`, found by the
    /// external-id field.
    async fn find_key(
        &self,
        r: &HttpResource,
        field: &str,
        key: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let filters = [(field.to_owned(), key.to_owned())];
        let (items, _) = self.list_page(r, &filters, None).await?;
        Ok(items
            .iter()
            .find(|i| i.get(field).and_then(id_text).as_deref() == Some(key))
            .and_then(|i| i.get(&r.id_field))
            .and_then(id_text))
    }

    /// Ids of records created earlier with each of `keys`, found by the
    /// external-id field (none without one).
    pub async fn find_by_keys(
        &self,
        b: &TableBinding,
        keys: &[String],
    ) -> Result<HashMap<String, String>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let Some(field) = &r.external_id_field else {
            return Ok(HashMap::new());
        };
        let found = self
            .each(
                keys.iter()
                    .map(|key| async move {
                        Ok::<_, ConnectorError>(
                            self.find_key(r, field, key).await?.map(|id| (key.clone(), id)),
                        )
                    })
                    .collect(),
            )
            .await;
        let mut out = HashMap::new();
        for f in found {
            out.extend(f?);
        }
        Ok(out)
    }

    /// An answer with no record where the definition says it is.
    fn no_record(&self, method: &str, path: &str, r: &HttpResource) -> ConnectorError {
        ConnectorError::Http {
            system: self.inner.system.clone(),
            request: format!("{method} {path}"),
            detail: format!(
                "the answer has no record (with field `{}`) at `{}`: check the collection's `record` and \
                 `id_field`",
                r.id_field, r.record
            ),
        }
    }

    /// Whether a 4xx is the record's own fault (the API refused its data),
    /// as opposed to the definition's or the system's (a wrong path or
    /// method), which stops the step.
    fn refused_record(status: StatusCode) -> bool {
        matches!(status.as_u16(), 400 | 409 | 412 | 413 | 422)
    }

    /// Creates one record: `POST` with its idempotency key, retried on
    /// transient failures. Before sending again a request the API may have
    /// performed (a dropped connection, a 5xx), it looks the record up by
    /// the external-id field, for APIs that do not honour the key.
    async fn create_one(
        &self,
        b: &TableBinding,
        r: &HttpResource,
        new: &NewRecord,
    ) -> Result<Result<String, String>, ConnectorError> {
        let mut body = Self::body_of(b, &new.fields);
        if let Some(field) = &r.external_id_field {
            body.insert(field.clone(), Value::String(new.key.clone()));
        }
        let body = Value::Object(body);
        let mut attempt = 0u32;
        let reply = loop {
            match self
                .send_once(&Method::POST, &r.path, &[], Some(&body), Some(&new.key))
                .await?
            {
                Sent::Final(reply) => break reply,
                Sent::Transient {
                    problem,
                    wait,
                    maybe_done,
                } => {
                    self.back_off(attempt, &Method::POST, &r.path, &problem, wait)
                        .await?;
                    attempt += 1;
                    if let (true, Some(field)) = (maybe_done, &r.external_id_field)
                        && let Some(id) = self.find_key(r, field, &new.key).await?
                    {
                        return Ok(Ok(id));
                    }
                }
            }
        };
        if Self::refused_record(reply.status) {
            return Ok(Err(format!("{}: {}", reply.status, reply.message())));
        }
        if !reply.status.is_success() {
            return Err(self.unexpected("POST", &r.path, &reply));
        }
        match reply
            .body
            .pointer(&r.record)
            .and_then(|rec| rec.get(&r.id_field))
            .and_then(id_text)
        {
            Some(id) => Ok(Ok(id)),
            None => Err(self.no_record("POST", &r.path, r)),
        }
    }

    /// Creates `records`, each with its idempotency key as `Idempotency-Key`
    /// (and in the external-id field), and answers each one's new id, or the
    /// API's reason when it refused that record's data (400, 409, 422...).
    pub async fn create(
        &self,
        b: &TableBinding,
        records: &[NewRecord],
    ) -> Result<Vec<Result<String, String>>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let answers = self
            .each(records.iter().map(|new| self.create_one(b, r, new)).collect())
            .await;
        answers.into_iter().collect()
    }

    /// Writes `fields` to each existing record; answers the records the API
    /// refused (their data, or gone), with its reason. With `PUT`, the
    /// record is read first and sent whole, so fields syncd does not sync
    /// keep their values.
    pub async fn update(
        &self,
        b: &TableBinding,
        records: &[(String, Fields)],
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let r = self.resource(&b.entity)?;
        let put = r.update_method == "PUT";
        let method = if put { Method::PUT } else { Method::PATCH };
        let answers = self
            .each(
                records
                    .iter()
                    .map(|(id, fields)| {
                        let method = method.clone();
                        async move {
                            let path = Self::item_path(r, id);
                            let mut body = Self::body_of(b, fields);
                            if put {
                                let Some(Some(Value::Object(mut whole))) =
                                    self.get_each(r, std::slice::from_ref(id)).await?.pop()
                                else {
                                    return Ok(Some((
                                        id.clone(),
                                        "404 Not Found: the record is gone".into(),
                                    )));
                                };
                                whole.append(&mut body);
                                body = whole;
                            }
                            let reply = self
                                .call(method.clone(), &path, &[], Some(&Value::Object(body)))
                                .await?;
                            if Self::refused_record(reply.status)
                                || reply.status == StatusCode::NOT_FOUND
                                || reply.status == StatusCode::GONE
                            {
                                return Ok(Some((
                                    id.clone(),
                                    format!("{}: {}", reply.status, reply.message()),
                                )));
                            }
                            if !reply.status.is_success() {
                                return Err(self.unexpected(method.as_str(), &path, &reply));
                            }
                            Ok(None)
                        }
                    })
                    .collect(),
            )
            .await;
        let mut refused = Vec::new();
        for a in answers {
            refused.extend(a?);
        }
        Ok(refused)
    }

    /// Deletes each of `ids`; one already gone counts as deleted.
    pub async fn delete(&self, b: &TableBinding, ids: &[String]) -> Result<(), ConnectorError> {
        let r = self.resource(&b.entity)?;
        let answers = self
            .each(
                ids.iter()
                    .map(|id| async move {
                        let path = Self::item_path(r, id);
                        let reply = self.call(Method::DELETE, &path, &[], None).await?;
                        if reply.status.is_success()
                            || reply.status == StatusCode::NOT_FOUND
                            || reply.status == StatusCode::GONE
                        {
                            Ok(())
                        } else {
                            Err(self.unexpected("DELETE", &path, &reply))
                        }
                    })
                    .collect(),
            )
            .await;
        answers.into_iter().collect()
    }

    /// Sets `field` to the time of archiving on each of `ids`.
    pub async fn archive(
        &self,
        b: &TableBinding,
        ids: &[String],
        field: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectorError> {
        let r = self.resource(&b.entity)?;
        let body = serde_json::json!({ field: format_time(now) });
        let answers = self
            .each(
                ids.iter()
                    .map(|id| {
                        let body = &body;
                        async move {
                            let path = Self::item_path(r, id);
                            let reply = self.call(Method::PATCH, &path, &[], Some(body)).await?;
                            if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
                                Ok(())
                            } else {
                                Err(self.unexpected("PATCH", &path, &reply))
                            }
                        }
                    })
                    .collect(),
            )
            .await;
        answers.into_iter().collect()
    }
}

/// A record listed twice in one page (changed while it was being listed,
/// so a keyset cursor shows it again) is kept once, as last seen.
fn dedupe(page: &mut ChangePage) {
    let mut seen = HashSet::new();
    let mut records: Vec<Record> = std::mem::take(&mut page.records)
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.id.clone()))
        .collect();
    records.reverse();
    page.records = records;
    let mut seen = HashSet::new();
    page.deleted.retain(|id| seen.insert(id.clone()));
}

/// Percent-encodes an id for one path segment.
fn url_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(url_segment("acc_000001"), "acc_000001");
        assert_eq!(url_segment("a/b?c=d"), "a%2Fb%3Fc%3Dd");
        assert_eq!(url_segment("é"), "%C3%A9");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past: retry now"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)), "capped");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn list_keys_order_numeric_ids_by_value() {
        let t = Utc::now();
        let k = |id: &str| (t, id.to_owned());
        assert_eq!(compare_keys(&k("9"), &k("10")), Ordering::Less);
        assert_eq!(compare_keys(&k("acc_9"), &k("acc_10")), Ordering::Greater);
        assert_eq!(
            compare_keys(&(t, "z".into()), &(t + chrono::Duration::seconds(1), "a".into())),
            Ordering::Less
        );
    }

    #[test]
    fn error_messages_are_found_where_apis_put_them() {
        let reply = |body| Reply {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body,
        };
        assert_eq!(
            reply(serde_json::json!({"error": {"message": "email: invalid"}})).message(),
            "email: invalid"
        );
        assert_eq!(reply(serde_json::json!({"message": "bad"})).message(), "bad");
        assert_eq!(reply(Value::Null).message(), "422 Unprocessable Entity");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_spaces_requests() {
        let limiter = RateLimiter::shared("http://limiter.test", 50.0);
        let start = tokio::time::Instant::now();
        for _ in 0..51 {
            limiter.acquire().await;
        }
        let took = start.elapsed();
        // 50 intervals of 1 / (50 * 0.96) s.
        assert!(
            took >= Duration::from_millis(1041) && took < Duration::from_millis(1050),
            "{took:?}"
        );
    }
}
