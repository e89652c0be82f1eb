-- Batched mapping lookups must not depend on fresh planner statistics.
--
-- During a tenant's first large sync, `id_mappings` grows faster than
-- autovacuum analyzes it, and the planner believes a (tenant, integration,
-- entity type) prefix matches about one row. With both unique indexes
-- sharing that prefix, it then scanned the whole prefix of either index and
-- filtered the 1,000 ids of a batch, so every lookup cost grew with the
-- tenant's mapping count (2 ms at 5,000 mappings, 36 ms at 60,000).
--
-- Lookups now probe one id at a time (see `fetch_mappings`), and each index
-- is partial on its id column being set: a lookup by source id can only use
-- the by-source index, a lookup by target id only the by-target index, both
-- with all four columns as the index condition. NULLs were never unique, so
-- uniqueness is unchanged.
DROP INDEX id_mappings_by_source;
DROP INDEX id_mappings_by_target;
CREATE UNIQUE INDEX id_mappings_by_source ON id_mappings (tenant_id, integration_id, entity_type, source_id)
    WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX id_mappings_by_target ON id_mappings (tenant_id, integration_id, entity_type, target_id)
    WHERE target_id IS NOT NULL;
