-- One row that `/readyz` rewrites (at most every second or two) to learn whether the store takes
-- writes: a full disk fails this write like any other. `room` is a blob of a few pages rewritten
-- each time with a length one byte off the last: SQLite writes the new blob before it frees the
-- old one, so the probe needs as much free space as a small write of the application does, not
-- merely pages to overwrite in place.
CREATE TABLE IF NOT EXISTS runbook_heartbeat (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    at   TEXT NOT NULL,
    room BLOB
);
