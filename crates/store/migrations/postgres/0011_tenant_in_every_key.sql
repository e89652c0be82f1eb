-- The state tables are to be distributable by tenant_id (Citus, see
-- ARCHITECTURE.md), which enforces a primary key or unique index only when
-- it includes the distribution column. The keys on a surrogate id gain
-- tenant_id after the id, so that a lookup by id alone still uses them and
-- an insert compares the tenant only on an equal id (never, as ids are
-- unique): no index is added and none leads with text. Foreign keys to runs
-- follow its key. store_conformance checks that every unique key of a
-- distributed table includes tenant_id.
ALTER TABLE steps DROP CONSTRAINT steps_run_id_fkey;
ALTER TABLE run_leases DROP CONSTRAINT run_leases_run_id_fkey;
ALTER TABLE delete_candidates DROP CONSTRAINT delete_candidates_run_id_fkey;
ALTER TABLE run_holds DROP CONSTRAINT run_holds_run_id_fkey;

ALTER TABLE runs DROP CONSTRAINT runs_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE steps DROP CONSTRAINT steps_pkey, ADD PRIMARY KEY (run_id, entity_type, direction, tenant_id);
ALTER TABLE run_leases DROP CONSTRAINT run_leases_pkey, ADD PRIMARY KEY (run_id, tenant_id);
ALTER TABLE id_mappings DROP CONSTRAINT id_mappings_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE conflicts DROP CONSTRAINT conflicts_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE reservations DROP CONSTRAINT reservations_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE mapping_scopes DROP CONSTRAINT mapping_scopes_pkey, ADD PRIMARY KEY (id, tenant_id);

ALTER TABLE steps ADD FOREIGN KEY (run_id, tenant_id) REFERENCES runs (id, tenant_id) ON DELETE CASCADE;
ALTER TABLE run_leases ADD FOREIGN KEY (run_id, tenant_id) REFERENCES runs (id, tenant_id) ON DELETE CASCADE;
ALTER TABLE delete_candidates ADD FOREIGN KEY (run_id, tenant_id) REFERENCES runs (id, tenant_id) ON DELETE CASCADE;
ALTER TABLE run_holds ADD FOREIGN KEY (run_id, tenant_id) REFERENCES runs (id, tenant_id) ON DELETE CASCADE;

-- A scope number belongs to one tenant: the scoped ID-map keys end with it.
CREATE UNIQUE INDEX id_mappings_by_source_t ON id_mappings (scope, source_id, tenant_id)
    INCLUDE (id, status) WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX id_mappings_by_target_t ON id_mappings (scope, target_id, tenant_id)
    INCLUDE (id, status) WHERE target_id IS NOT NULL;
DROP INDEX id_mappings_by_source;
DROP INDEX id_mappings_by_target;
ALTER INDEX id_mappings_by_source_t RENAME TO id_mappings_by_source;
ALTER INDEX id_mappings_by_target_t RENAME TO id_mappings_by_target;
