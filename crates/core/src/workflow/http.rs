//! The part of a definition that describes a REST API system: how to reach
//! it (`[systems.NAME]`: auth, rate limit, timeouts) and, per entity type,
//! where its records live (`[systems.NAME.entities.ENTITY]`).
//!
//! Pure, like the rest of `workflow`: secrets are never in the file, only
//! the names of the environment variables that hold them.

use super::Errors;
use crate::deletes::parse_interval;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How requests to an API authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    None,
    /// `Authorization: Bearer <token>`, the token read from `env`.
    Bearer {
        env: String,
    },
    /// `<header>: <key>`, the key read from `env`.
    Header {
        header: String,
        env: String,
    },
}

/// How a list endpoint pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pagination {
    /// `?page=N&per_page=M`, numbered from 1; more pages while `has_more`
    /// (a JSON pointer) is true, or while pages are full when it is absent.
    Page {
        page_param: String,
        size_param: String,
        has_more: Option<String>,
    },
    /// `?cursor=TOKEN&limit=M`; the next token is at `next` (a JSON
    /// pointer), and null or absent at the end.
    Cursor {
        cursor_param: String,
        size_param: String,
        next: String,
    },
}

/// Where one entity type's records live in an API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResource {
    /// The collection path: `GET` lists, `POST` creates.
    pub path: String,
    /// The path of one record, with `{id}`; `GET`, update and `DELETE`.
    pub item_path: String,
    /// `PATCH` or `PUT`.
    pub update_method: String,
    /// JSON pointer to the array of records in a list answer.
    pub records: String,
    /// JSON pointer to the record in a get, create or update answer.
    pub record: String,
    pub id_field: String,
    /// The field holding a record's last modification time; `None` when the
    /// API keeps none (`updated_field = ""`): every scan then lists the
    /// whole collection, and changes are found by comparing values with the
    /// last synced ones.
    pub updated_field: Option<String>,
    /// The list parameter that asks for records changed at or after a time.
    pub since_param: String,
    pub pagination: Pagination,
    pub page_size: u32,
    /// Extra query parameters sent with every list request (a sort order).
    pub query: BTreeMap<String, String>,
    /// A field that creates carry the idempotency key in, and that the list
    /// can be filtered by, so that a create cut off by a crash is found
    /// again instead of made twice.
    pub external_id_field: Option<String>,
    /// The record's fields besides those the field map names.
    pub fields: Vec<String>,
    /// Whether the API's ids are JSON numbers (`id_type = "number"`) or
    /// strings (`"string"`): references to this collection's records are
    /// written so. Unsaid (`None`), a reference keeps the type its value
    /// had in the other system.
    pub numeric_ids: Option<bool>,
}

/// A system reached over HTTP.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpSystem {
    pub auth: HttpAuth,
    /// Requests per second to this system, across every step and run of
    /// this process.
    pub rate_limit: Option<f64>,
    pub timeout: Duration,
    /// Attempts after the first, on network errors, 5xx and 429.
    pub retries: u32,
    /// First backoff delay; doubles per attempt, with jitter.
    pub backoff: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Whether the API keeps every JSON number exactly (`numbers =
    /// "exact"`). By default (`"double"`) it is taken to read numbers as
    /// doubles, as JavaScript and most JSON parsers do (RFC 8259 promises
    /// no more): a number a double would change is refused before it is
    /// sent, instead of stored rounded and synced back over the original.
    pub exact_numbers: bool,
    /// By entity type.
    pub resources: BTreeMap<String, HttpResource>,
}

/// `[systems.NAME]` as written: the connector, where the system is, and for
/// HTTP systems how to call it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSystem {
    pub(super) connector: String,
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) shared: bool,
    pub(super) schema: Option<String>,
    pub(super) tenant_column: Option<String>,
    pub(super) lookback: Option<String>,
    auth: Option<RawAuth>,
    rate_limit: Option<f64>,
    timeout: Option<String>,
    retries: Option<u32>,
    backoff: Option<String>,
    concurrency: Option<usize>,
    numbers: Option<String>,
    #[serde(default)]
    entities: BTreeMap<String, RawResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer_env: Option<String>,
    header: Option<String>,
    env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    path: String,
    item_path: Option<String>,
    update_method: Option<String>,
    records: Option<String>,
    record: Option<String>,
    id_field: Option<String>,
    updated_field: Option<String>,
    since_param: Option<String>,
    pagination: Option<String>,
    page_param: Option<String>,
    cursor_param: Option<String>,
    size_param: Option<String>,
    has_more: Option<String>,
    next_cursor: Option<String>,
    page_size: Option<u32>,
    #[serde(default)]
    query: BTreeMap<String, String>,
    external_id_field: Option<String>,
    #[serde(default)]
    fields: Vec<String>,
    id_type: Option<String>,
}

fn pointer(errors: &mut Errors<'_>, at: &str, field: &str, p: Option<&String>, default: &str) -> String {
    let p = p.map(String::as_str).unwrap_or(default);
    if !p.is_empty() && !p.starts_with('/') {
        errors.push(
            None,
            Some(&format!("{at}.{field}")),
            format!(
                "`{p}` is not a JSON pointer (it starts with `/`, e.g. `/data`; empty for the whole body)"
            ),
        );
    }
    p.to_owned()
}

impl RawSystem {
    /// Whether the system authenticates (its credentials can be overridden
    /// per tenant).
    pub(super) fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Whether any HTTP-only setting is given (a mistake on a SQL system).
    pub(super) fn has_http_settings(&self) -> bool {
        self.auth.is_some()
            || self.rate_limit.is_some()
            || self.timeout.is_some()
            || self.retries.is_some()
            || self.backoff.is_some()
            || self.concurrency.is_some()
            || self.numbers.is_some()
            || !self.entities.is_empty()
    }

    /// Checks the HTTP settings of system `name`; `entities` are the entity
    /// types the integration syncs, each of which needs a resource here.
    pub(super) fn parse(&self, errors: &mut Errors<'_>, name: &str, entities: &[&str]) -> HttpSystem {
        let at = format!("systems.{name}");
        let auth = match &self.auth {
            None => HttpAuth::None,
            Some(RawAuth {
                bearer_env: Some(env),
                header: None,
                env: None,
            }) => HttpAuth::Bearer { env: env.clone() },
            Some(RawAuth {
                bearer_env: None,
                header: Some(header),
                env: Some(env),
            }) => HttpAuth::Header {
                header: header.clone(),
                env: env.clone(),
            },
            Some(_) => {
                errors.push(
                    None,
                    Some(&format!("{at}.auth")),
                    "give `bearer_env = \"VAR\"`, or `header = \"X-Api-Key\"` with `env = \"VAR\"`: \
                     secrets are read from the environment, never from the definition",
                );
                HttpAuth::None
            }
        };
        if let Some(r) = self.rate_limit
            && !(r > 0.0 && r.is_finite())
        {
            errors.push(
                None,
                Some(&format!("{at}.rate_limit")),
                format!("{r} is not a rate (requests per second, above 0)"),
            );
        }
        let interval = |errors: &mut Errors<'_>, field: &str, v: &Option<String>, default: Duration| {
            errors
                .parse(None, &format!("{at}.{field}"), v.as_deref(), parse_interval)
                .unwrap_or(default)
        };
        let timeout = interval(errors, "timeout", &self.timeout, Duration::from_secs(30));
        if timeout.is_zero() {
            errors.push(
                None,
                Some(&format!("{at}.timeout")),
                "a request needs some time (above 0)",
            );
        }
        let backoff = interval(errors, "backoff", &self.backoff, Duration::from_millis(100));
        if self.concurrency == Some(0) {
            errors.push(None, Some(&format!("{at}.concurrency")), "needs at least 1");
        }
        let exact_numbers = match self.numbers.as_deref() {
            None | Some("double") => false,
            Some("exact") => true,
            Some(other) => {
                errors.push(
                    None,
                    Some(&format!("{at}.numbers")),
                    format!(
                        "`{other}` is not how an API keeps numbers: \"double\" (the default: numbers a double \
                         would change are refused) or \"exact\" (every number as sent)"
                    ),
                );
                false
            }
        };
        let mut resources = BTreeMap::new();
        for (entity, raw) in &self.entities {
            if !entities.contains(&entity.as_str()) {
                errors.push(
                    Some(entity),
                    Some(&format!("{at}.entities")),
                    "the integration syncs no entity type of this name",
                );
                continue;
            }
            resources.insert(
                entity.clone(),
                raw.parse(errors, &format!("{at}.entities.{entity}")),
            );
        }
        for entity in entities {
            if !self.entities.contains_key(*entity) {
                errors.push(
                    Some(entity),
                    Some(&format!("{at}.entities.{entity}")),
                    format!(
                        "system `{name}` is an HTTP system: say where this entity type's records are (`path`)"
                    ),
                );
            }
        }
        HttpSystem {
            auth,
            rate_limit: self.rate_limit,
            timeout,
            retries: self.retries.unwrap_or(8),
            backoff,
            concurrency: self.concurrency.unwrap_or(8).max(1),
            exact_numbers,
            resources,
        }
    }
}

impl RawResource {
    fn parse(&self, errors: &mut Errors<'_>, at: &str) -> HttpResource {
        if !self.path.starts_with('/') {
            errors.push(
                None,
                Some(&format!("{at}.path")),
                format!("`{}` is not a path (it starts with `/`)", self.path),
            );
        }
        let path = self.path.trim_end_matches('/').to_owned();
        let item_path = self.item_path.clone().unwrap_or_else(|| format!("{path}/{{id}}"));
        if !item_path.starts_with('/') {
            errors.push(
                None,
                Some(&format!("{at}.item_path")),
                format!("`{item_path}` is not a path (it starts with `/`)"),
            );
        }
        if !item_path.contains("{id}") {
            errors.push(
                None,
                Some(&format!("{at}.item_path")),
                format!("`{item_path}` has no `{{id}}` for the record's id"),
            );
        }
        let update_method = self
            .update_method
            .as_deref()
            .unwrap_or("PATCH")
            .to_ascii_uppercase();
        if update_method != "PATCH" && update_method != "PUT" {
            errors.push(
                None,
                Some(&format!("{at}.update_method")),
                format!("`{update_method}` (expected PATCH or PUT)"),
            );
        }
        let size_param = self.size_param.clone();
        let style = self.pagination.as_deref().unwrap_or("page");
        let misplaced: &[(&str, bool)] = match style {
            "page" => &[
                ("cursor_param", self.cursor_param.is_some()),
                ("next_cursor", self.next_cursor.is_some()),
            ],
            "cursor" => &[
                ("page_param", self.page_param.is_some()),
                ("has_more", self.has_more.is_some()),
            ],
            _ => &[],
        };
        for (key, given) in misplaced {
            if *given {
                errors.push(
                    None,
                    Some(&format!("{at}.{key}")),
                    format!(
                        "`{key}` is a setting of the other pagination (this collection pages by {style})"
                    ),
                );
            }
        }
        let pagination = match style {
            "page" => Pagination::Page {
                page_param: self.page_param.clone().unwrap_or_else(|| "page".into()),
                size_param: size_param.unwrap_or_else(|| "per_page".into()),
                has_more: self
                    .has_more
                    .as_ref()
                    .map(|p| pointer(errors, at, "has_more", Some(p), "")),
            },
            "cursor" => Pagination::Cursor {
                cursor_param: self.cursor_param.clone().unwrap_or_else(|| "cursor".into()),
                size_param: size_param.unwrap_or_else(|| "limit".into()),
                next: pointer(
                    errors,
                    at,
                    "next_cursor",
                    self.next_cursor.as_ref(),
                    "/next_cursor",
                ),
            },
            other => {
                errors.push(
                    None,
                    Some(&format!("{at}.pagination")),
                    format!("unknown pagination `{other}` (expected page or cursor)"),
                );
                Pagination::Page {
                    page_param: "page".into(),
                    size_param: "per_page".into(),
                    has_more: None,
                }
            }
        };
        let numeric_ids = match self.id_type.as_deref() {
            None => None,
            Some("string") => Some(false),
            Some("number") => Some(true),
            Some(other) => {
                errors.push(
                    None,
                    Some(&format!("{at}.id_type")),
                    format!("unknown id type `{other}` (expected string or number)"),
                );
                None
            }
        };
        let updated_field = match self.updated_field.as_deref() {
            Some("") => None,
            other => Some(other.unwrap_or("updated_at").to_owned()),
        };
        if updated_field.is_none() && self.since_param.is_some() {
            errors.push(
                None,
                Some(&format!("{at}.since_param")),
                "a collection without update times (`updated_field = \"\"`) is listed whole: \
                 there is no time to ask for changes since",
            );
        }
        let page_size = self.page_size.unwrap_or(100);
        if page_size == 0 {
            errors.push(None, Some(&format!("{at}.page_size")), "needs at least 1");
        }
        HttpResource {
            path,
            item_path,
            update_method,
            records: pointer(errors, at, "records", self.records.as_ref(), "/data"),
            record: pointer(errors, at, "record", self.record.as_ref(), "/data"),
            id_field: self.id_field.clone().unwrap_or_else(|| "id".into()),
            updated_field,
            since_param: self.since_param.clone().unwrap_or_else(|| "updated_since".into()),
            pagination,
            page_size: page_size.max(1),
            query: self.query.clone(),
            external_id_field: self.external_id_field.clone(),
            fields: self.fields.clone(),
            numeric_ids,
        }
    }
}
