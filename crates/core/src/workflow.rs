//! Integration definitions (`workflows/*.toml`) and dependency-graph files.
//!
//! A definition is parsed in two passes: serde reads the TOML into plain
//! structs (syntax errors stop there), then [`Workflow::parse`] checks every
//! rule and collects *all* the errors it finds, each naming the file, the
//! entity and the field, so `syncd check` can show them in one go.
//! [`Workflow::check_references`] then holds the reference fields against the
//! dependency graph the integration will be planned with.
//!
//! Pure: text in, definitions or errors out. Reading files is the caller's job.

use crate::conflict::{FieldRule, MergeRules, Strategy};
use crate::deletes::{DeleteBrake, DeletePolicy, OnSourceDelete, OnTargetDelete, parse_interval};
use crate::ids::{EntityType, IntegrationId, TenantId};
use crate::plan::DependencyGraph;
use crate::record::Direction;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

mod http;
mod rules;
mod tenancy;
use http::RawSystem;
pub use http::{HttpAuth, HttpResource, HttpSystem, Pagination};

/// One thing wrong with a definition, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    pub file: String,
    pub entity: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = Vec::new();
        if let Some(entity) = &self.entity {
            place.push(format!("entity `{entity}`"));
        }
        if let Some(field) = &self.field {
            place.push(format!("field `{field}`"));
        }
        if place.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, place.join(", "), self.reason)
        }
    }
}

/// Every error found in one definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The connector that reaches a system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectorKind {
    /// Tables of a PostgreSQL or SQLite database.
    Sql,
    /// A REST API speaking JSON.
    Http,
}

/// One of the two systems an integration connects.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemDef {
    pub name: String,
    pub connector: ConnectorKind,
    /// Where the system is (a database URL, an API base URL).
    pub url: Option<String>,
    /// How to call it, for HTTP systems.
    pub http: Option<HttpSystem>,
    /// Tenants may resolve it to the same URL on purpose (`shared = true`):
    /// something other than the URL keeps their records apart.
    pub shared: bool,
    /// Where tables not qualified by a schema are (`schema = "shop"`):
    /// PostgreSQL's search path, MySQL's database.
    pub schema: Option<String>,
    /// The column every table of the system keeps its tenant in, when
    /// tenants share its tables.
    pub tenant_column: Option<String>,
    /// How long after its `updated_at` a row may still become visible (a
    /// transaction stamps rows when it starts and shows them when it
    /// commits). The change scan saves no cursor later than this before
    /// the time it read, so the next run reads that stretch again.
    pub lookback: std::time::Duration,
}

/// The URL schemes of the databases a SQL system may be.
const SQL_SCHEMES: [&str; 5] = [
    "postgres://",
    "postgresql://",
    "mysql://",
    "mariadb://",
    "sqlite:",
];

/// `lookback` when a system does not set it.
pub const DEFAULT_LOOKBACK: std::time::Duration = std::time::Duration::from_secs(60);

/// Two tenants whose copies of one system resolve to the same database or
/// API: each would sync the other's records as its own, and create them
/// again on the other side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedSystem {
    pub system: String,
    /// The URL both resolve to, its password hidden.
    pub url: String,
    pub tenants: (TenantId, TenantId),
}

impl std::fmt::Display for SharedSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenants `{}` and `{}` both sync system `{}` at {}: each would read the other's records as its own \
             and create them again (give each tenant its own URL under [tenants.NAME] urls or url_env, keep \
             their rows apart with `tenant_column`, or say `shared = true` under [systems.{}] if the records \
             of each tenant are kept apart in it by other means)",
            self.tenants.0, self.tenants.1, self.system, self.url, self.system
        )
    }
}

/// How one CDM field is called in each system, and what it references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMap {
    pub cdm: String,
    pub source: String,
    pub target: String,
    /// The entity type whose id this field holds.
    pub references: Option<EntityType>,
}

/// One entity type the integration syncs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityDef {
    pub name: EntityType,
    pub source_table: String,
    pub target_table: String,
    pub fields: Vec<FieldMap>,
    pub strategy: Option<Strategy>,
    pub merge: MergeRules,
    /// Column that stores the idempotency key of creates, for tables whose
    /// integer ids are assigned by the database.
    pub idempotency_column: Option<String>,
    /// What happens when its records disappear.
    pub deletes: DeletePolicy,
    /// The column its table keeps the tenant in, on each side (source,
    /// target), when tenants share the table; else the system's.
    pub tenant_column: (Option<String>, Option<String>),
}

impl FieldMap {
    /// The field's name in `side`'s system.
    pub fn native(&self, side: crate::record::Side) -> &str {
        match side {
            crate::record::Side::Source => &self.source,
            crate::record::Side::Target => &self.target,
        }
    }
}

impl EntityDef {
    /// The table of the entity in `side`'s system.
    pub fn table(&self, side: crate::record::Side) -> &str {
        match side {
            crate::record::Side::Source => &self.source_table,
            crate::record::Side::Target => &self.target_table,
        }
    }
}

/// A tenant that runs the integration, with its overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantDef {
    pub strategy: Option<Strategy>,
    pub strategies: BTreeMap<EntityType, Strategy>,
    pub schedule: Option<CronSchedule>,
    /// This tenant's URL of each system, by system name.
    pub urls: BTreeMap<String, String>,
    /// Environment variables holding this tenant's URL of each system.
    pub url_env: BTreeMap<String, String>,
    /// Environment variables holding this tenant's credentials for each HTTP
    /// system, instead of the system's own.
    pub auth_env: BTreeMap<String, String>,
    /// This tenant's value in the tenant column of each system, by system
    /// name (the tenant's name when unsaid).
    pub tenant_values: BTreeMap<String, String>,
}

/// A validated cron expression and the text it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSchedule {
    pub expression: String,
    pub schedule: cron::Schedule,
}

impl CronSchedule {
    /// Parses a cron expression: five fields (minute precision) or the
    /// `cron` crate's six or seven (with seconds, and years).
    pub fn parse(expression: &str) -> Result<CronSchedule, String> {
        let fields = expression.split_whitespace().count();
        if !(5..=7).contains(&fields) {
            return Err(format!(
                "bad cron expression `{expression}`: {fields} fields; a schedule has five (minute, hour, day of \
                 the month, month, day of the week: `*/15 * * * *`), or six and seven with seconds first and \
                 years last"
            ));
        }
        let full = if fields == 5 {
            format!("0 {expression}")
        } else {
            expression.to_owned()
        };
        cron::Schedule::from_str(&full)
            .map(|schedule| CronSchedule {
                expression: expression.to_owned(),
                schedule,
            })
            .map_err(|e| {
                // The cron crate's message repeats the expression over several
                // lines; one line per error keeps `syncd check` readable.
                let detail = e.to_string();
                // (Its last line may be only a `^` under the expression.)
                let last = detail
                    .lines()
                    .map(str::trim)
                    .rfind(|l| l.chars().any(char::is_alphanumeric))
                    .unwrap_or("not a schedule");
                format!("bad cron expression `{expression}`: {last}")
            })
    }
}

/// A validated integration definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    /// The file it came from, for messages.
    pub file: String,
    pub name: IntegrationId,
    pub partner: Option<String>,
    pub direction: Direction,
    pub schedule: Option<CronSchedule>,
    pub strategy: Option<Strategy>,
    pub source: SystemDef,
    pub target: SystemDef,
    /// In the order the file lists them.
    pub entities: Vec<EntityDef>,
    pub tenants: BTreeMap<TenantId, TenantDef>,
    /// Entity types no longer synced whose mappings the state store keeps
    /// (`retired_entities`): named, so that a run does not take them for
    /// an entity renamed by mistake.
    pub retired_entities: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    #[serde(default)]
    retired_entities: Vec<String>,
    name: String,
    partner: Option<String>,
    #[serde(default)]
    direction: Option<String>,
    schedule: Option<String>,
    strategy: Option<String>,
    source: String,
    target: String,
    #[serde(default)]
    systems: BTreeMap<String, RawSystem>,
    #[serde(default)]
    entities: Vec<RawEntity>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    name: String,
    table: Option<String>,
    source_table: Option<String>,
    target_table: Option<String>,
    strategy: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
    #[serde(default)]
    merge: BTreeMap<String, String>,
    idempotency_column: Option<String>,
    deleted_column: Option<RawSides>,
    on_source_delete: Option<String>,
    archive_column: Option<String>,
    on_target_delete: Option<String>,
    reconcile_every: Option<String>,
    verify_after: Option<String>,
    delete_brake: Option<RawBrake>,
    tenant_column: Option<RawSides>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSides {
    Same(String),
    Each {
        source: Option<String>,
        target: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBrake {
    percent: Option<u32>,
    max: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawField {
    Same(String),
    Mapped(RawFieldMap),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFieldMap {
    source: Option<String>,
    target: Option<String>,
    references: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    strategy: Option<String>,
    #[serde(default)]
    strategies: BTreeMap<String, String>,
    schedule: Option<String>,
    #[serde(default)]
    urls: BTreeMap<String, String>,
    #[serde(default)]
    url_env: BTreeMap<String, String>,
    #[serde(default)]
    auth_env: BTreeMap<String, String>,
    #[serde(default)]
    tenant_values: BTreeMap<String, String>,
}

/// Collects errors for one file.
struct Errors<'a> {
    file: &'a str,
    list: Vec<DefinitionError>,
}

impl Errors<'_> {
    fn push(&mut self, entity: Option<&str>, field: Option<&str>, reason: impl Into<String>) {
        self.list.push(DefinitionError {
            file: self.file.to_owned(),
            entity: entity.map(str::to_owned),
            field: field.map(str::to_owned),
            reason: reason.into(),
        });
    }

    /// Parses `value` with `parse`, recording the error instead of failing.
    fn parse<T>(
        &mut self,
        entity: Option<&str>,
        field: &str,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value?) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.push(entity, Some(field), reason);
                None
            }
        }
    }
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    match s {
        "one_way" => Ok(Direction::OneWay),
        "bidirectional" => Ok(Direction::Bidirectional),
        _ => Err(format!(
            "unknown direction `{s}` (expected one_way or bidirectional)"
        )),
    }
}

fn parse_connector(s: &str) -> Result<ConnectorKind, String> {
    match s {
        "sql" => Ok(ConnectorKind::Sql),
        "http" => Ok(ConnectorKind::Http),
        _ => Err(format!("unknown connector `{s}` (expected sql or http)")),
    }
}

fn toml_error(file: &str, e: toml::de::Error) -> DefinitionErrors {
    DefinitionErrors(vec![DefinitionError {
        file: file.to_owned(),
        entity: None,
        field: None,
        reason: e.to_string().trim_end().replace('\n', "\n  "),
    }])
}

impl Workflow {
    /// Parses and validates the definition in `text`; `file` names it in
    /// errors. Returns every error found, not only the first.
    pub fn parse(file: &str, text: &str) -> Result<Workflow, DefinitionErrors> {
        let raw: RawWorkflow = toml::from_str(text).map_err(|e| toml_error(file, e))?;
        let mut errors = Errors {
            file,
            list: Vec::new(),
        };

        if raw.name.trim().is_empty() {
            errors.push(None, Some("name"), "the integration needs a name");
        }
        let direction = errors
            .parse(None, "direction", raw.direction.as_deref(), parse_direction)
            .unwrap_or_default();
        let schedule = errors.parse(None, "schedule", raw.schedule.as_deref(), CronSchedule::parse);
        let strategy = errors.parse(None, "strategy", raw.strategy.as_deref(), Strategy::from_str);

        let entity_names: Vec<&str> = raw.entities.iter().map(|e| e.name.as_str()).collect();
        let mut system = |role: &str, name: &str| -> Option<SystemDef> {
            let Some(def) = raw.systems.get(name) else {
                let declared: Vec<&str> = raw.systems.keys().map(String::as_str).collect();
                errors.push(
                    None,
                    Some(role),
                    format!(
                        "unknown system `{name}` (declared under [systems]: {})",
                        if declared.is_empty() {
                            "none".to_owned()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
                return None;
            };
            let connector = errors.parse(
                None,
                &format!("systems.{name}.connector"),
                Some(&def.connector),
                parse_connector,
            )?;
            let http = match connector {
                ConnectorKind::Http => {
                    if def.schema.is_some() {
                        errors.push(
                            None,
                            Some(&format!("systems.{name}.schema")),
                            "`schema` is a setting of SQL systems (an API has collections, not schemas)",
                        );
                    }
                    Some(def.parse(&mut errors, name, &entity_names))
                }
                ConnectorKind::Sql => {
                    if def.has_http_settings() {
                        errors.push(
                            None,
                            Some(&format!("systems.{name}")),
                            "auth, rate_limit, timeout, retries, backoff, concurrency, numbers and entities \
                             are settings of HTTP systems (connector = \"http\")",
                        );
                    }
                    // A misspelt scheme would otherwise wait for `--connect`.
                    if let Some(url) = &def.url
                        && !SQL_SCHEMES.iter().any(|scheme| url.starts_with(scheme))
                    {
                        errors.push(
                            None,
                            Some(&format!("systems.{name}.url")),
                            format!(
                                "`{}` is not a database URL syncd speaks (postgres://, postgresql://, mysql://, \
                                 mariadb:// or sqlite:)",
                                crate::redact::redacted(url)
                            ),
                        );
                    }
                    None
                }
            };
            Some(SystemDef {
                name: name.to_owned(),
                connector,
                url: def.url.clone(),
                http,
                shared: def.shared,
                schema: def.schema.clone(),
                tenant_column: def.tenant_column.clone(),
                lookback: errors
                    .parse(
                        None,
                        &format!("systems.{name}.lookback"),
                        def.lookback.as_deref(),
                        parse_interval,
                    )
                    .unwrap_or(DEFAULT_LOOKBACK),
            })
        };
        let source = system("source", &raw.source);
        let target = system("target", &raw.target);

        let declared: BTreeSet<&str> = raw.entities.iter().map(|e| e.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut entities = Vec::new();
        for e in &raw.entities {
            let name = e.name.as_str();
            let at = Some(name);
            if !seen.insert(name) {
                errors.push(at, None, "entity type is defined twice");
                continue;
            }
            if name.trim().is_empty() {
                errors.push(None, Some("entities.name"), "an entity needs a name");
                continue;
            }
            let has_table = e.table.is_some() || e.source_table.is_some() || e.target_table.is_some();
            if !has_table && e.fields.is_empty() {
                errors.push(
                    at,
                    None,
                    "entity has neither a table nor a field map (give `table`, `source_table`/`target_table` or [entities.fields])",
                );
            }
            let strategy = errors.parse(at, "strategy", e.strategy.as_deref(), Strategy::from_str);
            let mut fields = Vec::new();
            for (cdm, raw_field) in &e.fields {
                let (source, target, references) = match raw_field {
                    RawField::Same(native) => (native.clone(), native.clone(), None),
                    RawField::Mapped(m) => (
                        m.source.clone().unwrap_or_else(|| cdm.clone()),
                        m.target.clone().unwrap_or_else(|| cdm.clone()),
                        m.references.clone(),
                    ),
                };
                if let Some(r) = &references
                    && !declared.contains(r.as_str())
                {
                    errors.push(
                        at,
                        Some(cdm),
                        format!("references unknown entity type `{r}` (not defined in this integration)"),
                    );
                }
                fields.push(FieldMap {
                    cdm: cdm.clone(),
                    source,
                    target,
                    references: references.map(EntityType::from),
                });
            }
            let mut merge = MergeRules::new();
            for (field, rule) in &e.merge {
                if let Some(rule) =
                    errors.parse(at, &format!("merge.{field}"), Some(rule), FieldRule::from_str)
                {
                    merge.insert(field.clone(), rule);
                }
            }
            let deletes = Self::parse_deletes(&mut errors, name, e, direction);
            let table = e.table.clone().unwrap_or_else(|| name.to_owned());
            entities.push(EntityDef {
                name: name.into(),
                source_table: e.source_table.clone().unwrap_or_else(|| table.clone()),
                target_table: e.target_table.clone().unwrap_or(table),
                fields,
                strategy,
                merge,
                idempotency_column: e.idempotency_column.clone(),
                deletes,
                tenant_column: match &e.tenant_column {
                    None => (None, None),
                    Some(RawSides::Same(c)) => (Some(c.clone()), Some(c.clone())),
                    Some(RawSides::Each { source, target }) => (source.clone(), target.clone()),
                },
            });
        }

        let mut tenants = BTreeMap::new();
        for (tenant, t) in &raw.tenants {
            let field = |f: &str| format!("tenants.{tenant}.{f}");
            let strategy = errors.parse(
                None,
                &field("strategy"),
                t.strategy.as_deref(),
                Strategy::from_str,
            );
            let schedule = errors.parse(
                None,
                &field("schedule"),
                t.schedule.as_deref(),
                CronSchedule::parse,
            );
            let mut strategies = BTreeMap::new();
            for (entity, s) in &t.strategies {
                if !declared.contains(entity.as_str()) {
                    errors.push(
                        Some(entity),
                        Some(&field("strategies")),
                        format!("tenant `{tenant}` overrides the strategy of an entity type this integration does not sync"),
                    );
                }
                if let Some(s) = errors.parse(Some(entity), &field("strategies"), Some(s), Strategy::from_str)
                {
                    strategies.insert(EntityType::from(entity.as_str()), s);
                }
            }
            for system in t
                .urls
                .keys()
                .chain(t.url_env.keys())
                .chain(t.tenant_values.keys())
            {
                if !raw.systems.contains_key(system) {
                    errors.push(
                        None,
                        Some(&field("urls")),
                        format!("unknown system `{system}` (not declared under [systems])"),
                    );
                }
            }
            for system in t.auth_env.keys() {
                let with_auth = raw
                    .systems
                    .get(system)
                    .is_some_and(|s| s.connector == "http" && s.has_auth());
                if !with_auth {
                    errors.push(
                        None,
                        Some(&field("auth_env")),
                        format!("`{system}` is not an HTTP system with `auth`: there are no credentials to override"),
                    );
                }
            }
            tenants.insert(
                TenantId::from(tenant.as_str()),
                TenantDef {
                    strategy,
                    strategies,
                    schedule,
                    urls: t.urls.clone(),
                    url_env: t.url_env.clone(),
                    auth_env: t.auth_env.clone(),
                    tenant_values: t.tenant_values.clone(),
                },
            );
        }

        if let (Some(source), Some(target)) = (&source, &target) {
            tenancy::check_sides(&mut errors, source, target, &entities);
        }
        match (source, target) {
            (Some(source), Some(target)) if errors.list.is_empty() => {
                let wf = Workflow {
                    file: file.to_owned(),
                    name: raw.name.into(),
                    partner: raw.partner,
                    direction,
                    schedule,
                    strategy,
                    source,
                    target,
                    entities,
                    tenants,
                    retired_entities: raw.retired_entities,
                };
                let found = wf.last_write_without_times();
                match found.is_empty() {
                    true => Ok(wf),
                    false => Err(DefinitionErrors(found)),
                }
            }
            _ => Err(DefinitionErrors(errors.list)),
        }
    }

    /// The delete handling of entity `name`, recording what is wrong.
    fn parse_deletes(
        errors: &mut Errors<'_>,
        name: &str,
        e: &RawEntity,
        direction: Direction,
    ) -> DeletePolicy {
        let at = Some(name);
        let (source_deleted_column, target_deleted_column) = match &e.deleted_column {
            None => (None, None),
            Some(RawSides::Same(c)) => (Some(c.clone()), Some(c.clone())),
            Some(RawSides::Each { source, target }) => (source.clone(), target.clone()),
        };
        let on_source_delete = errors
            .parse(
                at,
                "on_source_delete",
                e.on_source_delete.as_deref(),
                OnSourceDelete::from_str,
            )
            .unwrap_or_default();
        let on_target_delete = errors
            .parse(
                at,
                "on_target_delete",
                e.on_target_delete.as_deref(),
                OnTargetDelete::from_str,
            )
            .unwrap_or_default();
        if on_source_delete == OnSourceDelete::Archive && e.archive_column.is_none() {
            errors.push(
                at,
                Some("archive_column"),
                "on_source_delete = \"archive\" needs the target column it sets (`archive_column`)",
            );
        }
        if on_target_delete == OnTargetDelete::Propagate && direction != Direction::Bidirectional {
            errors.push(
                at,
                Some("on_target_delete"),
                "`propagate` deletes source records, which only a bidirectional integration may do",
            );
        }
        let reconcile_every = match e.reconcile_every.as_deref() {
            None => Some(std::time::Duration::from_secs(86_400)),
            Some("never") => None,
            Some(text) => errors.parse(at, "reconcile_every", Some(text), parse_interval),
        };
        let verify_after = match e.verify_after.as_deref() {
            None => Some(std::time::Duration::from_secs(30 * 86_400)),
            Some("never") => None,
            Some(text) => errors.parse(at, "verify_after", Some(text), parse_interval),
        };
        let mut brake = DeleteBrake::default();
        if let Some(b) = &e.delete_brake {
            if let Some(p) = b.percent {
                if p > 100 {
                    errors.push(
                        at,
                        Some("delete_brake.percent"),
                        format!("{p} is not a percentage (0-100)"),
                    );
                }
                brake.percent = p.min(100);
            }
            if let Some(m) = b.max {
                brake.max = m;
            }
        }
        DeletePolicy {
            source_deleted_column,
            target_deleted_column,
            on_source_delete,
            archive_column: e.archive_column.clone(),
            on_target_delete,
            reconcile_every,
            verify_after,
            brake,
        }
    }

    /// `system` as `tenant` reaches it: an HTTP system's credentials come
    /// from the tenant's `auth_env` variable when it names one.
    pub fn system_for(&self, tenant: &TenantId, system: &SystemDef) -> SystemDef {
        let mut system = system.clone();
        let var = self
            .tenants
            .get(tenant)
            .and_then(|t| t.auth_env.get(&system.name));
        if let (Some(var), Some(http)) = (var, system.http.as_mut()) {
            match &mut http.auth {
                HttpAuth::Bearer { env } | HttpAuth::Header { env, .. } => *env = var.clone(),
                HttpAuth::None => {}
            }
        }
        system
    }

    /// Where `system` is for `tenant`: the tenant's own URL, else the one in
    /// the environment variable the tenant names, else the system's URL.
    /// `env` reads an environment variable (passed in to keep this pure).
    /// Pairs of tenants whose copies of a system (not `shared`) resolve to
    /// the same URL (for an API, with the same credentials: tenants with
    /// their own `auth_env` are different accounts of it). A URL a tenant
    /// cannot resolve (a variable not set) is left out: that tenant fails
    /// on its own when it runs.
    pub fn shared_systems(&self, env: impl Fn(&str) -> Option<String>) -> Vec<SharedSystem> {
        let mut found = Vec::new();
        let systems = [&self.source, &self.target];
        let apart = |s: &&SystemDef| !s.shared && !self.filters_by_tenant(s);
        for system in systems.into_iter().filter(apart) {
            let mut seen: BTreeMap<String, &TenantId> = BTreeMap::new();
            for tenant in self.tenants.keys() {
                let Ok(url) = self.system_url(tenant, system, &env) else {
                    continue;
                };
                let account = self
                    .tenants
                    .get(tenant)
                    .and_then(|t| t.auth_env.get(&system.name))
                    .map_or(String::new(), |var| format!("\u{1f}{var}"));
                let place = same_place(&url) + &account;
                match seen.get(&place) {
                    Some(first) => found.push(SharedSystem {
                        system: system.name.clone(),
                        url: crate::redact::redacted(&url),
                        tenants: ((*first).clone(), tenant.clone()),
                    }),
                    None => {
                        seen.insert(place, tenant);
                    }
                }
            }
        }
        found
    }

    /// [`shared_systems`](Self::shared_systems) as definition errors (on
    /// `tenants`), those of `only` when given.
    pub fn tenants_apart(
        &self,
        only: Option<&TenantId>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), DefinitionErrors> {
        let errors: Vec<DefinitionError> = self
            .shared_systems(env)
            .into_iter()
            .filter(|s| only.is_none_or(|t| s.tenants.0 == *t || s.tenants.1 == *t))
            .map(|s| DefinitionError {
                file: self.file.clone(),
                entity: None,
                field: Some("tenants".into()),
                reason: s.to_string(),
            })
            .collect();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(DefinitionErrors(errors)),
        }
    }

    pub fn system_url(
        &self,
        tenant: &TenantId,
        system: &SystemDef,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String, DefinitionError> {
        let t = self.tenants.get(tenant);
        let error = |reason: String| DefinitionError {
            file: self.file.clone(),
            entity: None,
            field: Some(format!("systems.{}.url", system.name)),
            reason,
        };
        if let Some(url) = t.and_then(|t| t.urls.get(&system.name)) {
            return Ok(url.clone());
        }
        if let Some(var) = t.and_then(|t| t.url_env.get(&system.name)) {
            return env(var).ok_or_else(|| {
                error(format!(
                    "tenant `{tenant}` reads the URL of `{}` from ${var}, which is not set",
                    system.name
                ))
            });
        }
        system.url.clone().ok_or_else(|| {
            error(format!(
                "no URL for system `{}` (give [systems.{0}] url, or tenant `{tenant}`'s urls or url_env)",
                system.name
            ))
        })
    }

    /// The definition of `entity`, if this integration syncs it.
    pub fn entity(&self, entity: &str) -> Option<&EntityDef> {
        self.entities.iter().find(|e| e.name.as_str() == entity)
    }

    /// The strategy for `entity` when syncing for `tenant`: the tenant's
    /// override for the entity, then the tenant's own default, then the
    /// entity's setting, then the integration default, then the engine's.
    pub fn strategy_for(&self, tenant: &TenantId, entity: &str) -> Strategy {
        let t = self.tenants.get(tenant);
        t.and_then(|t| t.strategies.get(&EntityType::from(entity)).copied())
            .or_else(|| t.and_then(|t| t.strategy))
            .or_else(|| self.entity(entity).and_then(|e| e.strategy))
            .or(self.strategy)
            .unwrap_or(Strategy::ENGINE_DEFAULT)
    }

    /// The graph this integration plans with: `graph` restricted to the
    /// integration's entity types. Every reference field must have its edge
    /// in `graph`; each one that does not is an error.
    pub fn graph_within(&self, graph: &DependencyGraph) -> Result<DependencyGraph, DefinitionErrors> {
        let mut errors = Errors {
            file: &self.file,
            list: Vec::new(),
        };
        for entity in &self.entities {
            for field in &entity.fields {
                let Some(target) = &field.references else {
                    continue;
                };
                if !graph.depends_on(entity.name.as_str(), target.as_str()) {
                    errors.push(
                        Some(entity.name.as_str()),
                        Some(&field.cdm),
                        format!(
                            "references `{target}` but the dependency graph has no edge {} -> {target}",
                            entity.name
                        ),
                    );
                }
            }
        }
        if !errors.list.is_empty() {
            return Err(DefinitionErrors(errors.list));
        }
        let keep: BTreeSet<&str> = self.entities.iter().map(|e| e.name.as_str()).collect();
        let mut within = graph.restricted_to(&keep);
        // An entity type the graph does not name depends on nothing (a
        // reference of it would have needed an edge, refused above): it is
        // synced in the first stage, never left out of the plan.
        for entity in &keep {
            within.add_entity(entity);
        }
        Ok(within)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGraph {
    extends: Option<String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    entities: BTreeMap<String, Vec<String>>,
}

/// Parses a dependency-graph file: an `[entities]` table mapping each type
/// to the types it depends on. A partner's file may start from the built-in
/// graph with `extends = "default"`, drop types with `remove = [...]`, and
/// replace the dependencies of the types it lists.
pub fn parse_graph(file: &str, text: &str) -> Result<DependencyGraph, DefinitionErrors> {
    let raw: RawGraph = toml::from_str(text).map_err(|e| toml_error(file, e))?;
    let mut graph = match raw.extends.as_deref() {
        None | Some("none") => DependencyGraph::default(),
        Some("default") => DependencyGraph::builtin_default(),
        Some(other) => {
            return Err(DefinitionErrors(vec![DefinitionError {
                file: file.to_owned(),
                entity: None,
                field: Some("extends".into()),
                reason: format!("unknown base graph `{other}` (expected default or none)"),
            }]));
        }
    };
    for entity in &raw.remove {
        graph.remove_entity(entity);
    }
    for (entity, deps) in &raw.entities {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        graph.set_dependencies(entity, &deps);
    }
    Ok(graph)
}

/// A URL as the place it names: without surrounding space, a trailing
/// slash, or a SQLite path's leading `./`.
fn same_place(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.strip_prefix("sqlite://") {
        Some(path) => format!("sqlite://{}", path.trim_start_matches("./")),
        None => url.to_owned(),
    }
}
