-- A queue command that runs a playbook finds its run by `command_id` when it starts
-- (`runs::latest_for_command`): without an index the database could only read runs newest first
-- until it met the command's (quick for a command just enqueued, every run for an old one being
-- retried) or scan them all.
CREATE INDEX runbook_runs_command ON runbook_runs (command_id) WHERE command_id IS NOT NULL;

-- The open runs of a playbook are its row of runbook_open_runs (0010); nothing reads runs by
-- (playbook, status) any more, and every recorded run wrote this index.
DROP INDEX runbook_runs_playbook_status;
