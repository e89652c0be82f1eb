-- The upserts of steps and leases name their keys with tenant_id, as the
-- PostgreSQL keys now are (distributable by tenant); SQLite needs a unique
-- index of the same columns for those upserts.
CREATE UNIQUE INDEX steps_with_tenant ON steps (run_id, entity_type, direction, tenant_id);
CREATE UNIQUE INDEX run_leases_with_tenant ON run_leases (run_id, tenant_id);
