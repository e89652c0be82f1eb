-- Tokens have a lifecycle: a prefix that names a token without being it,
-- an expiry, a revocation, and when the token was last used.
ALTER TABLE api_tokens
    ADD COLUMN prefix       text        NOT NULL DEFAULT '',
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN revoked_at   timestamptz,
    ADD COLUMN last_used_at timestamptz;
