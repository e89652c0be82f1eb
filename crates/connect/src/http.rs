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

mod read;
mod request;
mod write;

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
        // One line in a log: an HTML error page's whitespace folded.
        let text: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(300)
            .collect();
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
            r.updated_field.as_deref(),
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
            tenant: None,
            stamp_like: None,
            mixed_layouts: false,
        })
    }

    fn item_path(r: &HttpResource, id: &str) -> String {
        r.item_path.replace("{id}", &url_segment(id))
    }
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
    use super::read::*;
    use super::request::*;
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
