-- Synced records whose last change a system refused, or whose reference
-- could not be written (`mapped` with a `last_error`), are read again by
-- every step after its scan until they are written or agree again: this
-- partial index holds just those, so that pass costs what is out of step,
-- not what the ID map holds.
CREATE INDEX id_mappings_refused ON id_mappings (scope, id)
    WHERE status = 'mapped' AND last_error IS NOT NULL;
