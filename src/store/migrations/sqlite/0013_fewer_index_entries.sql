-- Retention reads finished runs by age; a run still queued or running has no finished_at and
-- needs no entry until it ends. (The PostgreSQL store also folds runbook_alert_runs' cooldown
-- index into its primary key; SQLite would have to rebuild the table for that.)
DROP INDEX runbook_runs_finished;
CREATE INDEX runbook_runs_finished ON runbook_runs (finished_at) WHERE finished_at IS NOT NULL;
