-- One row that `/readyz` rewrites (at most every second or two) to learn whether the store takes
-- writes. `room` is used on SQLite only (see the SQLite migration).
CREATE TABLE IF NOT EXISTS runbook_heartbeat (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    at   TIMESTAMPTZ NOT NULL,
    room BYTEA
);
