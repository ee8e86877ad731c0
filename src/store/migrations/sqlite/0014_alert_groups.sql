-- The alerts of a notification that carried more than one, stored once by content hash (SHA-256
-- of the JSON text, hex) for every run it started, instead of in each run's queue command (see
-- the PostgreSQL migration). Timestamps are UTC text (%Y-%m-%dT%H:%M:%fZ), so they sort as text.
CREATE TABLE runbook_alert_groups (
    hash       TEXT PRIMARY KEY,
    alerts     TEXT NOT NULL,
    first_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
