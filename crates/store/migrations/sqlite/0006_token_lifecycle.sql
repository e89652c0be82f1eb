-- Tokens have a lifecycle: a prefix that names a token without being it,
-- an expiry, a revocation, and when the token was last used.
ALTER TABLE api_tokens ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
ALTER TABLE api_tokens ADD COLUMN revoked_at TEXT;
ALTER TABLE api_tokens ADD COLUMN last_used_at TEXT;
