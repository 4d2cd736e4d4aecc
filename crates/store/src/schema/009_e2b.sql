-- Issue 25: sandboxes created through the E2B-compatible listener. The envd access token is
-- checked against its SHA-256 (hex) and kept sealed to the daemon's age key (connect answers it
-- again); metadata is E2B's (a JSON object of strings); end_at is the
-- E2B timeout's deadline (Unix seconds) after which the sandbox is destroyed, or paused
-- (cold-stopped) when auto_pause is set. Gone with the sandbox's row.
CREATE TABLE e2b_sandboxes (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    template_id TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    token_sealed BLOB NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    started_at INTEGER NOT NULL,
    end_at INTEGER NOT NULL,
    auto_pause INTEGER NOT NULL DEFAULT 0 CHECK (auto_pause IN (0, 1))
) STRICT;
CREATE INDEX e2b_sandboxes_owner ON e2b_sandboxes (owner);
CREATE INDEX e2b_sandboxes_end_at ON e2b_sandboxes (end_at);
