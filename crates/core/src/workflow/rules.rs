//! Merge rules checked against the fields a definition names, without
//! connecting: what `syncd check` can say about them on its own.
//!
//! A field is synced when both systems have it: the field map names some,
//! and every other column of a SQL table is a field of the same name. So a
//! rule on a field outside the field map is certainly wrong when a side is
//! an API (whose fields the definition lists) and only suspicious between
//! two databases (`syncd check --connect` reads their columns).

use super::{DefinitionError, EntityDef, SystemDef, Workflow};

/// What `syncd check` found in the merge rules: rules on fields that
/// cannot be synced, and rules on fields it cannot see without connecting.
#[derive(Debug, Default)]
pub struct RuleFindings {
    pub errors: Vec<DefinitionError>,
    pub warnings: Vec<DefinitionError>,
}

impl Workflow {
    /// Every merge rule naming a field outside the entity's field map.
    pub fn check_rules(&self) -> RuleFindings {
        let mut found = RuleFindings::default();
        for entity in &self.entities {
            for field in entity.merge.keys() {
                if entity.fields.iter().any(|f| &f.cdm == field) {
                    continue;
                }
                let api = [&self.source, &self.target]
                    .into_iter()
                    .find(|system| !listed_by_api(system, entity, field));
                let mut reason = format!("a merge rule on `{field}`, which the field map does not name");
                if let Some(near) = nearest(field, entity.fields.iter().map(|f| f.cdm.as_str())) {
                    reason.push_str(&format!(" (did you mean `{near}`?)"));
                }
                let error = |reason: String| DefinitionError {
                    file: self.file.clone(),
                    entity: Some(entity.name.to_string()),
                    field: Some(format!("merge.{field}")),
                    reason,
                };
                match api {
                    Some(system) => found.errors.push(error(format!(
                        "{reason}: API system `{}` has no such field (its collection's `fields` do not list it)",
                        system.name
                    ))),
                    None => found.warnings.push(error(format!(
                        "{reason}: it applies only if both tables have a column `{field}` \
                         (`syncd check --connect` reads them)"
                    ))),
                }
            }
        }
        found
    }
}

/// Whether `field` may be a field of `entity` in `system`: always for a
/// database (any column is), for an API only when its collection lists it.
fn listed_by_api(system: &SystemDef, entity: &EntityDef, field: &str) -> bool {
    let Some(http) = &system.http else {
        return true;
    };
    http.resources
        .get(entity.name.as_str())
        .is_some_and(|r| r.fields.iter().any(|f| f == field))
}

/// The name in `names` closest to `word`, when it is a likely typo of it
/// (at most two edits, or one for short names).
fn nearest<'a>(word: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    names
        .map(|n| (edits(word, n), n))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, n)| n)
}

/// Edit distance (insertions, deletions, substitutions and swaps of
/// neighbours).
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(target: &str) -> Workflow {
        let text = format!(
            r#"name = "rules"
source = "crm"
target = "other"

[systems.crm]
connector = "sql"
url = "sqlite://crm.db"

{target}

[[entities]]
name = "account"
[entities.fields]
email = "email"
name = "name"
[entities.merge]
emali = "source"
status = "target"
"#
        );
        Workflow::parse("rules.toml", &text).unwrap()
    }

    #[test]
    fn a_rule_outside_the_field_map_is_an_error_against_an_api_and_a_warning_between_databases() {
        let sql = workflow("[systems.other]\nconnector = \"sql\"\nurl = \"sqlite://erp.db\"");
        let found = sql.check_rules();
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        let said: Vec<String> = found.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].contains("`emali`") && said[0].contains("did you mean `email`?"),
            "{said:?}"
        );
        assert!(
            said[1].contains("`status`") && !said[1].contains("did you mean"),
            "{said:?}"
        );

        let api = workflow(
            "[systems.other]\nconnector = \"http\"\nurl = \"http://127.0.0.1:1\"\n\
             entities.account = { path = \"/accounts\", fields = [\"status\"] }",
        );
        let found = api.check_rules();
        let said: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("`emali`") && said[0].contains("API system `other`"),
            "{said:?}"
        );
        // The API lists `status`; whether the CRM's table has it only a
        // connection tells.
        assert_eq!(found.warnings.len(), 1, "{:?}", found.warnings);
        assert_eq!(found.warnings[0].field.as_deref(), Some("merge.status"));
    }

    #[test]
    fn typos_are_near_and_other_names_are_not() {
        assert_eq!(edits("emali", "email"), 1);
        assert_eq!(edits("kitten", "sitting"), 3);
        let names = ["email", "name", "status"];
        assert_eq!(nearest("emial", names.iter().copied()), Some("email"));
        assert_eq!(nearest("nmae", names.iter().copied()), Some("name"));
        assert_eq!(nearest("total", names.iter().copied()), None);
    }
}
