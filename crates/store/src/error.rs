//! The store's errors: typed, so the server maps them to a status in one place and no caller
//! reads an error's text to decide anything.

use std::fmt;
use std::path::PathBuf;

/// What a row is, in errors ("sandbox \"dev\" not found").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A user (tenant).
    User,
    /// A sandbox.
    Sandbox,
    /// A template.
    Template,
    /// A secret.
    Secret,
    /// A persistent volume.
    Volume,
    /// A volume attachment.
    Attachment,
    /// An image.
    Image,
    /// A named snapshot (checkpoint).
    Snapshot,
    /// A publish rule.
    PublishRule,
    /// A background task.
    Task,
    /// A pending transition of a sandbox.
    Transition,
    /// The database schema itself.
    Schema,
}

impl Resource {
    /// The word used in messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::User => "user",
            Resource::Sandbox => "sandbox",
            Resource::Template => "template",
            Resource::Secret => "secret",
            Resource::Volume => "volume",
            Resource::Attachment => "attachment",
            Resource::Image => "image",
            Resource::Snapshot => "snapshot",
            Resource::PublishRule => "publish rule",
            Resource::Task => "task",
            Resource::Transition => "transition",
            Resource::Schema => "schema",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of an error, stable across releases: the server maps it to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The row does not exist or belongs to someone else (404).
    NotFound,
    /// The change conflicts with a row that exists (409).
    Conflict,
    /// The request is malformed or breaks a rule (400).
    Invalid,
    /// A quota of the owner is used up (429).
    Limit,
    /// The database stayed locked past the deadline, or the store is shut down (503).
    Unavailable,
    /// Anything else: a corrupt row, an I/O error (500).
    Internal,
}

impl ErrorKind {
    /// A stable snake_case code for API error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Limit => "limit",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error of the store. Messages name rows by ID or name, never by secret values: a secret,
/// token hash or engine record never reaches an error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row visible to the caller (another owner's rows are "not found", never
    /// "forbidden", so IDs cannot be probed).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked for.
        kind: Resource,
        /// The ID or name asked for.
        name: String,
    },
    /// The change conflicts with existing state; `what` says with what.
    #[error("{kind} {name:?}: {what}")]
    Conflict {
        /// What was being changed.
        kind: Resource,
        /// Its ID or name.
        name: String,
        /// The conflict, e.g. `name is already in use`, `has 2 active attachment(s)`.
        what: String,
    },
    /// The request is malformed or breaks a rule of the store.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A quota is used up, checked in the same transaction as the insert (two racing creates
    /// cannot both take the last slot).
    #[error("{kind} limit reached ({used}/{max})")]
    Limit {
        /// What is limited.
        kind: Resource,
        /// How many (or MiB) are in use.
        used: u64,
        /// The quota.
        max: u64,
    },
    /// A quota in MiB would be exceeded (v1's wording for volume storage, `volume storage quota
    /// exceeded (XMB used, YMB max)`, used for sandbox disks too).
    #[error("{what} quota exceeded ({used_mb}MB used, {max_mb}MB max)")]
    Quota {
        /// What is limited (`disk`).
        what: &'static str,
        /// MiB in use before this request.
        used_mb: u64,
        /// The quota.
        max_mb: u64,
    },
    /// The database stayed busy past the busy timeout. The cause is in the message and is not
    /// a `source`, so a chain walk prints it once and a log line with `{e}` still shows it.
    #[error("database busy: {0}")]
    Busy(rusqlite::Error),
    /// The async store's thread is gone or the deadline of a call passed (the call's effect
    /// is then unknown: it may still commit).
    #[error("store unavailable: {0}")]
    Unavailable(&'static str),
    /// A stored value that cannot be decoded (a row written by something else).
    #[error("corrupt {kind} row {id:?}: {what}")]
    Corrupt {
        /// The table's resource.
        kind: Resource,
        /// The row.
        id: String,
        /// What is wrong (never the value itself).
        what: String,
    },
    /// Any other SQLite error (its cause in the message only, as `Busy`).
    #[error("database: {0}")]
    Database(rusqlite::Error),
    /// Opening or migrating the database file failed: the path, then why.
    #[error("opening the database {}: {error}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why; its kind is this error's kind (a busy file is still unavailable).
        error: Box<StoreError>,
    },
    /// A file-system operation failed: what was done, on which path, and why.
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// What was being done (`creating`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// One of the async store's threads could not be started.
    #[error("starting the {thread} thread: {error}")]
    Spawn {
        /// The thread's name.
        thread: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// The OS's random source failed (IDs, keys).
    #[error("random source: {0}")]
    Random(getrandom::Error),
}

impl StoreError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Limit { .. } | StoreError::Quota { .. } => ErrorKind::Limit,
            StoreError::Busy(_) | StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Open { error, .. } => error.kind(),
            StoreError::Corrupt { .. }
            | StoreError::Database(_)
            | StoreError::Io { .. }
            | StoreError::Spawn { .. }
            | StoreError::Random(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn not_found(kind: Resource, name: impl Into<String>) -> Self {
        StoreError::NotFound { kind, name: name.into() }
    }

    pub(crate) fn conflict(
        kind: Resource,
        name: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        StoreError::Conflict { kind, name: name.into(), what: what.into() }
    }

    pub(crate) fn corrupt(kind: Resource, id: impl Into<String>, what: impl Into<String>) -> Self {
        StoreError::Corrupt { kind, id: id.into(), what: what.into() }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy(e),
            // Uniqueness is checked by queries inside the write transaction (with a message
            // that names the conflict); a constraint firing anyway is still a conflict, not a
            // server fault. Classified by SQLite's code, never by its message.
            Some(ErrorCode::ConstraintViolation) => {
                StoreError::conflict(Resource::Schema, "constraint", "violates a constraint")
            }
            _ => StoreError::Database(e),
        }
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable() {
        let nf = StoreError::not_found(Resource::Sandbox, "dev");
        assert_eq!(nf.kind(), ErrorKind::NotFound);
        assert_eq!(nf.to_string(), r#"sandbox "dev" not found"#);
        let c = StoreError::conflict(Resource::Volume, "data", "has 2 active attachment(s)");
        assert_eq!(c.kind(), ErrorKind::Conflict);
        assert_eq!(c.to_string(), r#"volume "data": has 2 active attachment(s)"#);
        assert_eq!(StoreError::Invalid("x".into()).kind().as_str(), "invalid");
        assert_eq!(StoreError::Unavailable("closed").kind(), ErrorKind::Unavailable);
    }

    /// Each cause is printed once: in the message, never also as a `source` a chain walk (the
    /// daemon's log, the CLI) would print again.
    #[test]
    fn io_errors_name_their_path_and_print_their_cause_once() {
        use std::error::Error as _;
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let io = StoreError::Io { op: "creating", path: "/data/state.db".into(), error: denied() };
        assert_eq!(io.to_string(), format!("creating /data/state.db: {}", denied()));
        assert!(io.source().is_none());
        assert_eq!(io.kind(), ErrorKind::Internal);

        let busy = StoreError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ));
        let open = StoreError::Open { path: "/data/state.db".into(), error: Box::new(busy) };
        assert_eq!(
            open.to_string(),
            "opening the database /data/state.db: database busy: Error code 5: The database file is locked"
        );
        assert!(open.source().is_none());
        // The inner error's kind: a locked file is unavailable, not a server fault.
        assert_eq!(open.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn opening_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/state.db");
        let e = crate::Store::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::Io { op: "creating", .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("creating {}: ", path.display())), "{e}");
        // A file that is not a database: SQLite's error, with the path once.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
        let e = crate::Store::open(&junk).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("opening the database {}: ", junk.display())), "{text}");
        assert_eq!(text.matches(&*junk.display().to_string()).count(), 1, "{text}");
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
