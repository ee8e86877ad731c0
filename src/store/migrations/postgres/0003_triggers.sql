-- Alert triggers, guards and the global pause. Timestamps are TIMESTAMPTZ except the alerts' own starts_at/ends_at (text, as keys).

-- Every Alertmanager notification the receiver accepted, with each alert's outcome.
CREATE TABLE runbook_alert_notifications (
    id               BIGSERIAL PRIMARY KEY,
    received_at      TIMESTAMPTZ NOT NULL,
    receiver         TEXT NOT NULL,
    status           TEXT NOT NULL,
    group_key        TEXT NOT NULL,
    external_url     TEXT NOT NULL,
    alerts           INTEGER NOT NULL,
    truncated_alerts INTEGER NOT NULL DEFAULT 0,
    -- [{fingerprint, starts_at, status, outcome, playbooks: [{playbook, outcome, run_id, reason}]}]
    outcomes         JSONB NOT NULL
);

-- One row per alert occurrence: Alertmanager's fingerprint (a hash of the labels) and its
-- startsAt (kept as the text Alertmanager sent, normalised to RFC 3339 UTC).
CREATE TABLE runbook_alerts (
    fingerprint      TEXT NOT NULL,
    starts_at        TEXT NOT NULL,
    alertname        TEXT NOT NULL,
    labels           JSONB NOT NULL,
    annotations      JSONB NOT NULL,
    -- `firing` or `resolved`: the latest status received.
    status           TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    ends_at          TEXT,
    generator_url    TEXT NOT NULL,
    first_received_at TIMESTAMPTZ NOT NULL,
    last_received_at TIMESTAMPTZ NOT NULL,
    -- When the first resolved notification arrived.
    resolved_at      TIMESTAMPTZ,
    notifications    INTEGER NOT NULL DEFAULT 1,
    -- Whether any playbook's `on.alerts` matched it.
    matched          BOOLEAN NOT NULL,
    PRIMARY KEY (fingerprint, starts_at)
);
CREATE INDEX runbook_alerts_received ON runbook_alerts (last_received_at);

-- The key that makes one run per (playbook, fingerprint, startsAt, firing|resolved): inserted in
-- the transaction that records the run, so concurrent deliveries start one run.
CREATE TABLE runbook_alert_runs (
    playbook    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('firing', 'resolved')),
    run_id      BIGINT NOT NULL,
    decided_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (playbook, fingerprint, starts_at, kind)
);
CREATE INDEX runbook_alert_runs_cooldown ON runbook_alert_runs (playbook, fingerprint, kind, decided_at);

-- The global pause: one row while paused, none otherwise.
CREATE TABLE runbook_pause (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    reason    TEXT NOT NULL,
    paused_by TEXT NOT NULL,
    since     TIMESTAMPTZ NOT NULL
);

-- The guards count a playbook's open runs and its runs of the last hour.
CREATE INDEX runbook_runs_playbook_created ON runbook_runs (playbook, created_at);
CREATE INDEX runbook_runs_playbook_status ON runbook_runs (playbook, status);
