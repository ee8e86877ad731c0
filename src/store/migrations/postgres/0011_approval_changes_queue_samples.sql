-- What approving a waiting run lets happen: the steps after its `approve` step, rendered with the
-- run's context when it reached that step (JSON text; see `engine/preview.rs`). Kept after the
-- answer, so the run page shows what was approved.
ALTER TABLE runbook_runs ADD COLUMN waiting_changes TEXT;

-- The queue's depth over time, for the console's chart: one row per sampling interval across
-- every replica (`at`, the interval's start in Unix seconds, is the key; a second replica's
-- insert for the same interval does nothing). `depths` is a JSON object, priority -> pending
-- commands; `oldest_age_secs` the age of the oldest pending command then (NULL: none pending).
CREATE TABLE runbook_queue_samples (
    at              BIGINT PRIMARY KEY,
    depths          TEXT NOT NULL,
    total           BIGINT NOT NULL,
    oldest_age_secs BIGINT
);
