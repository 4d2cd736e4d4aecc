//! Secrets (host.md 1.18): `POST /secrets {"name","value"}` (upsert, 201), `GET /secrets`
//! (names and times), `DELETE /secrets/:name`. A value travels only in a set request, inside a
//! [`SecretValue`] that never prints or serialises what it holds.

use serde::{Deserialize, Serialize};

/// A secret's value. `Debug` and `Serialize` show `<redacted>` and its length never; the only way
/// to the text is [`SecretValue::expose`], so a value cannot reach a log line, an error or a
/// JSON answer by accident. The memory is wiped when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(zeroize::Zeroizing::new(value.into()))
    }

    /// The value itself: for encrypting it, or for the CLI's request body.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (v1 refuses an empty value).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// `POST /secrets`: both fields required and non-empty (400 `name and value required`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub struct SetSecret {
    /// The name, which is also the environment variable a sandbox gets.
    #[serde(default)]
    pub name: String,
    /// The value.
    #[serde(default)]
    #[schema(value_type = String)]
    pub value: SecretValue,
}

impl SetSecret {
    /// The request body, the one place a value is written out (the CLI sends it).
    pub fn to_body(&self) -> serde_json::Value {
        serde_json::json!({ "name": self.name, "value": self.value.expose() })
    }
}

/// A secret as listed and as a set answers it: never its value (v1's `SecretRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretRecord {
    /// Name.
    pub name: String,
    /// First set (RFC 3339).
    pub created_at: String,
    /// Last set (RFC 3339).
    pub updated_at: String,
}

/// Response header of a refused request: seconds to wait before trying again.
pub const RETRY_AFTER_HEADER: &str = "retry-after";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_never_prints_or_serialises() {
        let set: SetSecret =
            serde_json::from_str(r#"{"name":"API_KEY","value":"planted-9f3c"}"#).unwrap();
        assert_eq!(set.value.expose(), "planted-9f3c");
        let debug = format!("{set:?}");
        assert!(!debug.contains("planted") && debug.contains("redacted"), "{debug}");
        let json = serde_json::to_string(&set.value).unwrap();
        assert_eq!(json, r#""<redacted>""#);
        assert_eq!(set.to_body()["value"], "planted-9f3c");
    }

    #[test]
    fn missing_fields_are_empty_so_the_server_answers_v1s_400() {
        let set: SetSecret = serde_json::from_str(r#"{"name":"A"}"#).unwrap();
        assert!(set.value.is_empty());
    }
}
