//! An entity type's tables on both systems, resolved and checked against
//! the definition.

use super::*;

/// Resolves the fields of an entity on both systems: the field map renames,
/// every other column is a field of the same name, and only fields both
/// systems have are synced.
///
/// `filters` (source, target): the tenant column and the tenant's value
/// in it, on a side whose table tenants share.
pub(super) async fn bind_entity(
    def: &EntityDef,
    source: &Connector,
    target: &Connector,
    filters: [Option<(String, String)>; 2],
) -> Result<EntityTables, RunError> {
    let mut sides = Vec::new();
    for (connector, pick, filter) in [
        (source, Side::Source, &filters[0]),
        (target, Side::Target, &filters[1]),
    ] {
        // The first problem of a side stops the run (`inspect` lists all).
        let tenant_column = filter.as_ref().map(|(c, _)| c.as_str());
        let (columns, cdm_to_column, mut missing) = resolve_side(def, connector, pick, tenant_column).await?;
        if !missing.is_empty() {
            return Err(missing.remove(0).into());
        }
        sides.push((connector, columns, cdm_to_column, pick));
    }
    let shared: Vec<String> = sides[0]
        .2
        .keys()
        .filter(|k| sides[1].2.contains_key(*k))
        .cloned()
        .collect();
    // A merge rule on a field not both sides have as a column would settle
    // that field's conflicts by the default rule, unsaid (a typo such as
    // `emial`): the run stops, as `syncd check --connect` says.
    if let Some(rule) = def.merge.keys().find(|rule| !shared.contains(rule)) {
        return Err(ConnectorError::Config {
            system: target.system().to_owned(),
            reason: format!(
                "entity `{}`, field `merge.{rule}`: a merge rule on `{rule}`, which is not a field both systems \
                 have (synced: {})",
                def.name,
                shared.join(", ")
            ),
        }
        .into());
    }
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
    for ((connector, columns, map, pick), filter) in sides.iter().zip(filters) {
        let fields = shared
            .iter()
            .map(|cdm| FieldColumn {
                cdm: cdm.clone(),
                column: map[cdm].clone(),
                class: match connector.class_of(&columns[&map[cdm]]) {
                    // A reference is an id, kept as the ID map keeps ids:
                    // a PostgreSQL `character(n)` one with its padding.
                    syncd_core::value::Class::PaddedText if referenced(cdm).is_some() => {
                        syncd_core::value::Class::Text
                    }
                    class => class,
                },
                kind: kinds[cdm.as_str()],
            })
            .collect();
        let mut binding = connector.binding(def, *pick, columns.clone(), fields)?;
        binding.tenant = filter;
        (binding.stamp_like, binding.mixed_layouts) = connector.stamp_example(&binding).await?;
        bindings.push(binding);
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

/// One side of an entity type: its table's columns (name → type), the
/// column of each field it has (the field map renames; every other column
/// but the engine's own is a field of the same name), and the columns the
/// definition names that it lacks (mapped or archive columns). An error
/// when the table is missing or cannot be read.
async fn resolve_side(
    def: &EntityDef,
    connector: &Connector,
    side: Side,
    tenant_column: Option<&str>,
) -> Result<
    (
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        Vec<ConnectorError>,
    ),
    ConnectorError,
> {
    let entity = def.name.as_str();
    let table = def.table(side);
    let columns = match connector.columns(def, side).await {
        Ok(Some(columns)) => columns,
        Ok(None) => {
            return Err(ConnectorError::MissingTable {
                system: connector.system().to_owned(),
                table: table.to_owned(),
                entity: entity.to_owned(),
            });
        }
        Err(e) => return Err(e),
    };
    let missing = |column: &str, field: String| ConnectorError::MissingColumn {
        system: connector.system().to_owned(),
        table: table.to_owned(),
        column: column.to_owned(),
        entity: entity.to_owned(),
        field,
    };
    let mut problems = Vec::new();
    if let Some(c) = tenant_column
        && !columns.contains_key(c)
    {
        problems.push(missing(c, ", tenant_column".into()));
    }
    if let Some(archive) = def
        .deletes
        .archive_column
        .as_ref()
        .filter(|_| side == Side::Target)
        && !columns.contains_key(archive)
    {
        problems.push(missing(archive, ", archive_column".into()));
    }
    let mut cdm_to_column: BTreeMap<String, String> = BTreeMap::new();
    for f in &def.fields {
        let column = f.native(side);
        match columns.contains_key(column) {
            true => cdm_to_column.insert(f.cdm.clone(), column.to_owned()),
            false => {
                problems.push(missing(column, format!(", field `{}`", f.cdm)));
                None
            }
        };
    }
    let used: HashSet<String> = cdm_to_column.values().cloned().collect();
    let reserved = [
        syncd_connect::sql::ID_COLUMN,
        syncd_connect::sql::UPDATED_AT_COLUMN,
        def.idempotency_column.as_deref().unwrap_or(""),
        def.deletes.deleted_column(side).unwrap_or(""),
        def.deletes.archive_column.as_deref().unwrap_or(""),
        tenant_column.unwrap_or(""),
    ];
    for column in columns.keys() {
        if !used.contains(column) && !reserved.contains(&column.as_str()) {
            cdm_to_column
                .entry(column.clone())
                .or_insert_with(|| column.clone());
        }
    }
    Ok((columns, cdm_to_column, problems))
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
    let bidirectional = workflow.direction == Direction::Bidirectional;
    let mut resolved = HashMap::new();
    for def in &workflow.entities {
        let filters = [Side::Source, Side::Target].map(|side| workflow.tenant_filter(tenant, def, side));
        if let Some(sides) =
            inspect_entity(def, [source, target], filters, bidirectional, &mut problems).await
        {
            resolved.insert(def.name.as_str(), sides);
        }
    }
    // A reference held in a column of numbers, into a table whose records
    // syncd creates with text ids (UUIDs): every record with one would
    // fail. Only the sides records are created in are sure to get them.
    let created_in = if bidirectional { 0 } else { 1 };
    for def in &workflow.entities {
        let Some(sides) = resolved.get(def.name.as_str()) else {
            continue;
        };
        for f in &def.fields {
            let Some(into) = f
                .references
                .as_ref()
                .and_then(|r| resolved.get(r.as_str()).map(|s| (r, s)))
            else {
                continue;
            };
            for (i, connector) in [source, target].into_iter().enumerate().skip(created_in) {
                let (columns, map) = &sides[i];
                let (referenced, (their_columns, _)) = (into.0, &into.1[i]);
                let (Some(column), Some(id_type)) = (map.get(&f.cdm), their_columns.get("id")) else {
                    continue;
                };
                let holds_numbers =
                    connector.numeric_ids(referenced.as_str(), connector.class_of(&columns[column]));
                let text_ids =
                    connector.numeric_ids(referenced.as_str(), connector.class_of(id_type)) == Some(false);
                if holds_numbers == Some(true) && text_ids {
                    problems.push(format!(
                        "entity `{}`, field `{}`: {} column `{column}` ({}) holds numbers, but the `{referenced}` \
                         records it refers to have text ids there (column `id`, {id_type}), which syncd creates \
                         as UUIDs: every record with this reference would fail",
                        def.name,
                        f.cdm,
                        connector.system(),
                        columns[column],
                    ));
                }
            }
        }
    }
    problems
}

/// An entity type's two sides as `inspect_entity` resolved them: each
/// side's columns (name → type) and the column of each field.
type ResolvedSides = [(BTreeMap<String, String>, BTreeMap<String, String>); 2];

/// [`inspect`] for one entity type.
async fn inspect_entity(
    def: &EntityDef,
    [source, target]: [&Connector; 2],
    tenant_filters: [Option<(String, String)>; 2],
    bidirectional: bool,
    problems: &mut Vec<String>,
) -> Option<ResolvedSides> {
    let entity = def.name.as_str();
    let column = |i: usize| tenant_filters[i].as_ref().map(|(column, _)| column.as_str());
    let (s, t) = (
        resolve_side(def, source, Side::Source, column(0)).await,
        resolve_side(def, target, Side::Target, column(1)).await,
    );
    let ((s_columns, s_map, s_missing), (t_columns, t_map, t_missing)) = match (s, t) {
        (Ok(s), Ok(t)) => (s, t),
        (s, t) => {
            for side in [s, t] {
                match side {
                    Err(e) => problems.push(e.to_string()),
                    Ok((.., missing)) => problems.extend(missing.iter().map(ToString::to_string)),
                }
            }
            return None;
        }
    };
    problems.extend(s_missing.iter().chain(&t_missing).map(ToString::to_string));
    // What the connector needs of a table besides the fields: an id column
    // (also for the references to it), a change time, a key column.
    for (connector, side, columns, filter) in [
        (source, Side::Source, &s_columns, &tenant_filters[0]),
        (target, Side::Target, &t_columns, &tenant_filters[1]),
    ] {
        let b = match connector.binding(def, side, columns.clone(), Vec::new()) {
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
            Ok(mut b) => {
                b.tenant = filter.clone();
                b
            }
        };
        // An API is asked for one record of the collection: that reaches
        // it, and shows the credentials taken, the path right and the
        // answer readable (a table's columns said as much of a database).
        if !connector.finds_keys_at_once()
            && let Err(e) = connector.read_changes(&b, None, 1).await
        {
            problems.push(format!("entity `{entity}`: {e}"));
            continue;
        }
        // Only a side that records are created in searches its keys.
        if side == Side::Source && !bidirectional {
            continue;
        }
        match connector.key_is_searchable(&b).await {
            Err(e) => problems.push(e.to_string()),
            Ok(true) => {}
            Ok(false) => {
                let key = b.key_column.as_deref().unwrap_or_default();
                problems.push(format!(
                        "system `{}`: table `{}` (entity `{entity}`) has no index its idempotency column \
                         `{key}` can be searched by: every page of creates searches that column for earlier \
                         attempts, reading the whole table each time (add an index that begins with `{key}`{})",
                        connector.system(),
                        b.table,
                        match &b.tenant {
                            Some((column, _)) => format!(", or with `{column}` and then `{key}`"),
                            None => String::new(),
                        }
                    ))
            }
        }
    }
    // The fields both sides have, as `bind_entity` syncs them.
    let synced: Vec<&String> = s_map.keys().filter(|k| t_map.contains_key(*k)).collect();
    for cdm in &synced {
        let referenced = def
            .fields
            .iter()
            .any(|f| f.cdm == **cdm && f.references.is_some());
        let (sc, tc) = (&s_map[*cdm], &t_map[*cdm]);
        let (sk, tk) = (
            source.class_of(&s_columns[sc]).kind(),
            target.class_of(&t_columns[tc]).kind(),
        );
        if !referenced && !Kind::can_meet(sk, tk) {
            problems.push(format!(
                "entity `{entity}`, field `{cdm}`: {} column `{sc}` ({}) and {} column `{tc}` ({}) hold different \
                 kinds of value; every changed record would fail",
                source.system(),
                s_columns[sc],
                target.system(),
                t_columns[tc]
            ));
        }
        // An instant written into a wall-clock column keeps no offset: it
        // is refused, every one (the other way, a wall-clock time is read
        // as UTC).
        let into_wall_clock = match (sk, tk) {
            (Kind::Timestamp { zoned: true }, Kind::Timestamp { zoned: false }) => {
                Some((target.system(), tc, &t_columns[tc]))
            }
            (Kind::Timestamp { zoned: false }, Kind::Timestamp { zoned: true }) if bidirectional => {
                Some((source.system(), sc, &s_columns[sc]))
            }
            _ => None,
        };
        if let Some((system, column, kind)) = into_wall_clock {
            problems.push(format!(
                "entity `{entity}`, field `{cdm}`: {system} column `{column}` ({kind}) holds wall-clock times, and \
                 the other side's holds instants: an instant written there keeps no offset, so every changed \
                 record would fail (give both columns the same kind of time)"
            ));
        }
    }
    for rule in def.merge.keys() {
        if !synced.contains(&rule) {
            let names: Vec<&str> = synced.iter().map(|cdm| cdm.as_str()).collect();
            problems.push(format!(
                "entity `{entity}`, field `merge.{rule}`: a merge rule on `{rule}`, which is not a field both \
                 systems have (synced: {})",
                names.join(", ")
            ));
        }
    }
    Some([(s_columns, s_map), (t_columns, t_map)])
}
