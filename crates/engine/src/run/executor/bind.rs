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

/// Every problem `syncd check --connect` finds in `workflow` for `tenant`,
/// connecting to both systems and reading their tables' columns, writing
/// nothing: a system out of reach, a missing table or column, columns whose
/// kinds of value cannot meet, a merge rule on a field that is not synced,
/// a table the connector cannot bind (no id column, say).
pub async fn inspect(workflow: &Workflow, tenant: &TenantId) -> Vec<String> {
    let mut problems = Vec::new();
    let env = |var: &str| std::env::var(var).ok();
    let mut connectors = Vec::new();
    for system in [&workflow.source, &workflow.target] {
        let system = workflow.system_for(tenant, system);
        let connected = match workflow.system_url(tenant, &system, env) {
            Ok(url) => Connector::connect(&system, &url).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(c) => connectors.push(c),
            Err(e) => problems.push(e),
        }
    }
    let [source, target] = &connectors[..] else {
        return problems;
    };
    for def in &workflow.entities {
        inspect_entity(def, source, target, &mut problems).await;
    }
    problems
}

/// [`inspect`] for one entity type.
async fn inspect_entity(def: &EntityDef, source: &Connector, target: &Connector, problems: &mut Vec<String>) {
    let entity = def.name.as_str();
    let mut sides = Vec::new();
    for (connector, side) in [(source, Side::Source), (target, Side::Target)] {
        let table = def.table(side);
        let columns = match connector.columns(def, side).await {
            Ok(Some(columns)) => columns,
            Ok(None) => {
                let missing = ConnectorError::MissingTable {
                    system: connector.system().to_owned(),
                    table: table.to_owned(),
                    entity: entity.to_owned(),
                };
                problems.push(missing.to_string());
                continue;
            }
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let archive = def
            .deletes
            .archive_column
            .as_ref()
            .filter(|_| side == Side::Target);
        let wanted = def
            .fields
            .iter()
            .map(|f| (f.native(side).to_owned(), format!(", field `{}`", f.cdm)))
            .chain(archive.map(|a| (a.clone(), ", archive_column".to_owned())));
        for (column, field) in wanted {
            if !columns.contains_key(&column) {
                let missing = ConnectorError::MissingColumn {
                    system: connector.system().to_owned(),
                    table: table.to_owned(),
                    column,
                    entity: entity.to_owned(),
                    field,
                };
                problems.push(missing.to_string());
            }
        }
        sides.push((connector, side, columns));
    }
    let [(s, _, s_columns), (t, _, t_columns)] = &sides[..] else {
        return;
    };
    // The fields both sides have, as `bind_entity` will sync them.
    let column = |columns: &BTreeMap<String, String>, side: Side, cdm: &str| {
        let named = def
            .fields
            .iter()
            .find(|f| f.cdm == cdm)
            .map(|f| f.native(side).to_owned());
        named.or_else(|| columns.contains_key(cdm).then(|| cdm.to_owned()))
    };
    // Columns of the engine's own (ids, times, markers) are no fields.
    let reserved = |side: Side| {
        [
            Some(syncd_connect::sql::ID_COLUMN),
            Some(syncd_connect::sql::UPDATED_AT_COLUMN),
            def.idempotency_column.as_deref(),
            def.deletes.deleted_column(side),
            def.deletes.archive_column.as_deref(),
        ]
    };
    let own = |cdm: &String| {
        def.fields.iter().any(|f| f.cdm == *cdm)
            || !(reserved(Side::Source).contains(&Some(cdm.as_str()))
                || reserved(Side::Target).contains(&Some(cdm.as_str())))
    };
    let synced: Vec<(String, String, String)> = def
        .fields
        .iter()
        .map(|f| f.cdm.clone())
        .chain(s_columns.keys().filter(|c| own(c)).cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|cdm| {
            let sc = column(s_columns, Side::Source, &cdm).filter(|c| s_columns.contains_key(c))?;
            let tc = column(t_columns, Side::Target, &cdm).filter(|c| t_columns.contains_key(c))?;
            Some((cdm, sc, tc))
        })
        .collect();
    for (cdm, sc, tc) in &synced {
        let referenced = def.fields.iter().any(|f| f.cdm == *cdm && f.references.is_some());
        let (sk, tk) = (
            s.class_of(&s_columns[sc]).kind(),
            t.class_of(&t_columns[tc]).kind(),
        );
        if !referenced && !Kind::can_meet(sk, tk) {
            problems.push(format!(
                "entity `{entity}`, field `{cdm}`: {} column `{sc}` ({}) and {} column `{tc}` ({}) hold different \
                 kinds of value; every changed record would fail",
                s.system(),
                s_columns[sc],
                t.system(),
                t_columns[tc]
            ));
        }
    }
    for rule in def.merge.keys() {
        if !synced.iter().any(|(cdm, _, _)| cdm == rule) {
            let mut names: Vec<&str> = synced.iter().map(|(cdm, _, _)| cdm.as_str()).collect();
            names.sort();
            problems.push(format!(
                "entity `{entity}`, field `merge.{rule}`: a merge rule on `{rule}`, which is not a field both \
                 systems have (synced: {})",
                names.join(", ")
            ));
        }
    }
}
