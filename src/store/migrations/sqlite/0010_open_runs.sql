-- How many runs of each playbook are open (queued, running, waiting for approval, being
-- cancelled; dry runs aside): what `guard.concurrency` compares with, read as one row instead
-- of counted over the playbook's runs at every admission. Kept by triggers on `runbook_runs`, so
-- every way a run starts, ends, is cancelled, interrupted or pruned moves it, in the transaction
-- that changes the run. A run that stays open (queued to running) writes nothing.
CREATE TABLE runbook_open_runs (
    playbook TEXT PRIMARY KEY,
    open     INTEGER NOT NULL
);

INSERT INTO runbook_open_runs (playbook, open)
SELECT playbook, COUNT(*) FROM runbook_runs
WHERE NOT dry_run AND status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
GROUP BY playbook;

CREATE TRIGGER runbook_open_runs_insert AFTER INSERT ON runbook_runs
WHEN NOT NEW.dry_run AND NEW.status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
BEGIN
    INSERT INTO runbook_open_runs (playbook, open) VALUES (NEW.playbook, 1)
    ON CONFLICT (playbook) DO UPDATE SET open = open + 1;
END;

CREATE TRIGGER runbook_open_runs_update AFTER UPDATE OF status, playbook, dry_run ON runbook_runs
WHEN (NOT OLD.dry_run AND OLD.status IN ('queued', 'running', 'waiting_approval', 'cancel_requested'))
     IS NOT (NOT NEW.dry_run AND NEW.status IN ('queued', 'running', 'waiting_approval', 'cancel_requested'))
  OR OLD.playbook IS NOT NEW.playbook
BEGIN
    UPDATE runbook_open_runs SET open = open - 1
    WHERE playbook = OLD.playbook AND NOT OLD.dry_run
      AND OLD.status IN ('queued', 'running', 'waiting_approval', 'cancel_requested');
    INSERT INTO runbook_open_runs (playbook, open)
    SELECT NEW.playbook, 1
    WHERE NOT NEW.dry_run AND NEW.status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
    ON CONFLICT (playbook) DO UPDATE SET open = open + 1;
END;

CREATE TRIGGER runbook_open_runs_delete AFTER DELETE ON runbook_runs
WHEN NOT OLD.dry_run AND OLD.status IN ('queued', 'running', 'waiting_approval', 'cancel_requested')
BEGIN
    UPDATE runbook_open_runs SET open = open - 1 WHERE playbook = OLD.playbook;
END;
