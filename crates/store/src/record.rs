//! The engine's `SandboxRecord` as the store keeps it: a typed JSON column.
//!
//! The store writes records with the engine's own `to_json` and hands them back decoded with
//! `from_json`, so a field the engine adds needs no change here. One tolerance is added on the
//! way back: a number stored as an integral float (`1024.0`, as JSON tools and v1's maps
//! produced, host.md 4.5) decodes like the integer; a fraction where an integer belongs does
//! not, and makes the record malformed.

use bhatti_core::SandboxRecord;
use serde_json::Value;

/// A stored record, not yet decoded. It holds the agent token (and the sandbox's environment,
/// where secrets land), so its `Debug` prints only its size.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord(pub(crate) String);

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredRecord(<redacted, {} bytes>)", self.0.len())
    }
}

/// Why a stored record could not be decoded (serde's message: a position and the expected type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sandbox record: {0}")]
pub struct RecordError(pub String);

impl StoredRecord {
    /// Wraps a record for storage.
    pub fn from_record(record: &SandboxRecord) -> Self {
        StoredRecord(record.to_json())
    }

    /// Wraps stored JSON text as it is (tests and tools; decoding checks it).
    pub fn from_json_text(text: impl Into<String>) -> Self {
        StoredRecord(text.into())
    }

    /// The JSON as stored.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// Decodes the record; integral floats are read as integers.
    pub fn decode(&self) -> Result<SandboxRecord, RecordError> {
        let mut value: Value = serde_json::from_str(&self.0).map_err(|e| {
            RecordError(format!("not JSON (line {}, column {})", e.line(), e.column()))
        })?;
        integral_floats_to_integers(&mut value);
        SandboxRecord::from_json(&value.to_string()).map_err(|e| RecordError(e.to_string()))
    }
}

/// Rewrites every float with no fractional part as an integer, recursively.
fn integral_floats_to_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_with_no_fraction_become_integers() {
        let mut v: Value =
            serde_json::from_str(r#"{"a":1024.0,"b":[2.0,1.5],"c":{"d":-3.0},"e":"4.0"}"#).unwrap();
        integral_floats_to_integers(&mut v);
        assert_eq!(v.to_string(), r#"{"a":1024,"b":[2,1.5],"c":{"d":-3},"e":"4.0"}"#);
    }

    #[test]
    fn debug_hides_the_content() {
        let r = StoredRecord::from_json_text(r#"{"token":"sekrit"}"#);
        let shown = format!("{r:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("18 bytes"), "{shown}");
    }

    #[test]
    fn garbage_is_a_record_error() {
        assert!(StoredRecord::from_json_text("{").decode().is_err());
        assert!(StoredRecord::from_json_text(r#"{"version":1}"#).decode().is_err());
    }
}
