-- Background tasks (image pulls) and the event log.

CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    progress     TEXT NOT NULL DEFAULT '',
    result       TEXT CHECK (json_valid(result)),
    error        TEXT,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER
) STRICT;
CREATE INDEX tasks_created ON tasks (created_at);

-- No foreign keys: the log outlives the users and sandboxes it names.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         INTEGER NOT NULL,
    type       TEXT NOT NULL,
    user_id    TEXT NOT NULL DEFAULT '',
    sandbox_id TEXT NOT NULL DEFAULT '',
    meta       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta))
) STRICT;
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_type_ts ON events (type, ts);
CREATE INDEX events_user_ts ON events (user_id, ts);
