-- Deletes and staleness.

-- Mappings a run found gone on one side (`gone`: 'source' or 'target'),
-- recorded before anything is deleted, so that the mass-deletion brake can
-- count them first and a crashed delete pass continues where it stopped.
-- Kept after the run as the record of what it deleted.
CREATE TABLE delete_candidates (
    tenant_id       text        NOT NULL,
    run_id          text        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    entity_type     text        NOT NULL,
    mapping_id      text        NOT NULL,
    gone            text        NOT NULL CHECK (gone IN ('source', 'target')),
    created_at      text        NOT NULL,
    PRIMARY KEY (tenant_id, run_id, entity_type, mapping_id)
);

-- A run held by the mass-deletion brake: it waits, suspended, until an
-- operator confirms (`syncd runs confirm-deletes`) or cancels it.
CREATE TABLE run_holds (
    tenant_id       text        NOT NULL,
    run_id          text        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    entity_type     text        NOT NULL,
    count           integer     NOT NULL,
    mapped          integer     NOT NULL,
    delete_limit    integer     NOT NULL,
    confirmed_by    text,
    confirmed_at    text       ,
    created_at      text        NOT NULL,
    PRIMARY KEY (tenant_id, run_id, entity_type)
);

-- When each entity type was last reconciled (checked for hard deletes).
CREATE TABLE reconciles (
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    entity_type     text        NOT NULL,
    reconciled_at   text        NOT NULL,
    PRIMARY KEY (tenant_id, integration_id, entity_type)
);

-- Delete steps run after the sync steps, in reverse stage order. SQLite
-- cannot change a CHECK constraint in place: the table is rebuilt.
CREATE TABLE steps_new (
    run_id          text        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    tenant_id       text        NOT NULL,
    stage           integer     NOT NULL,
    entity_type     text        NOT NULL,
    direction       text        NOT NULL CHECK (direction IN ('forward', 'backward', 'delete')),
    state           text        NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    cursor          text,
    counters        text       NOT NULL DEFAULT '{}',
    error           text,
    updated_at      text NOT NULL,
    PRIMARY KEY (run_id, entity_type, direction)
);
INSERT INTO steps_new SELECT run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, error, updated_at
    FROM steps;
DROP TABLE steps;
ALTER TABLE steps_new RENAME TO steps;
CREATE INDEX steps_by_tenant ON steps (tenant_id, run_id);
