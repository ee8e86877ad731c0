-- Every admitted alert writes a row to runbook_alert_runs and runbook_runs, and every index entry
-- costs the receiver's one writer several microseconds inside the guard transaction.

-- The cooldown lookup (a playbook's runs of one fingerprint and kind decided since a time) is
-- served by the primary key itself, reordered so that (playbook, fingerprint, kind) leads and
-- carrying the decision's time and run: one index entry per key instead of two. The key's unique
-- columns are the same, so one run per (playbook, fingerprint, startsAt, kind) still holds.
ALTER TABLE runbook_alert_runs DROP CONSTRAINT runbook_alert_runs_pkey;
ALTER TABLE runbook_alert_runs ADD PRIMARY KEY (playbook, fingerprint, kind, starts_at) INCLUDE (decided_at, run_id);
DROP INDEX runbook_alert_runs_cooldown;

-- Retention reads finished runs by age; a run still queued or running has no finished_at and
-- needs no entry until it ends.
DROP INDEX runbook_runs_finished;
CREATE INDEX runbook_runs_finished ON runbook_runs (finished_at) WHERE finished_at IS NOT NULL;
