-- The reconciliation pass reads the `mapped` mappings' ids in source-id
-- order, then in target-id order (`Store::mapped_ids_page`). With the
-- mapping id and status in the two lookup indexes, each of those pages is an
-- index-only scan; before, every row was fetched from the heap, in random
-- order for the target side. Same keys, same uniqueness, same predicates.
CREATE UNIQUE INDEX id_mappings_by_source_ids ON id_mappings (tenant_id, integration_id, entity_type, source_id)
    INCLUDE (id, status) WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX id_mappings_by_target_ids ON id_mappings (tenant_id, integration_id, entity_type, target_id)
    INCLUDE (id, status) WHERE target_id IS NOT NULL;
DROP INDEX id_mappings_by_source;
DROP INDEX id_mappings_by_target;
ALTER INDEX id_mappings_by_source_ids RENAME TO id_mappings_by_source;
ALTER INDEX id_mappings_by_target_ids RENAME TO id_mappings_by_target;
