-- Users, sandboxes and the resources they own. Every table is STRICT: a value of the wrong
-- type is refused at write time instead of coming back as a surprise at read time.
-- Times are INTEGER milliseconds since the Unix epoch (UTC).

CREATE TABLE users (
    id                        TEXT PRIMARY KEY,
    name                      TEXT NOT NULL UNIQUE,
    -- SHA-256 (lowercase hex) of the API key; the key itself is never stored.
    api_key_hash              TEXT NOT NULL UNIQUE,
    max_sandboxes             INTEGER NOT NULL CHECK (max_sandboxes >= 0),
    max_cpus_per_sandbox      INTEGER NOT NULL CHECK (max_cpus_per_sandbox >= 0),
    max_memory_mb_per_sandbox INTEGER NOT NULL CHECK (max_memory_mb_per_sandbox >= 0),
    max_volume_storage_mb     INTEGER NOT NULL CHECK (max_volume_storage_mb >= 0),
    max_images                INTEGER NOT NULL CHECK (max_images >= 0),
    max_snapshots             INTEGER NOT NULL CHECK (max_snapshots >= 0),
    -- The owner's private network (its bridge); never reused.
    subnet_index              INTEGER NOT NULL UNIQUE CHECK (subnet_index > 0),
    created_at                INTEGER NOT NULL
) STRICT;

CREATE TABLE sandboxes (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL REFERENCES users(id),
    name             TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('creating', 'running', 'stopped', 'unknown', 'destroyed')),
    thermal          TEXT CHECK (thermal IN ('hot', 'warm', 'cold', 'failed')),
    template_id      TEXT,
    image            TEXT NOT NULL,
    cpus             REAL NOT NULL CHECK (cpus > 0),
    memory_mb        INTEGER NOT NULL CHECK (memory_mb >= 0),
    disk_size_mb     INTEGER NOT NULL CHECK (disk_size_mb >= 0),
    ip               TEXT NOT NULL DEFAULT '',
    labels           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    keep_hot         INTEGER NOT NULL DEFAULT 0 CHECK (keep_hot IN (0, 1)),
    -- The engine's SandboxRecord (JSON; holds the agent token: never logged).
    record           TEXT CHECK (json_valid(record)),
    -- SHA-256 (hex) of the web-shell token, NULL when none is set.
    shell_token_hash TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    stopped_at       INTEGER
) STRICT;

-- A name is unique per owner among live rows; a destroyed row's name can be taken again.
CREATE UNIQUE INDEX sandboxes_owner_live_name ON sandboxes (owner, name)
    WHERE status != 'destroyed';
CREATE INDEX sandboxes_owner_created ON sandboxes (owner, created_at);

CREATE TABLE templates (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    image        TEXT NOT NULL,
    cpus         REAL NOT NULL CHECK (cpus > 0),
    memory_mb    INTEGER NOT NULL CHECK (memory_mb >= 0),
    disk_size_mb INTEGER NOT NULL CHECK (disk_size_mb >= 0),
    userdata     TEXT NOT NULL DEFAULT '',
    secrets      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(secrets)),
    labels       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    mounts       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(mounts)),
    created_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE secrets (
    owner      TEXT NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    -- age ciphertext; the plaintext never reaches the database.
    ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
) STRICT;

CREATE TABLE volumes (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    size_mb    INTEGER NOT NULL CHECK (size_mb > 0),
    file_path  TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('creating', 'ready')),
    created_at INTEGER NOT NULL,
    UNIQUE (owner, name)
) STRICT;

-- Attachment order (rowid) is the guest's device order at recovery.
CREATE TABLE volume_attachments (
    volume_id   TEXT NOT NULL REFERENCES volumes(id),
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    mount       TEXT NOT NULL,
    read_only   INTEGER NOT NULL CHECK (read_only IN (0, 1)),
    attached_at INTEGER NOT NULL,
    PRIMARY KEY (volume_id, sandbox_id)
) STRICT;
CREATE INDEX volume_attachments_sandbox ON volume_attachments (sandbox_id);

-- owner NULL = a global image (built-in tiers, admin imports).
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    owner       TEXT REFERENCES users(id),
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    file_path   TEXT NOT NULL,
    size_mb     INTEGER NOT NULL CHECK (size_mb >= 0),
    oci_digest  TEXT NOT NULL DEFAULT '',
    oci_config  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(oci_config)),
    created_at  INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX images_owner_name ON images (owner, name) WHERE owner IS NOT NULL;
CREATE UNIQUE INDEX images_global_name ON images (name) WHERE owner IS NULL;

CREATE TABLE image_shares (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (image_id, user_id)
) STRICT;

CREATE TABLE snapshots (
    id             TEXT PRIMARY KEY,
    owner          TEXT NOT NULL REFERENCES users(id),
    name           TEXT NOT NULL,
    -- No foreign key: a checkpoint outlives the sandbox it was taken from.
    source_sandbox TEXT NOT NULL,
    dir            TEXT NOT NULL,
    manifest       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(manifest)),
    size_mb        INTEGER NOT NULL CHECK (size_mb >= 0),
    created_at     INTEGER NOT NULL,
    UNIQUE (owner, name)
) STRICT;

CREATE TABLE publish_rules (
    id         TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    owner      TEXT NOT NULL REFERENCES users(id),
    port       INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    alias      TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    UNIQUE (sandbox_id, port)
) STRICT;
CREATE INDEX publish_rules_owner ON publish_rules (owner);
