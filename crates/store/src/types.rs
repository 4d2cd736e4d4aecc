//! Small types shared by the tables: timestamps, sandbox status, IDs and hashes.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use sha2::{Digest, Sha256};

use crate::error::{Resource, Result, StoreError};

/// A point in time, milliseconds since the Unix epoch (UTC). Stored as an INTEGER so that
/// comparisons and ordering are numeric, not textual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Now, by the system clock.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This time minus `d` (saturating), for retention cut-offs.
    pub fn minus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        int_tolerant(value).map(Timestamp)
    }
}

/// Reads an INTEGER that may have been stored as an integral REAL (a row written by a tool
/// that does not care about affinity): both decode, a fraction does not.
pub(crate) fn int_tolerant(value: ValueRef<'_>) -> FromSqlResult<i64> {
    match value {
        ValueRef::Integer(i) => Ok(i),
        ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(FromSqlError::InvalidType),
    }
}

/// Reads a REAL that may have been stored as an INTEGER.
pub(crate) fn real_tolerant(value: ValueRef<'_>) -> FromSqlResult<f64> {
    match value {
        ValueRef::Real(f) => Ok(f),
        ValueRef::Integer(i) => Ok(i as f64),
        _ => Err(FromSqlError::InvalidType),
    }
}

/// A count or size column (MiB, quotas): never negative.
pub(crate) fn u32_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let v = row.get_ref(idx).and_then(|v| int_tolerant(v).map_err(|e| from_sql(idx, e)))?;
    u32::try_from(v).map_err(|_| from_sql(idx, FromSqlError::OutOfRange(v)))
}

/// A float column (CPUs).
pub(crate) fn f64_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<f64> {
    row.get_ref(idx).and_then(|v| real_tolerant(v).map_err(|e| from_sql(idx, e)))
}

fn from_sql(idx: usize, e: FromSqlError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Null, Box::new(e))
}

pub use bhatti_core::Status;

/// Reads a status column (the type lives in `bhatti-core`, so it is decoded here, not by
/// `FromSql`).
pub(crate) fn status_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Status> {
    let text: String = row.get(idx)?;
    Status::parse(&text)
        .ok_or_else(|| from_sql(idx, FromSqlError::Other(format!("bad status {text:?}").into())))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `n` random bytes from the OS.
pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(StoreError::Random)?;
    Ok(buf)
}

/// A fresh ID: `prefix` + 16 hex chars (8 random bytes; collisions are caught by the primary
/// key, never silently merged).
pub(crate) fn new_id(prefix: &str) -> Result<String> {
    Ok(format!("{prefix}{}", hex(&random_bytes(8)?)))
}

/// SHA-256 of `secret` as lowercase hex: how API keys and shell tokens are kept.
pub fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two equal-length strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a JSON column into `T`; a value that does not decode is a corrupt row, named by ID.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(
    kind: Resource,
    id: &str,
    text: &str,
) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(kind, id, format!("bad JSON: {e}")))
}

/// Writes `T` as a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_hex_and_distinct() {
        let a = new_id("usr_").unwrap();
        let b = new_id("usr_").unwrap();
        assert_eq!(a.len(), 4 + 16);
        assert!(a.starts_with("usr_") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn sha256_is_lowercase_hex_of_the_input() {
        // Known answer: SHA-256("abc").
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(&sha256_hex("x"), &sha256_hex("x")));
        assert!(!constant_time_eq(&sha256_hex("x"), &sha256_hex("y")));
        assert!(!constant_time_eq("ab", "abc"));
    }
}
