-- The rendered `report:` of a run's playbook: what was wrong, what was changed, what is left
-- for a person.
ALTER TABLE runbook_runs ADD COLUMN report TEXT;
