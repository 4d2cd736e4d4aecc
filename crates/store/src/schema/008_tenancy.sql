-- Quotas of issue 23: the sum of the disks of a user's live sandboxes (MiB) and the execs a
-- user may run at once. Existing users get the defaults.
ALTER TABLE users ADD COLUMN max_disk_mb INTEGER NOT NULL DEFAULT 51200
    CHECK (max_disk_mb >= 0);
ALTER TABLE users ADD COLUMN max_concurrent_execs INTEGER NOT NULL DEFAULT 32
    CHECK (max_concurrent_execs >= 0);

-- The environment a sandbox's secrets gave it at create, sealed with age (one JSON object,
-- encrypted by the server): the daemon adds it to every exec and shell it starts, and reads it
-- back after a restart. Never plaintext; gone with the sandbox's row.
CREATE TABLE sandbox_secret_env (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    ciphertext BLOB NOT NULL
) STRICT;
