-- Sessions of the web console (`/ui`): a sign-in with an API token opens one. The cookie holds a
-- random session id; the store keeps only digests (SHA-256, hex) of it and of the API token, so
-- a copy of the store opens no session and names no token. A session whose token left the config
-- is refused (and deleted) on its next request. Times are Unix seconds, the same on both backends.
CREATE TABLE runbook_console_sessions (
    id_digest    TEXT PRIMARY KEY,
    token_digest TEXT NOT NULL,
    token_name   TEXT NOT NULL,
    role         TEXT NOT NULL,
    -- The CSRF token every form of this session carries.
    csrf         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX runbook_console_sessions_expiry ON runbook_console_sessions (expires_at);
