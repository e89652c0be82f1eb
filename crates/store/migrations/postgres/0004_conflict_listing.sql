-- The conflict listing (API, review page, `syncd conflicts list`) reads a
-- tenant's conflicts of one status oldest first, a page at a time. With this
-- index a page stops after its rows instead of sorting every pending
-- conflict of the tenant (measured by `syncd bench api`).
CREATE INDEX conflicts_listing ON conflicts (tenant_id, status, created_at, id);
