//! References between records: fields holding the id of a record of some
//! entity type, translated through the ID map from one system's ids to the
//! other's, and compared as id text whatever type each system gives ids.

use crate::mapping::{IdMapping, MappingStatus};
use crate::record::{Fields, Record, Side};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The mappings found for reference values, by referenced entity type and
/// then by the id looked up; shared with the mapping cache, not copied.
pub type RefMaps = HashMap<String, HashMap<String, Arc<IdMapping>>>;

/// The reference fields of one entity type.
#[derive(Clone, Debug, Default)]
pub struct References {
    /// The entity type whose records hold the references.
    pub entity: String,
    /// (CDM field, referenced entity type) of synced reference fields.
    pub fields: Vec<(String, String)>,
    /// Whether a reference field's ids are JSON numbers on a side (a
    /// numeric column, an API with `id_type = "number"`) or text; absent
    /// when that side does not say.
    pub numeric: HashMap<(String, Side), bool>,
}

/// Fields with their references rewritten to the other system's ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewritten {
    pub fields: Fields,
    /// Self-references left empty until their target exists.
    pub deferred: Vec<String>,
    /// (field, reason) of references that could not be translated.
    pub missing: Vec<(String, String)>,
}

/// The id of a row as the engine carries it: text, or an integer as text.
pub fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The id `m` maps to on `side`, once known.
pub fn id_on(m: &IdMapping, side: Side) -> Option<&str> {
    match side {
        Side::Source => m.source_id.as_deref(),
        Side::Target => m.target_id.as_deref(),
    }
}

impl References {
    /// Whether a record may refer to another of its own type.
    pub fn refer_to_itself(&self) -> bool {
        self.fields.iter().any(|(_, entity)| *entity == self.entity)
    }

    /// Reference values of `records` by referenced entity type.
    pub fn values(&self, records: &[&Fields]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (field, entity) in &self.fields {
            let list = out.entry(entity.clone()).or_default();
            for fields in records {
                if let Some(id) = fields.get(field).and_then(id_text) {
                    list.push(id);
                }
            }
        }
        out
    }

    /// `fields` with every reference as its id's text, or `None` when they
    /// are already: records and bases compare references by id, whatever
    /// type each system gives its ids.
    pub fn ids_as_text(&self, fields: &Fields) -> Option<Fields> {
        let numeric = |f: &String| matches!(fields.get(f), Some(Value::Number(_)));
        if !self.fields.iter().any(|(f, _)| numeric(f)) {
            return None;
        }
        let mut out = fields.clone();
        for (field, _) in &self.fields {
            if let Some(v @ Value::Number(_)) = out.get_mut(field) {
                *v = Value::String(v.to_string());
            }
        }
        Some(out)
    }

    /// [`ids_as_text`](Self::ids_as_text) of a record.
    pub fn record_ids_as_text(&self, record: Record) -> Record {
        match self.ids_as_text(&record.fields) {
            Some(fields) => Record { fields, ..record },
            None => record,
        }
    }

    /// Types the references of `fields`, bound for `side`, as that side
    /// holds ids: numbers where its ids are numbers, or, where it does not
    /// say, where its record (`current`) has a number.
    pub fn ids_typed_for(&self, side: Side, fields: &mut Fields, current: &Fields) {
        for (field, _) in &self.fields {
            let Some(Value::String(id)) = fields.get(field) else {
                continue;
            };
            let numeric = self
                .numeric
                .get(&(field.clone(), side))
                .copied()
                .unwrap_or_else(|| current.get(field).is_some_and(Value::is_number));
            if numeric
                && !id.contains(['.', 'e', 'E'])
                && let Ok(n) = serde_json::from_str::<serde_json::Number>(id)
            {
                fields.insert(field.clone(), Value::Number(n));
            }
        }
    }

    /// Rewrites the reference fields of `fields` from ids on `from` to ids on
    /// the other side. A self-reference whose target has no mapping yet, or
    /// only a pending one, is left empty (deferred); any other
    /// untranslatable reference is left as it was and reported as missing.
    pub fn rewrite(&self, maps: &RefMaps, from: Side, fields: &Fields) -> Rewritten {
        let mut out = Rewritten {
            fields: fields.clone(),
            deferred: Vec::new(),
            missing: Vec::new(),
        };
        for (field, entity) in &self.fields {
            let Some(value) = fields.get(field) else { continue };
            let Some(id) = id_text(value) else {
                continue;
            };
            let mapping = maps.get(entity).and_then(|m| m.get(&id));
            let other = mapping
                .filter(|m| m.status == MappingStatus::Mapped || m.status == MappingStatus::Stale)
                .and_then(|m| id_on(m, from.other()));
            match other {
                Some(other) => {
                    // An id takes the type ids have in the system it is
                    // written to (or compared in); where that system does
                    // not say, the type it had where it came from.
                    let numeric = self
                        .numeric
                        .get(&(field.clone(), from.other()))
                        .copied()
                        .unwrap_or(value.is_number());
                    let translated = match serde_json::from_str::<serde_json::Number>(other) {
                        Ok(n) if numeric && !other.contains(['.', 'e', 'E']) => Value::Number(n),
                        _ => Value::String(other.to_owned()),
                    };
                    out.fields.insert(field.clone(), translated);
                }
                // Pending: reserved on a page that is being done again after
                // a crash; the first attempt deferred it, so must this one.
                None if *entity == self.entity
                    && mapping.is_none_or(|m| m.status == MappingStatus::Pending) =>
                {
                    out.fields.insert(field.clone(), Value::Null);
                    out.deferred.push(field.clone());
                }
                None => {
                    let why = match mapping {
                        None => "has not been synced".to_owned(),
                        Some(m) => match &m.last_error {
                            Some(e) => format!("is {} ({e})", m.status),
                            None => format!("is {}", m.status),
                        },
                    };
                    out.missing.push((
                        field.clone(),
                        format!("missing parent: {field} references {entity} `{id}`, which {why}"),
                    ));
                }
            }
        }
        out
    }
}
