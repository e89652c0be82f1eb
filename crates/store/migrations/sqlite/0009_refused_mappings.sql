-- Synced records whose last change a system refused, or whose reference
-- could not be written (`mapped` with a `last_error`), are read again by
-- every step after its scan until they are written or agree again: this
-- partial index holds just those (its predicate is the query's, term for
-- term, as SQLite needs to use it).
CREATE INDEX id_mappings_refused ON id_mappings (tenant_id, integration_id, entity_type, id)
    WHERE status = 'mapped' AND last_error IS NOT NULL;
