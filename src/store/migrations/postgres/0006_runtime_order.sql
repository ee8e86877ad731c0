-- Parked outbox events: a row the broker refused `streaming.outbox_max_attempts` times is parked
-- (it keeps its `attempts` and `last_error`) and waits for an operator to retry or drop it; the
-- newer events of its entity wait behind it, every other entity's flow.
ALTER TABLE outbox_final ADD COLUMN parked_at TIMESTAMPTZ;
CREATE INDEX outbox_final_parked ON outbox_final (entity, entity_id, id) WHERE parked_at IS NOT NULL AND sent_at IS NULL;
-- The claim looks for an older pending command of the same entity (per-entity order).
CREATE INDEX command_queue_entity_pending ON command_queue (entity, entity_id, id) WHERE status = 'pending';
-- A run tree is walked by parent (the `playbook:` step's limits, closing cut-off child runs).
CREATE INDEX runbook_runs_parent ON runbook_runs (parent_id) WHERE parent_id IS NOT NULL;
