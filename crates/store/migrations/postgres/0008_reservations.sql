-- A page reserves the mappings of the records it is about to create, so
-- that a crash between the create and the page's commit leaves a trace the
-- next run finishes from. The reservations were `pending` rows of the ID
-- map, each written twice (inserted, then updated to its end state, which
-- moves it in every index): `perf` put most of `bench sync`'s server time
-- there. A page's reservation is now one row here, holding its mappings as
-- JSON; the page's commit inserts the mappings as they end and deletes the
-- row. A row left by a page that never committed becomes `pending`
-- mappings when a step of its scope starts next.
CREATE TABLE reservations (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    entity_type     text        NOT NULL,
    mappings        json        NOT NULL,
    created_at      timestamptz NOT NULL
);
-- Kept as written: compressing a page's ~130 kB of held mappings cost
-- several times more than writing them, and the row lives for one page.
ALTER TABLE reservations ALTER COLUMN mappings SET STORAGE EXTERNAL;
CREATE INDEX reservations_by_scope ON reservations (tenant_id, integration_id, entity_type);
