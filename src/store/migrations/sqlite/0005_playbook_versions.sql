-- The text of every playbook version a run was enqueued or started with, by content hash (SHA-256
-- of the file's bytes, hex): the replica that runs a queued run compiles this text, so a run keeps
-- the version it was enqueued with whatever the playbooks folder holds by then. Timestamps are UTC
-- text (%Y-%m-%dT%H:%M:%fZ), so they sort as text.
CREATE TABLE runbook_playbook_versions (
    hash       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    text       TEXT NOT NULL,
    first_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- The version each run ran (NULL for runs recorded before versions were kept).
ALTER TABLE runbook_runs ADD COLUMN version TEXT;
-- Retention prunes finished runs by age.
CREATE INDEX runbook_runs_finished ON runbook_runs (finished_at);
