-- A page's reservation of the mappings it is about to create: one row
-- holding them as JSON, deleted by the page's commit, which inserts the
-- mappings as they end (see migrations/postgres/0008_reservations.sql).
CREATE TABLE reservations (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    integration_id  TEXT NOT NULL,
    entity_type     TEXT NOT NULL,
    mappings        TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX reservations_by_scope ON reservations (tenant_id, integration_id, entity_type);
