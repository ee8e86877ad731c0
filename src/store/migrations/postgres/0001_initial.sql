-- The streaming runtime's tables (the seed runbook's names and columns) and the engine's records.
CREATE TABLE IF NOT EXISTS command_queue (
    id            BIGSERIAL PRIMARY KEY,
    entity        TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    command_type  TEXT NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    payload       JSONB NOT NULL DEFAULT '{}'::jsonb,
    status        TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    error_message TEXT,
    error_type    TEXT,
    run_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    locked_by     TEXT,
    locked_until  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    completed_at  TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS command_queue_claim ON command_queue (priority DESC, run_at, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS command_queue_status ON command_queue (status, updated_at);
CREATE INDEX IF NOT EXISTS command_queue_lease ON command_queue (locked_until) WHERE status = 'processing';

CREATE TABLE IF NOT EXISTS outbox_final (
    id              BIGSERIAL PRIMARY KEY,
    command_id      BIGINT,
    entity          TEXT NOT NULL,
    entity_id       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    topic           TEXT NOT NULL,
    payload         JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    sent_at         TIMESTAMPTZ,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS outbox_final_unsent ON outbox_final (id) WHERE sent_at IS NULL;

CREATE TABLE IF NOT EXISTS work_state (
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'idle',
    locked_at  TIMESTAMPTZ,
    locked_by  TEXT,
    command_id BIGINT,
    takeover   BOOLEAN NOT NULL DEFAULT FALSE,
    expiries   BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (entity, entity_id)
);
CREATE INDEX IF NOT EXISTS work_state_updating ON work_state (locked_at) WHERE state = 'updating';

CREATE TABLE IF NOT EXISTS runtime_settings (
    key        TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_by TEXT NOT NULL DEFAULT 'config'
);

CREATE TABLE IF NOT EXISTS runbook_runs (
    id          BIGSERIAL PRIMARY KEY,
    playbook    TEXT NOT NULL,
    trigger     JSONB NOT NULL,
    params      JSONB NOT NULL,
    status      TEXT NOT NULL,
    dry_run     BOOLEAN NOT NULL DEFAULT FALSE,
    parent_id   BIGINT,
    command_id  BIGINT,
    failed_step TEXT,
    waiting_step TEXT,
    error       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS runbook_runs_playbook ON runbook_runs (playbook, id DESC);

CREATE TABLE IF NOT EXISTS runbook_step_attempts (
    id          BIGSERIAL PRIMARY KEY,
    run_id      BIGINT NOT NULL REFERENCES runbook_runs (id) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    item        BIGINT,
    status      TEXT NOT NULL,
    input       JSONB,
    output      JSONB,
    error       TEXT,
    started_at  TIMESTAMPTZ NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS runbook_step_attempts_run ON runbook_step_attempts (run_id, id);

CREATE TABLE IF NOT EXISTS runbook_audit (
    id     BIGSERIAL PRIMARY KEY,
    at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    actor  TEXT NOT NULL,
    op     TEXT NOT NULL,
    filter JSONB NOT NULL,
    rows   BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS runbook_approvals (
    id       BIGSERIAL PRIMARY KEY,
    run_id   BIGINT NOT NULL REFERENCES runbook_runs (id) ON DELETE CASCADE,
    step_id  TEXT NOT NULL,
    decision TEXT NOT NULL,
    actor    TEXT NOT NULL,
    comment  TEXT,
    at       TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
