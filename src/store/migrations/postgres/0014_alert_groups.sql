-- The alerts of a notification that carried more than one, stored once by content hash (SHA-256
-- of the JSON text, hex) for every run it started: a run's `alerts` is its notification's group,
-- and a notification of N alerts all matching a playbook started N runs, each of whose queue
-- commands carried all N alerts (N squared; a 1 MiB notification of 3,000 alerts froze the
-- receiver). The commands now carry the hash (`alerts_ref`); the worker that runs one reads the
-- group here. Kept as text: only the worker reads it, whole.
CREATE TABLE runbook_alert_groups (
    hash       TEXT PRIMARY KEY,
    alerts     TEXT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
