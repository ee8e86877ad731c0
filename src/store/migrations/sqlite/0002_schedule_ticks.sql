-- One row per schedule tick that `runbook serve` fired: the primary key is what makes a tick fire
-- once across replicas (the replica whose INSERT takes the row enqueues the run, in the same
-- transaction). Timestamps are UTC text (%Y-%m-%dT%H:%M:%fZ), so they sort as text.
CREATE TABLE runbook_schedule_ticks (
    playbook     TEXT NOT NULL,
    -- The tick's time by the schedule.
    scheduled_at TEXT NOT NULL,
    -- When a scheduler fired it, by that scheduler's clock.
    fired_at     TEXT NOT NULL,
    -- `run` (on time), `catch_up` (the one run for ticks missed while no scheduler ran) or
    -- `skipped` (missed, and no run of its own).
    outcome      TEXT NOT NULL CHECK (outcome IN ('run', 'catch_up', 'skipped')),
    -- The run's `runbook.run` command; NULL when skipped.
    command_id   INTEGER,
    -- The process that fired it.
    fired_by     TEXT NOT NULL,
    PRIMARY KEY (playbook, scheduled_at)
);
