-- syncd schema, PostgreSQL. Every table carries tenant_id and every index
-- that serves a lookup starts with it.

CREATE TABLE id_mappings (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    entity_type     text        NOT NULL,
    source_id       text,
    target_id       text,
    status          text        NOT NULL CHECK (status IN ('pending', 'mapped', 'failed', 'stale')),
    base            jsonb,
    idempotency_key text,
    last_error      text,
    attempts        integer     NOT NULL DEFAULT 0,
    -- bumped on every write; the cache keeps only the newest version
    version         bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CHECK (source_id IS NOT NULL OR target_id IS NOT NULL)
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX id_mappings_by_source ON id_mappings (tenant_id, integration_id, entity_type, source_id);
CREATE UNIQUE INDEX id_mappings_by_target ON id_mappings (tenant_id, integration_id, entity_type, target_id);
-- Unsettled mappings (the retry pass at the start of every step) are found
-- through this partial index, so a step's cost grows with what is unsettled,
-- not with the size of the ID map; mapped rows (nearly all) stay out of it.
CREATE INDEX id_mappings_unsettled ON id_mappings (tenant_id, integration_id, entity_type, id)
    WHERE status <> 'mapped';

CREATE TABLE runs (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('planned', 'running', 'suspended', 'succeeded', 'failed', 'cancelled')),
    plan            jsonb       NOT NULL,
    trigger         text        NOT NULL DEFAULT 'manual',
    error           text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
-- at most one active run per (tenant, integration)
CREATE UNIQUE INDEX runs_one_active ON runs (tenant_id, integration_id)
    WHERE state IN ('planned', 'running', 'suspended');
CREATE INDEX runs_by_state ON runs (tenant_id, state, created_at);

CREATE TABLE steps (
    run_id          uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    tenant_id       text        NOT NULL,
    stage           integer     NOT NULL,
    entity_type     text        NOT NULL,
    direction       text        NOT NULL CHECK (direction IN ('forward', 'backward')),
    state           text        NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    cursor          jsonb,
    counters        jsonb       NOT NULL DEFAULT '{}',
    error           text,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (run_id, entity_type, direction)
);
CREATE INDEX steps_by_tenant ON steps (tenant_id, run_id);

CREATE TABLE conflicts (
    id                 uuid        PRIMARY KEY,
    tenant_id          text        NOT NULL,
    integration_id     text        NOT NULL,
    entity_type        text        NOT NULL,
    run_id             uuid,
    source_id          text        NOT NULL,
    target_id          text        NOT NULL,
    source_record      jsonb       NOT NULL,
    target_record      jsonb       NOT NULL,
    base               jsonb,
    conflicting_fields jsonb       NOT NULL,
    strategy_applied   text        NOT NULL,
    resolution         jsonb,
    status             text        NOT NULL CHECK (status IN ('pending', 'resolved')),
    resolved_by        text,
    created_at         timestamptz NOT NULL,
    resolved_at        timestamptz,
    -- when a reviewer's resolution was written to both systems
    applied_at         timestamptz
);
CREATE INDEX conflicts_by_status ON conflicts (tenant_id, status, entity_type, created_at);
-- a record has at most one open conflict
CREATE UNIQUE INDEX conflicts_open_per_record ON conflicts (tenant_id, integration_id, entity_type, source_id)
    WHERE status = 'pending';
CREATE INDEX conflicts_open_by_target ON conflicts (tenant_id, integration_id, entity_type, target_id)
    WHERE status = 'pending';
CREATE INDEX conflicts_by_run ON conflicts (tenant_id, run_id, status);

-- A run is executed by the worker holding its lease; an expired lease may be
-- taken over.
CREATE TABLE run_leases (
    run_id          uuid        PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    tenant_id       text        NOT NULL,
    worker_id       text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    heartbeat_at    timestamptz NOT NULL
);
CREATE INDEX run_leases_by_tenant ON run_leases (tenant_id, expires_at);

CREATE TABLE schedules (
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    cron            text        NOT NULL,
    next_fire_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, integration_id)
);

-- One row per fired tick: the primary key stops two schedulers from starting
-- the same tick twice.
CREATE TABLE schedule_fires (
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    fire_at         timestamptz NOT NULL,
    run_id          uuid,
    PRIMARY KEY (tenant_id, integration_id, fire_at)
);

-- Where each entity type's change scan of each system stopped: the next
-- run reads changes after this point.
CREATE TABLE sync_cursors (
    tenant_id       text        NOT NULL,
    integration_id  text        NOT NULL,
    entity_type     text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('source', 'target')),
    cursor          jsonb       NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, integration_id, entity_type, side)
);

-- API bearer tokens, stored only as SHA-256 hashes. A token belongs to one
-- tenant, or is an admin token (tenant_id '').
CREATE TABLE api_tokens (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    admin           boolean     NOT NULL,
    token_hash      text        NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL
);
