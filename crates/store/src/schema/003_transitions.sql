-- The intent of a sandbox transition, written before its side effect and removed with the
-- result: a row left here at start-up is a transition a crash interrupted.

CREATE TABLE transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL UNIQUE REFERENCES sandboxes(id) ON DELETE CASCADE,
    intent     TEXT NOT NULL,
    started_at INTEGER NOT NULL
) STRICT;
