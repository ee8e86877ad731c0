-- SQLite mirror of postgres.sql: timestamps are UTC text (%Y-%m-%dT%H:%M:%fZ), JSON is text.
-- The streaming runtime's tables (the seed runbook's names and columns) and the engine's records.
CREATE TABLE IF NOT EXISTS command_queue (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    entity        TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    command_type  TEXT NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    payload       TEXT NOT NULL DEFAULT '{}',
    status        TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    error_message TEXT,
    error_type    TEXT,
    run_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    locked_by     TEXT,
    locked_until  TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    completed_at  TEXT
);
CREATE INDEX IF NOT EXISTS command_queue_claim ON command_queue (priority DESC, run_at, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS command_queue_status ON command_queue (status, updated_at);
CREATE INDEX IF NOT EXISTS command_queue_lease ON command_queue (locked_until) WHERE status = 'processing';

CREATE TABLE IF NOT EXISTS outbox_final (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id      INTEGER,
    entity          TEXT NOT NULL,
    entity_id       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    topic           TEXT NOT NULL,
    payload         TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    sent_at         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS outbox_final_unsent ON outbox_final (id) WHERE sent_at IS NULL;

CREATE TABLE IF NOT EXISTS work_state (
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'idle',
    locked_at  TEXT,
    locked_by  TEXT,
    command_id INTEGER,
    takeover   INTEGER NOT NULL DEFAULT 0,
    expiries   INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (entity, entity_id)
);
CREATE INDEX IF NOT EXISTS work_state_updating ON work_state (locked_at) WHERE state = 'updating';

CREATE TABLE IF NOT EXISTS runtime_settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_by TEXT NOT NULL DEFAULT 'config'
);

CREATE TABLE IF NOT EXISTS runbook_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    playbook    TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    params      TEXT NOT NULL,
    status      TEXT NOT NULL,
    dry_run     INTEGER NOT NULL DEFAULT 0,
    parent_id   INTEGER,
    command_id  INTEGER,
    failed_step TEXT,
    waiting_step TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at  TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS runbook_runs_playbook ON runbook_runs (playbook, id DESC);

CREATE TABLE IF NOT EXISTS runbook_step_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runbook_runs (id) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    item        INTEGER,
    status      TEXT NOT NULL,
    input       TEXT,
    output      TEXT,
    error       TEXT,
    started_at  TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runbook_step_attempts_run ON runbook_step_attempts (run_id, id);

CREATE TABLE IF NOT EXISTS runbook_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor  TEXT NOT NULL,
    op     TEXT NOT NULL,
    filter TEXT NOT NULL,
    rows   INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS runbook_approvals (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   INTEGER NOT NULL REFERENCES runbook_runs (id) ON DELETE CASCADE,
    step_id  TEXT NOT NULL,
    decision TEXT NOT NULL,
    actor    TEXT NOT NULL,
    comment  TEXT,
    at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
