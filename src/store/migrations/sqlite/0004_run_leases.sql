-- Run leases: a running run renews `lease_until` every few seconds (`streaming.run_lease`); a run
-- whose lease has expired is taken for dead by `runbook serve` and marked `interrupted` (or left to
-- its queue command when its playbook resumes). Runs recorded before this migration have no lease
-- and are never taken for dead by it.
ALTER TABLE runbook_runs ADD COLUMN heartbeat_at TEXT;
ALTER TABLE runbook_runs ADD COLUMN lease_until TEXT;
-- The reaper reads the few runs that have not ended, by status.
CREATE INDEX IF NOT EXISTS runbook_runs_status ON runbook_runs (status);
