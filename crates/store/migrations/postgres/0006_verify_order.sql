-- Re-verification (`verify_after`) reads, on every run that does not
-- reconcile, the page of `mapped` mappings verified longest ago. Without
-- this index that page scanned and sorted all of an entity type's mappings
-- each time; with it a page stops after its rows.
CREATE INDEX id_mappings_verify_order ON id_mappings (tenant_id, integration_id, entity_type, updated_at, id)
    WHERE status = 'mapped';
