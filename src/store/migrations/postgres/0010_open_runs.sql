-- How many runs of each playbook are open (queued, running, waiting for approval, being
-- cancelled; dry runs aside): what `guard.concurrency` compares with, read as one row instead
-- of counted over the playbook's runs at every admission. Kept by triggers on `runbook_runs`, so
-- every way a run starts, ends, is cancelled, interrupted or pruned moves it, in the transaction
-- that changes the run. The statement-level triggers add up a statement's changes per playbook
-- and write them in playbook order, so two transactions never take the counters' row locks in
-- opposite orders; a run that stays open (queued to running) writes nothing.
CREATE TABLE runbook_open_runs (
    playbook TEXT PRIMARY KEY,
    open     BIGINT NOT NULL
);

INSERT INTO runbook_open_runs (playbook, open)
SELECT playbook, COUNT(*) FROM runbook_runs
WHERE NOT dry_run AND status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
GROUP BY playbook;

CREATE FUNCTION runbook_open_runs_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO runbook_open_runs (playbook, open)
        SELECT playbook, COUNT(*) FROM new_runs
        WHERE NOT dry_run AND status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
        GROUP BY playbook ORDER BY playbook
        ON CONFLICT (playbook) DO UPDATE SET open = runbook_open_runs.open + excluded.open;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE runbook_open_runs o SET open = o.open - d.n
        FROM (SELECT playbook, COUNT(*) AS n FROM old_runs
              WHERE NOT dry_run AND status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
              GROUP BY playbook) d
        WHERE o.playbook = d.playbook;
    ELSE
        INSERT INTO runbook_open_runs (playbook, open)
        SELECT playbook, SUM(n) FROM (
            SELECT playbook, -1 AS n FROM old_runs
            WHERE NOT dry_run AND status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
            UNION ALL
            SELECT playbook, 1 AS n FROM new_runs
            WHERE NOT dry_run AND status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
        ) d
        GROUP BY playbook HAVING SUM(n) <> 0 ORDER BY playbook
        ON CONFLICT (playbook) DO UPDATE SET open = runbook_open_runs.open + excluded.open;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER runbook_open_runs_insert AFTER INSERT ON runbook_runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runbook_open_runs_moved();
CREATE TRIGGER runbook_open_runs_update AFTER UPDATE ON runbook_runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runbook_open_runs_moved();
CREATE TRIGGER runbook_open_runs_delete AFTER DELETE ON runbook_runs
    REFERENCING OLD TABLE AS old_runs
    FOR EACH STATEMENT EXECUTE FUNCTION runbook_open_runs_moved();
