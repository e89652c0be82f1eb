-- Deletes and staleness.

-- Mappings a run found gone on one side (`gone`: 'source' or 'target'),
-- recorded before anything is deleted, so that the mass-deletion brake can
-- count them first and a crashed delete pass continues where it stopped.
-- Kept after the run as the record of what it deleted.
CREATE TABLE delete_candidates (
    tenant_id       text        NOT NULL,
    run_id          uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    entity_type     text        NOT NULL,
    mapping_id      uuid        NOT NULL,
    gone            text        NOT NULL CHECK (gone IN ('source', 'target')),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, run_id, entity_type, mapping_id)
);

-- A run held by the mass-deletion brake: it waits, suspended, until an
-- operator confirms (`syncd runs confirm-deletes`) or cancels it.
CREATE TABLE run_holds (
    tenant_id       text        NOT NULL,
    run_id          uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    entity_type     text        NOT NULL,
    count           bigint      NOT NULL,
    mapped          bigint      NOT NULL,
    delete_limit    bigint      NOT NULL,
    confirmed_by    text,
    confirmed_at    timestamptz,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, run_id, entity_type)
);

-- When each entity type was last reconciled (checked for hard deletes).
CREATE TABLE reconciles (
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    entity_type     text        NOT NULL,
    reconciled_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, integration_id, entity_type)
);

-- Delete steps run after the sync steps, in reverse stage order.
ALTER TABLE steps DROP CONSTRAINT steps_direction_check;
ALTER TABLE steps ADD CONSTRAINT steps_direction_check CHECK (direction IN ('forward', 'backward', 'delete'));
