-- Off-site volume backups (S3 objects). Keyed by the volume's name, not its row: a backup
-- outlives the volume it was taken from and restores into a volume of that name.

CREATE TABLE volume_backups (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL REFERENCES users(id),
    volume_name TEXT NOT NULL,
    s3_key      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    sha256      TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX volume_backups_owner_volume ON volume_backups (owner, volume_name, created_at DESC);
