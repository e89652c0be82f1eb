//! An entity type's tables on both systems, resolved and checked against
//! the definition.

use super::*;

/// Resolves the fields of an entity on both systems: the field map renames,
/// every other column is a field of the same name, and only fields both
/// systems have are synced.
pub(super) async fn bind_entity(
    def: &EntityDef,
    source: &Connector,
    target: &Connector,
) -> Result<EntityTables, RunError> {
    let entity = def.name.as_str();
    let mut sides = Vec::new();
    for (connector, pick) in [(source, Side::Source), (target, Side::Target)] {
        let table = def.table(pick);
        let columns = connector
            .columns(def, pick)
            .await?
            .ok_or_else(|| ConnectorError::MissingTable {
                system: connector.system().to_owned(),
                table: table.to_owned(),
                entity: entity.to_owned(),
            })?;
        if let Some(archive) = def
            .deletes
            .archive_column
            .as_ref()
            .filter(|_| pick == Side::Target)
            && !columns.contains_key(archive)
        {
            return Err(ConnectorError::MissingColumn {
                system: connector.system().to_owned(),
                table: table.to_owned(),
                column: archive.clone(),
                entity: entity.to_owned(),
                field: ", archive_column".into(),
            }
            .into());
        }
        let mut cdm_to_column: BTreeMap<String, String> = BTreeMap::new();
        for f in &def.fields {
            let column = f.native(pick);
            if !columns.contains_key(column) {
                return Err(ConnectorError::MissingColumn {
                    system: connector.system().to_owned(),
                    table: table.to_owned(),
                    column: column.to_owned(),
                    entity: entity.to_owned(),
                    field: format!(", field `{}`", f.cdm),
                }
                .into());
            }
            cdm_to_column.insert(f.cdm.clone(), column.to_owned());
        }
        let used: HashSet<String> = cdm_to_column.values().cloned().collect();
        let reserved = [
            syncd_connect::sql::ID_COLUMN,
            syncd_connect::sql::UPDATED_AT_COLUMN,
            def.idempotency_column.as_deref().unwrap_or(""),
            def.deletes.deleted_column(pick).unwrap_or(""),
            def.deletes.archive_column.as_deref().unwrap_or(""),
        ];
        for column in columns.keys() {
            if !used.contains(column) && !reserved.contains(&column.as_str()) {
                cdm_to_column
                    .entry(column.clone())
                    .or_insert_with(|| column.clone());
            }
        }
        sides.push((connector, columns, cdm_to_column, pick));
    }
    let shared: Vec<String> = sides[0]
        .2
        .keys()
        .filter(|k| sides[1].2.contains_key(*k))
        .cloned()
        .collect();
    // What each column holds, and the kind each field agrees on for both.
    let class = |i: usize, cdm: &str| {
        let (connector, columns, map, _) = &sides[i];
        connector.class_of(&columns[&map[cdm]])
    };
    let referenced = |cdm: &str| {
        def.fields
            .iter()
            .find(|f| f.cdm == cdm)
            .and_then(|f| f.references.as_ref())
            .map(|r| r.to_string())
    };
    // A reference holds ids: typed by the system it is in (below), not
    // agreed between the two sides.
    let kinds: HashMap<&str, Kind> = shared
        .iter()
        .map(|cdm| match referenced(cdm) {
            Some(_) => (cdm.as_str(), Kind::Any),
            None => (cdm.as_str(), Kind::agree(class(0, cdm), class(1, cdm))),
        })
        .collect();
    let mut numeric_references = HashMap::new();
    for cdm in &shared {
        let Some(entity) = referenced(cdm) else { continue };
        for (i, side) in [(0, Side::Source), (1, Side::Target)] {
            if let Some(numeric) = sides[i].0.numeric_ids(&entity, class(i, cdm)) {
                numeric_references.insert((cdm.clone(), side), numeric);
            }
        }
    }
    let mut bindings = Vec::new();
    for (connector, columns, map, pick) in &sides {
        let fields = shared
            .iter()
            .map(|cdm| FieldColumn {
                cdm: cdm.clone(),
                column: map[cdm].clone(),
                class: connector.class_of(&columns[&map[cdm]]),
                kind: kinds[cdm.as_str()],
            })
            .collect();
        bindings.push(connector.binding(def, *pick, columns.clone(), fields)?);
    }
    let target = bindings.pop().expect("two sides");
    let source = bindings.pop().expect("two sides");
    let references = def
        .fields
        .iter()
        .filter(|f| shared.contains(&f.cdm))
        .filter_map(|f| f.references.as_ref().map(|r| (f.cdm.clone(), r.to_string())))
        .collect();
    Ok(EntityTables {
        def: def.clone(),
        source,
        target,
        refs: References {
            entity: def.name.to_string(),
            fields: references,
            numeric: numeric_references,
        },
    })
}
